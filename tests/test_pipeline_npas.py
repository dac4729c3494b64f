"""`latprune run --search npas`: phases 2 and 3 end to end on a tiny parent, the measured pick, and resuming."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_pipeline import parent, tiny  # noqa: F401 - module fixtures: the tiny parent and super-net

from latprune.cli import main
from latprune.errors import LatpruneError
from latprune.pipeline import RunConfig, run_pipeline
from latprune.pipeline._config import NPAS_SCHEMES
from latprune.pipeline._npas import method_budget, scheme_mix

#: Relative cost of a layer per scheme at sparsity s (a made-up model: the real tables come from `latprune profile`).
_SPEED = {"dense": 0.0, "group4": 0.9, "block_punched": 0.8, "pattern": 0.6, "unstructured": 0.4, "block_fc": 0.8}


def _profile(checkpoint: Path, path: Path, scale: float) -> Path:
    """A profile of the parent's NPAS space (every scheme per layer) with cost-model tables, ``scale`` ms per unit."""
    from latprune.engine.fingerprint import current_fingerprint
    from latprune.latency.grid import GridConfig, plan_grids
    from latprune.latency.profile import AdditiveTerm, LatencyProfile, LatencyTable, save_profile
    from latprune.models import ModelSpec
    from latprune.space import SearchSpace
    from latprune.train import load_model_from_checkpoint

    model, ckpt = load_model_from_checkpoint(checkpoint)
    spec = ModelSpec.from_dict({"name": ckpt["model"], **ckpt["model_kwargs"]})
    space = SearchSpace.from_model(model, spec.input_size, spec.in_channels, scheme=NPAS_SCHEMES)
    tables = []
    for sig, grid in plan_grids(space, GridConfig(n_channels=2, n_sparsity=2), np.random.default_rng(0)):
        ci, co, sp = np.meshgrid(grid.cin, grid.cout, grid.sparsity, indexing="ij")  # (I, J, K) each
        work = (co if grid.tied else ci * co / 8) * (1 - _SPEED[sig.scheme] * sp) + 10
        tables.append(LatencyTable(sig, grid, (scale * work).astype(np.float64)))
    prof = LatencyProfile(current_fingerprint(), 1, spec, NPAS_SCHEMES, tuple(tables), AdditiveTerm(0, 1), 2, 2, 0)
    return save_profile(prof, path)


def _config(out: Path, checkpoint: Path, profile: Path, **changes) -> RunConfig:
    values = dict(
        out_dir=out, checkpoint=checkpoint, profile=profile, search="npas", latency_budget_ms=60.0, population=8,
        generations=1, finetune_epochs=1, phase3_epochs=2, phase3_per_class=6, shortlist=2, timing_runs=20,
    )  # fmt: skip
    return RunConfig(**(values | changes))


def test_method_budgets_are_equal_and_admm_splits_its_own() -> None:
    assert method_budget("masked", 2) == (2, 1) and method_budget("gmp", 3) == (3, 1)
    assert method_budget("admm", 2) == (1, 1) and method_budget("admm", 5) == (2, 3)
    assert scheme_mix({"schemes": ["dense", "pattern", "pattern"], "sparsities": [0.0, 0.5, 0.3]}) == "pattern x2"


def test_npas_needs_a_budget_and_doubles_the_population(tmp_path, parent):  # noqa: F811
    with pytest.raises(LatpruneError, match="--search npas maximises accuracy under a latency budget"):
        RunConfig(out_dir=tmp_path, checkpoint=parent, search="npas")
    assert RunConfig(out_dir=tmp_path, search="npas", latency_budget_ms=1.0).resolved().population == 32
    assert RunConfig(out_dir=tmp_path).resolved().population == 16
    assert RunConfig(out_dir=tmp_path, search="npas", latency_budget_ms=1.0).schemes == NPAS_SCHEMES


@pytest.mark.slow
def test_run_search_npas_end_to_end(tmp_path, tiny, parent, capsys):  # noqa: F811
    """Phase 2 on per-layer schemes, the pick measured on the engine, phase 3's three short runs, the full
    retraining with the winner, then measure / export / report as the JCW path (budget in fake-table ms: every
    real tiny model measures under it)."""
    profile = _profile(parent, tmp_path / "profile.json", scale=0.01)
    run = tmp_path / "run"
    report = run_pipeline(_config(run, parent, profile))
    printed = capsys.readouterr().out
    assert [r.name for r in report.rows] == ["dense", "m0"]
    m0 = report.rows[1]
    assert m0.engine_ms <= 60.0 and m0.predicted_ms is not None and m0.predicted_ms <= 60.0
    assert "latency budget 60 ms, measured: m0" in report.table() and "(met)" in report.table()
    assert "NPAS (RL controller + TPE)" in printed and "retraining with" in printed and "[2/9] replace" in printed
    assert "the model has none of the ops phase 1 replaces" in printed  # ResNet20: ReLU, 3x3, no SE
    assert json.loads((run / "replace.json").read_text())["applied"] == []
    status = json.loads((run / "status.json").read_text())
    phase3 = status["stages"]["retrain"]["phase3"]["m0"]
    assert set(phase3["short_val_acc"]) == {"masked", "admm", "gmp"} and phase3["chosen"] in phase3["short_val_acc"]
    for method in ("masked", "admm", "gmp"):
        assert (run / "models" / "m0" / "phase3" / method / "checkpoint.pt").is_file()
    shortlist = json.loads((run / "shortlist.json").read_text())
    assert len(shortlist["candidates"]) == 2 and all(c["measured_ms"] > 0 for c in shortlist["candidates"])
    front = json.loads((run / "search" / "front.json").read_text())
    assert front["config"]["algorithm"] == "npas" and front["config"]["latency_budget_ms"] == 60.0
    schemes = {s for c in front["population"] for s in c["arch"]["schemes"]}
    assert len(schemes) >= 3  # layers really chose among the schemes
    assert (run / "models" / "m0" / "export" / "model.onnx").is_file()
    # Resuming with another budget is refused: it is what the search optimised.
    with pytest.raises(LatpruneError, match=r"latency_budget_ms=60\.0, not 50\.0"):
        run_pipeline(_config(run, parent, profile, latency_budget_ms=50.0))


