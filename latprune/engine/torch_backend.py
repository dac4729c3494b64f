"""The reference backend: interpret the engine IR with torch ops (runs only when asked for, never as a fallback)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from latprune.engine.ir import (
    ACT_HARDSWISH,
    ACT_RELU,
    ACT_RELU6,
    ActOp,
    AdaptiveAvgPoolOp,
    AddOp,
    ConvOp,
    CopyOp,
    Graph,
    PoolOp,
    TensorRef,
)


def apply_act(x: torch.Tensor, act: int) -> torch.Tensor:
    """The LP_ACT_* activation in torch."""
    if act == ACT_RELU:
        return F.relu(x)
    if act == ACT_RELU6:
        return F.relu6(x)
    if act == ACT_HARDSWISH:
        return F.hardswish(x)
    return x


class TorchGraphRunner:
    """Runs a ``Graph`` op by op with torch.nn.functional; weights are converted to tensors once."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.weights = {
            id(op): (torch.from_numpy(op.weight.copy()), torch.from_numpy(op.bias.copy())) for op in graph.conv_ops()
        }

    def __call__(self, x: torch.Tensor, nthreads: int | None = None) -> torch.Tensor:
        n = x.shape[0]
        bufs: dict[int, torch.Tensor] = {self.graph.input.buf: x.reshape(n, -1)}  # (N, floats per image)

        def read(ref: TensorRef) -> torch.Tensor:
            return bufs[ref.buf].reshape(n, ref.c, ref.h, ref.w)  # flat refs read as (N, F, 1, 1)

        old_threads = torch.get_num_threads()
        if nthreads:
            torch.set_num_threads(nthreads)
        try:
            with torch.no_grad():
                for op in self.graph.ops:
                    if isinstance(op, ConvOp):
                        w, b = self.weights[id(op)]
                        m = op.meta
                        y = F.conv2d(read(op.x), w, b, (m.stride_h, m.stride_w), (m.pad_h, m.pad_w), 1, m.groups)
                        if op.residual is not None:
                            y = y + read(op.residual)
                        y = apply_act(y, op.act)
                    elif isinstance(op, PoolOp):
                        k, s, p = (op.kh, op.kw), (op.stride_h, op.stride_w), (op.pad_h, op.pad_w)
                        ceil = (op.out.h, op.out.w) != (
                            (op.x.h + 2 * op.pad_h - op.kh) // op.stride_h + 1,
                            (op.x.w + 2 * op.pad_w - op.kw) // op.stride_w + 1,
                        )
                        if op.is_max:
                            y = F.max_pool2d(read(op.x), k, s, p, ceil_mode=ceil)
                        else:
                            y = F.avg_pool2d(
                                read(op.x), k, s, p, ceil_mode=ceil, count_include_pad=op.count_include_pad
                            )
                        y = apply_act(y, op.act)
                    elif isinstance(op, AdaptiveAvgPoolOp):
                        y = F.adaptive_avg_pool2d(read(op.x), (op.out.h, op.out.w))
                    elif isinstance(op, AddOp):
                        y = apply_act(read(op.a) + read(op.b), op.act)
                    elif isinstance(op, ActOp):
                        y = apply_act(read(op.x), op.act)
                    elif isinstance(op, CopyOp):
                        y = read(op.x).clone()
                    else:  # pragma: no cover - every IR op is handled above
                        raise TypeError(f"unknown IR op {type(op).__name__}")
                    bufs[op.out.buf] = y.reshape(n, -1)  # (N, floats per image)
        finally:
            torch.set_num_threads(old_threads)
        out = self.graph.output
        return bufs[out.buf].reshape((n, out.c) if out.flat else (n, out.c, out.h, out.w)).clone()


__all__ = ["TorchGraphRunner", "apply_act"]
