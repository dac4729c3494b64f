"""The fallback channel coupling for models torch.fx cannot trace: torch-pruning's DependencyGraph (pinned 1.6.1).

torch-pruning traces autograd, so it follows any model that runs, but 1.6.1 maps split/chunk outputs by the
order it met them rather than by their index (a ``chunk(2)`` after a concatenation crosses the two groups), and
it does not know that a fixed split size or slice bound in the model's code cannot follow a pruned width. Here
every group that passes through a split, chunk, unbind or slice, or a LayerNorm, is kept whole.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch_pruning as tp

from latprune.errors import ModelError
from latprune.graph import ChannelGroup, Member, cannot_run, is_depthwise

_UNTRUSTED = (tp.ops._SplitOp, tp.ops._SliceOp, tp.ops._UnbindOp)


def _layer_hooks(model: nn.Module) -> tuple[list[tuple[str, nn.Module, tuple[int, int]]], list]:
    """Pre-hooks recording (name, module, input H, W) of every conv/linear in execution order on the next forward."""
    order: list[tuple[str, nn.Module, tuple[int, int]]] = []
    seen: set[str] = set()

    def hook(name: str):
        def fn(module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            if name in seen:
                raise ModelError(
                    f"Layer '{name}' is called more than once in the forward pass; latprune needs each conv/linear "
                    "module used once, so give every use its own module."
                )
            seen.add(name)
            x = inputs[0]
            hw = (int(x.shape[-2]), int(x.shape[-1])) if x.dim() == 4 else (1, 1)
            order.append((name, module, hw))

        return fn

    handles = [
        module.register_forward_pre_hook(hook(name))
        for name, module in model.named_modules()
        if isinstance(module, (nn.Conv2d, nn.Linear))
    ]
    return order, handles


def tp_groups(
    model: nn.Module, example: torch.Tensor
) -> tuple[tuple[ChannelGroup, ...], list[tuple[str, nn.Module, tuple[int, int]]]]:
    """Groups and the conv/linear layers in execution order, from torch-pruning's dependency graph."""
    traced, handles = _layer_hooks(model)  # filled during torch-pruning's one traced forward pass
    try:
        with warnings.catch_warnings(), torch.enable_grad():  # tracing follows autograd's graph
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=lambda m, x: m(x))
    except ModelError:
        raise
    except Exception as exc:
        raise cannot_run(exc, example) from None
    finally:
        for h in handles:
            h.remove()
    return _collect_groups(model, dg, traced), traced


def _collect_groups(
    model: nn.Module, dg: tp.DependencyGraph, traced: list[tuple[str, nn.Module, tuple[int, int]]]
) -> tuple[ChannelGroup, ...]:
    """One group per set of coupled output channels, rooted at the first layer (in execution order) writing it."""
    names = {module: name for name, module in model.named_modules()}
    modules_by_name = dict(model.named_modules())
    layer_modules = {name: module for name, module, _ in traced}
    groups: list[ChannelGroup] = []
    covered: set[str] = set()  # layers whose output channels already belong to a group
    for name, module, _ in traced:
        if name in covered or is_depthwise(module):  # a depthwise conv joins its producer's group
            continue
        pruner = dg.get_pruner_of_module(module)
        channels = pruner.get_out_channels(module)
        group = dg.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))
        members, sink, out_layers, opaque, why = [], False, 0, False, ""
        for item in group:
            node = item.dep.target
            if isinstance(node.module, _UNTRUSTED):
                why = "a split, chunk or slice (kept whole: the model is not fx-traceable, see latprune._tp_groups)"
            if isinstance(node.module, (nn.LayerNorm, nn.GroupNorm)):
                why = f"{type(node.module).__name__} normalises over the channels"
            out = dg.is_out_channel_pruning_fn(item.dep.handler)
            if out and not node.outputs:
                sink = True  # these channels are (part of) the model's output
            member_module = node.module
            if isinstance(member_module, torch.Tensor):
                opaque = True  # a bare nn.Parameter: apply_plan cannot slice it, so keep the group whole
                continue
            if member_module not in names:
                continue  # functional ops (add, cat, flatten) carry no weights
            mname = names[member_module]
            members.append(Member(mname, "out" if out else "in", tuple(item.idxs), tuple(item.root_idxs)))
            if out and mname in layer_modules:
                covered.add(mname)
                out_layers += not is_depthwise(member_module)
        if sink:
            continue
        members.sort(key=lambda m: (m.module, m.dim))
        valid = [m for m in members if _member_is_valid(m, modules_by_name[m.module], channels)]
        grouped = any(
            isinstance(layer_modules.get(m.module), nn.Conv2d)
            and layer_modules[m.module].groups > 1
            and not is_depthwise(layer_modules[m.module])
            for m in members
        )
        if not why and opaque:
            why = "a parameter used directly in forward()"
        elif not why and grouped:
            why = "a grouped conv"
        elif not why and len(valid) < len(members):
            why = "torch-pruning's index mapping is not self-consistent here"
        groups.append(ChannelGroup(f"{name}.out", channels, tuple(valid), bool(why), out_layers > 1, why))
    return tuple(groups)


def _member_is_valid(member: Member, module: nn.Module, channels: int) -> bool:
    """Whether torch-pruning's index mapping is self-consistent for this member.

    torch-pruning 1.6.1 mis-maps some split/chunk-then-concatenate graphs (indices past the module's size);
    such a group is kept whole (fixed) rather than pruned wrongly.
    """
    weight = getattr(module, "weight", None)
    if weight is None:
        return True
    size = weight.shape[0] if member.dim == "out" or is_depthwise(module) else weight.shape[1]
    if isinstance(module, nn.Conv2d) and member.dim == "in":
        size *= module.groups  # a grouped conv's weight holds c_in / groups input channels
    return (
        len(member.local) == len(member.root)
        and len(set(member.local)) == len(member.local)
        and all(0 <= i < size for i in member.local)
        and all(0 <= r < channels for r in member.root)
        and len(member.local) % channels == 0
    )
