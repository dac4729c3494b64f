"""Channel flow: which output channel of which layer every channel of every tensor carries, traced with torch.fx.

Each conv/linear output channel is a variable; element-wise ops, BatchNorm, pooling and depthwise convs pass
a tensor's variables on; ``cat`` concatenates them; an add or a gate multiply ties two tensors' variables
position by position (they must be pruned together); ``chunk`` ties its parts position by position, so each
part keeps the same count. Anything whose result would change when a channel is removed rather than zeroed
marks the variables it touches fixed, with the reason: a grouped conv, a norm over the channels, a split into
fixed sizes or a slice that drops channels (their sizes are written in the model's code), a parameter used
directly in forward(), a reshape that mixes channels, or an op the tracer does not know. Variables that reach
the model's output are never pruned. graph.py turns the result into coupled channel groups.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from latprune.errors import ModelError

_PASS_FNS = {
    F.relu, torch.relu, torch.relu_, F.relu_, F.relu6, F.hardswish, F.hardsigmoid, torch.sigmoid, F.sigmoid,
    F.silu, F.gelu, torch.tanh, F.tanh, F.hardtanh, torch.clamp, torch.clip, F.leaky_relu, F.elu, F.mish,
    F.dropout, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout, F.max_pool2d, F.avg_pool2d,
    F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
}  # fmt: skip
_PASS_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "contiguous", "clone",
    "float", "to",
}  # fmt: skip
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.SiLU, nn.GELU, nn.Tanh, nn.Hardtanh,
    nn.LeakyReLU, nn.ELU, nn.Mish, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_BINARY_FNS = {operator.add, operator.iadd, torch.add, operator.mul, operator.imul, torch.mul, operator.sub,
               operator.isub, torch.sub, operator.truediv, operator.itruediv, torch.div}  # fmt: skip
_BINARY_METHODS = {"add", "add_", "__add__", "__radd__", "mul", "mul_", "__mul__", "__rmul__", "sub", "sub_",
                   "__sub__", "__rsub__", "div", "div_", "__truediv__"}  # fmt: skip
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
_REDUCE_FNS = {torch.mean, torch.sum, torch.amax, torch.amin}


@dataclass
class Ch:
    """The channel variables of one tensor: ``ids[i]`` is carried at index i of dimension ``axis``."""

    ids: np.ndarray
    axis: int


@dataclass
class Flow:
    """What one traced forward pass found (variables are ints; ``find`` gives a variable's class)."""

    parent: list[int] = field(default_factory=list)
    fixed: dict[int, str] = field(default_factory=dict)  # variable -> why its class cannot be pruned
    sink: set[int] = field(default_factory=set)  # variables that reach the model's output
    layers: list[tuple[str, nn.Module, tuple[int, int]]] = field(default_factory=list)  # execution order
    writers: dict[str, np.ndarray] = field(default_factory=dict)  # conv/linear -> its output variables
    readers: dict[str, np.ndarray] = field(default_factory=dict)  # conv/linear -> the variables of its input
    per_channel: list[tuple[str, np.ndarray]] = field(default_factory=list)  # BN, LayerNorm, depthwise conv

    def new(self, n: int, why: str = "") -> np.ndarray:
        ids = np.arange(len(self.parent), len(self.parent) + n, dtype=np.int64)
        self.parent.extend(ids.tolist())
        if why:
            for i in ids.tolist():
                self.fixed[i] = why
        return ids

    def find(self, v: int) -> int:
        root = v
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[v] != root:
            self.parent[v], v = root, self.parent[v]
        return root

    def tie(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx

    def fix(self, ids: np.ndarray, why: str) -> None:
        for v in ids.tolist():
            self.fixed.setdefault(v, why)

    def why_fixed(self, classes: set[int]) -> str:
        """The first reason any variable of ``classes`` is fixed ("" when none is)."""
        for v, why in self.fixed.items():
            if self.find(v) in classes:
                return why
        return ""


def _labels(value: Any) -> list[Ch]:
    if isinstance(value, Ch):
        return [value]
    if isinstance(value, (tuple, list)):
        return [c for v in value for c in _labels(v)]
    if isinstance(value, dict):
        return [c for v in value.values() for c in _labels(v)]
    return []


class _Tracer(torch.fx.Interpreter):
    """Runs the traced model once and computes every node's channel variables next to its value."""

    def __init__(self, gm: torch.fx.GraphModule, root: nn.Module, flow: Flow) -> None:
        super().__init__(gm)
        self.root = root  # gm holds empty shells for modules reached only through get_attr: look owners up here
        self.flow = flow
        self.labels: dict[torch.fx.Node, Any] = {}
        self.params: dict[int, str] = {}  # id(tensor) -> "module.path.weight" for get_attr values

    def run_node(self, n: torch.fx.Node) -> Any:
        value = super().run_node(n)
        if n.op == "get_attr" and isinstance(value, torch.Tensor):
            self.params[id(value)] = str(n.target)
        self.labels[n] = self.rule(n, value)
        return value

    # ------------------------------------------------------------------ helpers
    def lab(self, a: Any) -> Any:
        return self.labels.get(a) if isinstance(a, torch.fx.Node) else None

    def val(self, a: Any) -> Any:
        return self.env[a] if isinstance(a, torch.fx.Node) else a

    def unknown(self, n: torch.fx.Node, value: Any, why: str) -> Any:
        """An op whose channel mapping is not known: fix its inputs' variables; fresh fixed ones come out."""
        for ch in _labels([self.lab(a) for a in n.all_input_nodes]):
            self.flow.fix(ch.ids, why)
        return self.fresh(value, why)

    def fresh(self, value: Any, why: str) -> Any:
        if isinstance(value, torch.Tensor) and value.dim() >= 2:
            return Ch(self.flow.new(int(value.shape[1]), why), 1)
        if isinstance(value, (tuple, list)):
            return tuple(self.fresh(v, why) for v in value)
        return None

    def param_owner(self, t: Any, kind: type[nn.Module]) -> tuple[str, nn.Module] | None:
        path = self.params.get(id(t)) if isinstance(t, torch.Tensor) else None
        if path is None or "." not in path:
            return None
        owner = path.rsplit(".", 1)[0]
        module = self.root.get_submodule(owner)
        return (owner, module) if isinstance(module, kind) else None

    # ------------------------------------------------------------------ layers
    def layer(self, name: str, module: nn.Module, x: torch.Tensor, ch: Ch | None, value: torch.Tensor) -> Ch:
        if any(name == seen for seen, _, _ in self.flow.layers):
            raise ModelError(
                f"Layer '{name}' is called more than once in the forward pass; latprune needs each conv/linear "
                "module used once, so give every use its own module."
            )
        conv = isinstance(module, nn.Conv2d)
        hw = (int(x.shape[-2]), int(x.shape[-1])) if conv else (1, 1)
        if not conv and x.dim() == 4:
            hw = (int(x.shape[1]), int(x.shape[2]))  # a Linear over a channels-last (N, H, W, C) map
        self.flow.layers.append((name, module, hw))
        axis = 1 if conv else x.dim() - 1
        c_in = module.in_channels if conv else module.in_features
        if ch is None or ch.axis != axis or len(ch.ids) != c_in:
            if ch is not None:
                self.flow.fix(ch.ids, f"'{name}' reads its input along another dimension")
            ch = Ch(self.flow.new(c_in, "inputs of unknown origin"), axis)
        groups = module.groups if conv else 1
        if conv and groups > 1 and groups == module.in_channels == module.out_channels:
            self.flow.per_channel.append((name, ch.ids))  # depthwise: output channel i is input channel i
            return Ch(ch.ids, axis)
        c_out = module.out_channels if conv else module.out_features
        out = self.flow.new(c_out, "outputs of a grouped conv" if groups > 1 else "")
        if groups > 1:
            self.flow.fix(ch.ids, "inputs of a grouped conv")
        self.flow.writers[name], self.flow.readers[name] = out, ch.ids
        return Ch(out, axis)

    def norm(self, name: str, module: nn.Module, ch: Ch | None, over_channels: bool) -> Ch | None:
        if ch is not None:
            self.flow.per_channel.append((name, ch.ids))
            if over_channels:
                self.flow.fix(ch.ids, f"LayerNorm '{name}' normalises over the channels")
        return ch

    # ------------------------------------------------------------------ rules
    def rule(self, n: torch.fx.Node, value: Any) -> Any:
        if n.op == "placeholder":
            return self.fresh(value, "the image channels")
        if n.op in ("get_attr", "output"):
            if n.op == "output":
                for ch in _labels(self.lab_tree(n.args[0])):
                    self.flow.sink.update(ch.ids.tolist())
            return None
        if not _labels([self.lab(a) for a in n.all_input_nodes]) and n.op != "call_module":
            return None  # shapes, constants, parameters
        if n.op == "call_module":
            return self.module_rule(n, self.module.get_submodule(str(n.target)), value)
        return self.function_rule(n, n.target if n.op == "call_function" else str(n.target), value)

    def lab_tree(self, a: Any) -> Any:
        return torch.fx.node.map_arg(a, lambda x: self.labels.get(x))

    def module_rule(self, n: torch.fx.Node, m: nn.Module, value: Any) -> Any:
        x = self.val(n.args[0]) if n.args else None
        ch = self.lab(n.args[0]) if n.args else None
        name = str(n.target)
        if isinstance(m, (nn.Conv2d, nn.Linear)) and isinstance(x, torch.Tensor):
            return self.layer(name, m, x, ch, value)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return self.norm(name, m, ch, False)
        channel_ln = (
            ch is not None and ch.axis == x.dim() - 1 and tuple(getattr(m, "normalized_shape", ())) == (len(ch.ids),)
        )
        if isinstance(m, nn.LayerNorm) and channel_ln:
            return self.norm(name, m, ch, True)
        if isinstance(m, _PASS_MODULES):
            return ch
        if isinstance(m, nn.Flatten):
            return self.reshape(n, x, ch, value)
        return self.unknown(n, value, f"{type(m).__name__} module '{name}' (unknown to the channel tracer)")

    def function_rule(self, n: torch.fx.Node, fn: Any, value: Any) -> Any:
        method = isinstance(fn, str)
        x = self.val(n.args[0]) if n.args else None
        ch = self.lab(n.args[0]) if n.args else None
        if (fn in _PASS_METHODS) if method else (fn in _PASS_FNS):
            return ch
        if (fn in _BINARY_METHODS) if method else (fn in _BINARY_FNS):
            return self.binary(n, value)
        if (fn in _REDUCE_METHODS) if method else (fn in _REDUCE_FNS):
            return self.reduce(n, x, ch, value)
        if fn in (torch.cat, torch.concat):
            return self.cat(n, value)
        if fn in ("split", "chunk") or fn in (torch.split, torch.chunk):
            return self.split(n, x, ch, value, fn in ("chunk", torch.chunk))
        if fn is operator.getitem:
            return self.getitem(n, x, ch, value)
        if fn in ("view", "reshape", "flatten") or fn in (torch.flatten, torch.reshape):
            return self.reshape(n, x, ch, value)
        if fn in ("permute", "transpose") or fn in (torch.permute, torch.transpose):
            return self.permute(n, x, ch, value)
        if fn in ("size", "dim") or fn is getattr:
            return None
        stats = self.val(n.args[1] if len(n.args) > 1 else n.kwargs.get("running_mean"))
        if fn is F.batch_norm and (bn := self.param_owner(stats, nn.modules.batchnorm._BatchNorm)):
            return self.norm(bn[0], bn[1], ch, False)
        if fn is F.layer_norm and ch is not None and ch.axis == x.dim() - 1:
            shape = tuple(self.val(n.args[1]))
            weight = self.val(n.args[2] if len(n.args) > 2 else n.kwargs.get("weight"))
            ln = self.param_owner(weight, nn.LayerNorm)
            if shape == (len(ch.ids),) and ln is not None:
                return self.norm(ln[0], ln[1], ch, True)
        if fn in (F.linear, F.conv2d):
            weight = self.val(n.args[1] if len(n.args) > 1 else n.kwargs.get("weight"))
            owner = self.param_owner(weight, nn.Linear if fn is F.linear else nn.Conv2d)
            if owner is not None:
                return self.layer(owner[0], owner[1], x, ch, value)
        what = f"Tensor.{fn}" if method else getattr(fn, "__name__", repr(fn))
        return self.unknown(n, value, f"'{what}' (unknown to the channel tracer)")

    def binary(self, n: torch.fx.Node, value: Any) -> Any:
        operands = (n.args[0], n.args[1] if len(n.args) > 1 else n.kwargs.get("other"))
        if not isinstance(value, torch.Tensor):
            return None
        labelled = [
            Ch(self.lab(o).ids, self.lab(o).axis + value.dim() - self.val(o).dim())
            for o in operands
            if self.lab(o) is not None
        ]
        axis = labelled[0].axis
        for o in operands:
            v = self.val(o)
            if self.lab(o) is None and isinstance(v, torch.Tensor):
                pos = axis - (value.dim() - v.dim())
                if 0 <= pos < v.dim() and v.shape[pos] > 1:  # e.g. a layer scale: its entries are not sliced
                    for ch in labelled:
                        self.flow.fix(ch.ids, "a parameter or buffer used directly in forward()")
        if len(labelled) == 2:
            a, b = labelled
            if a.axis != b.axis:
                return self.unknown(n, value, "an element-wise op between differently laid out tensors")
            if len(a.ids) == len(b.ids):
                self.flow.tie(a.ids, b.ids)  # residual add or gate multiply: pruned together
                return a
            return a if len(a.ids) > len(b.ids) else b  # a one-channel map broadcast over the channels
        return labelled[0]

    def reduce(self, n: torch.fx.Node, x: torch.Tensor, ch: Ch | None, value: Any) -> Any:
        dims = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim")
        keep = n.kwargs.get("keepdim", n.args[2] if len(n.args) > 2 else False)
        if ch is None or dims is None:
            return self.unknown(n, value, "a reduction over every dimension")
        dims = [d % x.dim() for d in (dims if isinstance(dims, (tuple, list)) else (dims,))]
        if ch.axis in dims:
            return self.unknown(n, value, "a reduction over the channels")
        return Ch(ch.ids, ch.axis if keep else ch.axis - sum(d < ch.axis for d in dims))

    def cat(self, n: torch.fx.Node, value: torch.Tensor) -> Any:
        tensors = n.args[0] if n.args else n.kwargs["tensors"]
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        chs = [self.lab(t) for t in tensors]
        dim = dim % value.dim()
        if all(c is not None and c.axis == dim for c in chs):
            return Ch(np.concatenate([c.ids for c in chs]), dim)
        if all(c is not None and c.axis == chs[0].axis != dim and len(c.ids) == len(chs[0].ids) for c in chs):
            for c in chs[1:]:
                self.flow.tie(chs[0].ids, c.ids)  # concatenated along space: the same channels
            return chs[0]
        return self.unknown(n, value, "a concatenation the channel tracer cannot follow")

    def split(self, n: torch.fx.Node, x: torch.Tensor, ch: Ch | None, value: Any, chunk: bool) -> Any:
        dim = n.args[2] if len(n.args) > 2 else n.kwargs.get("dim", 0)
        dim = dim % x.dim()
        if ch is None:
            return None
        if dim != ch.axis:
            return tuple(Ch(ch.ids, ch.axis) for _ in value)  # split along space: every part has all channels
        sizes = [int(v.shape[dim]) for v in value]
        bounds = np.cumsum([0, *sizes])
        parts = [Ch(ch.ids[a:b], dim) for a, b in itertools.pairwise(bounds.tolist())]
        if chunk and len(set(sizes)) == 1:
            for p in parts[1:]:
                self.flow.tie(parts[0].ids, p.ids)  # chunk(k) of a pruned tensor: k equal parts, position by position
            return tuple(parts)
        self.flow.fix(ch.ids, "a split into sizes written in the model's code")
        return tuple(parts)

    def getitem(self, n: torch.fx.Node, x: Any, ch: Any, value: Any) -> Any:
        index = self.val(n.args[1])
        if isinstance(ch, tuple):
            return ch[index]
        if not isinstance(x, torch.Tensor) or ch is None:
            return None
        index = index if isinstance(index, tuple) else (index,)
        if Ellipsis in index:
            k = index.index(Ellipsis)
            index = index[:k] + (slice(None),) * (x.dim() - len(index) + 1) + index[k + 1 :]
        if any(not isinstance(i, slice) for i in index[: ch.axis + 1]):
            return self.unknown(n, value, "indexing that the channel tracer cannot follow")
        if len(index) <= ch.axis:
            return ch
        kept = ch.ids[index[ch.axis]]
        if len(kept) != len(ch.ids):
            self.flow.fix(ch.ids, "a channel slice whose bounds are written in the model's code")
        return Ch(kept, ch.axis)

    def reshape(self, n: torch.fx.Node, x: torch.Tensor, ch: Ch | None, value: torch.Tensor) -> Any:
        if ch is None:
            return None
        a, shape_in, shape_out = ch.axis, tuple(x.shape), tuple(value.shape)
        prefix = math.prod(shape_in[:a])
        for b in range(len(shape_out)):
            if math.prod(shape_out[:b]) != prefix:
                continue
            for k in range(a + 1, len(shape_in) + 1):  # the channel dim merged with the dims after it
                inner = math.prod(shape_in[a + 1 : k])
                if shape_out[b] == shape_in[a] * inner:
                    return Ch(np.repeat(ch.ids, inner), b)
        return self.unknown(n, value, "a reshape that mixes the channels with other dimensions")

    def permute(self, n: torch.fx.Node, x: torch.Tensor, ch: Ch | None, value: Any) -> Any:
        if ch is None:
            return None
        args = [self.val(a) for a in n.args[1:]]
        if n.target in ("transpose", torch.transpose):
            d0, d1 = (d % x.dim() for d in args[:2])
            axis = d1 if ch.axis == d0 else d0 if ch.axis == d1 else ch.axis
            return Ch(ch.ids, axis)
        dims = args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args
        return Ch(ch.ids, [d % x.dim() for d in dims].index(ch.axis))


def trace_flow(gm: torch.fx.GraphModule, root: nn.Module, example: torch.Tensor) -> Flow:
    """Run ``gm`` (traced from ``root``) on ``example`` once, without grad, and return its channel flow."""
    flow = Flow()
    with torch.no_grad():
        _Tracer(gm, root, flow).run(example)
    return flow


__all__ = ["Ch", "Flow", "trace_flow"]
