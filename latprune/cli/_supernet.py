"""`latprune validate-accuracy`: check the super-net estimator against standalone fine-tuning (JCW Fig. 6)."""

from __future__ import annotations

import argparse


def _validate(args: argparse.Namespace) -> int:
    from latprune.supernet import ValidateConfig, validate_accuracy

    config = ValidateConfig(
        k=args.k,
        epochs=args.epochs,
        train_per_class=args.train_per_class or None,
        lr=args.lr,
        batch_size=args.batch_size,
        weight_decay=args.weight_decay,
        seed=args.seed,
    )
    result = validate_accuracy(args.search, config, device=args.device, progress=not args.quiet)
    print(result.table())
    print(f"Wrote {result.json_path} and {result.png_path}.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    desc = (
        "Check how well a search's super-net ranked its candidates: fine-tune k candidates of the last generation "
        "standalone (plan, apply, masked training), score them on the same validation images, and report the "
        "Kendall tau and Spearman rho between estimated and standalone accuracy (JCW Fig. 6)."
    )
    p = sub.add_parser(
        "validate-accuracy", help="Rank-correlate the super-net's estimates with fine-tuned accuracy.", description=desc
    )
    defaults = _defaults()
    p.add_argument("--search", required=True, help="Run directory of a finished `latprune search` (its --out).")
    p.add_argument(
        "--k", type=int, default=defaults.k, help="How many candidates to fine-tune, spread evenly over latency."
    )
    p.add_argument("--epochs", type=int, default=defaults.epochs, help="Fine-tuning epochs per candidate.")
    p.add_argument(
        "--train-per-class",
        type=int,
        default=defaults.train_per_class,
        help="Training images per class for fine-tuning; 0 uses every training image of the super-net's classes.",
    )
    p.add_argument(
        "--lr", type=float, default=defaults.lr, help="Peak learning rate of the cosine fine-tuning schedule."
    )
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="Fine-tuning batch size.")
    p.add_argument(
        "--weight-decay", type=float, default=defaults.weight_decay, help="SGD weight decay for fine-tuning."
    )
    p.add_argument(
        "--seed", type=int, default=defaults.seed, help="Seed of the fine-tuning data order and augmentation."
    )
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Where the candidates are fine-tuned.")
    p.add_argument("--quiet", action="store_true", help="Hide the progress bars and per-candidate lines.")
    p.set_defaults(func=_validate)


def _defaults():
    from latprune.supernet import ValidateConfig

    return ValidateConfig()
