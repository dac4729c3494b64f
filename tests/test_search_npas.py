"""NPAS's phase-2 search: its controller, its screening into the latency budget, its determinism and its run files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from latprune.errors import SearchError
from latprune.search import SearchConfig, get_algorithm, run_search
from latprune.search._controller import Controller
from latprune.search.npas import npas_reward
from latprune.search.synthetic import SyntheticProblem

PROBLEM = SyntheticProblem(n_groups=3, n_layers=6, seed=3, noise=0.01)
BUDGET_MS = 0.45  # PROBLEM spans about 0.15 (thinnest, sparsest) to 1.15 ms (dense)


def _config(**changes) -> SearchConfig:
    values = dict(population=8, generations=4, seed=5, algorithm="npas", latency_budget_ms=BUDGET_MS)
    return SearchConfig(**(values | changes))


def _search(out: Path, config: SearchConfig):
    return run_search(PROBLEM.space(), PROBLEM.predictor(), PROBLEM.estimator(), config, out, progress=False)


def test_controller_learns_the_rewarded_value_and_saves_exactly() -> None:
    ctrl = Controller.uniform(np.array([0, 2]), np.array([3, 4]))  # variable 0: 4 values, variable 1: 3 values
    assert np.allclose(ctrl.probabilities().sum(1), 1.0) and ctrl.probabilities()[1, 3] == 0.0
    rng = np.random.default_rng(0)
    for _ in range(30):
        Z = ctrl.sample(rng, 16)  # (16, 2)
        assert Z[:, 0].min() >= 0 and Z[:, 0].max() <= 3 and Z[:, 1].min() >= 2 and Z[:, 1].max() <= 4
        reward = (Z[:, 0] == 2).astype(float)  # only value 2 of variable 0 pays
        ctrl.update(Z, reward - reward.mean(), lr=1.0)
    p = ctrl.probabilities()
    assert p[0, 2] > 0.8 and p[0].argmax() == 2
    assert p[1, :3].max() < 0.5  # variable 1 earned nothing either way: it stays spread
    again = Controller.from_dict(json.loads(json.dumps(ctrl.to_dict())))
    assert np.array_equal(again.logits, ctrl.logits) and again.steps == ctrl.steps > 20


def test_reward_is_accuracy_under_the_budget_and_penalised_over_it() -> None:
    r = npas_reward(np.array([0.5, 1.0, 1.2]), np.array([0.1, 0.1, 0.1]), budget_ms=1.0, penalty=2.0)
    assert r == pytest.approx([0.9, 0.9, 0.9 - 2.0 * 0.2])


def test_npas_needs_a_budget_and_is_registered_as_using_it() -> None:
    assert get_algorithm("npas").uses_budget and not get_algorithm("nsga2").uses_budget
    with pytest.raises(SearchError, match="latency budget; pass --latency-budget"):
        SearchConfig(algorithm="npas")
    with pytest.raises(SearchError, match="elites"):
        _config(npas_elites=8)


def test_same_seed_same_front_and_another_seed_another(tmp_path: Path) -> None:
    a = _search(tmp_path / "a", _config())
    b = _search(tmp_path / "b", _config())
    c = _search(tmp_path / "c", _config(seed=6))
    assert a.population == b.population and a.best_under_budget == b.best_under_budget
    assert a.population != c.population
    assert json.loads((tmp_path / "a" / "state.json").read_text()) == json.loads(
        (tmp_path / "b" / "state.json").read_text()
    )


def test_proposals_are_screened_into_the_budget_and_the_search_improves(tmp_path: Path) -> None:
    config = _config(generations=6, population=12)
    result = _search(tmp_path / "run", config)
    gens = [json.loads((tmp_path / "run" / f"gen_{g:04d}.json").read_text()) for g in range(7)]
    evaluated = [c for g in gens for c in g["evaluated"]]
    lat = np.array([c["latency_ms"] for c in evaluated])
    assert len(evaluated) == 7 * 12
    assert np.mean(lat <= BUDGET_MS) > 0.9  # the predictor screened almost every proposal into the budget
    assert np.mean(lat >= config.npas_latency_floor * BUDGET_MS - 1e-9) > 0.9  # and out of the too-fast tail
    best = result.best_under_budget
    assert best is not None and best.latency_ms <= BUDGET_MS
    true = [PROBLEM.true_error(np.asarray([c["x"] for c in g["evaluated"]])) for g in gens]  # (12,) per batch
    assert true[-1].mean() < true[0].mean() - 0.05  # the last batch is far better than the uniform first one
    assert PROBLEM.true_error(np.asarray([best.x]))[0] <= true[0].min()
    # Elites are re-estimated in every later batch, and the population is the best by reward.
    elites = {tuple(c["x"]) for c in gens[-2]["population"][: config.npas_elites]}
    assert elites <= {tuple(c["x"]) for c in gens[-1]["evaluated"]}


def test_resuming_with_another_budget_is_refused(tmp_path: Path) -> None:
    _search(tmp_path / "run", _config(generations=1))
    with pytest.raises(SearchError, match="latency_budget_ms"):
        run_search(
            PROBLEM.space(), PROBLEM.predictor(), PROBLEM.estimator(), _config(generations=1, latency_budget_ms=0.5),
            tmp_path / "run", resume=True, progress=False,
        )  # fmt: skip


def test_without_a_predictor_bound_it_still_searches(tmp_path: Path) -> None:
    """The algorithm alone (no driver): nothing is screened, the penalty alone steers it."""
    from latprune.search.genome import Genome
    from latprune.search.npas import NPASSearch

    space = PROBLEM.space()
    box = Genome.from_bounds(space.xl, space.xu).decision_space()
    algo = NPASSearch.create(box, _config(), seed=1)
    for _ in range(3):
        Z = algo.ask()
        assert Z is not None and Z.shape == (8, box.n_dec)
        X = Genome.from_bounds(space.xl, space.xu).expand(Z)
        algo.tell(np.column_stack([PROBLEM.latency_ms(X), PROBLEM.true_error(X)]))
    Zp, Fp = algo.population()
    assert Zp.shape == (8, box.n_dec) and Fp.shape == (8, 2)
    with pytest.raises(SearchError, match="did not ask"):
        algo.tell(Fp)
