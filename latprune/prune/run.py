"""The two jobs behind `latprune prune`: write a uniform plan, and apply a plan to a trained checkpoint."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from latprune._io import locks_output
from latprune.errors import PlanError
from latprune.graph import build_graph, is_depthwise
from latprune.models import model_info
from latprune.prune.apply import apply_plan, count_params, model_spec_from_checkpoint, save_pruned
from latprune.prune.channels import Criterion
from latprune.prune.plan import ModelSpec, PruningPlan, uniform_plan

PRUNED_CHECKPOINT = "checkpoint.pt"
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class UniformPlanConfig:
    """What `latprune prune --out plan.json` asks for: one width and sparsity for a zoo model."""

    model: str
    width: float
    sparsity: float
    scheme: str = "group4"
    importance: Criterion = "l1"
    num_classes: int | None = None  # None: the model's published default (or the checkpoint's)
    in_channels: int = 3
    input_size: int | None = None
    width_mult: float = 1.0
    checkpoint: str | None = None  # rank channels by these trained weights instead of the random init

    def __post_init__(self) -> None:
        """Refuse a bad number before any model is built (NaN passes a plain ``<`` test, hence the ``not``s)."""
        if not 0.0 < self.width <= 1.0:
            raise PlanError(f"The width {self.width} leaves no channel or is above 1; use a value in (0, 1].")
        if not 0.0 <= self.sparsity < 1.0:
            raise PlanError(f"The sparsity {self.sparsity} is outside [0, 1); use e.g. 0.5.")
        for name in ("num_classes", "input_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise PlanError(f"--{name.replace('_', '-')} {value} must be at least 1 (or left unset).")
        if self.in_channels < 1:
            raise PlanError(f"--in-channels {self.in_channels} must be at least 1, e.g. 1 for Fashion-MNIST.")
        if not 0.0 < self.width_mult < math.inf:
            raise PlanError(f"--width-mult {self.width_mult} must be a positive, finite factor, e.g. 0.5 or 1.")


@dataclass(frozen=True)
class PruneResult:
    """What applying a plan produced: the files and the numbers the summary prints."""

    checkpoint: Path
    plan_path: Path
    params_before: int
    params_after: int
    nonzero_after: int
    table: str


@locks_output("out", file=True)
def make_uniform_plan(config: UniformPlanConfig, out: str | os.PathLike[str]) -> tuple[PruningPlan, Path]:
    """Build the zoo model (from ``config.checkpoint`` when given), make a uniform plan and write it to ``out``."""
    from latprune.train.checkpoint import load_checkpoint  # train imports prune: import at call time

    if config.checkpoint is not None:
        ckpt = load_checkpoint(_checkpoint_file(config.checkpoint))
        _refuse_pruned(ckpt, config.checkpoint)
        spec = model_spec_from_checkpoint(ckpt, config.checkpoint)
        if spec.name != config.model:
            raise PlanError(
                f"The checkpoint '{config.checkpoint}' holds a '{spec.name}', not the '{config.model}' asked for; "
                "drop --model or pass the matching checkpoint."
            )
        model = spec.build()
        model.load_state_dict(ckpt["state_dict"])
    else:
        info = model_info(config.model)
        spec = ModelSpec(
            config.model,
            info.default_num_classes if config.num_classes is None else config.num_classes,
            config.in_channels,
            info.default_input_size if config.input_size is None else config.input_size,
            config.width_mult,
        )
        model = spec.build()
    plan = uniform_plan(
        model,
        spec.input_size,
        spec.in_channels,
        config.width,
        config.sparsity,
        config.scheme,
        importance=config.importance,
        model_spec=spec,
    )
    return plan, plan.save(out)


@locks_output("out_dir")
def prune_checkpoint(
    plan: PruningPlan | str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    force: bool = False,
) -> PruneResult:
    """Apply ``plan`` to the trained model in ``checkpoint``; write OUT/checkpoint.pt and OUT/plan.json.

    Masks are computed from the trained weights; the written checkpoint keeps them as parametrizations, so
    ``load_pruned`` (or training) rebuilds the exact pruned model on a fresh zoo model. A checkpoint.pt
    already in OUT (e.g. the trained parent itself, or a fine-tuned model) is only replaced with ``force``.
    """
    from latprune.train.checkpoint import load_checkpoint  # train imports prune: import at call time

    out_dir = Path(out_dir)
    if (out_dir / PRUNED_CHECKPOINT).exists() and not force:
        raise PlanError(
            f"The folder '{out_dir}' already holds a {PRUNED_CHECKPOINT}, which this would overwrite; pick a new "
            "--out, or pass --force to replace it."
        )
    plan = plan if isinstance(plan, PruningPlan) else PruningPlan.load(plan)
    checkpoint = _checkpoint_file(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    _refuse_pruned(ckpt, checkpoint)
    spec = model_spec_from_checkpoint(ckpt, str(checkpoint))
    if plan.model is not None and plan.model != spec:
        raise PlanError(
            f"The plan was made for {plan.model.describe()} but the checkpoint '{checkpoint}' holds "
            f"{spec.describe()}; "
            "make the plan with --checkpoint (or matching --model flags)."
        )
    model = spec.build()
    try:
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, RuntimeError):
        raise PlanError(
            f"The checkpoint '{checkpoint}' does not hold the weights of a plain '{spec.name}'; "
            "is it already pruned? Prune the unpruned training checkpoint instead."
        ) from None
    before = count_params(model)
    shapes = _layer_shapes(model, plan)
    pruned = apply_plan(model, plan)
    plan = PruningPlan(spec, plan.input_size, plan.in_channels, plan.groups, plan.layers, plan.importance)
    extra = {"epoch": 0, "metrics": {}, "pruned_from": str(checkpoint)}
    if "data" in ckpt:  # the dataset split the model was trained on, so `latprune eval` finds it again
        extra["data"] = ckpt["data"]
    ckpt_path = save_pruned(out_dir / PRUNED_CHECKPOINT, pruned, plan, extra)
    plan_path = plan.save(out_dir / PLAN_FILE)
    table = layer_table(pruned, plan, shapes)
    return PruneResult(ckpt_path, plan_path, before, count_params(pruned), count_params(pruned, nonzero=True), table)


def _refuse_pruned(ckpt: dict, path: str | os.PathLike[str]) -> None:
    """Pruning is planned and applied on the dense parent; a pruned checkpoint's weights fit no fresh model."""
    if ckpt.get("plan") is not None:
        raise PlanError(
            f"The checkpoint '{path}' is already pruned; pass the dense parent it was pruned from as --checkpoint."
        )


