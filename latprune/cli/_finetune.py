"""`latprune finetune`: apply a pruning plan to a dense checkpoint and retrain it (masked, ADMM or GMP)."""

from __future__ import annotations

import argparse

from latprune.data import DataConfig, list_datasets
from latprune.errors import ArgumentError
from latprune.prune.plan import PruningPlan
from latprune.train.baseline import format_history_table
from latprune.train.config import DEVICES
from latprune.train.distributed import is_main
from latprune.train.finetune import METHODS, PLAN_NAME, FinetuneConfig, finetune

_D = FinetuneConfig()


def _finetune(args: argparse.Namespace) -> int:
    config = FinetuneConfig(
        method=args.method,
        epochs=args.epochs,
        lr=args.lr,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        momentum=args.momentum,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
        distill=args.distill,
        distill_temperature=args.distill_temperature,
        distill_alpha=args.distill_alpha,
        admm_epochs=args.admm_epochs,
        admm_lr=args.admm_lr,
        rho_init=args.rho_init,
        rho_factor=args.rho_factor,
        rho_max=args.rho_max,
        gmp_start=args.gmp_start,
        gmp_end=args.gmp_end,
        gmp_frequency=args.gmp_frequency,
    )
    split = (args.val_per_class, args.split_seed, args.image_size)
    if args.data is None and split != (DataConfig.val_per_class, DataConfig.split_seed, None):
        raise ArgumentError(
            "--val-per-class, --split-seed and --image-size go with --data (without it the parent's own split is "
            "used); pass --data too, or drop them."
        )
    data = None if args.data is None else DataConfig(args.data, *split)
    result = finetune(args.checkpoint, PruningPlan.load(args.plan), config, args.out, data=data, resume=args.resume)
    if not is_main():  # under torchrun rank 0 reports
        return 0
    print(format_history_table(result.history))
    final = result.final
    accs = ", ".join(f"{k[:-4]} {v:.2%}" for k, v in final.items() if k.endswith("_acc") and k != "train_acc")
    print(
        f"{config.method} fine-tuning done: {accs}; wrote {result.checkpoint_path}, {result.out_dir / PLAN_NAME} "
        f"and {result.metrics_path}"
    )
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = _D
    p = sub.add_parser(
        "finetune",
        help="Apply a pruning plan to a trained checkpoint and retrain it with the zeros held.",
        description="Shrink the dense parent by PLAN and retrain it: 'masked' trains with the plan's weight masks "
        "held; 'admm' first trains --admm-epochs under the ADMM penalty (Zhang et al., 2018) in OUT/admm, "
        "hard-prunes by magnitude, then retrains masked; 'gmp' tightens the masks on Zhu & Gupta's cubic schedule. "
        "Writes OUT/checkpoint.pt (loadable by `latprune eval`), OUT/plan.json and OUT/metrics.json.",
    )
    p.add_argument("--plan", required=True, help="The plan.json to apply (from `latprune prune`).")
    p.add_argument("--checkpoint", required=True, help="The dense parent: a `latprune train` checkpoint or run folder.")
    p.add_argument("--out", required=True, help="Folder for the fine-tuned checkpoint, plan and metrics.")
    p.add_argument(
        "--data",
        default=None,
        help=f"Dataset: one of {', '.join(list_datasets())}, or an image folder (default: the parent's own, "
        "with its validation split).",
    )
    p.add_argument("--method", default=d.method, choices=METHODS, help="How to retrain (see the description above).")
    p.add_argument("--epochs", type=int, default=d.epochs, help="Epochs of masked training (GMP: the whole run).")
    p.add_argument("--lr", type=float, default=d.lr, help="Peak learning rate of the cosine schedule.")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="Images per training step.")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay applied by SGD.")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD (Nesterov) momentum.")
    p.add_argument("--seed", type=int, default=d.seed, help="Seed for shuffling and augmentation.")
    p.add_argument("--distill", action="store_true", help="Distil from the dense parent (soft targets) as well.")
    p.add_argument(
        "--distill-temperature", type=float, default=d.distill_temperature, help="Softmax temperature T (> 0)."
    )
    p.add_argument(
        "--distill-alpha", type=float, default=d.distill_alpha, help="Weight of the soft-target loss, in [0, 1]."
    )
    p.add_argument("--admm-epochs", type=int, default=d.admm_epochs, help="ADMM: epochs under the penalty.")
    p.add_argument("--admm-lr", type=float, default=None, help="ADMM: peak learning rate of the penalty phase (--lr).")
    p.add_argument("--rho-init", type=float, default=d.rho_init, help="ADMM: initial penalty weight rho.")
    p.add_argument("--rho-factor", type=float, default=d.rho_factor, help="ADMM: rho is multiplied by this per epoch.")
    p.add_argument("--rho-max", type=float, default=d.rho_max, help="ADMM: the cap rho grows to.")
    p.add_argument(
        "--gmp-start", type=float, default=d.gmp_start, help="GMP: fraction of all steps where pruning starts."
    )
    p.add_argument("--gmp-end", type=float, default=d.gmp_end, help="GMP: fraction of all steps where it ends.")
    p.add_argument("--gmp-frequency", type=int, default=d.gmp_frequency, help="GMP: steps between two mask updates.")
    p.add_argument(
        "--val-per-class",
        type=int,
        default=DataConfig.val_per_class,
        help="With --data: training images per class held out as the validation split.",
    )
    p.add_argument("--split-seed", type=int, default=DataConfig.split_seed, help="With --data: seed of the val split.")
    p.add_argument("--image-size", type=int, default=None, help="With --data: square size image folders resize to.")
    p.add_argument("--resume", action="store_true", help="Continue the run already in --out where it stopped.")
    p.add_argument("--device", default=d.device, choices=DEVICES, help="Train on the CPU or on a CUDA GPU.")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: all cores; 1 on a busy machine)."
    )
    p.set_defaults(func=_finetune)
