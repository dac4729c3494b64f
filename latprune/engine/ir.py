"""The compiler's intermediate representation: a list of ops over numbered buffers, and the arena plan."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from latprune.engine.activations import ACT_HARDSWISH, ACT_NONE, ACT_RELU, ACT_RELU6, get_activation
from latprune.engine.kernels import ConvMeta

#: Every arena buffer starts on a 64-byte boundary (one cache line, one AVX-512 register).
ALIGN_FLOATS = 16


def act_name(code: int) -> str:
    return get_activation(code).name


@dataclass(frozen=True)
class TensorRef:
    """A view of one buffer as a per-image tensor: (c, h, w), or (c,) features when ``flat``, starting
    ``offset`` floats into the buffer.

    Several refs may share a buffer: ``flatten`` and ``view(N, -1)`` only reinterpret NCHW memory, in-place
    activations write back into their input, and a channel range of an NCHW image is contiguous per image,
    so split/chunk/slices are refs with an offset and the inputs of a concatenation are written straight
    into their place in its output. None of them needs a copy.
    """

    buf: int
    c: int
    h: int
    w: int
    flat: bool = False
    offset: int = 0

    @property
    def size(self) -> int:
        """Floats per image."""
        return self.c * self.h * self.w

    def flattened(self) -> TensorRef:
        return TensorRef(self.buf, self.size, 1, 1, True, self.offset)

    def channels(self, start: int, stop: int) -> TensorRef:
        """Channels [start, stop) of this ref (features, when flat): a view, no copy."""
        return TensorRef(self.buf, stop - start, self.h, self.w, self.flat, self.offset + start * self.h * self.w)


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
    """Copy a tensor into another buffer: an input of a concatenation that could not be computed in place
    (the network input, a view, or one already placed in another concatenation), or the network output
    when it would otherwise be the input or a view."""

    name: str
    x: TensorRef
    out: TensorRef
    placeable: bool = False  # a concatenation's input: views.place_concatenations may compute it in place

    @property
    def inputs(self) -> list[TensorRef]:
        return [self.x]


@dataclass(eq=False)
class ChannelScaleOp:
    """``out[c] = act(x[c] * scale[c])``: a feature map times a per-channel gate computed by the network (the
    squeeze-excite multiply); runs in place when nothing reads ``x`` afterwards."""

    name: str
    x: TensorRef
    scale: TensorRef  # (c,) features or a (c, 1, 1) image
    out: TensorRef
    act: int = ACT_NONE

    @property
    def inputs(self) -> list[TensorRef]:
        return [self.x, self.scale]


@dataclass(eq=False)
class LayerNormOp:
    """LayerNorm over the channels of every pixel (ConvNeXt's channel LayerNorm), then ``act``."""

    name: str
    x: TensorRef
    out: TensorRef
    weight: np.ndarray  # (c,) float32
    bias: np.ndarray  # (c,) float32
    eps: float
    act: int = ACT_NONE

    @property
    def inputs(self) -> list[TensorRef]:
        return [self.x]


@dataclass(eq=False)
class TorchOp:
    """A node the C engine does not compile, run by the torch backend only (``compile(backend="torch")``).

    ``fn(*args, **kwargs)`` is the fx node's own call, with every ``TensorRef`` in ``args``/``kwargs`` read
    as its (N, C, H, W) or (N, F) tensor; ``outs`` receive the result (a tensor, or a tuple of them).
    """

    name: str
    fn: object
    args: tuple
    kwargs: dict
    outs: tuple[TensorRef, ...]
    what: str

    @property
    def out(self) -> TensorRef:
        return self.outs[0]

    @property
    def inputs(self) -> list[TensorRef]:
        return [r for r in _flat_refs((self.args, self.kwargs))]


def _flat_refs(value: object) -> list[TensorRef]:
    if isinstance(value, TensorRef):
        return [value]
    if isinstance(value, (tuple, list)):
        return [r for v in value for r in _flat_refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _flat_refs(v)]
    return []


Op = ConvOp | PoolOp | AdaptiveAvgPoolOp | AddOp | ActOp | CopyOp | ChannelScaleOp | LayerNormOp | TorchOp


def op_outputs(op: Op) -> list[TensorRef]:
    """Every ref ``op`` writes."""
    return list(op.outs) if isinstance(op, TorchOp) else [op.out]


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
        for out in op_outputs(op):
            first.setdefault(out.buf, i)
            last[out.buf] = max(last.get(out.buf, i), i)
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
    "ChannelScaleOp",
    "ConvOp",
    "CopyOp",
    "Graph",
    "LayerNormOp",
    "Op",
    "PoolOp",
    "TensorRef",
    "TorchOp",
    "act_name",
    "op_outputs",
    "plan_arena",
]