@pytest.mark.slow
def test_a_pick_that_does_not_measure_under_the_budget_is_one_sentence(tmp_path, tiny, parent, capsys):  # noqa: F811
    """Tables 10^4 times too fast: every candidate is predicted under 0.01 ms, none measures under it."""
    profile = _profile(parent, tmp_path / "profile.json", scale=1e-6)
    argv = ["run", "--checkpoint", str(parent), "--profile", str(profile), "--out", str(tmp_path / "run"),
            "--search", "npas", "--latency-budget", "0.01ms", "--population", "8", "--generations", "1",
            "--shortlist", "2", "--timing-runs", "20", "--no-export"]  # fmt: skip
    assert main(argv) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # the lines before it are progress bars
    assert last.startswith("latprune run: error: None of the 2 most accurate candidates predicted under 0.01 ms")


def test_a_run_recorded_before_the_npas_fields_resumes_with_their_defaults(tmp_path) -> None:
    from latprune.pipeline._status import _check_same_run

    now = RunConfig(out_dir=tmp_path).resolved().to_dict()
    old = {k: v for k, v in now.items() if k not in ("search", "scheme", "shortlist", "phase3_epochs", "kernel_sizes")}
    done = {"baseline", "profile", "search"}
    _check_same_run(tmp_path / "status.json", old, now, done)  # an older run: the missing fields had their defaults
    npas = RunConfig(out_dir=tmp_path, search="npas", latency_budget_ms=0.3).resolved().to_dict()
    with pytest.raises(LatpruneError, match="started with search=None, not 'npas'"):
        _check_same_run(tmp_path / "status.json", old | {"latency_budget_ms": 0.3, "population": 32}, npas, done)


def test_the_pick_corrects_for_a_predictor_that_runs_fast_today(monkeypatch) -> None:
    """Every candidate measures 25% over its prediction: the first shortlist all miss the budget, the second, drawn
    under budget / 1.25, fits; the most accurate of those is the pick."""
    import latprune.pipeline._npas as npas_stage
    from latprune.models import create_model
    from latprune.search import Candidate, SearchResult
    from latprune.space import SearchSpace

    model = create_model("resnet20", num_classes=10, in_channels=1, input_size=16, width_mult=0.25)
    space = SearchSpace.from_model(model, 16, 1, scheme="group4")
    rng = np.random.default_rng(0)
    X = space.sample_x(rng, 12)
    latency = np.linspace(0.5, 1.0, 12)  # predicted ms; the budget is 1.0
    error = np.linspace(0.10, 0.21, 12)[::-1]  # the slower, the more accurate
    pop = tuple(
        Candidate(tuple(int(v) for v in x), float(t), float(e)) for x, t, e in zip(X, latency, error, strict=True)
    )
    result = SearchResult(front=pop, population=pop, generations=1, out_dir=Path("."))
    by_plan = {}

    def fake_measure(net, plans, in_channels, size, threads, runs):
        return [by_plan[id(p)] for p in plans]

    real_plan = npas_stage.plan_from_arch

    def plan_and_remember(net, space_, arch, model_spec=None):
        plan = real_plan(net, space_, arch, model_spec=model_spec)
        x = tuple(int(v) for v in space_.encode(arch))
        by_plan[id(plan)] = 1.25 * next(c.latency_ms for c in pop if c.x == x)
        return plan

    monkeypatch.setattr(npas_stage, "measure_plans", fake_measure)
    monkeypatch.setattr(npas_stage, "plan_from_arch", plan_and_remember)
    pick, plan, rows = npas_stage.pick_measured(model, space, result, 1.0, 3, 1, 10)
    assert len(rows) == 6 and all(r["measured_ms"] > 1.0 for r in rows[:3])  # round 1: the 3 slowest all miss
    assert pick is not None and plan is not None and pick.latency_ms <= 1.0 / 1.25 + 1e-9
    assert pick.error == min(c.error for c in pop if c.latency_ms <= 1.0 / 1.25 + 1e-9)
