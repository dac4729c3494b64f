"""Apply a PruningPlan: remove channels physically (torch-pruning), keep weight masks as parametrizations."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
import torch_pruning as tp

from latprune.errors import ModelError, PlanError
from latprune.graph import ChannelGraph, build_graph, is_depthwise
from latprune.prune.plan import ModelSpec, PruningPlan
from latprune.schemes import make_mask


class WeightMask(nn.Module):
    """Parametrization ``weight = original * mask``: gradients flow only to kept weights, so zeros stay zero.

    The mask is a bool buffer, saved in the state dict next to the original weight.
    """

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _check_fits(plan: PruningPlan, graph: ChannelGraph) -> None:
    """One sentence naming the first group or layer where the plan and the model disagree."""
    model_groups = {g.name: g for g in graph.groups}
    for g in plan.groups:
        mg = model_groups.get(g.name)
        if mg is None or mg.channels != g.channels:
            found = "no such group" if mg is None else f"{mg.channels} channels"
            raise PlanError(
                f"The plan does not fit the model: group '{g.name}' has {g.channels} channels in the plan but "
                f"{found} in the model; apply the plan to the model (and width) it was made for."
            )
        if mg.fixed and len(g.keep) != g.channels:
            why = mg.reason or "it touches a grouped conv"
            raise PlanError(f"Group '{g.name}' cannot be pruned ({why}); keep all its channels.")
    if len(plan.groups) != len(graph.groups):
        missing = sorted(set(model_groups) - {g.name for g in plan.groups})
        raise PlanError(f"The plan does not fit the model: it has no entry for group '{missing[0]}'; regenerate it.")
    model_layers = {info.name: info for info in graph.layers}
    for ly in plan.layers:
        info = model_layers.get(ly.name)
        if info is None:
            raise PlanError(f"The plan does not fit the model: the model has no layer '{ly.name}'.")
        if info.kind == "depthwise" and ly.sparsity > 0:
            raise PlanError(f"Layer '{ly.name}' is depthwise and takes no weight sparsity; set it to 0.0.")
    if len(plan.layers) != len(graph.layers):
        raise PlanError(
            f"The plan does not fit the model: it lists {len(plan.layers)} layers, the model has {len(graph.layers)}."
        )


def _removals(plan: PruningPlan, graph: ChannelGraph) -> dict[tuple[str, str], list[int]]:
    """Local indices to remove per (module, "out"|"in"), merged over groups (a concat consumer has several)."""
    out: dict[tuple[str, str], set[int]] = {}
    for g in graph.groups:
        removed = set(range(g.channels)) - set(plan.group(g.name).keep)
        if not removed:
            continue
        for m in g.members:
            idxs = {loc for loc, root in zip(m.local, m.root, strict=True) if root in removed}
            out.setdefault((m.module, m.dim), set()).update(idxs)
    return {k: sorted(v) for k, v in out.items() if v}


def apply_plan(model: nn.Module, plan: PruningPlan, masks: bool = True) -> nn.Module:
    """Shrink ``model`` in place to the plan's kept channels and (``masks``) attach its weight masks; returns it.

    Channels are removed with torch-pruning's per-layer pruning functions (BatchNorm, depthwise and linear
    layers included); masks are computed from the shrunk weights by magnitude and registered as
    parametrizations so fine-tuning keeps the zeros.
    """
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            raise PlanError(f"Layer '{name}' already has a mask; apply a plan to a model that was not pruned yet.")
    graph = build_graph(model, plan.input_size, plan.in_channels)
    _check_fits(plan, graph)
    modules = dict(model.named_modules())
    dg = tp.DependencyGraph()  # only its pruner table: the functions that slice one module
    for (name, dim), idxs in _removals(plan, graph).items():
        module = modules[name]
        pruner = dg.get_pruner_of_module(module)
        if pruner is None:
            raise ModelError(
                f"Layer '{name}' ({type(module).__name__}) has no channel pruner; latprune cannot shrink it."
            )
        if dim == "out":
            pruner.prune_out_channels(module, idxs)
        elif not is_depthwise(module):  # a depthwise conv's inputs went with its outputs
            pruner.prune_in_channels(module, idxs)
    if masks:
        attach_masks(model, plan)
    return model


def attach_masks(model: nn.Module, plan: PruningPlan, from_zeros: bool = False) -> nn.Module:
    """Register a ``WeightMask`` on every sparse layer of the plan (``from_zeros``: keep exactly the nonzeros)."""
    modules = dict(model.named_modules())
    for ly in plan.layers:
        if ly.sparsity == 0.0:
            continue
        module = modules[ly.name]
        weight = module.weight.detach()
        mask = weight != 0 if from_zeros else make_mask(ly.scheme, weight, ly.sparsity, ly.params, ly.name)
        parametrize.register_parametrization(module, "weight", WeightMask(mask))
    return model


def bake_masks(model: nn.Module) -> nn.Module:
    """Remove the parametrizations (weight masks) in place, leaving plain weights with the zeros in them (for export).

    Not ``parametrize.remove_parametrizations``: it deletes the property from the parametrized class, which a
    ``copy.deepcopy`` shares with its original, so baking a copy would break the original. Each module is given
    back its class from before ``register_parametrization`` instead.
    """
    for module in model.modules():
        if not parametrize.is_parametrized(module):
            continue
        values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
        grads = {name: plist.original.requires_grad for name, plist in module.parametrizations.items()}
        del module._modules["parametrizations"]
        module.__class__ = module.__class__.__bases__[0]  # the class before register_parametrization
        for name, value in values.items():
            module.register_parameter(name, nn.Parameter(value, requires_grad=grads[name]))
    return model


def weight_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The bool keep-mask of every masked layer, by module name."""
    out = {}
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations["weight"]:
                if isinstance(p, WeightMask):
                    out[name] = p.mask
    return out


