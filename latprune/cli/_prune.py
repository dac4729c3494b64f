"""`latprune prune`: write a uniform pruning plan, or apply a plan to a trained checkpoint."""

from __future__ import annotations

import argparse

from latprune.errors import PlanError
from latprune.models import list_models
from latprune.prune.channels import CRITERIA
from latprune.prune.run import UniformPlanConfig, make_uniform_plan, prune_checkpoint
from latprune.schemes import list_schemes


def _prune(args: argparse.Namespace) -> int:
    if args.force and not args.apply:
        raise PlanError("--force only goes with --apply (it lets a pruned checkpoint replace one in --out).")
    if args.apply:
        if not args.checkpoint:
            raise PlanError("`latprune prune --apply PLAN` needs --checkpoint CKPT, the trained model to prune.")
        result = prune_checkpoint(args.apply, args.checkpoint, args.out, force=args.force)
        print(result.table)
        print(
            f"parameters: {result.params_before:,} -> {result.params_after:,} after channel pruning, "
            f"{result.nonzero_after:,} nonzero after weight sparsity"
        )
        print(f"wrote {result.checkpoint} and {result.plan_path}")
        return 0
    if args.model is None or args.width is None or args.sparsity is None:
        raise PlanError("`latprune prune` needs --model, --width and --sparsity to write a plan (or --apply PLAN).")
    config = UniformPlanConfig(
        model=args.model,
        width=args.width,
        sparsity=args.sparsity,
        scheme=args.scheme,
        importance=args.importance,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
        input_size=args.input_size,
        width_mult=args.width_mult,
        checkpoint=args.checkpoint,
    )
    plan, path = make_uniform_plan(config, args.out)
    kept = sum(len(g.keep) for g in plan.groups)
    total = sum(g.channels for g in plan.groups)
    capped = [ly.name for ly in plan.layers if 0 < ly.sparsity < args.sparsity]
    print(f"plan for {plan.model.name if plan.model else 'model'}: keeps {kept}/{total} prunable channels")
    if capped:
        print(f"{len(capped)} first/last or strided layers are capped below {args.sparsity} (e.g. {capped[0]})")
    if args.checkpoint is None:
        print("channels were ranked on random initial weights; pass --checkpoint to rank by trained weights")
    print(f"wrote {path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="Write a pruning plan, or apply one to a trained checkpoint.",
        description="With --model/--width/--sparsity: write a plan that keeps the same fraction of channels in "
        "every coupled group and gives every layer the same weight sparsity (first/last, strided and residual "
        "layers are bounded tighter). With --apply PLAN --checkpoint CKPT: shrink the trained model and write "
        "OUT/checkpoint.pt and OUT/plan.json.",
    )
    p.add_argument("--model", choices=list_models(), help="Zoo model the plan is for.")
    p.add_argument("--width", type=float, help="Fraction of channels to keep in each coupled group, in (0, 1].")
    p.add_argument("--sparsity", type=float, help="Fraction of weights to zero in each layer, in [0, 1).")
    p.add_argument(
        "--scheme",
        default="group4",
        choices=list_schemes(),
        help="Weight-sparsity structure; pattern/block schemes fall back per layer as NPAS does (e.g. 1x1 convs "
        "use block_punched under pattern).",
    )
    p.add_argument(
        "--importance",
        default="l1",
        choices=CRITERIA,
        help="How channels are ranked: filter L1 or L2 norm summed over the group, or BatchNorm scale.",
    )
    p.add_argument("--num-classes", type=int, help="Classifier outputs (default: the model's published value).")
    p.add_argument("--in-channels", type=int, default=3, help="Image channels, e.g. 1 for Fashion-MNIST.")
    p.add_argument("--input-size", type=int, help="Image height and width in pixels (default: the model's own).")
    p.add_argument("--width-mult", type=float, default=1.0, help="Width multiplier the model was built with.")
    p.add_argument(
        "--checkpoint",
        help="Trained checkpoint (from `latprune train`): ranks channels by its weights, and is what --apply prunes.",
    )
    p.add_argument("--apply", metavar="PLAN", help="Apply this plan.json to --checkpoint instead of writing a plan.")
    p.add_argument("--out", required=True, help="Where to write: plan.json path, or a folder with --apply.")
    p.add_argument(
        "--force", action="store_true", help="With --apply: replace a checkpoint.pt already in --out (else refused)."
    )
    p.set_defaults(func=_prune)
