"""`latprune run` end to end on a tiny parent and tiny Fashion-MNIST-shaped files, its resume, and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from latprune.cli import main
from latprune.data import DataConfig
from latprune.errors import LatpruneError
from latprune.pipeline import RunConfig, RunReport, run_pipeline
from latprune.supernet import SupernetConfig
from latprune.train import TrainConfig, train_zoo_model

from helpers import cost_model_profile

TINY_SUPERNET = SupernetConfig(
    channel_epochs=1, weight_epochs=1, classes=None, train_per_class=6, val_per_class=2, batch_size=16, bn_images=16,
    eval_batch_size=64,
)  # fmt: skip


@pytest.fixture(scope="module")
def parent(tmp_path_factory, fake_fashion_mnist) -> Path:
    """A 1-epoch resnet20 (width 0.25) parent on 300 fake images, with a 2-per-class validation split."""
    base = tmp_path_factory.mktemp("pipeline")
    fake_fashion_mnist(base / "data", n_train=300, n_test=40)
    mp = pytest.MonkeyPatch()
    mp.setenv("LATPRUNE_DATA", str(base / "data"))
    result = train_zoo_model(
        "resnet20",
        DataConfig("fashion-mnist", val_per_class=2),
        TrainConfig(epochs=1, batch_size=32),
        base / "parent",
        width_mult=0.25,
        show_progress=False,
    )
    yield result.checkpoint_path
    mp.undo()


@pytest.fixture(scope="module")
def profile(parent) -> Path:
    """A latency profile of the parent's search space on this device, with tables from a cost model, not timings."""
    return cost_model_profile(parent, parent.parent / "profile.json")


@pytest.fixture
def tiny(monkeypatch, parent):
    monkeypatch.setenv("LATPRUNE_DATA", str(parent.parent.parent / "data"))
    monkeypatch.setitem(__import__("latprune.supernet._config", fromlist=["_PRESETS"])._PRESETS, "quick", TINY_SUPERNET)


def _config(out: Path, parent: Path, profile: Path, **changes) -> RunConfig:
    values = dict(
        out_dir=out, checkpoint=parent, profile=profile, population=4, generations=1, top_k=2, finetune_epochs=1,
        timing_runs=3,
    )  # fmt: skip
    return RunConfig(**(values | changes))


def test_run_end_to_end_writes_report_plot_and_exports(tmp_path, tiny, parent, profile, capsys):
    report = run_pipeline(_config(tmp_path / "run", parent, profile))
    printed = capsys.readouterr().out
    run = tmp_path / "run"
    assert [r.name for r in report.rows] == ["dense", "m0", "m1"]
    dense, *pruned = report.rows
    assert dense.speedup_vs_dense["engine"] == 1.0 and dense.predicted_ms is None
    for r in pruned:
        assert r.engine_ms > 0 and r.predicted_ms > 0 and 0.0 <= r.test_acc <= 1.0
        assert r.nonzero_params < dense.nonzero_params
        assert r.speedup_vs_dense["onnxruntime"] == pytest.approx(dense.latency_ms["onnxruntime"] / r.engine_ms)
        assert r.export_bytes and r.export_bytes > 0
        assert (run / "models" / r.name / "export" / "model.onnx").is_file()
    assert (
        "vs ORT" in printed and "report: " in printed and "[8/8] report" in printed and "profile: done" not in printed
    )
    saved = json.loads((run / "report.json").read_text())
    assert saved["rows"][1]["name"] == "m0" and saved["threads"] == 1
    load = json.loads((run / "measure.json").read_text())["load"]  # busy-machine check of the timings
    assert 0 < load["cpu_ratio"] <= 1 and load["spread"] >= 0 and (saved["load_warning"] is not None) == load["busy"]
    assert (run / "pareto.png").stat().st_size > 10_000
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html and "m1" in html
    status = json.loads((run / "status.json").read_text())
    assert all(status["stages"][s]["done"] for s in ("baseline", "profile", "search", "retrain", "measure", "report"))
    assert RunReport.load(run) == report


def test_a_killed_run_resumes_without_redoing_finished_work(tmp_path, tiny, parent, profile, monkeypatch, capsys):
    import latprune.train as train_pkg

    real, calls = train_pkg.finetune, []

    def dies_on_second_model(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C while m1 was training
        return real(*args, **kwargs)

    monkeypatch.setattr(train_pkg, "finetune", dies_on_second_model)
    cfg = _config(tmp_path / "run", parent, profile, export=False)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline(cfg)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["current"] == "retrain" and "done" not in status["stages"]["retrain"]
    m0 = tmp_path / "run" / "models" / "m0" / "finetune" / "checkpoint.pt"
    before = m0.stat().st_mtime_ns

    monkeypatch.setattr(train_pkg, "finetune", real)
    capsys.readouterr()
    report = run_pipeline(cfg)
    printed = capsys.readouterr().out
    assert "search: done earlier" in printed and "profile: done earlier" in printed
    assert m0.stat().st_mtime_ns == before  # the finished fine-tune was reloaded, not redone
    assert len(report.rows) == 3

    with pytest.raises(LatpruneError, match="population=4, not 6"):
        run_pipeline(_config(tmp_path / "run", parent, profile, population=6))


def test_impossible_budget_is_one_sentence(tmp_path, tiny, parent, profile, capsys):
    argv = ["run", "--checkpoint", str(parent), "--profile", str(profile), "--out", str(tmp_path / "run"),
            "--population", "4", "--generations", "1", "--latency-budget", "0.000001ms", "--no-export"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("latprune run: error:") and "budget" in err and err.count("\n") == 0


def test_a_profile_taken_with_other_threads_is_refused(tmp_path, tiny, parent, profile, capsys):
    argv = ["run", "--checkpoint", str(parent), "--profile", str(profile), "--out", str(tmp_path / "run"),
            "--threads", "2", "--no-export"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "measured with 1 thread(s), but this run uses 2" in err and err.count("\n") == 0
    assert not (tmp_path / "run" / "search").exists()


def test_bad_flags_fail_before_any_work(tmp_path, capsys):
    assert main(["run", "--out", str(tmp_path), "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt' does not exist" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path), "--checkpoint", str(tmp_path)]) == 2  # a folder without checkpoint.pt
    assert "does not exist" in capsys.readouterr().err
    assert main(["run", "--out", str(tmp_path), "--profile-grid", "8"]) == 2
    assert "--profile-grid '8'" in capsys.readouterr().err
    assert not (tmp_path / "status.json").exists()


def test_demo_uses_the_shipped_parent_and_the_quick_preset(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("latprune.cli._demo.run_pipeline", lambda cfg: seen.setdefault("cfg", cfg))
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    assert main(["demo", "--out", str(tmp_path / "demo"), "--threads", "2"]) == 0
    cfg = seen["cfg"]
    assert cfg.preset == "quick" and cfg.threads == 2 and cfg.model is None  # None: the checkpoint's, resnet20
    assert cfg.checkpoint == Path("benchmarks/results/resnet20-fashion-mnist.pt")
    assert torch.load(cfg.checkpoint, map_location="cpu", weights_only=True)["model"] == "resnet20"
