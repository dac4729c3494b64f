"""`latprune replace`: NPAS phase 1, each stand-in for a mobile-unfriendly op measured on the engine."""

from __future__ import annotations

import argparse

from latprune._io import output_lock
from latprune._limits import check_threads
from latprune.cli._parsers import parse_input_size, parse_names
from latprune.errors import ModelError


def _replace(args: argparse.Namespace) -> int:
    from latprune.models import ModelSpec, model_info
    from latprune.models.replace import list_replacements
    from latprune.replace import ReplaceConfig, plan_replacements

    model = None
    if args.checkpoint:
        from latprune.prune import model_spec_from_checkpoint
        from latprune.train import load_model_from_checkpoint

        model, ckpt = load_model_from_checkpoint(args.checkpoint)
        spec = model_spec_from_checkpoint(ckpt, args.checkpoint)
    else:
        if not args.model:
            raise ModelError("`latprune replace` needs --model NAME (see `latprune models`) or --checkpoint PATH.")
        info = model_info(args.model)
        channels, size = parse_input_size(args.input_size) if args.input_size else (3, info.default_input_size)
        classes = args.num_classes if args.num_classes is not None else info.default_num_classes
        spec = ModelSpec(args.model, classes, channels, size)
    rules = parse_names(args.rules, "--rules") if args.rules else tuple(list_replacements())
    config = ReplaceConfig(threads=args.threads, runs=args.runs, min_gain=args.min_gain, rules=rules)
    check_threads(args.threads)
    with output_lock(args.out, file=True):  # held while timing: a second job would time this one's load
        plan = plan_replacements(spec, config, model)
        plan.save(args.out)
    print(plan.table())
    kept = ", ".join(plan.applied) or "none"
    print(f"\n{spec.describe()}: replace {kept}; wrote {args.out}.")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from latprune.models import list_models
    from latprune.models.replace import get_replacement, list_replacements

    rules = "; ".join(f"{n}: {get_replacement(n).description}" for n in list_replacements())
    p = sub.add_parser(
        "replace",
        help="NPAS phase 1: time cheaper stand-ins for slow ops on the engine; keep those that pay.",
        description="Time the model with each stand-in rule applied at all its sites, interleaved with the original "
        f"on this CPU's engine, and keep the rules that make it at least --min-gain faster. Rules: {rules}.",
    )
    p.add_argument("--model", default=None, choices=list_models(), help="Zoo model (or --checkpoint).")
    p.add_argument("--checkpoint", default=None, help="A trained checkpoint: its model and weights are timed.")
    p.add_argument("--input-size", default=None, help="Input as CxHxW, e.g. 3x224x224 (default: the model's).")
    p.add_argument("--num-classes", type=int, default=None, help="Classifier outputs (default: the model's own).")
    p.add_argument("--out", required=True, help="Where to write the plan (JSON), e.g. plan.json.")
    p.add_argument("--rules", default=None, help="Comma-separated rules to try (default: every rule).")
    p.add_argument("--min-gain", type=float, default=0.02, help="Least speed-up that pays, a share (default 0.02).")
    p.add_argument("--threads", type=int, default=1, help="Engine threads (default 1).")
    p.add_argument("--runs", type=int, default=200, help="Timed runs per model (default 200).")
    p.set_defaults(func=_replace)
