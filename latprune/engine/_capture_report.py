"""Unsupported nodes: recorded with their module path and replaced, so capture visits the whole graph and the
error lists every unsupported op once; with ``compile(backend="torch")`` they become TorchOps instead."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from latprune.engine._capture_tensors import BATCH, ChannelsLast, Unsupported, has_ref, module_path
from latprune.engine.ir import TorchOp

POISON = object()  # a non-tensor value computed from an op that failed: its readers are not reported again


class Reporting:
    """Mixin of ``_Capture`` (capture.py): what happens at a node the engine cannot compile."""

    def visit_reporting(self, node: torch.fx.Node) -> Any:
        """``visit``, but an unsupported node is recorded and replaced by a TorchOp or a placeholder value."""
        inputs = [self.env.get(a) for a in node.all_input_nodes]
        if any(v is POISON for v in inputs):
            return POISON  # downstream of a failed non-tensor value: already reported
        try:
            return self.visit(node)
        except Unsupported as exc:
            self.problems.setdefault(exc.kind, []).append((module_path(node), exc.hint))
            return self.replacement(node, exc.kind)

    def replacement(self, node: torch.fx.Node, kind: str) -> Any:
        meta = node.meta.get("tensor_meta")
        outs = self.placeholder_refs(meta)
        if outs is None:
            self.unrunnable.add(kind)
            return POISON
        refs = outs if isinstance(outs, tuple) else (outs,)
        args, kwargs = self.env_args(node.args), self.env_args(node.kwargs)
        if not self.torch_ops or has_ref(args, kinds=(ChannelsLast,)) or _holds(args, kwargs, BATCH, POISON):
            self.unrunnable.add(kind)
            return outs
        if node.op == "call_module":
            fn: Any = self.modules[node.target]
        elif node.op == "call_method":
            fn = _MethodCall(str(node.target))
        else:
            fn = node.target
        self.ops.append(TorchOp(module_path(node), fn, args, kwargs, refs, kind))
        return outs

    def placeholder_refs(self, meta: Any) -> Any:
        """Fresh refs shaped like fx's recorded output (None when it is not an image or feature tensor)."""
        shape = getattr(meta, "shape", None)  # TensorMetadata (a NamedTuple, so test it before tuples)
        if shape is None and isinstance(meta, (tuple, list)):
            parts = [self.placeholder_refs(m) for m in meta]
            return None if any(p is None for p in parts) else tuple(parts)
        if shape is not None and len(shape) == 4:
            return self.new_ref(int(shape[1]), int(shape[2]), int(shape[3]))
        if shape is not None and len(shape) == 2:
            return self.new_ref(int(shape[1]), flat=True)
        return None

    def message(self, supported: str) -> str:
        items = []
        for kind, where in self.problems.items():
            n = len(where)
            path, hint = where[0]
            at = f"at {path}" if n == 1 else f"first at {path}"
            items.append(f"{kind} ({n} node{'s' if n > 1 else ''}, {at}{': ' + hint if hint else ''})")
        kinds = f"{len(items)} unsupported op type{'s' if len(items) > 1 else ''}"
        if self.torch_ops:
            return (
                f"Cannot compile {self.name}, even with backend='torch': {kinds}, "
                f"{'; '.join(items)}; replace those ops with ones the engine supports ({supported})."
            )
        return (
            f"Cannot compile {self.name} with the C engine: {kinds}, {'; '.join(items)}; replace them with ops "
            f"the engine supports ({supported}), or compile with backend='torch' to run them with PyTorch."
        )


class _MethodCall:
    """A Tensor method by name, callable like a function (for TorchOp)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, obj: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(obj, self.name)(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Tensor.{self.name}"


def _holds(args: Any, kwargs: Any, *markers: Any) -> bool:
    def walk(v: Any) -> bool:
        if any(v is m for m in markers):
            return True
        if isinstance(v, (tuple, list)):
            return any(walk(x) for x in v)
        if isinstance(v, dict):
            return any(walk(x) for x in v.values())
        return False

    return walk(args) or walk(kwargs)
