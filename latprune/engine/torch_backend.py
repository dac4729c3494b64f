"""The reference backend: interpret the engine IR with torch ops (runs only when asked for, never as a fallback)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from latprune.engine.activations import apply_act
from latprune.engine.ir import (
    ActOp,
    AdaptiveAvgPoolOp,
    AddOp,
    ChannelScaleOp,
    ConvOp,
    CopyOp,
    Graph,
    LayerNormOp,
    PoolOp,
    TensorRef,
    TorchOp,
)
from latprune.engine.views import map_refs


class _Buffers:
    """The graph's buffers for one batch, each (N, floats per image); refs read and write views of them."""

    def __init__(self, graph: Graph, n: int) -> None:
        self.graph, self.n = graph, n
        self.data: dict[int, torch.Tensor] = {}

    def read(self, ref: TensorRef) -> torch.Tensor:
        flat = self.data[ref.buf][:, ref.offset : ref.offset + ref.size]  # (N, floats of the view)
        return flat.reshape((self.n, ref.c) if ref.flat else (self.n, ref.c, ref.h, ref.w))

    def read4(self, ref: TensorRef) -> torch.Tensor:
        """``ref`` as (N, C, H, W); features read as (N, F, 1, 1)."""
        return self.read(ref).reshape(self.n, ref.c, ref.h, ref.w)

    def write(self, ref: TensorRef, y: torch.Tensor) -> None:
        y = y.reshape(self.n, -1)  # (N, floats per image)
        size = self.graph.buffer_sizes.get(ref.buf, ref.size)
        if ref.offset == 0 and ref.size == size:
            self.data[ref.buf] = y.clone()
            return
        if ref.buf not in self.data:
            self.data[ref.buf] = torch.zeros(self.n, size)
        self.data[ref.buf][:, ref.offset : ref.offset + ref.size] = y


class TorchGraphRunner:
    """Runs a ``Graph`` op by op with torch.nn.functional; weights are converted to tensors once."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.weights = {
            id(op): (torch.from_numpy(op.weight.copy()), torch.from_numpy(op.bias.copy()))
            for op in graph.ops
            if isinstance(op, (ConvOp, LayerNormOp))
        }

    def run_op(self, op: Any, b: _Buffers) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if isinstance(op, ConvOp):
            w, bias = self.weights[id(op)]
            m = op.meta
            y = F.conv2d(b.read4(op.x), w, bias, (m.stride_h, m.stride_w), (m.pad_h, m.pad_w), 1, m.groups)
            if op.residual is not None:
                y = y + b.read4(op.residual)
            return apply_act(y, op.act)
        if isinstance(op, PoolOp):
            k, s, p = (op.kh, op.kw), (op.stride_h, op.stride_w), (op.pad_h, op.pad_w)
            ceil = (op.out.h, op.out.w) != (
                (op.x.h + 2 * op.pad_h - op.kh) // op.stride_h + 1,
                (op.x.w + 2 * op.pad_w - op.kw) // op.stride_w + 1,
            )
            if op.is_max:
                y = F.max_pool2d(b.read4(op.x), k, s, p, ceil_mode=ceil)
            else:
                y = F.avg_pool2d(b.read4(op.x), k, s, p, ceil_mode=ceil, count_include_pad=op.count_include_pad)
            return apply_act(y, op.act)
        if isinstance(op, AdaptiveAvgPoolOp):
            return F.adaptive_avg_pool2d(b.read4(op.x), (op.out.h, op.out.w))
        if isinstance(op, AddOp):
            return apply_act(b.read4(op.a) + b.read4(op.b), op.act)
        if isinstance(op, ActOp):
            return apply_act(b.read4(op.x), op.act)
        if isinstance(op, CopyOp):
            return b.read4(op.x).clone()
        if isinstance(op, ChannelScaleOp):
            gate = b.read(op.scale).reshape(b.n, op.x.c, 1, 1)
            return apply_act(b.read4(op.x) * gate, op.act)
        if isinstance(op, LayerNormOp):
            w, bias = self.weights[id(op)]
            x = b.read4(op.x).permute(0, 2, 3, 1)  # (N, H, W, C): normalise each pixel's channels
            return apply_act(F.layer_norm(x, (op.x.c,), w, bias, op.eps).permute(0, 3, 1, 2), op.act)
        if isinstance(op, TorchOp):
            args, kwargs = map_refs((op.args, op.kwargs), lambda r: _Ref(b.read(r)))
            return op.fn(*_unwrap(args), **_unwrap(kwargs))
        raise TypeError(f"unknown IR op {type(op).__name__}")  # pragma: no cover - every IR op is handled above

    def __call__(self, x: torch.Tensor, nthreads: int | None = None) -> torch.Tensor:
        n = x.shape[0]
        bufs = _Buffers(self.graph, n)
        bufs.data[self.graph.input.buf] = x.reshape(n, -1)  # (N, floats per image)
        old_threads = torch.get_num_threads()
        if nthreads:
            torch.set_num_threads(nthreads)
        try:
            with torch.no_grad():
                for op in self.graph.ops:
                    y = self.run_op(op, bufs)
                    outs = op.outs if isinstance(op, TorchOp) else (op.out,)
                    for ref, value in zip(outs, y if isinstance(y, (tuple, list)) else (y,), strict=True):
                        bufs.write(ref, value)
        finally:
            torch.set_num_threads(old_threads)
        return bufs.read(self.graph.output).clone()


class _Ref:
    """A tensor read for a TorchOp argument (map_refs rebuilds containers; this marks what to unwrap)."""

    def __init__(self, t: torch.Tensor) -> None:
        self.t = t


def _unwrap(value: Any) -> Any:
    if isinstance(value, _Ref):
        return value.t
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


__all__ = ["TorchGraphRunner", "apply_act"]
