"""`latprune search`: JCW's NSGA-II search over a trained model, with a device profile and a super-net estimator."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from latprune.cli._parsers import parse_latency
from latprune.search import MODES, PRESETS, SELECTIONS, SearchConfig, get_preset, list_algorithms

if TYPE_CHECKING:
    from latprune.pipeline import SearchJob
    from latprune.supernet import SupernetConfig


def search_config_from_args(args: argparse.Namespace) -> SearchConfig:
    """The preset's config with every flag the user set applied on top."""
    return (
        get_preset(args.preset)
        .search_config()
        .override(
            population=args.population,
            generations=args.generations,
            algorithm=args.algorithm,
            selection=args.selection,
            latency_targets=args.latency_targets,
            mode=args.mode,
            seed=args.seed,
            crossover_prob=args.crossover_prob,
            crossover_eta=args.crossover_eta,
            mutation_eta=args.mutation_eta,
            sequential_channel_share=args.sequential_share,
            sequential_widths=args.sequential_widths,
            latency_budget_ms=None if args.latency_budget is None else parse_latency(args.latency_budget),
        )
    )


#: The super-net flags (argparse dest) and the SupernetConfig field each one replaces.
SUPERNET_FLAGS = {
    "supernet_channel_epochs": "channel_epochs",
    "supernet_weight_epochs": "weight_epochs",
    "supernet_classes": "classes",
    "supernet_train_per_class": "train_per_class",
    "supernet_val_per_class": "val_per_class",
    "supernet_batch_size": "batch_size",
    "supernet_lr": "lr",
    "bn_images": "bn_images",
}


def add_supernet_arguments(n: argparse._ActionsContainer) -> None:
    """The flags of SUPERNET_FLAGS (benchmarks/search_ablation.py takes the same ones)."""
    n.add_argument(
        "--supernet-channel-epochs",
        type=int,
        default=None,
        help="Super-net epochs per generation with channel masks only (JCW: 10).",
    )
    n.add_argument(
        "--supernet-weight-epochs",
        type=int,
        default=None,
        help="Super-net epochs per generation with weight-sparsity masks too (JCW: 20).",
    )
    n.add_argument("--supernet-classes", type=int, default=None, help="Classes in the super-net's training subset.")
    n.add_argument(
        "--supernet-train-per-class", type=int, default=None, help="Training images per class for the super-net."
    )
    n.add_argument(
        "--supernet-val-per-class",
        type=int,
        default=None,
        help="Validation images per class used to estimate each candidate's error.",
    )
    n.add_argument("--supernet-batch-size", type=int, default=None, help="Super-net training batch size.")
    n.add_argument("--supernet-lr", type=float, default=None, help="Super-net peak learning rate.")
    n.add_argument(
        "--bn-images",
        type=int,
        default=None,
        help="Images used to recompute each candidate's BatchNorm statistics before it is evaluated (JCW: 1280).",
    )


def supernet_from_args(base: SupernetConfig, args: argparse.Namespace) -> SupernetConfig:
    """``base`` with every super-net flag the user set applied on top."""
    return base.override(**{field: getattr(args, dest) for dest, field in SUPERNET_FLAGS.items()})


def search_job_from_args(args: argparse.Namespace) -> SearchJob:
    """The flags as one search job: the preset's search and super-net settings with the flags applied on top."""
    from latprune.pipeline import SearchJob

    job = SearchJob(
        Path(args.checkpoint), Path(args.profile), Path(args.out), args.preset, search_config_from_args(args),
        model=args.model, data=args.data, force_profile=args.force_profile, device=args.device, resume=args.resume,
    )  # fmt: skip
    return dataclasses.replace(job, supernet=supernet_from_args(job.supernet_config(), args))


