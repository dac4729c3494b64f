"""Coupled channel groups of any CNN: from its torch.fx channel flow, or torch-pruning's DependencyGraph (1.6.1)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from latprune._flow import Flow, trace_flow
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
    fixed: bool  # True when the group cannot be pruned (``reason`` says why, e.g. it feeds a grouped conv)
    residual: bool  # True when two or more layers write into it (a residual add ties them)
    reason: str = ""


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


def build_graph(model: nn.Module, input_size: int | tuple[int, int], in_channels: int) -> ChannelGraph:
    """Find the coupled channel groups of ``model`` for ``in_channels`` x H x W inputs.

    Groups come from the channel flow of the model's torch.fx graph (``latprune._flow``), which follows
    residual adds, concatenation, split/chunk/slices, depthwise and grouped convs, squeeze-excite gates,
    BatchNorm, LayerNorm and flatten exactly, and keeps a group whole (``fixed``, with the ``reason``) wherever
    removing a channel would not equal zeroing it. A model fx cannot trace falls back to torch-pruning's
    dependency graph (``latprune._tp_groups``). Channels that reach the model's output (the classifier's
    outputs) and the image channels belong to no group, so they are never pruned.
    """
    _check_supported(model)
    hw = _pair(input_size)
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else "cpu"
    try:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception:  # data-dependent control flow, untraceable modules: torch-pruning traces autograd
            from latprune._tp_groups import tp_groups

            groups, traced = tp_groups(model, torch.zeros(1, in_channels, *hw, device=device))
        else:
            flow = _trace(gm, model, torch.zeros(2, in_channels, *hw, device=device))  # 2: the batch dim is unambiguous
            groups, traced = _flow_groups(flow), flow.layers
    finally:
        model.train(was_training)
    return ChannelGraph(groups, _layer_infos(traced, groups), hw, in_channels)


def _trace(gm: torch.fx.GraphModule, model: nn.Module, example: torch.Tensor) -> Flow:
    try:
        return trace_flow(gm, model, example)
    except ModelError:
        raise
    except Exception as exc:
        raise cannot_run(exc, example) from None


def cannot_run(exc: Exception, example: torch.Tensor) -> ModelError:
    """The sentence for a model that fails on the example input (a wrong --input-size or --in-channels, mostly)."""
    shape = "x".join(str(d) for d in example.shape[1:])
    return ModelError(
        f"The model cannot run on a {shape} input ({type(exc).__name__}: {exc}); check --input-size and --in-channels."
    )


def _flow_groups(flow: Flow) -> tuple[ChannelGroup, ...]:
    """One group per set of layers whose outputs share channel classes, rooted at the first in execution order.

    A set is prunable when every member layer's outputs are the same classes (a permutation of the root's);
    otherwise (e.g. ``chunk(2)`` of one conv's own output ties its halves) each layer gets its own fixed group.
    Sets that reach the model's output get no group.
    """
    order = {name: i for i, (name, _, _) in enumerate(flow.layers)}
    classes = {w: [flow.find(v) for v in ids.tolist()] for w, ids in flow.writers.items()}
    comp = {w: w for w in classes}

    def root(w: str) -> str:
        while comp[w] != w:
            w = comp[w]
        return w

    first_writer: dict[int, str] = {}
    for w in sorted(classes, key=order.__getitem__):
        for c in classes[w]:
            if c in first_writer:
                comp[root(w)] = root(first_writer[c])
            else:
                first_writer[c] = w
    components: dict[str, list[str]] = {}
    for w in sorted(classes, key=order.__getitem__):
        components.setdefault(root(w), []).append(w)
    sink = {flow.find(v) for v in flow.sink}
    groups: list[ChannelGroup] = []
    depthwise = {name for name, module, _ in flow.layers if is_depthwise(module)}
    placed: dict[str, int] = {}  # depthwise conv -> the group holding all of its channels
    for writers in sorted(components.values(), key=lambda ws: order[ws[0]]):
        head = classes[writers[0]]
        if set().union(*(classes[w] for w in writers)) & sink:
            continue
        if len(set(head)) != len(head) or any(set(classes[w]) != set(head) for w in writers):
            for w in writers:
                members = (Member(w, "out", tuple(range(len(classes[w]))), tuple(range(len(classes[w])))),)
                why = "its layers' output channels overlap only in part (e.g. a chunk of one conv's own output)"
                groups.append(ChannelGroup(f"{w}.out", len(classes[w]), members, True, False, why))
            continue
        group = _flow_group(flow, writers, classes, depthwise, placed, len(groups))
        groups.append(group)
    for name in sorted(depthwise - set(placed), key=order.__getitem__):  # spans several groups, or none
        ids = dict(flow.per_channel)[name]
        hit = {flow.find(v) for v in ids.tolist()}
        for gi, g in enumerate(groups):
            if any(m.module == name for m in g.members):
                groups[gi] = replace(g, fixed=True, reason=g.reason or f"depthwise conv '{name}' spans several groups")
        if not hit & sink:
            n = len(ids)
            members = (Member(name, "out", tuple(range(n)), tuple(range(n))),)
            groups.append(ChannelGroup(f"{name}.out", n, members, True, False, "a depthwise conv over several groups"))
    return tuple(groups)


def _flow_group(
    flow: Flow, writers: list[str], classes: dict[str, list[int]], depthwise: set[str], placed: dict[str, int], gi: int
) -> ChannelGroup:
    head = classes[writers[0]]
    index = {c: i for i, c in enumerate(head)}
    members = [Member(w, "out", tuple(range(len(head))), tuple(index[c] for c in classes[w])) for w in writers]
    why = flow.why_fixed(set(head))
    for name, ids, dim in [(n, i, "out") for n, i in flow.per_channel] + [
        (n, i, "in") for n, i in flow.readers.items()
    ]:
        cls = [flow.find(v) for v in ids.tolist()]
        pos = [i for i, c in enumerate(cls) if c in index]
        if not pos:
            continue
        counts = np.bincount([index[cls[i]] for i in pos], minlength=len(head))
        if counts.min() != counts.max():  # reads part of the group: its width is not the group's kept count
            why = why or f"'{name}' reads only some of the group's channels"
        if name in depthwise and len(pos) == len(cls) and counts.min() == counts.max() == 1:
            placed[name] = gi  # else the caller gives it a fixed group of its own and fixes this one
        members.append(Member(name, dim, tuple(pos), tuple(index[cls[i]] for i in pos)))
    members.sort(key=lambda m: (m.module, m.dim))
    return ChannelGroup(f"{writers[0]}.out", len(head), tuple(members), bool(why), len(writers) > 1, why)


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
