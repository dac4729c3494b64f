"""Tests of the search: uniform non-dominated selection, the integer NSGA-II genome, the driver and its report."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from pymoo.core.population import Population
from pymoo.core.problem import Problem

from latprune.errors import SearchError
from latprune.report import front_table, plot_search
from latprune.search import (
    DecisionSpace,
    PlainSpace,
    SearchConfig,
    SearchResult,
    UniformNondominatedSurvival,
    get_preset,
    list_algorithms,
    pareto_front,
    register_algorithm,
    run_search,
    search_cost,
    uniform_nondominated_select,
)
from latprune.search.algorithms import _ALGORITHMS
from latprune.search.genome import Genome
from latprune.search.results import smallest_latency
from latprune.search.selection import latency_targets
from latprune.search.synthetic import SyntheticProblem

PROBLEM = SyntheticProblem(n_groups=3, n_layers=5, seed=0, noise=0.02)
SMALL = SearchConfig(population=8, generations=4, seed=3)


def _run(out: Path, config: SearchConfig = SMALL, problem: SyntheticProblem = PROBLEM) -> SearchResult:
    return run_search(problem.space(), problem.predictor(), problem.estimator(), config, out, progress=False)


# ---------------------------------------------------------------- selection


def test_latency_targets_follow_eq9() -> None:
    np.testing.assert_allclose(latency_targets(np.array([3.0, 1.0, 2.0, 5.0]), 5), [1.0, 2.0, 3.0, 4.0, 5.0])


def test_uniform_selection_takes_fronts_round_robin() -> None:
    # (latency, error); with targets T0 = 1 and T1 = 4 (N = 2):
    # F_0^(0) = {A, B, C, D}, F_1^(0) = {D}, F_0^(1) = {E, F}; G is dominated by E for every target.
    lat = np.array([1.0, 2.0, 3.0, 4.0, 1.5, 3.5, 2.5])
    err = np.array([0.50, 0.30, 0.20, 0.10, 0.60, 0.35, 0.90])
    chosen, rounds = uniform_nondominated_select(lat, err, 6, n_targets=2)
    assert sorted(chosen[:4].tolist()) == [0, 1, 2, 3] and rounds[:4].tolist() == [0, 0, 0, 0]
    assert sorted(chosen[4:].tolist()) == [4, 5] and rounds[4:].tolist() == [1, 1]
    # The last take is partial: both members of {E, F} are latency extremes, so the lower error (F) wins.
    chosen5, _ = uniform_nondominated_select(lat, err, 5, n_targets=2)
    assert sorted(chosen5.tolist()) == [0, 1, 2, 3, 5]


def test_uniform_selection_keeps_a_large_model_that_standard_ranking_drops() -> None:
    # H is the slowest model; a noisy estimate makes it look slightly worse than D, so NSGA-II ranks it second.
    lat = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 1.5, 2.5])
    err = np.array([0.50, 0.30, 0.20, 0.10, 0.12, 0.60, 0.55])
    chosen, _ = uniform_nondominated_select(lat, err, 5, n_targets=2)
    assert 4 in chosen.tolist()
    assert 4 not in pareto_front(lat, err).tolist()


def test_uniform_selection_properties_on_random_populations() -> None:
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(4, 40))
        lat, err = rng.uniform(0.1, 5, n), rng.uniform(0, 1, n)
        k, nt = int(rng.integers(1, n + 1)), int(rng.integers(1, 9))
        chosen, rounds = uniform_nondominated_select(lat, err, k, n_targets=nt)
        assert len(chosen) == k and len(set(chosen.tolist())) == k
        assert np.all(np.diff(rounds) >= 0)  # rounds are taken in order
        # With T_0 = T_min (N >= 2), F_0^(0) is the ordinary Pareto front and is taken first.
        fastest = min(range(n), key=lambda i: (lat[i], err[i]))
        if nt >= 2 and k >= len(pareto_front(lat, err)):
            assert fastest in chosen.tolist()
            assert int(np.argmin(err)) in chosen.tolist()


def test_uniform_selection_rejects_bad_input() -> None:
    with pytest.raises(SearchError, match="non-finite"):
        uniform_nondominated_select(np.array([1.0, np.nan]), np.array([0.1, 0.2]), 1)
    with pytest.raises(SearchError, match="one length"):
        uniform_nondominated_select(np.array([1.0, 2.0]), np.array([0.1]), 1)


def test_survival_sets_tournament_attributes() -> None:
    rng = np.random.default_rng(1)
    F = np.column_stack([rng.uniform(1, 2, 12), rng.uniform(0, 1, 12)])
    pop = Population.new(X=rng.integers(0, 5, (12, 3)), F=F)
    problem = Problem(n_var=3, n_obj=2, xl=0, xu=4, vtype=int)
    survivors = UniformNondominatedSurvival(n_targets=3).do(problem, pop, n_survive=6)
    assert len(survivors) == 6
    assert all(r >= 0 for r in survivors.get("rank")) and np.all(survivors.get("crowding") >= 0)


# ---------------------------------------------------------------- genome and config


def test_genome_searches_only_free_variables() -> None:
    g = Genome.from_bounds(np.array([0, 2, 1, 5]), np.array([3, 2, 4, 5]))
    assert g.free == (0, 2) and g.n_dec == 2
    X = g.expand(np.array([[3, 1], [0, 4], [9, -1]]))
    np.testing.assert_array_equal(X, [[3, 2, 1, 5], [0, 2, 4, 5], [3, 2, 1, 5]])  # last row clipped to bounds


def test_genome_choice_gene_picks_table_rows() -> None:
    g = Genome.with_choices(np.array([0, 0, 0]), np.array([9, 9, 3]), np.array([0, 1]), np.array([[5, 6], [7, 8]]))
    assert g.has_choice and g.n_dec == 2
    lo, hi = g.bounds()
    assert lo.tolist() == [0, 0] and hi.tolist() == [1, 3]
    np.testing.assert_array_equal(g.expand(np.array([[1, 2], [0, 3]])), [[7, 8, 2], [5, 6, 3]])
    assert Genome.from_dict(json.loads(json.dumps(g.to_dict()))) == g


def test_config_validation_and_presets() -> None:
    with pytest.raises(SearchError, match="mode 'diagonal'"):
        SearchConfig(mode="diagonal")
    with pytest.raises(SearchError, match="population size 2"):
        SearchConfig(population=2)
    with pytest.raises(SearchError, match="preset 'huge'"):
        get_preset("huge")
    paper = get_preset("paper")
    assert (paper.population, paper.generations) == (64, 128)
    assert paper.supernet_preset == "paper" and get_preset("quick").supernet_preset == "quick"
    assert SearchConfig.from_dict(SMALL.to_dict()) == SMALL


def test_smallest_latency_finds_the_fastest_corner() -> None:
    space = PROBLEM.space()
    x, lat = smallest_latency(PROBLEM.latency_ms, space.xl, space.xu)
    corner = np.where(np.asarray(space.is_width), space.xl, space.xu)  # narrowest, sparsest
    np.testing.assert_array_equal(x, corner)
    assert lat == pytest.approx(float(PROBLEM.latency_ms(corner[None])[0]))


# ---------------------------------------------------------------- driver


def test_same_seed_same_front_and_files(tmp_path: Path) -> None:
    a, b = _run(tmp_path / "a"), _run(tmp_path / "b")
    assert a.front == b.front and a.population == b.population
    for name in ["front.json", "gen_0004.json"]:
        fa = json.loads((tmp_path / "a" / name).read_text())
        fb = json.loads((tmp_path / "b" / name).read_text())
        fa.pop("timing_s", None), fb.pop("timing_s", None)
        assert fa == fb
    c = _run(tmp_path / "c", SearchConfig(population=8, generations=4, seed=4))
    assert c.population != a.population


def test_generation_files_record_population_and_evaluations(tmp_path: Path) -> None:
    result = _run(tmp_path)
    files = sorted(tmp_path.glob("gen_*.json"))
    assert [f.name for f in files] == [f"gen_{g:04d}.json" for g in range(5)]
    gen0 = json.loads(files[0].read_text())
    assert gen0["format"] == "latprune.search.generation/1" and gen0["n_evaluated"] == 8
    last = json.loads(files[-1].read_text())
    assert 8 < last["n_evaluated"] <= 16  # P ∪ Q, duplicates removed
    assert len(last["population"]) == 8 == sum(c["survived"] for c in last["evaluated"])
    assert {"latency_ms", "error", "x", "arch"} <= set(last["population"][0])
    assert [c.to_dict() for c in result.population] == sorted(
        last["population"], key=lambda c: (c["latency_ms"], c["error"])
    )
    # The front is non-dominated and sorted by latency.
    lat = [c.latency_ms for c in result.front]
    assert lat == sorted(lat) and all(
        not (o.latency_ms <= c.latency_ms and o.error < c.error) for c in result.front for o in result.population
    )
    assert SearchResult.load(tmp_path).front == result.front
    cost = search_cost(tmp_path)  # the generations' timings, summed
    assert cost["estimator"] == pytest.approx(sum(json.loads(f.read_text())["timing_s"]["estimator"] for f in files))
    assert set(cost) >= {"evolution", "predictor", "estimator"}


@pytest.mark.parametrize("mode", ["weight-only", "channel-only"])
def test_single_axis_modes_fix_the_other_axis(tmp_path: Path, mode: str) -> None:
    result = _run(tmp_path, SearchConfig(population=8, generations=3, mode=mode))
    space = PROBLEM.space()
    X = np.array([c.x for c in result.population])
    widths, sparsities = X[:, : PROBLEM.n_groups], X[:, PROBLEM.n_groups :]
    if mode == "weight-only":
        assert np.all(widths == space.xu[: PROBLEM.n_groups]) and sparsities.max() > 0
    else:
        assert np.all(sparsities == 0) and widths.min() < 10


def test_sequential_mode_fixes_widths_from_the_channel_stage(tmp_path: Path) -> None:
    estimator = PROBLEM.estimator()
    config = SearchConfig(population=8, generations=6, mode="sequential", sequential_widths=3)
    run_search(PROBLEM.space(), PROBLEM.predictor(), estimator, config, tmp_path, progress=False)
    assert estimator.calls == config.generations + 1  # the same estimator budget as a joint search
    gens = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("gen_*.json"))]
    stages = [g["stage"] for g in gens]
    assert stages == ["channel"] * 4 + ["weight"] * 3
    table = {tuple(r) for r in json.loads((tmp_path / "state.json").read_text())["width_table"]}
    assert 1 <= len(table) <= 3
    for g in gens[4:]:
        for c in g["evaluated"]:
            assert tuple(c["x"][: PROBLEM.n_groups]) in table
    assert all(c["x"][PROBLEM.n_groups :] == [0] * PROBLEM.n_layers for c in gens[0]["evaluated"])


def test_budget_reports_best_candidate_and_rejects_impossible_budget(tmp_path: Path) -> None:
    budget = 0.5
    result = _run(tmp_path / "ok", SearchConfig(population=8, generations=4, latency_budget_ms=budget))
    best = result.best_under_budget
    assert best is not None and best.latency_ms <= budget
    assert best.error == min(c.error for c in result.population if c.latency_ms <= budget)
    assert json.loads((tmp_path / "ok" / "front.json").read_text())["best_under_budget"]["x"] == list(best.x)

    estimator = PROBLEM.estimator()
    with pytest.raises(SearchError, match=r"below the smallest latency .* \(0\.\d+ ms predicted\)"):
        run_search(
            PROBLEM.space(),
            PROBLEM.predictor(),
            estimator,
            SearchConfig(population=8, generations=2, latency_budget_ms=0.01),
            tmp_path / "bad",
            progress=False,
        )
    assert estimator.calls == 0  # refused before any estimator time is spent


def test_run_directory_guards(tmp_path: Path) -> None:
    _run(tmp_path)
    with pytest.raises(SearchError, match="already holds a search"):
        _run(tmp_path)
    with pytest.raises(SearchError, match="population=8, not 10"):
        run_search(
            PROBLEM.space(),
            PROBLEM.predictor(),
            PROBLEM.estimator(),
            SearchConfig(population=10, generations=4, seed=3),
            tmp_path,
            resume=True,
            progress=False,
        )
    # Resuming a finished run just reports it again (a new budget is allowed: it only changes the report).
    again = run_search(
        PROBLEM.space(),
        PROBLEM.predictor(),
        PROBLEM.estimator(),
        SearchConfig(population=8, generations=4, seed=3, latency_budget_ms=1.0),
        tmp_path,
        resume=True,
        progress=False,
    )
    assert again.best_under_budget is not None


class _Interrupting:
    """Estimator that raises on its ``stop_at``-th call (a Ctrl-C in the middle of a generation)."""

    def __init__(self, stop_at: int) -> None:
        self.inner, self.stop_at, self.calls = PROBLEM.estimator(), stop_at, 0

    def evaluate(self, X: np.ndarray) -> np.ndarray:
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.inner.evaluate(X)


@pytest.mark.parametrize("mode", ["joint", "sequential"])
def test_resume_after_interrupt_gives_the_uninterrupted_front(tmp_path: Path, mode: str) -> None:
    config = SearchConfig(population=8, generations=5, seed=5, mode=mode)
    full = _run(tmp_path / "full", config)
    for stop_at in (2, 4):  # inside stage 1, and (sequential) at the first generation of stage 2
        out = tmp_path / f"cut{stop_at}"
        with pytest.raises(KeyboardInterrupt):
            run_search(PROBLEM.space(), PROBLEM.predictor(), _Interrupting(stop_at), config, out, progress=False)
        assert json.loads((out / "state.json").read_text())["gen"] == stop_at - 2
        resumed = run_search(
            PROBLEM.space(), PROBLEM.predictor(), PROBLEM.estimator(), config, out, resume=True, progress=False
        )
        assert resumed.front == full.front and resumed.population == full.population


class _WrongShape:
    def predict(self, X: np.ndarray) -> np.ndarray:
        return np.ones(len(X) + 1)


def test_bad_interfaces_give_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(SearchError, match="latency predictor returned 9 values for 8 candidates"):
        run_search(PROBLEM.space(), _WrongShape(), PROBLEM.estimator(), SMALL, tmp_path / "a", progress=False)
    with pytest.raises(SearchError, match="has no evaluate"):
        run_search(PROBLEM.space(), PROBLEM.predictor(), object(), SMALL, tmp_path / "b", progress=False)
    fixed = PlainSpace((3, 3), (3, 3), (True, False))
    with pytest.raises(SearchError, match="nothing to search"):
        run_search(fixed, PROBLEM.predictor(), PROBLEM.estimator(), SMALL, tmp_path / "c", progress=False)


# ---------------------------------------------------------------- report


def test_report_table_and_plot(tmp_path: Path) -> None:
    result = _run(tmp_path, SearchConfig(population=8, generations=3, latency_budget_ms=0.6))
    table = front_table(result).splitlines()
    assert len(table) >= len(result.front) + 2 and "latency ms" in table[0]
    assert any("*" in line for line in table[1:])  # the best candidate under budget is marked
    png = plot_search(tmp_path)
    assert png == tmp_path / "front.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_arch_summary_of_a_real_arch_dict() -> None:
    from latprune.report import arch_summary

    text = arch_summary({"widths": [1.0, 0.5], "sparsities": [0.0, 0.6, 0.3]})
    assert text == "width mean 0.75 min 0.5, sparsity mean 0.30 max 0.6"


def test_search_package_imports_no_torch_model_or_kernel() -> None:
    """STYLE: search/ sees only integer vectors and the two interfaces, so it must not import the heavy stages."""
    import ast

    import latprune.search

    banned = ("torch", "latprune.models", "latprune.engine", "latprune.supernet", "latprune.latency", "latprune.space")
    for path in Path(latprune.search.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.startswith(banned)], f"{path.name} imports {names}"


def test_uniform_selection_keeps_slow_models_that_standard_selection_loses(tmp_path: Path) -> None:
    """JCW Fig. 7 in miniature: with a noisy error estimate, standard NSGA-II drifts to the fast end."""
    noisy = SyntheticProblem(n_groups=4, n_layers=8, seed=0, noise=0.05)
    spread = {}
    for selection in ("standard", "uniform"):
        lat = []
        for seed in (0, 1):
            cfg = SearchConfig(population=16, generations=25, selection=selection, seed=seed)
            lat += [c.latency_ms for c in _run(tmp_path / f"{selection}{seed}", cfg, noisy).population]
        spread[selection] = (float(np.median(lat)), float(np.max(lat)))
    assert spread["uniform"][1] > 1.2 * spread["standard"][1]  # measured: 1.26 ms vs 0.71 ms


def test_importing_and_running_the_search_leaves_torch_unloaded(tmp_path: Path) -> None:
    """The import boundary, checked where it matters: a fresh process that imports and runs the search."""
    code = textwrap.dedent(
        f"""
        import sys
        import latprune.search
        from latprune.search import SearchConfig, run_search
        from latprune.search.synthetic import SyntheticProblem

        p = SyntheticProblem(n_groups=2, n_layers=3)
        run_search(p.space(), p.predictor(), p.estimator(), SearchConfig(population=4, generations=1),
                   {str(tmp_path / "run")!r}, progress=False)
        sys.exit(3 if "torch" in sys.modules else 0)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode() or "torch was imported"