def _search(args: argparse.Namespace) -> int:
    from latprune.pipeline import search_checkpoint

    job = search_job_from_args(args)
    outcome = search_checkpoint(job)
    if outcome.plot is None:  # under torchrun every rank searched; rank 0 reports
        return 0
    result, config = outcome.result, job.search_config()
    print(outcome.table)
    print(f"\nPareto front of {len(result.front)} candidates after {result.generations + 1} generations.")
    if result.best_under_budget is not None:
        b = result.best_under_budget
        print(
            f"Best under {config.latency_budget_ms:g} ms: {b.latency_ms:.4f} ms predicted, "
            f"{100 * b.error:.2f}% estimated error."
        )
    elif result.budget_note:
        print(result.budget_note)
    print(f"Wrote {job.out_dir}/front.json, {outcome.plot.name}, and one gen_XXXX.json per generation.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    desc = (
        "Search pruned architectures of a trained model for the best latency/accuracy trade-offs (JCW): NSGA-II "
        "over per-group widths and per-layer weight sparsities, latency from a device profile, accuracy from a "
        "super-net retrained every generation."
    )
    p = sub.add_parser("search", help="Search the latency/accuracy Pareto front of pruned models.", description=desc)
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "--checkpoint",
        required=True,
        help="Trained parent model (a checkpoint file or a `latprune train` "
        "run folder); every candidate inherits its weights.",
    )
    io.add_argument("--model", default=None, help="Zoo model name, checked against the checkpoint (e.g. resnet20).")
    io.add_argument(
        "--data",
        default=None,
        help="Dataset name or folder, checked against the checkpoint's "
        "(e.g. fashion-mnist); the search ranks on its validation split, never the test set.",
    )
    io.add_argument("--profile", required=True, help="Latency profile JSON of this device from `latprune profile`.")
    io.add_argument(
        "--force-profile",
        action="store_true",
        help="Use a profile measured on another device or engine build anyway (predictions will describe that device).",
    )
    io.add_argument("--out", required=True, help="Run directory for gen_XXXX.json, front.json and front.png.")
    io.add_argument(
        "--resume",
        action="store_true",
        help="Continue the search in --out after its last completed generation (e.g. after a kill).",
    )
    io.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Where the super-net trains.")

    s = p.add_argument_group("search")
    s.add_argument(
        "--preset",
        default="quick",
        choices=list(PRESETS),
        help="Budget: 'quick' (~10 min for "
        "ResNet20 / Fashion-MNIST here) or 'paper' (JCW: population 64, 128 generations, 10+20 epochs).",
    )
    s.add_argument(
        "--algorithm",
        default=None,
        choices=list_algorithms(),
        help="Search algorithm from the registry (default nsga2: NSGA-II with the selection below, as in JCW).",
    )
    s.add_argument(
        "--mode",
        default=None,
        choices=list(MODES),
        help="What to prune: joint channels + weights "
        "(default), weight-only (widths 1.0), channel-only (no sparsity), or sequential (channels, then "
        "weights with those widths).",
    )
    s.add_argument(
        "--population",
        type=int,
        default=None,
        help="Population size n; each generation evaluates 2n candidates (default: the preset's, "
        + ", ".join(f"{p.population} {p.name}" for p in PRESETS.values())
        + ").",
    )
    s.add_argument(
        "--generations",
        type=int,
        default=None,
        help="Evolution steps after the initial population (default: the preset's, "
        + ", ".join(f"{p.generations} {p.name}" for p in PRESETS.values())
        + ").",
    )
    s.add_argument(
        "--selection",
        default=None,
        choices=list(SELECTIONS),
        help="Survival: 'uniform' (JCW: keep "
        "good models across the whole latency range) or 'standard' (NSGA-II rank and crowding).",
    )
    s.add_argument(
        "--latency-targets",
        type=int,
        default=None,
        help="Number of evenly spaced latency targets N "
        "of uniform selection (default 4, as the official JCW configuration).",
    )
    s.add_argument(
        "--latency-budget",
        default=None,
        help="Also report the most accurate candidate at or under "
        "this predicted latency, e.g. 2.5ms (the search itself is unchanged).",
    )
    s.add_argument(
        "--seed", type=int, default=None, help="Seed of the search and the super-net (same seed, same front)."
    )
    s.add_argument(
        "--crossover-prob",
        type=float,
        default=None,
        help="Probability that SBX crossover is applied to a pair of parents (default 0.9).",
    )
    s.add_argument(
        "--crossover-eta",
        type=float,
        default=None,
        help="SBX distribution index: larger keeps children closer to their parents (default 15).",
    )
    s.add_argument(
        "--mutation-eta",
        type=float,
        default=None,
        help="Polynomial-mutation distribution index: larger makes smaller mutations (default 20).",
    )
    s.add_argument(
        "--sequential-share",
        type=float,
        default=None,
        help="Sequential mode: share of the generations spent on the channel stage (default 0.5).",
    )
    s.add_argument(
        "--sequential-widths",
        type=int,
        default=None,
        help="Sequential mode: how many width vectors "
        "of the channel stage's front the weight stage chooses among (default 4).",
    )

    add_supernet_arguments(p.add_argument_group("super-net estimator (defaults come from the preset)"))
    p.set_defaults(func=_search)
