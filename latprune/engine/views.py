"""Concatenations without copies: each input of a ``torch.cat`` is written straight into its place in the output.

Per image, an NCHW tensor's channels [a, b) are one contiguous range, so a concatenation along the channels is
its inputs laid side by side. Capture emits a ``CopyOp(placeable=True)`` per input; this pass turns every copy
it can into a view, by re-pointing the input's buffer into the output's, so the producing conv writes there.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from latprune.engine.ir import CopyOp, Graph, Op, TensorRef, op_outputs


def map_refs(value: Any, fn: Callable[[TensorRef], TensorRef]) -> Any:
    """``value`` with ``fn`` applied to every TensorRef in it (tuples, lists and dicts are rebuilt)."""
    if isinstance(value, TensorRef):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(map_refs(v, fn) for v in value)
    if isinstance(value, list):
        return [map_refs(v, fn) for v in value]
    if isinstance(value, dict):
        return {k: map_refs(v, fn) for k, v in value.items()}
    return value


def rewrite_op(op: Op, fn: Callable[[TensorRef], TensorRef]) -> None:
    """Apply ``fn`` to every TensorRef field of ``op``, in place."""
    for f in dataclasses.fields(op):
        value = getattr(op, f.name)
        new = map_refs(value, fn)
        if new is not value:
            setattr(op, f.name, new)


def _whole(ref: TensorRef, graph: Graph) -> bool:
    return ref.offset == 0 and graph.buffer_sizes.get(ref.buf) == ref.size


def place_concatenations(graph: Graph) -> int:
    """Compute every concatenation input in place where that is safe; returns how many copies it removed.

    Input buffer P goes into output buffer B at the copy's offset when P is a whole buffer of the arena (not
    the network's input or output, not already placed, not a view), nothing writes P after the copy, and
    nothing but other concatenation copies writes B after it; then P's producers write into B and every
    reader of P reads B. Nested concatenations resolve in order: an inner output placed into an outer one
    takes its own inputs along.
    """
    external = {graph.input.buf, graph.output.buf}
    removed: set[int] = set()
    for i, op in enumerate(graph.ops):
        if not (isinstance(op, CopyOp) and op.placeable):
            continue
        part, dst = op.x, op.out
        if part.buf in external or part.buf == dst.buf or not _whole(part, graph):
            continue
        later = graph.ops[i + 1 :]
        if any(part.buf in {r.buf for r in op_outputs(o)} for o in later):
            continue
        if any(dst.buf in {r.buf for r in op_outputs(o)} for o in later if not (isinstance(o, CopyOp) and o.placeable)):
            continue
        src_buf, base = part.buf, dst.offset

        def move(ref: TensorRef, src_buf: int = src_buf, base: int = base, dst_buf: int = dst.buf) -> TensorRef:
            if ref.buf != src_buf:
                return ref
            return TensorRef(dst_buf, ref.c, ref.h, ref.w, ref.flat, base + ref.offset)

        for other in graph.ops:
            rewrite_op(other, move)
        graph.buffer_sizes.pop(src_buf, None)
        removed.add(id(op))
    graph.ops[:] = [op for op in graph.ops if id(op) not in removed]
    return len(removed)


__all__ = ["map_refs", "place_concatenations", "rewrite_op"]
