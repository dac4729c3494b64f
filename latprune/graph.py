"""Coupled channel groups of any CNN, via torch-pruning's DependencyGraph (pinned 1.6.1) behind a small adapter."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch_pruning as tp

from latprune.errors import ModelError

LayerKind = Literal["conv", "depthwise", "linear"]


@dataclass(frozen=True)
class Member:
    """One module whose ``dim`` ("out" or "in") channels belong to a group.

    ``local[i]`` is an index into the module's own channel axis and ``root[i]`` the group channel it carries;
    they differ after a concatenation (an offset) or a flatten into a linear layer (one group channel feeds
    several features). A depthwise conv is listed once, as "out": pruning its outputs prunes its inputs too.
    """

    module: str
    dim: Literal["out", "in"]
    local: tuple[int, ...]
    root: tuple[int, ...]


@dataclass(frozen=True)
class ChannelGroup:
    """A set of channels that must keep the same indices in every member (one width variable of the search)."""

    name: str
    channels: int
    members: tuple[Member, ...]
    fixed: bool  # True when the group cannot be pruned (it touches a grouped, non-depthwise conv)
    residual: bool  # True when two or more layers write into it (a residual add ties them)


@dataclass(frozen=True)
class LayerInfo:
    """A conv or linear layer with its full shape and the groups its channels belong to.

    ``in_parts`` lists ``(group index, repeat)`` for each group feeding the layer's input, in channel order
    (one entry normally, several after a concatenation, repeat > 1 after a flatten of a spatial map);
    ``in_fixed`` counts input channels that belong to no group (the image channels). ``out_group`` is None
    for layers whose outputs are the model's outputs.
    """

    name: str
    kind: LayerKind
    c_in: int
    c_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    out_group: int | None
    in_parts: tuple[tuple[int, int], ...]
    in_fixed: int


@dataclass(frozen=True)
class ChannelGraph:
    """Groups and layers of one model at one input size; layers are in execution order."""

    groups: tuple[ChannelGroup, ...]
    layers: tuple[LayerInfo, ...]
    input_size: tuple[int, int]
    in_channels: int

    def layer(self, name: str) -> LayerInfo:
        for info in self.layers:
            if info.name == name:
                return info
        raise ModelError(f"The model has no conv or linear layer named '{name}'; check the layer name.")


def is_depthwise(module: nn.Module) -> bool:
    """Depthwise means one input channel per group and as many groups as channels (c_in == c_out == groups > 1).

    A conv with one output channel is not depthwise, nor is a grouped conv whose c_in differs from c_out.
    """
    return (
        isinstance(module, nn.Conv2d)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def _layer_kind(module: nn.Module) -> LayerKind:
    if isinstance(module, nn.Linear):
        return "linear"
    return "depthwise" if is_depthwise(module) else "conv"


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _check_supported(model: nn.Module) -> None:
    """Refuse layers whose channels we cannot prune correctly instead of silently producing a broken model."""
    unsupported = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    for name, module in model.named_modules():
        if isinstance(module, unsupported):
            raise ModelError(
                f"Layer '{name}' is a {type(module).__name__}, which latprune cannot prune; "
                "use nn.Conv2d / nn.Linear layers or exclude this model."
            )


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


def build_graph(model: nn.Module, input_size: int | tuple[int, int], in_channels: int) -> ChannelGraph:
    """Find the coupled channel groups of ``model`` for ``in_channels`` x H x W inputs.

    Groups come from torch-pruning's DependencyGraph, which traces autograd and knows residual adds,
    concatenation, depthwise convs, BatchNorm and flatten. Channels that reach the model's output (the
    classifier's outputs) and the image channels belong to no group, so they are never pruned.
    """
    _check_supported(model)
    hw = _pair(input_size)
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    example = torch.zeros(1, in_channels, *hw, device=param.device if param is not None else "cpu")
    traced, handles = _layer_hooks(model)  # filled during torch-pruning's one traced forward pass
    try:
        with warnings.catch_warnings(), torch.enable_grad():  # tracing follows autograd's graph
            warnings.simplefilter("ignore")
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=lambda m, x: m(x))
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(
            f"The model cannot run on a {in_channels}x{hw[0]}x{hw[1]} input ({type(exc).__name__}: {exc}); "
            "check --input-size and --in-channels."
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    groups = _collect_groups(model, dg, traced)
    return ChannelGraph(groups, _layer_infos(traced, groups), hw, in_channels)


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
        members, sink, out_layers, opaque = [], False, 0, False
        for item in group:
            node = item.dep.target
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
        fixed = opaque or grouped or len(valid) < len(members)
        groups.append(ChannelGroup(f"{name}.out", channels, tuple(valid), fixed, out_layers > 1))
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


def _layer_infos(
    traced: list[tuple[str, nn.Module, tuple[int, int]]], groups: tuple[ChannelGroup, ...]
) -> tuple[LayerInfo, ...]:
    out_group: dict[str, int] = {}
    in_parts: dict[str, list[tuple[int, int, int]]] = {}  # layer -> [(first local index, group, repeat)]
    for gi, group in enumerate(groups):
        for m in group.members:
            if m.dim == "out":
                out_group[m.module] = gi
            else:
                repeat = len(m.local) // group.channels
                in_parts.setdefault(m.module, []).append((min(m.local), gi, repeat))
    infos = []
    for name, module, hw in traced:
        kind = _layer_kind(module)
        if isinstance(module, nn.Linear):
            c_in, c_out = module.in_features, module.out_features
            geometry = ((1, 1), (1, 1), (0, 0), 1)
        else:
            c_in, c_out = module.in_channels, module.out_channels
            geometry = (_pair(module.kernel_size), _pair(module.stride), _pair(module.padding), module.groups)
        og = out_group.get(name)
        if kind == "depthwise":
            parts = ((og, 1),) if og is not None else ()
        else:
            parts = tuple((g, r) for _, g, r in sorted(in_parts.get(name, [])))
        covered = sum(groups[g].channels * r for g, r in parts)
        if covered > c_in:
            raise ModelError(
                f"Layer '{name}' reads {covered} grouped channels but has {c_in} inputs; latprune cannot resolve "
                "its channel coupling, so restructure that part of the model."
            )
        infos.append(LayerInfo(name, kind, c_in, c_out, *geometry, hw, og, parts, c_in - covered))
    return tuple(infos)
