"""The compiler's intermediate representation: a list of ops over numbered buffers, and the arena plan."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latprune.engine.kernels import ConvMeta

# Activation codes, identical to LP_ACT_* in csrc/lp_common.h (the generated C passes them through).
ACT_NONE, ACT_RELU, ACT_RELU6, ACT_HARDSWISH = 0, 1, 2, 3
ACT_NAMES = {ACT_NONE: "none", ACT_RELU: "relu", ACT_RELU6: "relu6", ACT_HARDSWISH: "hardswish"}

#: Every arena buffer starts on a 64-byte boundary (one cache line, one AVX-512 register).
ALIGN_FLOATS = 16


@dataclass(frozen=True)
class TensorRef:
    """A view of one buffer as a per-image tensor: (c, h, w), or (c,) features when ``flat``.

    Several refs may share a buffer: ``flatten`` and ``view(N, -1)`` only reinterpret NCHW memory, and
    in-place activations write back into their input, so neither needs a copy.
    """

    buf: int
    c: int
    h: int
    w: int
    flat: bool = False

    @property
    def size(self) -> int:
        """Floats per image."""
        return self.c * self.h * self.w

    def flattened(self) -> TensorRef:
        return TensorRef(self.buf, self.size, 1, 1, flat=True)


@dataclass(eq=False)
class ConvOp:
    """Convolution or linear layer (a 1x1 conv on a 1x1 image) with BN folded in and a fused epilogue.

    ``out = act(conv(x, weight) + bias (+ residual))``; ``kernel``/``variant`` are filled in by kernel selection.
    """

    name: str
    x: TensorRef
    out: TensorRef
    weight: np.ndarray  # (c_out, c_in/groups, kh, kw) float32, zeros = pruned
    bias: np.ndarray  # (c_out,) float32
    meta: ConvMeta
    act: int = ACT_NONE
    residual: TensorRef | None = None
    kernel: str = ""
    variant: int = 0

    @property
    def inputs(self) -> list[TensorRef]:
        return [self.x] if self.residual is None else [self.x, self.residual]


@dataclass(eq=False)
class PoolOp:
    """Max or average pooling with a kernel window (``ceil_mode`` is already resolved into ``out``'s shape)."""

    name: str
    x: TensorRef
    out: TensorRef
    is_max: bool
    kh: int
    kw: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    count_include_pad: bool = True
    act: int = ACT_NONE

    @property
    def inputs(self) -> list[TensorRef]:
        return [self.x]


@dataclass(eq=False)
class AdaptiveAvgPoolOp:
    """Adaptive average pooling to ``out.h`` x ``out.w`` (1x1 is global average pooling)."""

    name: str
    x: TensorRef
    out: TensorRef

    @property
    def inputs(self) -> list[TensorRef]:
        return [self.x]


@dataclass(eq=False)
class AddOp:
    """Element-wise ``act(a + b)``, used where the add could not be fused into a conv epilogue."""

    name: str
    a: TensorRef
    b: TensorRef
    out: TensorRef
    act: int = ACT_NONE

    @property
    def inputs(self) -> list[TensorRef]:
        return [self.a, self.b]


@dataclass(eq=False)
class ActOp:
    """A stand-alone activation (one that follows neither a conv nor an add); may run in place."""

    name: str
    x: TensorRef
    out: TensorRef
    act: int

    @property
    def inputs(self) -> list[TensorRef]:
        return [self.x]


@dataclass(eq=False)
class CopyOp:
    """Copy one buffer into another (only when the network's output would otherwise be its input)."""

    name: str
    x: TensorRef
    out: TensorRef

    @property
    def inputs(self) -> list[TensorRef]:
        return [self.x]


Op = ConvOp | PoolOp | AdaptiveAvgPoolOp | AddOp | ActOp | CopyOp


@dataclass
class Graph:
    """A captured network: ops in execution order, the input and output refs, and every buffer's size."""

    name: str
    ops: list[Op]
    input: TensorRef
    output: TensorRef
    buffer_sizes: dict[int, int] = field(default_factory=dict)  # buffer id -> floats per image

    def conv_ops(self) -> list[ConvOp]:
        return [op for op in self.ops if isinstance(op, ConvOp)]


@dataclass(frozen=True)
class ArenaPlan:
    """Where each arena buffer lives (float offsets) and how large the arena is, per image."""

    offsets: dict[int, int]  # buffer id -> float offset in the arena
    scratch_offsets: dict[int, int]  # op index -> float offset of that op's scratch
    total_floats: int


def _aligned(n: int) -> int:
    return (n + ALIGN_FLOATS - 1) // ALIGN_FLOATS * ALIGN_FLOATS


def plan_arena(graph: Graph, scratch_floats: dict[int, int]) -> ArenaPlan:
    """Give every intermediate buffer (and each op's scratch) an arena offset, reusing memory between
    buffers whose lifetimes do not overlap.

    Greedy by size (largest first, lowest offset that fits), the strategy TFLite's arena planner uses:
    it is near optimal for CNNs, whose activations shrink along the network. The network input and
    output live in the caller's memory and are not planned. A buffer is live from the first op that
    writes it to the last op that reads it, both inclusive, so an op's inputs and outputs never share
    memory unless the IR made them the same buffer on purpose (in-place activation).
    """
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for i, op in enumerate(graph.ops):
        for ref in op.inputs:
            last[ref.buf] = i
            first.setdefault(ref.buf, i)  # only the input buffer is read before it is written
        first.setdefault(op.out.buf, i)
        last[op.out.buf] = max(last.get(op.out.buf, i), i)
    external = {graph.input.buf, graph.output.buf}
    # (key, size, start, end): buffers keyed by id, scratch keyed by -1 - op index
    items = [(b, graph.buffer_sizes[b], first[b], last[b]) for b in first if b not in external]
    items += [(-1 - i, n, i, i) for i, n in scratch_floats.items() if n > 0]
    items.sort(key=lambda t: (-t[1], t[2], t[0]))
    placed: list[tuple[int, int, int, int]] = []  # (offset, size, start, end)
    where: dict[int, int] = {}
    total = 0
    for key, size, start, end in items:
        size = _aligned(size)
        busy = sorted((o, s) for o, s, a, b in placed if a <= end and start <= b)
        offset = 0
        for o, s in busy:
            if offset + size <= o:
                break
            offset = max(offset, o + s)
        placed.append((offset, size, start, end))
        where[key] = offset
        total = max(total, offset + size)
    return ArenaPlan(
        offsets={k: v for k, v in where.items() if k >= 0},
        scratch_offsets={-1 - k: v for k, v in where.items() if k < 0},
        total_floats=total,
    )


__all__ = [
    "ACT_HARDSWISH",
    "ACT_NONE",
    "ACT_RELU",
    "ACT_RELU6",
    "ActOp",
    "AdaptiveAvgPoolOp",
    "AddOp",
    "ArenaPlan",
    "ConvOp",
    "CopyOp",
    "Graph",
    "Op",
    "PoolOp",
    "TensorRef",
    "plan_arena",
]