class _RandomSearch:
    """A second algorithm for the protocol: random batches, keeping the non-dominated candidates seen so far."""

    def __init__(self, space: DecisionSpace, seed: int, state: dict | None = None) -> None:
        self.space, self.rng = space, np.random.default_rng(seed)
        self.Z = np.empty((0, space.n_dec), dtype=np.int64)
        self.F = np.empty((0, 2))
        self.batch: np.ndarray | None = None
        if state is not None:
            self.rng.bit_generator.state = state["rng"]
            self.Z, self.F = np.asarray(state["Z"], dtype=np.int64).reshape(-1, space.n_dec), np.asarray(state["F"])

    @classmethod
    def create(cls, space: DecisionSpace, config: SearchConfig, seed: int) -> _RandomSearch:
        return cls(space, seed)

    @classmethod
    def restore(cls, space: DecisionSpace, config: SearchConfig, seed: int, state: dict) -> _RandomSearch:
        return cls(space, seed, state)

    def ask(self) -> np.ndarray:
        self.batch = self.rng.integers(self.space.lower, self.space.upper + 1, size=(4, self.space.n_dec))
        return self.batch

    def tell(self, F: np.ndarray) -> None:
        Z, F = np.vstack([self.Z, self.batch]), np.vstack([self.F, F]).reshape(-1, 2)
        keep = pareto_front(F[:, 0], F[:, 1])
        self.Z, self.F = Z[keep], F[keep]

    def population(self) -> tuple[np.ndarray, np.ndarray]:
        return self.Z, self.F

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "Z": self.Z.tolist(), "F": self.F.tolist()}


