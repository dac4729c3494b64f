"""`latprune search`: flags, budget parsing, and the command end to end on a synthetic problem."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from latprune.cli import _parsers, _search, build_parser, main
from latprune.errors import ArgumentError
from latprune.pipeline import _search_inputs
from latprune.search import PRESETS
from latprune.search.synthetic import SyntheticProblem


def _search_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["search"]


def test_every_search_flag_has_help() -> None:
    for action in _search_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and len(action.help) > 15, action.option_strings


@pytest.mark.parametrize(("text", "ms"), [("2.5ms", 2.5), ("2.5", 2.5), ("2500us", 2.5), ("0.0025s", 2.5)])
def test_parse_latency(text: str, ms: float) -> None:
    assert _parsers.parse_latency(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["fast", "-1ms", "0", "2.5 min"])
def test_parse_latency_rejects_nonsense(text: str) -> None:
    with pytest.raises(ArgumentError, match="latency budget"):
        _parsers.parse_latency(text)


def test_flags_override_the_preset() -> None:
    args = _search_parser().parse_args(
        ["--checkpoint", "c", "--profile", "p", "--out", "o", "--preset", "paper", "--generations", "7",
         "--mode", "sequential", "--latency-budget", "3ms"]
    )  # fmt: skip
    cfg = _search.search_config_from_args(args)
    assert (cfg.population, cfg.generations, cfg.mode, cfg.latency_budget_ms) == (64, 7, "sequential", 3.0)


def test_presets_name_existing_supernet_schedules() -> None:
    from latprune.supernet import SupernetConfig

    for preset in PRESETS.values():
        SupernetConfig.preset(preset.supernet_preset)
    paper = SupernetConfig.preset(PRESETS["paper"].supernet_preset)
    assert (paper.channel_epochs, paper.weight_epochs) == (10, 20)


@pytest.fixture
def synthetic_inputs(monkeypatch: pytest.MonkeyPatch) -> SyntheticProblem:
    """Replace the model/profile/super-net glue with a synthetic problem (the rest of the command is real)."""
    problem = SyntheticProblem(n_groups=3, n_layers=4, seed=2)

    def fake(job: object) -> SimpleNamespace:
        return SimpleNamespace(
            space=problem.space(),
            predictor=problem.predictor(),
            estimator=problem.estimator(),
            meta={"model": "synthetic"},
        )

    monkeypatch.setattr(_search_inputs, "search_inputs", fake)
    return problem


def test_search_command_end_to_end(
    tmp_path: Path, synthetic_inputs: SyntheticProblem, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["search", "--checkpoint", "c.pt", "--profile", "p.json", "--out", str(out), "--population", "8",
            "--generations", "3", "--latency-budget", "0.6ms", "--seed", "1"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "latency ms" in text and "Best under 0.6 ms" in text and "front.json" in text
    assert (out / "front.png").stat().st_size > 0 and len(list(out.glob("gen_*.json"))) == 4
    assert json.loads((out / "search.json").read_text())["meta"] == {"model": "synthetic"}
    # A second run into the same folder needs --resume; with it, the finished run is reported again.
    assert main(argv) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main([*argv, "--resume"]) == 0


def test_impossible_budget_is_one_sentence(
    tmp_path: Path, synthetic_inputs: SyntheticProblem, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["search", "--checkpoint", "c.pt", "--profile", "p.json", "--out", str(tmp_path / "r"),
            "--latency-budget", "1us"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latprune search: error: The latency budget 0.001 ms is below the smallest latency")
    assert err.count("\n") == 0 and "Traceback" not in err


@pytest.mark.slow
def test_search_command_with_the_real_model_profile_and_supernet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real glue: a zoo checkpoint, a profile of its space (FLOP-like table values, this machine's fingerprint)
    and the super-net estimator on a tiny Fashion-MNIST subset."""
    import numpy as np

    from latprune.data import DataConfig, find_dataset_root
    from latprune.engine.fingerprint import current_fingerprint
    from latprune.errors import DataError
    from latprune.latency.grid import GridConfig, plan_grids
    from latprune.latency.profile import AdditiveTerm, LatencyProfile, LatencyTable, save_profile
    from latprune.models import ModelSpec
    from latprune.space import SearchSpace
    from latprune.train import checkpoint_meta
    from latprune.train.checkpoint import atomic_torch_save

    try:
        find_dataset_root("fashion-mnist")
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    spec = ModelSpec("resnet20", num_classes=10, in_channels=1, input_size=28, width_mult=0.25)
    model = spec.build(seed=0)
    ckpt = checkpoint_meta(spec, DataConfig(name="fashion-mnist", val_per_class=20)) | {
        "state_dict": model.state_dict(), "epoch": 0, "metrics": {},
    }  # fmt: skip
    atomic_torch_save(tmp_path / "parent.pt", ckpt)
    space = SearchSpace.from_model(model, 28, 1, scheme="group4")
    tables = []
    for sig, grid in plan_grids(space, GridConfig(n_channels=2, n_sparsity=2), np.random.default_rng(0)):
        ci, co, sp = np.meshgrid(grid.cin, grid.cout, grid.sparsity, indexing="ij")  # (I, J, K) each
        ci = co if grid.tied else ci
        tables.append(LatencyTable(sig, grid, (1e-4 * ci * co * (1.0 - sp) + 1e-3).astype(np.float64)))
    profile = LatencyProfile(
        current_fingerprint(), 1, spec, "group4", tuple(tables), AdditiveTerm(0.01, 1.0),
        2, 2, 0.0,
    )  # fmt: skip
    save_profile(profile, tmp_path / "profile.json")

    argv = ["search", "--model", "resnet20", "--checkpoint", str(tmp_path / "parent.pt"), "--data", "fashion-mnist",
            "--profile", str(tmp_path / "profile.json"), "--out", str(tmp_path / "run"), "--population", "4",
            "--generations", "1", "--supernet-classes", "2", "--supernet-train-per-class", "16",
            "--supernet-val-per-class", "8", "--bn-images", "16", "--supernet-batch-size", "16",
            "--force-profile"]  # fmt: skip  # other engineers rebuild the engine while tests run
    assert main(argv) == 0, capsys.readouterr().err
    run = tmp_path / "run"
    gen1 = json.loads((run / "gen_0001.json").read_text())
    assert set(gen1["population"][0]["arch"]) == {"widths", "sparsities", "schemes"}
    assert {"supernet_train_s", "bn_recalib_s", "eval_s"} <= set(gen1["timing_s"]["estimator_phases"])
    meta = json.loads((run / "search.json").read_text())["meta"]
    assert meta["model"] == "resnet20" and meta["supernet"]["bn_images"] == 16
    assert "Pareto front of" in capsys.readouterr().out


def test_completed_calls_counts_generations_up_to_the_saved_state(tmp_path: Path) -> None:
    from latprune.pipeline import completed_calls
    from latprune.search import SearchConfig, run_search

    assert completed_calls(tmp_path) == 0
    problem = SyntheticProblem(n_groups=2, n_layers=3)
    run_search(problem.space(), problem.predictor(), problem.estimator(), SearchConfig(population=4, generations=3),
               tmp_path, progress=False)  # fmt: skip
    assert completed_calls(tmp_path) == 4
    (tmp_path / "gen_0009.json").write_text("{}")  # written by a generation that died before its state was saved
    assert completed_calls(tmp_path) == 4