def count_params(model: nn.Module, nonzero: bool = False) -> int:
    """Parameters of ``model``; ``nonzero`` counts conv/linear weights after their masks (what is really kept)."""
    if not nonzero:
        return sum(p.numel() for p in model.parameters())
    total = 0
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, parametrize.ParametrizationList):
                continue  # its "original" is counted through the owning layer's masked weight
            for pname, p in module.named_parameters(recurse=False):
                total += int((p != 0).sum()) if pname == "weight" else p.numel()
            if parametrize.is_parametrized(module, "weight"):
                total += int((module.weight != 0).sum())
    return total


def _has_masks(state_dict: dict[str, torch.Tensor]) -> bool:
    return any(".parametrizations.weight." in k for k in state_dict)


def build_pruned(plan: PruningPlan, state_dict: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """A fresh zoo model with ``plan`` applied and ``state_dict`` loaded (masked or baked), ready to train or run."""
    if plan.model is None:
        raise PlanError("The plan names no zoo model, so build your model, call apply_plan, then load_state_dict.")
    model = plan.model.build()
    if state_dict is None or _has_masks(state_dict):
        apply_plan(model, plan)
    else:  # a baked state dict: masks come back from its zeros
        apply_plan(model, plan, masks=False)
    if state_dict is not None:
        try:
            model.load_state_dict(state_dict, strict=True)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise PlanError(
                f"The weights do not fit the plan's pruned model ({first}); pair them with their own plan."
            ) from None
        if not _has_masks(state_dict):
            attach_masks(model, plan, from_zeros=True)
    return model


def save_pruned(
    path: str | os.PathLike[str], model: nn.Module, plan: PruningPlan, extra: dict[str, Any] | None = None
) -> Path:
    """Write a checkpoint (keys "model", "model_kwargs", "state_dict", "plan") that ``load_pruned`` rebuilds."""
    if plan.model is None:
        raise PlanError("The plan names no zoo model; save model.state_dict() and plan.save() yourself.")
    from latprune.train.checkpoint import atomic_torch_save  # train imports prune: import at call time

    ckpt = {
        "model": plan.model.name,
        "model_kwargs": plan.model.kwargs(),
        "state_dict": model.state_dict(),
        "plan": plan.to_dict(),
        **(extra or {}),
    }
    return atomic_torch_save(path, ckpt)


def load_pruned(path: str | os.PathLike[str]) -> tuple[nn.Module, PruningPlan]:
    """Rebuild the pruned model of a checkpoint (file or run folder) written by ``save_pruned`` or by training."""
    from latprune.train.checkpoint import load_checkpoint  # train imports prune: import at call time

    path = Path(path) / "checkpoint.pt" if Path(path).is_dir() else Path(path)  # a run folder works too
    ckpt = load_checkpoint(path)
    if "plan" not in ckpt or "state_dict" not in ckpt:
        raise PlanError(f"The checkpoint '{path}' holds no pruning plan; prune it with `latprune prune --apply`.")
    plan = PruningPlan.from_dict(ckpt["plan"])
    return build_pruned(plan, ckpt["state_dict"]), plan


def model_spec_from_checkpoint(ckpt: dict[str, Any], path: str = "checkpoint") -> ModelSpec:
    """The ``ModelSpec`` of a training checkpoint (keys "model" and "model_kwargs")."""
    try:
        return ModelSpec.from_dict({"name": ckpt["model"], **ckpt["model_kwargs"]})
    except (KeyError, TypeError, ValueError):
        raise PlanError(
            f"The checkpoint '{path}' lacks 'model' / 'model_kwargs' (num_classes, in_channels, input_size); "
            "use one written by `latprune train`."
        ) from None


__all__ = [
    "WeightMask",
    "apply_plan",
    "attach_masks",
    "bake_masks",
    "build_pruned",
    "count_params",
    "load_pruned",
    "model_spec_from_checkpoint",
    "save_pruned",
    "weight_masks",
]
