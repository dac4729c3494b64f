"""Capture rules for tensor plumbing: constants, per-channel scale/shift, the squeeze-excite gate, concatenation,
split/chunk/slices (views), reshapes, channels-last permutes and the functional forms of conv, linear and BN."""

from __future__ import annotations

import itertools
import math
import operator
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F

from latprune.engine.activations import ACT_NONE
from latprune.engine.ir import ChannelScaleOp, ConvOp, CopyOp, TensorRef
from latprune.engine.kernels import ConvMeta

BATCH = type("Batch", (), {"__repr__": lambda self: "N"})()  # the batch size: the compiled model runs any batch

_BINARY_FNS = {
    operator.add: "add", operator.iadd: "add", torch.add: "add", operator.mul: "mul", operator.imul: "mul",
    torch.mul: "mul", operator.sub: "sub", operator.isub: "sub", torch.sub: "sub", operator.truediv: "div",
    operator.itruediv: "div", torch.div: "div",
}  # fmt: skip
_BINARY_METHODS = {
    "add": "add", "add_": "add", "__add__": "add", "__radd__": "add", "mul": "mul", "mul_": "mul",
    "__mul__": "mul", "__rmul__": "mul", "sub": "sub", "sub_": "sub", "__sub__": "sub", "div": "div",
    "div_": "div", "__truediv__": "div",
}  # fmt: skip


class Unsupported(Exception):
    """A node the engine cannot compile (a signal inside capture, which reports them all in one EngineError):
    ``kind`` groups nodes in the error, ``hint`` says why or what to do."""

    def __init__(self, kind: str, hint: str = "") -> None:
        super().__init__(kind)
        self.kind, self.hint = kind, hint


class ChannelsLast:
    """A tensor that torch sees permuted to (N, H, W, C) while the engine keeps ``ref`` in NCHW memory."""

    def __init__(self, ref: TensorRef) -> None:
        self.ref = ref


def arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional-or-keyword argument of a call node (fx keeps whichever form the model used)."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def refs_in(value: Any) -> list[TensorRef]:
    """Every TensorRef in ``value`` (channels-last tensors, tuples and lists included)."""
    if isinstance(value, TensorRef):
        return [value]
    if isinstance(value, ChannelsLast):
        return [value.ref]
    if isinstance(value, (tuple, list)):
        return [r for v in value for r in refs_in(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in refs_in(v)]
    return []


def has_ref(env_or_value: Any, node: torch.fx.Node | None = None, kinds: tuple = (TensorRef, ChannelsLast)) -> bool:
    """Whether ``node``'s inputs (looked up in ``env_or_value``), or ``env_or_value`` itself, hold a tensor."""
    if node is not None:
        return any(has_ref(env_or_value.get(a), kinds=kinds) for a in node.all_input_nodes)
    if isinstance(env_or_value, kinds):
        return True
    if isinstance(env_or_value, (tuple, list)):
        return any(has_ref(v, kinds=kinds) for v in env_or_value)
    if isinstance(env_or_value, dict):
        return any(has_ref(v, kinds=kinds) for v in env_or_value.values())
    return False


def module_path(node: torch.fx.Node) -> str:
    """The module a node belongs to, as a path like ``blocks.1.0.se.gate`` (fx's node names are not paths)."""
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        if path:
            return str(path)
    return "the top-level forward()"


def fn_name(fn: Any) -> str:
    module = getattr(fn, "__module__", None) or "torch"
    name = f"{module}.{getattr(fn, '__name__', repr(fn))}"
    return name.replace("torch.nn.functional.", "F.").replace("_operator.", "operator.")


class TensorOps:
    """Mixin of ``_Capture`` (capture.py): the rules that move, reshape and combine tensors."""

    # ----------------------------------------------------------------- values
    def register(self, node: torch.fx.Node, value: Any) -> None:
        for ref in refs_in(value):
            self.buf_nodes.setdefault(ref.buf, []).append(node)

    def env_args(self, value: Any) -> Any:
        return torch.fx.node.map_arg(value, lambda n: self.env[n])

    def const(self, node: torch.fx.Node, index: int, name: str) -> torch.Tensor | None:
        """Argument ``index`` (or keyword ``name``) of ``node`` as a constant tensor (a parameter or buffer)."""
        value = self.env_args(arg(node, index, name))
        if value is not None and not isinstance(value, torch.Tensor):
            raise self.fail(f"{fn_name(node.target)} with a computed weight", "weights must be parameters")
        return value

    def owner(self, tensor: Any, fallback: str) -> str:
        """The module a parameter belongs to (``head.fc`` for ``head.fc.weight``): the layer's name."""
        path = self.param_paths.get(id(tensor))
        return path.rsplit(".", 1)[0] if path and "." in path else fallback

    def fold(self, node: torch.fx.Node) -> Any:
        """A node that reads no computed tensor (parameters, shapes, Python values): evaluate it now."""
        args, kwargs = self.env_args(node.args), self.env_args(node.kwargs)
        try:
            with torch.no_grad():
                if node.op == "call_method":
                    return getattr(args[0], str(node.target))(*args[1:], **kwargs)
                return node.target(*args, **kwargs)
        except Exception as exc:
            what = f"method {node.target}" if node.op == "call_method" else f"function {fn_name(node.target)}"
            raise self.fail(f"{what} on constants or shapes", f"{type(exc).__name__}: {str(exc)[:100]}") from None

    # ----------------------------------------------------------------- dispatch
    def visit_tensor_function(self, node: torch.fx.Node, fn: Any) -> Any:
        if fn in _BINARY_FNS:
            return self.binary(node, _BINARY_FNS[fn], node.args[0], arg(node, 1, "other"))
        if fn in (torch.cat, torch.concat):
            return self.cat(node, arg(node, 0, "tensors"), arg(node, 1, "dim", 0))
        if fn is torch.split:
            return self.split(node, node.args[0], arg(node, 1, "split_size_or_sections"), arg(node, 2, "dim", 0))
        if fn is torch.chunk:
            return self.chunk(node, node.args[0], arg(node, 1, "chunks"), arg(node, 2, "dim", 0))
        if fn is torch.narrow:
            return self.narrow(node, node.args[0], arg(node, 1, "dim"), arg(node, 2, "start"), arg(node, 3, "length"))
        if fn is operator.getitem:
            return self.getitem(node, node.args[0], node.args[1])
        if fn is torch.permute:
            return self.permute(node, node.args[0], arg(node, 1, "dims"))
        if fn is getattr:
            return self.attribute(node, self.env[node.args[0]], node.args[1])
        if fn is F.batch_norm:
            if arg(node, 5, "training", False):
                raise self.fail("F.batch_norm in training mode", "the engine folds running statistics")
            stats = (self.const(node, 1, "running_mean"), self.const(node, 2, "running_var"))
            stats += (self.const(node, 3, "weight"), self.const(node, 4, "bias"))
            return self.batchnorm(node, self.owner(stats[0], module_path(node)), stats, arg(node, 7, "eps", 1e-5))
        if fn is F.linear:
            w = self.const(node, 1, "weight")
            return self.linear(node, self.owner(w, module_path(node)), node.args[0], w, self.const(node, 2, "bias"))
        if fn is F.conv2d:
            x = self.tensor(node, node.args[0], image=True)
            w = self.const(node, 1, "weight")
            geometry = tuple(self.env_args(arg(node, i, k, d)) for i, k, d in ((3, "stride", 1), (4, "padding", 0)))
            geometry += (arg(node, 5, "dilation", 1), arg(node, 6, "groups", 1))
            return self.conv(node, self.owner(w, module_path(node)), x, w, self.const(node, 2, "bias"), geometry)
        raise self.fail(f"function {fn_name(fn)}")

    def visit_tensor_method(self, node: torch.fx.Node, method: str) -> Any:
        x = node.args[0]
        if method in _BINARY_METHODS:
            return self.binary(node, _BINARY_METHODS[method], x, arg(node, 1, "other"))
        if method == "permute":
            dims = node.args[1:] if len(node.args) > 2 else arg(node, 1, "dims")
            return self.permute(node, x, dims)
        if method == "split":
            return self.split(node, x, arg(node, 1, "split_size"), arg(node, 2, "dim", 0))
        if method == "chunk":
            return self.chunk(node, x, arg(node, 1, "chunks"), arg(node, 2, "dim", 0))
        if method == "narrow":
            return self.narrow(node, x, arg(node, 1, "dim"), arg(node, 2, "start"), arg(node, 3, "length"))
        if method == "size":
            shape = self.attribute(node, self.env[x], "shape")
            d = arg(node, 1, "dim")
            return shape if d is None else shape[d]
        if method == "dim":
            return self.attribute(node, self.env[x], "ndim")
        raise self.fail(f"method Tensor.{method}")

    def attribute(self, node: torch.fx.Node, value: Any, name: str) -> Any:
        if isinstance(value, ChannelsLast):
            shape = (BATCH, value.ref.h, value.ref.w, value.ref.c)
        elif isinstance(value, TensorRef):
            shape = (BATCH, value.c) if value.flat else (BATCH, value.c, value.h, value.w)
        else:
            raise self.fail(f"attribute '{name}' of a {type(value).__name__}")
        known = {"shape": shape, "ndim": len(shape), "dtype": torch.float32, "device": torch.device("cpu")}
        if name not in known:
            raise self.fail(f"tensor attribute '{name}'", "the engine knows shape, ndim, dtype and device")
        return known[name]

    # ----------------------------------------------------------------- element-wise with broadcasting
    def binary(self, node: torch.fx.Node, op: str, a: Any, b: Any) -> Any:
        if op == "add" and node.kwargs.get("alpha", 1) != 1:
            raise self.fail("add with alpha", "write the scaling as a separate multiply")
        va = self.env[a] if isinstance(a, torch.fx.Node) else a
        vb = self.env[b] if isinstance(b, torch.fx.Node) else b
        ta, tb = isinstance(va, (TensorRef, ChannelsLast)), isinstance(vb, (TensorRef, ChannelsLast))
        if ta and tb:
            if op == "add":
                return self.add(node, a, b)
            if op == "mul":
                return self.channel_scale(node, a, b)
            raise self.fail(f"{op} of two computed tensors", "only add and the squeeze-excite multiply are supported")
        x, c = (a, vb) if ta else (b, va)
        c = c.detach().float().cpu() if isinstance(c, torch.Tensor) else torch.tensor(float(c))
        one, zero = torch.ones(()), torch.zeros(())
        if op == "add":
            scale, shift = one, c
        elif op == "mul":
            scale, shift = c, zero
        elif op == "sub":
            scale, shift = (one, -c) if ta else (-one, c)
        elif ta:  # x / c
            scale, shift = 1.0 / c, zero
        else:
            raise self.fail("division by a computed tensor")
        val = self.env[x]
        ref = val.ref if isinstance(val, ChannelsLast) else self.tensor(node, x)
        scale_c = self.per_channel(ref, isinstance(val, ChannelsLast), scale)
        shift_c = self.per_channel(ref, isinstance(val, ChannelsLast), shift)
        return self.affine(node, x, scale_c, shift_c, f"{module_path(node)} ({node.name})")

    def per_channel(self, x: TensorRef, channels_last: bool, c: torch.Tensor) -> np.ndarray:
        """Constant ``c`` as one value per channel of ``x``, if torch's broadcasting makes it that."""
        rank = 4 if channels_last or not x.flat else 2
        shape = (1,) * (rank - c.dim()) + tuple(c.shape)
        axis = rank - 1 if channels_last or x.flat else 1
        if c.dim() > rank or any(s != 1 for i, s in enumerate(shape) if i != axis) or shape[axis] not in (1, x.c):
            raise self.fail("broadcast by a constant that is not per channel", f"shape {tuple(c.shape)}")
        return np.broadcast_to(c.reshape(-1).numpy().astype(np.float32), (x.c,)).copy()

    def affine(self, node: torch.fx.Node, src: Any, scale: np.ndarray, shift: np.ndarray, name: str) -> Any:
        """``x * scale[c] + shift[c]``: folded into the conv that made x when nothing else reads it (BN folding),
        else a depthwise 1x1 conv, which every dense engine runs."""
        val = self.env[src]
        channels_last = isinstance(val, ChannelsLast)
        x = val.ref if channels_last else self.tensor(node, src)
        if scale.shape != (x.c,) or shift.shape != (x.c,):
            raise self.fail("per-channel scale/shift of the wrong size", f"{scale.shape[0]} values, {x.c} channels")
        prod = self.sole_producer(src)
        if isinstance(prod, ConvOp) and prod.act == ACT_NONE and prod.residual is None:
            # Fold: W' = W * scale[co], b' = b * scale + shift, so the conv alone gives the affine's output.
            prod.weight = (prod.weight * scale[:, None, None, None]).astype(np.float32)
            prod.bias = (prod.bias * scale + shift).astype(np.float32)
            return self.alias(node, src, val)
        out = self.like(x)
        meta = ConvMeta(x.c, x.c, x.h, x.w, groups=x.c)
        weight = scale.reshape(x.c, 1, 1, 1).astype(np.float32)  # (C, 1, 1, 1)
        ref = self.emit(node, ConvOp(name, x, out, weight, shift.astype(np.float32), meta))
        return ChannelsLast(ref) if channels_last else ref

    def channel_scale(self, node: torch.fx.Node, a: Any, b: Any) -> TensorRef:
        """Feature map times a (C, 1, 1) gate computed by the network: the squeeze-excite multiply."""
        ra, rb = self.tensor(node, a), self.tensor(node, b)
        for x, g in ((ra, rb), (rb, ra)):
            if not x.flat and not g.flat and (g.h, g.w) == (1, 1) and g.c == x.c and (x.h, x.w) != (1, 1):
                out = x if self.can_overwrite(node, x) else self.like(x)
                return self.emit(node, ChannelScaleOp(node.name, x, g, out))
        raise self.fail("mul of two computed tensors that is not a (N, C, 1, 1) gate", f"{ra} and {rb}")

    # ----------------------------------------------------------------- views
    def channel_dim(self, x: TensorRef, dim: Any, what: str) -> None:
        ok = (1, -1) if x.flat else (1, -3)
        if dim not in ok:
            raise self.fail(f"{what} along a dimension other than the channels", f"dim={dim}")

    def cat(self, node: torch.fx.Node, tensors: Any, dim: Any) -> TensorRef:
        parts = [self.tensor(node, t) for t in tensors]
        for p in parts:
            self.channel_dim(p, dim, "torch.cat")
        if len({(p.h, p.w, p.flat) for p in parts}) != 1:
            raise self.fail("torch.cat of tensors with different sizes", f"{[(p.h, p.w) for p in parts]}")
        out = self.new_ref(sum(p.c for p in parts), parts[0].h, parts[0].w, parts[0].flat)
        self.cat_bufs.add(out.buf)
        start = 0
        for p in parts:  # copies the placement pass (views.py) turns into writes in place where it can
            self.ops.append(CopyOp(node.name, p, out.channels(start, start + p.c), placeable=True))
            start += p.c
        return out

    def split(self, node: torch.fx.Node, src: Any, sizes: Any, dim: Any) -> tuple[TensorRef, ...]:
        x = self.tensor(node, src)
        self.channel_dim(x, dim, "split")
        if isinstance(sizes, int):
            sizes = [sizes] * (x.c // sizes) + ([x.c % sizes] if x.c % sizes else [])
        if sum(sizes) != x.c or min(sizes) < 1:
            raise self.fail("split into sizes that do not add up to the channels", f"{list(sizes)} of {x.c}")
        bounds = np.cumsum([0, *sizes]).tolist()
        return tuple(x.channels(a, b) for a, b in itertools.pairwise(bounds))

    def chunk(self, node: torch.fx.Node, src: Any, chunks: int, dim: Any) -> tuple[TensorRef, ...]:
        return self.split(node, src, math.ceil(self.tensor(node, src).c / int(chunks)), dim)  # torch's rule

    def narrow(self, node: torch.fx.Node, src: Any, dim: Any, start: int, length: int) -> TensorRef:
        x = self.tensor(node, src)
        self.channel_dim(x, dim, "narrow")
        start = start + x.c if start < 0 else start
        if not 0 <= start < start + length <= x.c:
            raise self.fail("narrow outside the channels", f"[{start}, {start + length}) of {x.c}")
        return x.channels(start, start + length)

    def getitem(self, node: torch.fx.Node, src: Any, index: Any) -> Any:
        value = self.env[src]
        if isinstance(value, (tuple, list)):
            return value[index]  # one part of a split
        x = self.tensor(node, src)
        index = index if isinstance(index, tuple) else (index,)
        full = slice(None)
        if len(index) < 2 or index[0] != full or any(i not in (full, Ellipsis) for i in index[2:]):
            raise self.fail("indexing other than a channel slice x[:, a:b]", f"index {index}")
        if not isinstance(index[1], slice) or index[1].step not in (None, 1):
            raise self.fail("indexing other than a channel slice x[:, a:b]", f"index {index}")
        start, stop, _ = index[1].indices(x.c)
        if stop <= start:
            raise self.fail("an empty channel slice", f"index {index}")
        return self.alias(node, src, x.channels(start, stop)) if (start, stop) == (0, x.c) else x.channels(start, stop)

    def permute(self, node: torch.fx.Node, src: Any, dims: Any) -> Any:
        dims = tuple(int(d) % 4 for d in dims)
        value = self.env[src]
        if isinstance(value, TensorRef) and not value.flat and dims == (0, 2, 3, 1):
            return self.alias(node, src, ChannelsLast(value))
        if isinstance(value, ChannelsLast) and dims == (0, 3, 1, 2):
            return self.alias(node, src, value.ref)
        raise self.fail("permute other than NCHW <-> channels-last", f"dims {dims}")

    def flatten(self, node: torch.fx.Node, start: Any, end: Any = -1) -> TensorRef:
        x = self.tensor(node, node.args[0])
        if start != 1 or end not in (-1, 3):
            raise self.fail("flatten other than to (N, features)", f"start_dim={start}, end_dim={end}")
        return self.alias(node, node.args[0], x.flattened())

    def view(self, node: torch.fx.Node) -> TensorRef:
        """view/reshape to (N, -1) (flatten), or of features to an (N, C, H, W) image of the same size."""
        x = self.tensor(node, node.args[0])
        args = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        shape = list(self.env_args(tuple(args)))
        batch_ok = shape and (shape[0] is BATCH or shape[0] == self.batch)
        if shape and shape[0] == -1 and -1 not in shape[1:] and math.prod(shape[1:]) == x.size:
            batch_ok = True
        rest = shape[1:]
        if batch_ok and rest.count(-1) <= 1 and all(isinstance(d, int) for d in rest):
            known = math.prod(d for d in rest if d != -1)
            if known and x.size % known == 0:
                rest = [x.size // known if d == -1 else d for d in rest]
            if len(rest) == 1 and rest[0] == x.size:
                return self.alias(node, node.args[0], x.flattened())
            if len(rest) == 3 and math.prod(rest) == x.size:
                c, h, w = rest
                return self.alias(node, node.args[0], TensorRef(x.buf, c, h, w, False, x.offset))
        raise self.fail(f"{node.target} to a shape other than (N, -1) or (N, C, H, W)", f"shape {shape}")


__all__ = ["BATCH", "ChannelsLast", "TensorOps", "Unsupported", "arg", "fn_name", "has_ref", "module_path", "refs_in"]
