"""Benchmark: the whole pipeline (`latprune run`) on ResNet20 / Fashion-MNIST, joint vs channel-only pruning.

    .venv/bin/python benchmarks/pipeline.py [--preset full] [--modes joint channel-only] [--work runs/bench_pipeline]

Each mode is one `latprune run` from the shipped trained parent (benchmarks/results/resnet20-fashion-mnist.pt) with
the same preset and seed; the runs resume when the script is rerun. Checks issue #7's targets on measured numbers:
at >= 2x measured speed-up over the dense model on ONNX Runtime the accuracy drop is <= 0.5 points, at >= 3x it is
<= 1.5 points. Writes benchmarks/results/pipeline_resnet20.{json,md} and pipeline_resnet20.png (every model of
every mode: measured latency against test accuracy, the dense model on the engine and on ONNX Runtime).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from latprune._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from latprune.engine.isa import cpu_model
from latprune.pipeline import RunConfig, RunReport, run_pipeline
from latprune.report import figure_png

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PARENT = RESULTS / "resnet20-fashion-mnist.pt"
TARGETS = ((2.0, 0.5), (3.0, 1.5))  # (speed-up over dense ONNX Runtime, largest allowed drop in points)


def best_at(report: RunReport, speedup: float) -> dict[str, Any] | None:
    """The most accurate pruned model at or above ``speedup`` (measured, over the dense model on ONNX Runtime)."""
    fast = [r for r in report.rows[1:] if r.speedup_vs_dense["onnxruntime"] >= speedup]
    if not fast:
        return None
    r = max(fast, key=lambda r: r.test_acc)
    return {"name": r.name, "speedup": r.speedup_vs_dense["onnxruntime"], "test_acc": r.test_acc, "drop": r.acc_drop}


def check_targets(reports: dict[str, RunReport]) -> list[dict[str, Any]]:
    rows = []
    for mode, report in reports.items():
        for speedup, max_drop in TARGETS:
            best = best_at(report, speedup)
            met = best is not None and best["drop"] <= max_drop
            rows.append({"mode": mode, "speedup": speedup, "max_drop": max_drop, "best": best, "met": met})
    return rows


def plot(reports: dict[str, RunReport]) -> bytes:

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    dense = next(iter(reports.values())).rows[0]
    for (mode, report), color in zip(
        reports.items(), ("tab:blue", "tab:purple", "tab:brown", "tab:gray"), strict=False
    ):
        pruned = sorted(report.rows[1:], key=lambda r: r.engine_ms)
        ax.plot([r.engine_ms for r in pruned], [100 * r.test_acc for r in pruned], "-o", color=color, label=mode)
    ax.scatter([dense.engine_ms], [100 * dense.test_acc], marker="s", s=70, color="tab:green", label="dense, engine")
    ax.scatter(
        [dense.latency_ms["onnxruntime"]],
        [100 * dense.test_acc],
        marker="D",
        s=70,
        color="tab:orange",
        label="dense, ORT",
    )
    for speedup, max_drop in TARGETS:
        ax.plot([dense.latency_ms["onnxruntime"] / speedup], [100 * dense.test_acc - max_drop], "k+", ms=12)
    ax.set_xscale("log")
    ax.set_xlabel("measured batch-1 latency (ms, log), 1 thread")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ResNet20 / Fashion-MNIST: latprune run (+ = issue #7 targets)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return figure_png(fig, dpi=120)


def markdown(reports: dict[str, RunReport], targets: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Pipeline benchmark: `latprune run` on ResNet20 / Fashion-MNIST",
        "",
        f"{meta['date']}, {meta['cpu']}, load average at the end {meta['load']}; preset `{meta['preset']}`, parent "
        f"{PARENT.name}. Command: `{meta['command']}`.",
        "",
    ]
    for mode, report in reports.items():
        lines += [f"## {mode}", "", "```text", report.table(), "```", ""]
        lines += [f"Stage seconds: {', '.join(f'{k} {v:.0f}' for k, v in report.stage_seconds.items())}.", ""]
    lines += ["## Targets (measured speed-up over the dense model on ONNX Runtime)", ""]
    lines += [
        "| mode | speed-up | allowed drop | best model there | its speed-up | its drop | met |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for t in targets:
        b = t["best"]
        name, speed, drop = ("none that fast", "-", "-")
        if b:
            name, speed, drop = b["name"], f"{b['speedup']:.2f}x", f"{b['drop']:.2f}"
        lines.append(
            f"| {t['mode']} | ≥ {t['speedup']:g}x | ≤ {t['max_drop']:g} | {name} | {speed} | {drop} | "
            f"{'yes' if t['met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="full", help="Pipeline preset (default full).")
    p.add_argument("--modes", nargs="+", default=["joint", "channel-only"], help="Search modes to compare.")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_pipeline"), help="Where the runs go.")
    p.add_argument("--top-k", type=int, default=None, help="Models retrained per mode (default: the preset's).")
    p.add_argument("--finetune-epochs", type=int, default=None, help="Retraining epochs (default: the preset's).")
    p.add_argument("--population", type=int, default=None, help="Search population (default: the preset's).")
    p.add_argument("--generations", type=int, default=None, help="Search generations (default: the preset's).")
    p.add_argument("--results", default=str(RESULTS), help="Folder for the JSON, Markdown and PNG.")
    args = p.parse_args()
    reports = {}
    for mode in args.modes:
        cfg = RunConfig(
            out_dir=Path(args.work) / mode,
            checkpoint=PARENT,
            preset=args.preset,
            mode=mode,
            top_k=args.top_k,
            finetune_epochs=args.finetune_epochs,
            population=args.population,
            generations=args.generations,
        )
        reports[mode] = run_pipeline(cfg)
    targets = check_targets(reports)
    meta = {
        "date": dt.date.today().isoformat(),
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "load": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
        "preset": args.preset,
        "command": "python benchmarks/pipeline.py " + subprocess.list2cmdline(sys.argv[1:]),
    }
    results = Path(args.results)
    atomic_write_json(
        results / "pipeline_resnet20.json",
        {"meta": meta, "targets": targets, "reports": {m: r.to_json() for m, r in reports.items()}},
    )
    atomic_write_text(results / "pipeline_resnet20.md", markdown(reports, targets, meta))
    atomic_write_bytes(results / "pipeline_resnet20.png", plot(reports))
    print(markdown(reports, targets, meta))


if __name__ == "__main__":
    main()