def _checkpoint_file(path: str | os.PathLike[str]) -> Path:
    """Accept a checkpoint file or a `latprune train` run folder (then its checkpoint.pt)."""
    path = Path(path)
    return path / PRUNED_CHECKPOINT if path.is_dir() else path


def _layer_shapes(model: nn.Module, plan: PruningPlan) -> dict[str, tuple[str, int, int]]:
    graph = build_graph(model, plan.input_size, plan.in_channels)
    return {info.name: (info.kind, info.c_in, info.c_out) for info in graph.layers}


def layer_table(pruned: nn.Module, plan: PruningPlan, before: dict[str, tuple[str, int, int]]) -> str:
    """Per-layer table: channels before -> after, scheme and the sparsity really reached."""
    modules = dict(pruned.named_modules())
    rows = [f"{'layer':<32} {'kind':<9} {'c_in':>11} {'c_out':>11} {'scheme':<13} {'sparsity':>8}"]
    for ly in plan.layers:
        module = modules[ly.name]
        kind, c_in, c_out = before[ly.name]
        w = module.weight
        new_in = module.in_channels if isinstance(module, nn.Conv2d) else module.in_features
        new_out = w.shape[0]
        real = float((w == 0).float().mean()) if not is_depthwise(module) else 0.0
        rows.append(
            f"{ly.name:<32} {kind:<9} {f'{c_in}->{new_in}':>11} {f'{c_out}->{new_out}':>11} "
            f"{ly.scheme:<13} {real:>8.2f}"
        )
    return "\n".join(rows)


__all__ = [
    "PLAN_FILE",
    "PRUNED_CHECKPOINT",
    "PruneResult",
    "UniformPlanConfig",
    "make_uniform_plan",
    "prune_checkpoint",
]