def test_a_registered_algorithm_runs_in_the_driver_and_resumes(tmp_path: Path) -> None:
    """Beside NSGA-II, any registered algorithm gets run folders, generation files, resume and the front."""
    register_algorithm("random-test", description="random batches (a test)")(_RandomSearch)
    try:
        assert "nsga2" in list_algorithms() and "random-test" in list_algorithms()
        config = SearchConfig(population=4, generations=4, seed=2, algorithm="random-test")
        full = _run(tmp_path / "full", config)
        assert len(sorted((tmp_path / "full").glob("gen_*.json"))) == 5
        assert [c.x for c in full.front] == [c.x for c in full.population]  # it keeps only non-dominated ones
        with pytest.raises(KeyboardInterrupt):
            run_search(PROBLEM.space(), PROBLEM.predictor(), _Interrupting(3), config, tmp_path / "cut", progress=False)
        resumed = run_search(
            PROBLEM.space(), PROBLEM.predictor(), PROBLEM.estimator(), config, tmp_path / "cut", resume=True,
            progress=False,
        )  # fmt: skip
        assert resumed.front == full.front
        with pytest.raises(SearchError, match="started with algorithm='random-test'"):
            nsga = dataclasses.replace(config, algorithm="nsga2")
            run_search(PROBLEM.space(), PROBLEM.predictor(), PROBLEM.estimator(), nsga, tmp_path / "cut", resume=True)
    finally:
        _ALGORITHMS.pop("random-test", None)
    with pytest.raises(SearchError, match="Unknown search algorithm 'random-test'"):
        SearchConfig(algorithm="random-test")


def test_a_run_recorded_before_the_protocol_still_resumes_and_finishes(tmp_path: Path) -> None:
    """state.json without "population", and a config without "algorithm", as written before the protocol."""
    full = _run(tmp_path / "full")
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "full", old)
    state = json.loads((old / "state.json").read_text())
    del state["population"], state["identity"]["config"]["algorithm"]
    (old / "state.json").write_text(json.dumps(state))
    resumed = run_search(PROBLEM.space(), PROBLEM.predictor(), PROBLEM.estimator(), SMALL, old, resume=True)
    assert resumed.front == full.front and resumed.population == full.population
