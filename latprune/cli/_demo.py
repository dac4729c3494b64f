"""`latprune demo`: the quick start's main job, `latprune run` on ResNet20 / Fashion-MNIST with the quick preset."""

from __future__ import annotations

import argparse
from pathlib import Path

from latprune.cli._run import add_run_arguments, run_config_from_args
from latprune.pipeline import run_pipeline

# The trained parent shipped in the repository (benchmarks/train_baseline.py, 30 epochs, 94.39% test accuracy):
# with it the demo spends its minutes on pruning, not on a baseline.
SHIPPED_PARENT = Path("benchmarks/results/resnet20-fashion-mnist.pt")


def _demo(args: argparse.Namespace) -> int:
    default_job = args.model in (None, "resnet20") and args.data in (None, "fashion-mnist")
    if args.checkpoint is None and default_job and SHIPPED_PARENT.is_file():
        print(f"Using the shipped trained parent {SHIPPED_PARENT} (pass --checkpoint to use your own).")
        args.checkpoint = str(SHIPPED_PARENT)
    run_pipeline(run_config_from_args(args))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="The quick start: `latprune run` on ResNet20 / Fashion-MNIST with the quick preset.",
        description="Search, retrain, compile and measure pruned ResNet20s on Fashion-MNIST in about 10 minutes "
        f"on a 2-core CPU, starting from the trained parent shipped in {SHIPPED_PARENT} when it is there (else a "
        "short baseline is trained first). Re-running it resumes from the finished stages.",
    )
    add_run_arguments(p, out="runs/demo")
    p.set_defaults(func=_demo)
