"""`latprune run`: the main job, from a model and a dataset to measured pruned models and a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from latprune.bench.runtimes import DEFAULT_BASELINES, list_runtimes
from latprune.cli._parsers import parse_grid, parse_latency, parse_names
from latprune.pipeline import PIPELINE_PRESETS, STAGES, RunConfig, run_pipeline
from latprune.pipeline._config import DEFAULT_DATA, DEFAULT_MODEL
from latprune.search import MODES, SELECTIONS


def run_config_from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        out_dir=Path(args.out),
        model=args.model,
        data=args.data,
        preset=args.preset,
        checkpoint=Path(args.checkpoint) if args.checkpoint else None,
        profile=Path(args.profile) if args.profile else None,
        force_profile=args.force_profile,
        profile_grid=parse_grid(args.profile_grid, "--profile-grid"),
        population=args.population,
        generations=args.generations,
        mode=args.mode,
        selection=args.selection,
        latency_budget_ms=None if args.latency_budget is None else parse_latency(args.latency_budget),
        top_k=args.top_k,
        finetune_method=args.method,
        finetune_epochs=args.finetune_epochs,
        finetune_lr=args.finetune_lr,
        distill=args.distill,
        baseline_epochs=args.baseline_epochs,
        threads=args.threads,
        runtimes=parse_names(args.runtimes, "--runtimes"),
        timing_runs=args.timing_runs,
        seed=args.seed,
        device=args.device,
        export=not args.no_export,
        redo_from=args.redo_from,
    )


def _run(args: argparse.Namespace) -> int:
    run_pipeline(run_config_from_args(args))
    return 0


def add_run_arguments(p: argparse.ArgumentParser, *, out: str | None = None) -> None:
    """The flags of `latprune run` (`latprune demo` shares them with other defaults)."""
    from latprune.models import list_models

    presets = " ".join(f"'{p.name}': {p.description}" for p in PIPELINE_PRESETS.values())
    io = p.add_argument_group("inputs and outputs")
    io.add_argument(
        "--model", choices=list_models(), help=f"Zoo model (default: the --checkpoint's, else {DEFAULT_MODEL})."
    )
    io.add_argument(
        "--data", help=f"Dataset name or folder (default: the one --checkpoint was trained on, else {DEFAULT_DATA})."
    )
    if out is None:
        io.add_argument("--out", required=True, help="Run folder; rerunning with the same --out resumes it.")
    else:
        io.add_argument("--out", default=out, help=f"Run folder (default {out}); rerunning resumes it.")
    io.add_argument(
        "--checkpoint", default=None, help="A trained dense parent (`latprune train` checkpoint); else one is trained."
    )
    io.add_argument("--profile", default=None, help="A latency profile of this device; else it is measured first.")
    io.add_argument("--force-profile", action="store_true", help="Accept a profile from another device or engine.")
    io.add_argument(
        "--profile-grid", default="8,10", help="N,M of the profile's channel grid i/N and sparsity grid k/M (8,10)."
    )
    io.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Where training runs (default cpu).")
    io.add_argument(
        "--no-export", action="store_true", help="Skip the per-model export bundle (plan + weights, ONNX, engine)."
    )
    io.add_argument(
        "--redo-from",
        default=None,
        choices=list(STAGES),
        help="Redo this stage and the ones after it, e.g. 'measure' to time again on an idle machine (finished "
        "training is reloaded, not repeated).",
    )
    s = p.add_argument_group("search and retraining (unset values come from the preset)")
    s.add_argument("--preset", default="quick", choices=list(PIPELINE_PRESETS), help=f"Budget. {presets}")
    s.add_argument("--population", type=int, default=None, help="Search population size.")
    s.add_argument("--generations", type=int, default=None, help="Search generations after the first.")
    s.add_argument("--mode", default="joint", choices=list(MODES), help="What the search prunes (default joint).")
    s.add_argument("--selection", default="uniform", choices=list(SELECTIONS), help="Survival selection of NSGA-II.")
    s.add_argument(
        "--latency-budget",
        default=None,
        help="Retrain only the most accurate candidate at or under this predicted latency, e.g. 0.2ms.",
    )
    s.add_argument("--top-k", type=int, default=None, help="Front models to retrain, spread over latency.")
    s.add_argument(
        "--method",
        default="masked",
        choices=["masked", "admm", "gmp"],
        help="Retraining: masked fine-tuning (default), ADMM (as many ADMM epochs, then masked retraining) or "
        "gradual magnitude pruning.",
    )
    s.add_argument("--finetune-epochs", type=int, default=None, help="Retraining epochs per model.")
    s.add_argument("--finetune-lr", type=float, default=None, help="Peak learning rate of retraining.")
    s.add_argument(
        "--distill",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Distil from the dense parent while retraining.",
    )
    s.add_argument("--baseline-epochs", type=int, default=None, help="Epochs of the dense baseline when trained here.")
    s.add_argument("--seed", type=int, default=0, help="Seed of training, search and super-net (default 0).")
    t = p.add_argument_group("measurement")
    t.add_argument("--threads", type=int, default=1, help="Threads for profiling and latency measurement (default 1).")
    t.add_argument("--timing-runs", type=int, default=200, help="Timed runs per model; the median is reported.")
    t.add_argument(
        "--runtimes",
        default=",".join(DEFAULT_BASELINES),
        help=f"Runtimes every model is also timed on, comma-separated (default {','.join(DEFAULT_BASELINES)}; "
        f"registered: {', '.join(list_runtimes(available_only=False))}; openvino needs `pip install openvino`).",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="The main job: baseline, profile, search, retrain, compile, measure, export, report.",
        description="From a model and a dataset to a Pareto front of pruned models whose latency is measured on "
        f"this CPU with latprune's sparse engine. Stages: {', '.join(STAGES)}. Each is resumable: rerun the same "
        "command after an interruption; status.json in the run folder shows where it stopped.",
    )
    add_run_arguments(p)
    p.set_defaults(func=_run)
