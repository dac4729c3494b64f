"""`latprune train` and `latprune eval`: train a zoo model on a dataset, or evaluate a checkpoint."""

from __future__ import annotations

import argparse

from latprune.data import DataConfig, list_datasets
from latprune.models import list_models
from latprune.train import TrainConfig, evaluate_checkpoint, format_summary, train_zoo_model
from latprune.train.config import DEVICES, SCHEDULES
from latprune.train.distributed import is_main

_DEFAULTS = TrainConfig()
_DATA_HELP = f"Dataset: one of {', '.join(list_datasets())}, or a folder with one subfolder of images per class."


def _train(args: argparse.Namespace) -> int:
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=not args.no_nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_epochs=args.warmup,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        device=args.device,
        threads=args.threads,
    )
    data = DataConfig(args.data, args.val_per_class, args.split_seed, args.image_size)
    result = train_zoo_model(args.model, data, config, args.out, width_mult=args.width_mult, resume=args.resume)
    if is_main():  # under torchrun every rank holds the same result; one summary is enough
        print(format_summary(result))
    return 0


def _eval(args: argparse.Namespace) -> int:
    results = evaluate_checkpoint(
        args.checkpoint,
        args.data,
        splits=args.split,
        device=args.device,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    print(f"{'dataset':<16} {'split':<6} {'images':>7} {'loss':>8} {'accuracy':>9}")
    for r in results:
        print(f"{r.dataset:<16} {r.split:<6} {r.images:>7} {r.loss:>8.4f} {r.accuracy:>9.2%}")
    print(f"checkpoint: {results[0].checkpoint}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    d = _DEFAULTS
    p = sub.add_parser(
        "train",
        help="Train a zoo model on a dataset, with a checkpoint every epoch.",
        description="Train a zoo model from scratch with SGD + Nesterov, writing OUT/checkpoint.pt after every epoch "
        "and OUT/metrics.json; the validation split is carved from the training set, the test set is only reported.",
    )
    p.add_argument("--model", default="resnet20", choices=list_models(), help="Which zoo model to train.")
    p.add_argument("--data", default="fashion-mnist", help=_DATA_HELP)
    p.add_argument("--out", required=True, help="Folder for the checkpoint and metrics, e.g. runs/NAME.")
    p.add_argument("--epochs", type=int, default=d.epochs, help="Number of passes over the training set.")
    p.add_argument("--resume", action="store_true", help="Continue the run already in --out from its last epoch.")
    p.add_argument("--device", default=d.device, choices=DEVICES, help="Train on the CPU or on a CUDA GPU.")
    p.add_argument("--seed", type=int, default=d.seed, help="Seed for weights, shuffling and augmentation.")
    p.add_argument("--lr", type=float, default=d.lr, help="Peak learning rate of the schedule.")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="Images per step, all processes together.")
    p.add_argument("--momentum", type=float, default=d.momentum, help="SGD momentum.")
    p.add_argument("--no-nesterov", action="store_true", help="Use classic momentum instead of Nesterov momentum.")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay, help="L2 weight decay applied by SGD.")
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="Learning-rate schedule over all steps.")
    p.add_argument("--warmup", type=float, default=d.warmup_epochs, help="Epochs of linear learning-rate warm-up.")
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing, help="Label smoothing in [0, 1).")
    p.add_argument("--width-mult", type=float, default=1.0, help="Scale every layer's channel count by this factor.")
    p.add_argument(
        "--val-per-class",
        type=int,
        default=DataConfig.val_per_class,
        help="Training images per class held out as the validation split (0 for none).",
    )
    p.add_argument("--split-seed", type=int, default=DataConfig.split_seed, help="Seed choosing the validation images.")
    p.add_argument("--image-size", type=int, default=None, help="Square size image folders are resized to (224).")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: all cores; 1 on a busy machine)."
    )
    p.set_defaults(func=_train)

    e = sub.add_parser(
        "eval",
        help="Evaluate a checkpoint's loss and accuracy.",
        description="Evaluate a checkpoint written by `latprune train` on its dataset's test split (or others).",
    )
    e.add_argument("--checkpoint", required=True, help="A checkpoint file, or a run folder holding checkpoint.pt.")
    e.add_argument("--data", default=None, help=_DATA_HELP + " Default: the dataset the checkpoint was trained on.")
    e.add_argument(
        "--split",
        nargs="+",
        default=["test"],
        choices=("train", "val", "test"),
        help="Which splits to evaluate; val is the split held out during training.",
    )
    e.add_argument("--device", default="cpu", choices=DEVICES, help="Evaluate on the CPU or on a CUDA GPU.")
    e.add_argument("--batch-size", type=int, default=d.eval_batch_size, help="Images per evaluation batch.")
    e.add_argument(
        "--threads", type=int, default=None, help="CPU threads for torch (default: all cores; 1 on a busy machine)."
    )
    e.set_defaults(func=_eval)
