"""`latprune demo`: the quick start's main job (train, prune, fine-tune, measure)."""

from __future__ import annotations

import argparse
from pathlib import Path

from latprune.demo import DemoConfig, run_demo


def _demo(args: argparse.Namespace) -> int:
    cfg = DemoConfig(
        out_dir=Path(args.out),
        width=args.width,
        sparsity=args.sparsity,
        scheme=args.scheme,
        finetune_epochs=args.finetune_epochs,
        threads=args.threads,
        device=args.device,
    )
    run_demo(cfg)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = DemoConfig()
    p = sub.add_parser(
        "demo",
        help="Train ResNet20 on Fashion-MNIST, prune it, and measure the speed-up on this CPU.",
        description="The quick start's main job: a short dense baseline, a group-of-4 pruning plan, a masked "
        "fine-tune, then both models compiled by latprune's engine and timed against ONNX Runtime and PyTorch. "
        "Re-running it resumes from the finished stages.",
    )
    p.add_argument("--out", default=str(d.out_dir), help=f"Run folder (default {d.out_dir}).")
    p.add_argument("--width", type=float, default=d.width, help=f"Channel width kept (default {d.width}).")
    p.add_argument("--sparsity", type=float, default=d.sparsity, help=f"Weight sparsity (default {d.sparsity}).")
    p.add_argument("--scheme", default=d.scheme, help=f"Weight-sparsity scheme (default {d.scheme}).")
    p.add_argument(
        "--finetune-epochs", type=int, default=d.finetune_epochs, help="Epochs of masked fine-tuning (default 1)."
    )
    p.add_argument("--threads", type=int, default=d.threads, help="Threads for the latency measurement (default 1).")
    p.add_argument("--device", choices=("cpu", "cuda"), default=d.device, help="Where training runs (default cpu).")
    p.set_defaults(func=_demo)
