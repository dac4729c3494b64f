"""`latprune demo` end to end on tiny Fashion-MNIST-shaped files: train, prune, fine-tune, compile, time, report."""

from __future__ import annotations

import json
from dataclasses import replace

from latprune.cli import main
from latprune.data import DataConfig
from latprune.demo import DemoConfig, run_demo
from latprune.train import TrainConfig


def test_demo_runs_end_to_end_and_resumes(tmp_path, monkeypatch, capsys, fake_fashion_mnist):
    import latprune.train.baseline as baseline_mod

    fake_fashion_mnist(tmp_path / "data", n_train=300, n_test=40)
    monkeypatch.setenv("LATPRUNE_DATA", str(tmp_path / "data"))
    tiny = baseline_mod.BaselinePreset(
        "resnet20", DataConfig("fashion-mnist", val_per_class=2), TrainConfig(epochs=1, batch_size=32), tmp_path
    )
    monkeypatch.setitem(baseline_mod.BASELINE_PRESETS, "demo", tiny)
    cfg = DemoConfig(out_dir=tmp_path / "demo", runs=3)
    result = run_demo(cfg)
    printed = capsys.readouterr().out
    dense, pruned = result.rows
    assert pruned.params < 0.5 * dense.params  # width 0.75 and 70% group-of-4 sparsity
    assert all(r.engine_ms > 0 and r.onnxruntime_ms > 0 and 0 <= r.test_acc <= 1 for r in result.rows)
    assert "engine vs ORT dense" in printed and f"report: {result.report_path}" in printed
    report = json.loads(result.report_path.read_text())
    assert [r["name"] for r in report["rows"]] == [dense.name, pruned.name]
    assert result.plot_path.stat().st_size > 10_000
    assert (cfg.out_dir / "pruned" / "plan.json").is_file()

    again = run_demo(replace(cfg, runs=2))  # both training stages are finished: they reload, not retrain
    assert [r.test_acc for r in again.rows] == [r.test_acc for r in result.rows]


def test_demo_flags_reach_the_config(monkeypatch):
    seen = {}
    monkeypatch.setattr("latprune.cli._demo.run_demo", lambda cfg: seen.setdefault("cfg", cfg))
    assert main(["demo", "--width", "0.5", "--sparsity", "0.8", "--out", "x", "--threads", "2"]) == 0
    assert (seen["cfg"].width, seen["cfg"].sparsity, seen["cfg"].threads, str(seen["cfg"].out_dir)) == (
        0.5,
        0.8,
        2,
        "x",
    )


def test_bad_demo_flags_fail_before_any_training(capsys):
    assert main(["demo", "--sparsity", "1.5"]) == 2
    assert "--sparsity is 1.5" in capsys.readouterr().err
    assert main(["demo", "--scheme", "nope"]) == 2
    assert "Unknown sparsity scheme 'nope'" in capsys.readouterr().err
