"""Benchmark: train the dense ResNet20 on Fashion-MNIST to ≥ 93.5% test accuracy in ≤ 30 epochs on the CPU.

Run from the repository root (it resumes from its checkpoint when restarted):

    setsid nohup .venv/bin/python benchmarks/train_baseline.py --threads 1 > benchmarks/results/train_baseline.log &

Writes benchmarks/results/train_baseline.json; the checkpoint stays at runs/baseline/resnet20-fashion-mnist/,
where the search and fine-tuning steps expect it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
from pathlib import Path

import torch

from latprune._io import atomic_write_json
from latprune.engine.isa import cpu_model
from latprune.train import BASELINE_DIR, BASELINE_PRESETS, train_baseline

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train_baseline.json"
TARGET_ACC = 0.935
MAX_EPOCHS = 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--note",
        default="Measured while ~9 other jobs shared the machine's 2 cores; seconds per epoch are pessimistic.",
        help="A sentence stored with the results describing the conditions of this run.",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Torch CPU threads (default: all cores); use 1 on a busy machine, where 2 threads wait on each other.",
    )
    args = parser.parse_args()
    preset = BASELINE_PRESETS["benchmark"]
    assert preset.train.epochs <= MAX_EPOCHS
    result = train_baseline("benchmark", out_dir=ROOT / BASELINE_DIR, resume=True, threads=args.threads)
    history = result.history
    reached = next((int(r["epoch"]) for r in history if r["test_acc"] >= TARGET_ACC), None)
    seconds = [r["train_seconds"] for r in history]
    atomic_write_json(
        RESULTS,
        {
            "benchmark": "train_baseline",
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": preset.model,
            "dataset": preset.data.name,
            "recipe": {**preset.train.to_dict(), "val_per_class": preset.data.val_per_class},
            "machine": {
                "cpu": cpu_model(),
                "logical_cpus": os.cpu_count(),
                "torch_threads": torch.get_num_threads(),
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
            "note": args.note,
            "target_test_acc": TARGET_ACC,
            "final_test_acc": history[-1]["test_acc"],
            "best_test_acc": max(r["test_acc"] for r in history),
            "target_reached_at_epoch": reached,
            "median_train_seconds_per_epoch": statistics.median(seconds),
            "min_train_seconds_per_epoch": min(seconds),
            "epochs": [
                {
                    "epoch": int(r["epoch"]),
                    "train_acc": r["train_acc"],
                    "val_acc": r.get("val_acc"),
                    "test_acc": r["test_acc"],
                    "train_seconds": r["train_seconds"],
                    "eval_seconds": r["eval_seconds"],
                }
                for r in history
            ],
            "checkpoint": str(result.checkpoint_path.relative_to(ROOT)),
        },
    )
    verdict = f"reached {TARGET_ACC:.1%} at epoch {reached}" if reached else f"did NOT reach {TARGET_ACC:.1%}"
    print(f"final test accuracy {history[-1]['test_acc']:.2%}; {verdict}; results: {RESULTS}")


if __name__ == "__main__":
    main()
