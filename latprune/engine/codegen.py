"""Generate one C source and one weight blob for a captured network whose kernels have been chosen.

The source depends only on the network's structure and kernel choice: every weight and packed array is
reached through an offset table at the start of the blob, so recompiling the same architecture with other
weight values (or another sparsity level that keeps the kernel choice) is a cache hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latprune._version import __version__
from latprune.engine.ir import (
    ActOp,
    AdaptiveAvgPoolOp,
    AddOp,
    ArenaPlan,
    ChannelScaleOp,
    ConvOp,
    CopyOp,
    Graph,
    LayerNormOp,
    PoolOp,
    TensorRef,
    TorchOp,
    act_name,
    plan_arena,
)
from latprune.engine.isa import Isa
from latprune.engine.kernels import KernelSpec, get_kernel
from latprune.errors import EngineError

BLOB_ALIGN = 64  # bytes: every array starts on a cache line (and the blob itself is allocated aligned)

_C_TYPES = {
    np.dtype(np.float32): "float",
    np.dtype(np.int32): "int32_t",
    np.dtype(np.uint32): "uint32_t",
    np.dtype(np.int16): "int16_t",
    np.dtype(np.uint16): "uint16_t",
    np.dtype(np.int8): "int8_t",
    np.dtype(np.uint8): "uint8_t",
    np.dtype(np.int64): "int64_t",
}


@dataclass(frozen=True)
class Lowered:
    """Everything needed to build and run a network: C source, weight blob and the arena size."""

    source: str
    blob: np.ndarray  # uint8, 64-byte aligned, starts with an int64 offset table
    arena_floats: int  # per call (one image at a time, reused across the batch)
    input_floats: int
    output_floats: int


def aligned_empty(nbytes: int) -> np.ndarray:
    """A zeroed uint8 array whose data pointer is 64-byte aligned."""
    raw = np.zeros(nbytes + BLOB_ALIGN, np.uint8)
    start = (-raw.ctypes.data) % BLOB_ALIGN
    return raw[start : start + nbytes]


def pack_blob(graph: Graph, isa: Isa) -> tuple[np.ndarray, dict[int, list[tuple[int, str]]]]:
    """Pack every conv's bias and packed weight arrays, laid out for ``isa``'s tiles, into one aligned blob.

    Returns the blob and, per conv op (by id), its arrays as (table index, C element type) in call order:
    the bias first, then the kernel's arrays in the order its ``pack`` returns them; LayerNorm ops get their
    weight and bias.
    """
    arrays: list[np.ndarray] = []
    refs: dict[int, list[tuple[int, str]]] = {}
    for op in graph.ops:
        if isinstance(op, ConvOp):
            spec_name = get_kernel(op.kernel).name
            items = [("bias", op.bias), *get_kernel(op.kernel).pack(op.weight, op.meta, isa).items()]
        elif isinstance(op, LayerNormOp):
            spec_name, items = "layernorm", [("weight", op.weight), ("bias", op.bias)]
        else:
            continue
        entries = []
        for name, arr in items:
            arr = np.ascontiguousarray(arr)
            if arr.dtype not in _C_TYPES:
                raise EngineError(
                    f"Kernel '{spec_name}' packed array '{name}' of layer '{op.name}' has dtype {arr.dtype}, which the "
                    f"code generator cannot pass; use one of {', '.join(str(d) for d in _C_TYPES)}."
                )
            entries.append((len(arrays), _C_TYPES[arr.dtype]))
            arrays.append(arr)
        refs[id(op)] = entries
    header = -(-8 * max(len(arrays), 1) // BLOB_ALIGN) * BLOB_ALIGN
    offsets, pos = [], header
    for arr in arrays:
        offsets.append(pos)
        pos += -(-arr.nbytes // BLOB_ALIGN) * BLOB_ALIGN
    blob = aligned_empty(max(pos, header))
    blob[: 8 * len(offsets)] = np.asarray(offsets, dtype="<i8").view(np.uint8)
    for off, arr in zip(offsets, arrays, strict=True):
        blob[off : off + arr.nbytes] = arr.reshape(-1).view(np.uint8)
    return blob, refs


#: Characters that may appear verbatim inside a generated C comment: printable ASCII except '*' (which could close
#: the comment), '\\' and '?' (a backslash-newline, or the trigraph ??/, splices lines, so '*' + splice + '/' closes
#: it too) and '%' (the escape character itself). Newlines and non-ASCII (e.g. bidi overrides that make code read
#: differently than it compiles) are escaped as well.
_COMMENT_SAFE = frozenset(chr(c) for c in range(0x20, 0x7F)) - set("*\\?%")


def c_comment_text(text: str) -> str:
    """``text`` (a class or module name) made safe to write inside a C block comment or a README line.

    Every character outside :data:`_COMMENT_SAFE` becomes %XX escapes of its UTF-8 bytes, as in URLs, so no
    name can end the comment, splice a line or hide text, and the original stays readable and recoverable.
    """
    return "".join(ch if ch in _COMMENT_SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in text)


class _Emitter:
    """Turns each IR op into one C statement inside the batch loop."""

    def __init__(self, graph: Graph, plan: ArenaPlan, arrays: dict[int, list[tuple[int, str]]]) -> None:
        self.graph, self.plan, self.arrays = graph, plan, arrays
        self.shapes: list[str] = []

    def buf(self, ref: TensorRef) -> str:
        """The C pointer expression of ``ref``: the caller's input or output, or an arena offset (plus the view's)."""
        if ref.buf in (self.graph.input.buf, self.graph.output.buf):
            base = "in" if ref.buf == self.graph.input.buf else "out"
            return f"({base} + {ref.offset})" if ref.offset else base
        return f"(arena + {self.plan.offsets[ref.buf] + ref.offset})"

    def conv(self, i: int, op: ConvOp, spec: KernelSpec) -> str:
        m = op.meta
        shape = f"lp_shape_{len(self.shapes)}"
        fields = {
            "c_in": m.c_in, "h": m.h, "w": m.w, "c_out": m.c_out, "h_out": m.h_out, "w_out": m.w_out,
            "kh": m.kh, "kw": m.kw, "stride_h": m.stride_h, "stride_w": m.stride_w,
            "pad_h": m.pad_h, "pad_w": m.pad_w, "groups": m.groups,
        }  # fmt: skip
        init = ", ".join(f".{k} = {v}" for k, v in fields.items())
        self.shapes.append(f"static const lp_conv_shape {shape} = {{{init}}};")
        (bias_idx, _), *packed = self.arrays[id(op)]
        scratch = f"(arena + {self.plan.scratch_offsets[i]})" if i in self.plan.scratch_offsets else "NULL"
        residual = self.buf(op.residual) if op.residual is not None else "NULL"
        args = [
            self.buf(op.x),
            self.buf(op.out),
            f"LP_ARR(float, {bias_idx})",
            residual,
            scratch,
            f"&{shape}",
            str(op.act),
            str(op.variant),
            "nthreads",
            *(f"LP_ARR({t}, {k})" for k, t in packed),
        ]
        return f"{spec.c_function}({', '.join(args)});"

    def statement(self, i: int, op: object) -> str:
        if isinstance(op, ConvOp):
            return self.conv(i, op, get_kernel(op.kernel))
        if isinstance(op, PoolOp):
            x, o = op.x, op.out
            return (
                f"lp_pool2d({self.buf(x)}, {self.buf(o)}, {x.c}, {x.h}, {x.w}, {o.h}, {o.w}, {op.kh}, {op.kw}, "
                f"{op.stride_h}, {op.stride_w}, {op.pad_h}, {op.pad_w}, {int(op.is_max)}, "
                f"{int(op.count_include_pad)}, {op.act}, nthreads);"
            )
        if isinstance(op, AdaptiveAvgPoolOp):
            x, o = op.x, op.out
            return f"lp_adaptive_avgpool({self.buf(x)}, {self.buf(o)}, {x.c}, {x.h}, {x.w}, {o.h}, {o.w}, nthreads);"
        if isinstance(op, AddOp):
            return f"lp_add({self.buf(op.a)}, {self.buf(op.b)}, {self.buf(op.out)}, {op.out.size}, {op.act}, nthreads);"
        if isinstance(op, ActOp):
            return f"lp_activate({self.buf(op.x)}, {self.buf(op.out)}, {op.out.size}, {op.act}, nthreads);"
        if isinstance(op, CopyOp):
            return f"lp_copy({self.buf(op.x)}, {self.buf(op.out)}, {op.out.size});"
        if isinstance(op, ChannelScaleOp):
            x = op.x
            return (
                f"lp_channel_scale({self.buf(x)}, {self.buf(op.scale)}, {self.buf(op.out)}, {x.c}, {x.h * x.w}, "
                f"{op.act}, nthreads);"
            )
        if isinstance(op, LayerNormOp):
            (w, _), (b, _) = self.arrays[id(op)]
            return (
                f"lp_layernorm_channels({self.buf(op.x)}, {self.buf(op.out)}, LP_ARR(float, {w}), LP_ARR(float, {b}), "
                f"{op.x.c}, {op.x.h * op.x.w}, {float(op.eps)!r}f, {op.act}, nthreads);"
            )
        if isinstance(op, TorchOp):
            raise EngineError(
                f"Op '{op.name}' ({op.what}) runs only on the torch backend; compile with backend='torch'."
            )
        raise TypeError(f"unknown IR op {type(op).__name__}")  # pragma: no cover


def describe(op: object) -> str:
    if isinstance(op, ConvOp):
        m = op.meta
        kind = "linear" if m.is_linear else f"conv {m.kh}x{m.kw}/{m.stride_h} g{m.groups}"
        res = " + residual" if op.residual is not None else ""
        return f"{kind} {m.c_in}->{m.c_out} {m.h}x{m.w}{res}, act {act_name(op.act)}: {op.kernel} v{op.variant}"
    if isinstance(op, TorchOp):
        return f"torch: {op.what}"
    kind = {ChannelScaleOp: "channel scale", LayerNormOp: "channel layernorm"}.get(type(op))
    kind = kind or type(op).__name__.removesuffix("Op").lower()
    act = getattr(op, "act", 0)
    return f"{kind}, act {act_name(act)}" if act else kind


def lower(graph: Graph, isa: Isa) -> Lowered:
    """Plan the arena, pack the blob and write the C source for ``isa`` (kernels must already be chosen)."""
    specs = {op.kernel: get_kernel(op.kernel) for op in graph.conv_ops()}
    scratch = {i: specs[op.kernel].scratch_floats(op.meta) for i, op in enumerate(graph.ops) if isinstance(op, ConvOp)}
    plan = plan_arena(graph, scratch)
    blob, arrays = pack_blob(graph, isa)
    em = _Emitter(graph, plan, arrays)
    body = [
        f"        /* {i}: {c_comment_text(op.name)}: {c_comment_text(describe(op))} */\n        {em.statement(i, op)}\n"
        f"        LP_TICK({i});"
        for i, op in enumerate(graph.ops)
    ]
    sources = sorted({spec.source for spec in specs.values()})
    n_in, n_out = graph.input.size, graph.output.size
    source = "\n".join(
        [
            f"/* Generated by latprune.engine.codegen (latprune {__version__}) from the PyTorch model "
            f"{c_comment_text(graph.name)}:",
            f" * {len(graph.ops)} ops, arena {plan.total_floats} floats per image, target {isa.name}.",
            " * Do not edit: recompile the model with latprune.engine.compile() or `latprune export`. */",
            isa.c_defines().rstrip("\n"),
            "#include <time.h>",
            '#include "lp_common.h"',
            *(f'#include "{src}"' for src in sources),
            '#include "lp_ops.c"',
            "",
            "/* Packed array k of the weight blob (the blob starts with an int64 offset table). */",
            "#define LP_ARR(T, k) ((const T *)(blob + ((const int64_t *)(const void *)blob)[k]))",
            "",
            *em.shapes,
            "",
            f"int lp_input_floats(void) {{ return {n_in}; }}",
            f"int lp_output_floats(void) {{ return {n_out}; }}",
            f"int lp_arena_floats(void) {{ return {plan.total_floats}; }}",
            "",
            f"int lp_num_ops(void) {{ return {len(graph.ops)}; }}",
            "",
            "/* When op_seconds is not NULL, op i's time is added to op_seconds[i] (a per-layer profile): wall time,",
            " * or with cpu_clock the calling thread's CPU time, which excludes preemption on a busy machine. */",
            "#define LP_TICK(i) do { if (op_seconds) { double t1_ = lp_now(cpu_clock); op_seconds[i] += t1_ - t0_; "
            "t0_ = t1_; } } while (0)",
            "static double lp_now(int cpu_clock) {",
            "    struct timespec ts;",
            "    clock_gettime(cpu_clock ? CLOCK_THREAD_CPUTIME_ID : CLOCK_MONOTONIC, &ts);",
            "    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;",
            "}",
            "",
            "__attribute__((noinline)) void lp_forward_profiled(const float *input, float *output, float *arena,",
            "                                                    const char *blob, int batch, int nthreads,",
            "                                                    double *op_seconds, int cpu_clock) {",
            "    for (int n = 0; n < batch; ++n) {",
            f"        const float *in = input + (size_t)n * {n_in};",
            f"        float *out = output + (size_t)n * {n_out};",
            "        double t0_ = op_seconds ? lp_now(cpu_clock) : 0.0;",
            "        (void)in; (void)out; (void)arena; (void)blob; (void)t0_;",
            *body,
            "    }",
            "}",
            "",
            "void lp_forward(const float *input, float *output, float *arena, const char *blob, int batch,",
            "                int nthreads) {",
            "    lp_forward_profiled(input, output, arena, blob, batch, nthreads, NULL, 0);",
            "}",
            "",
        ]
    )
    return Lowered(source, blob, plan.total_floats, n_in, n_out)


__all__ = ["BLOB_ALIGN", "Lowered", "aligned_empty", "c_comment_text", "describe", "lower", "pack_blob"]
