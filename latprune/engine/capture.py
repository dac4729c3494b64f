"""Capture a PyTorch CNN with torch.fx into the engine IR, folding BatchNorm and fusing activations and adds."""

from __future__ import annotations

import operator
from dataclasses import replace
from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

from latprune.engine.ir import (
    ACT_HARDSWISH,
    ACT_NONE,
    ACT_RELU,
    ACT_RELU6,
    ActOp,
    AdaptiveAvgPoolOp,
    AddOp,
    ConvOp,
    CopyOp,
    Graph,
    Op,
    PoolOp,
    TensorRef,
)
from latprune.engine.kernels import ConvMeta
from latprune.errors import EngineError

SUPPORTED = (
    "Conv2d, Linear, BatchNorm, ReLU/ReLU6/Hardswish, max/avg/adaptive-avg pooling, residual add, "
    "flatten/view(N, -1), dropout and identity"
)
_RELU_FNS = {F.relu, torch.relu, torch.relu_, F.relu_}
_ADD_FNS = {operator.add, operator.iadd, torch.add}
_FLATTEN_FNS = {torch.flatten}
_NOOP_FNS = {F.dropout, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout}
_SHAPE = ("shape",)  # stands for x.shape / x.size(...) values, which may only feed view/reshape(N, -1)
_NOOP_MODULES = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity)


def _arg(node: torch.fx.Node, index: int, name: str, default: Any = None) -> Any:
    """Positional-or-keyword argument of a call node (fx keeps whichever form the model used)."""
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _pool_size(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Pooled length, torch's rule: with ceil_mode the last window must still start inside the padded input."""
    out = (size + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _clamp_act(lo: Any, hi: Any) -> int | None:
    if lo == 0 and hi == 6:
        return ACT_RELU6
    if lo == 0 and hi is None:
        return ACT_RELU
    return None


class _Capture:
    """Walks the fx graph once, in topological order, emitting ops and fusing as it goes."""

    def __init__(self, gm: torch.fx.GraphModule, name: str, input_shape: tuple[int, ...]) -> None:
        self.gm = gm
        self.name = name
        self.batch, *self.input_shape = input_shape  # (N, C, H, W)
        self.modules = dict(gm.named_modules())
        self.env: dict[torch.fx.Node, Any] = {}
        self.ops: list[Op] = []
        self.sizes: dict[int, int] = {}
        # node -> the op that produced it, only while that op's result has no other reader (safe to fuse into)
        self.fusable: dict[torch.fx.Node, Op] = {}
        self.input_ref: TensorRef | None = None

    # ----------------------------------------------------------------- helpers
    def fail(self, node: torch.fx.Node, what: str, hint: str = "") -> EngineError:
        hint = hint or f"the engine supports {SUPPORTED}; replace it or run it outside the compiled model"
        return EngineError(f"Cannot compile node '{node.name}' ({what}) of {self.name}: {hint}.")

    def new_ref(self, c: int, h: int = 1, w: int = 1, flat: bool = False) -> TensorRef:
        """A fresh buffer holding a per-image (c, h, w) image, or (c,) features when ``flat``."""
        ref = TensorRef(len(self.sizes), c, h, w, flat)
        self.sizes[ref.buf] = ref.size
        return ref

    def like(self, x: TensorRef) -> TensorRef:
        return self.new_ref(x.c, x.h, x.w, x.flat)

    def tensor(self, node: torch.fx.Node, arg: Any, image: bool | None = None) -> TensorRef:
        ref = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
        if not isinstance(ref, TensorRef):
            raise self.fail(node, f"an operand {arg!r} that is not a tensor the engine computed")
        if image is True and ref.flat:
            raise self.fail(node, "a (N, features) input where an NCHW image is needed")
        return ref

    def emit(self, node: torch.fx.Node, op: Op) -> TensorRef:
        self.ops.append(op)
        if len(node.users) == 1:
            self.fusable[node] = op
        return op.out

    def sole_producer(self, arg: Any) -> Op | None:
        """The op that made ``arg`` if nothing else reads its result (so it can absorb a BN/act/add)."""
        return self.fusable.get(arg) if isinstance(arg, torch.fx.Node) else None

    # ----------------------------------------------------------------- layers
    def conv(self, node: torch.fx.Node, m: nn.Conv2d) -> TensorRef:
        if m.padding_mode != "zeros" or tuple(m.dilation) != (1, 1):
            raise self.fail(
                node,
                f"Conv2d with padding_mode={m.padding_mode!r}, dilation={m.dilation}",
                "the engine compiles zero-padded, undilated convolutions only",
            )
        x = self.tensor(node, node.args[0], image=True)
        if x.c != m.in_channels:
            raise self.fail(node, f"Conv2d expecting {m.in_channels} channels fed {x.c}", "fix the model or input")
        kh, kw = m.kernel_size
        if m.padding == "valid":
            ph, pw = 0, 0
        elif m.padding == "same":  # torch allows 'same' for stride 1 only; odd kernels pad symmetrically
            if kh % 2 == 0 or kw % 2 == 0:
                raise self.fail(node, "Conv2d with asymmetric 'same' padding", "use an odd kernel or explicit padding")
            ph, pw = kh // 2, kw // 2
        else:
            ph, pw = m.padding
        meta = ConvMeta(x.c, m.out_channels, x.h, x.w, kh, kw, m.stride[0], m.stride[1], ph, pw, m.groups)
        if meta.h_out < 1 or meta.w_out < 1:
            raise self.fail(node, f"Conv2d on a {x.h}x{x.w} input, too small for its kernel", "use a larger input")
        out = self.new_ref(m.out_channels, meta.h_out, meta.w_out)
        weight = m.weight.detach().float().cpu().numpy().copy()
        bias = np.zeros(m.out_channels, np.float32) if m.bias is None else m.bias.detach().float().cpu().numpy().copy()
        return self.emit(node, ConvOp(str(node.target), x, out, weight, bias, meta))

    def linear(self, node: torch.fx.Node, m: nn.Linear) -> TensorRef:
        x = self.tensor(node, node.args[0])
        if not x.flat:
            raise self.fail(node, "Linear applied to an NCHW image", "flatten to (N, features) before the Linear")
        if x.c != m.in_features:
            raise self.fail(node, f"Linear expecting {m.in_features} features fed {x.c}", "fix the model or input")
        out = self.new_ref(m.out_features, flat=True)
        meta = ConvMeta(x.c, m.out_features, 1, 1, is_linear=True)
        weight = m.weight.detach().float().cpu().numpy().reshape(m.out_features, x.c, 1, 1).copy()  # (out, in, 1, 1)
        bias = np.zeros(m.out_features, np.float32) if m.bias is None else m.bias.detach().float().cpu().numpy().copy()
        return self.emit(node, ConvOp(str(node.target), x, out, weight, bias, meta))

    def batchnorm(self, node: torch.fx.Node, m: nn.modules.batchnorm._BatchNorm) -> TensorRef:
        if m.running_mean is None or m.running_var is None:
            raise self.fail(node, "BatchNorm without running statistics", "build it with track_running_stats=True")
        scale = (m.weight.detach() if m.affine else torch.ones_like(m.running_var)) / torch.sqrt(m.running_var + m.eps)
        shift = (m.bias.detach() if m.affine else torch.zeros_like(m.running_mean)) - m.running_mean * scale
        scale, shift = scale.float().cpu().numpy(), shift.float().cpu().numpy()
        prod = self.sole_producer(node.args[0])
        if isinstance(prod, ConvOp) and prod.act == ACT_NONE and prod.residual is None:
            # Fold: W' = W * scale[co], b' = b * scale + shift, so the conv alone gives BN's output.
            prod.weight = (prod.weight * scale[:, None, None, None]).astype(np.float32)
            prod.bias = (prod.bias * scale + shift).astype(np.float32)
            return self.alias(node, node.args[0], prod.out)
        # Stand-alone BN: a depthwise 1x1 conv with weight = scale, which every dense engine runs.
        x = self.tensor(node, node.args[0])
        if x.c != m.num_features:
            raise self.fail(node, f"BatchNorm of {m.num_features} features on {x.c} channels", "fix the model")
        out = self.like(x)
        meta = ConvMeta(x.c, x.c, x.h, x.w, groups=x.c)
        weight = scale.reshape(x.c, 1, 1, 1).astype(np.float32)  # (C, 1, 1, 1)
        return self.emit(node, ConvOp(str(node.target), x, out, weight, shift.astype(np.float32), meta))

    def activation(self, node: torch.fx.Node, act: int) -> TensorRef:
        src = node.args[0]
        prod = self.sole_producer(src)
        if isinstance(prod, (ConvOp, AddOp, PoolOp)) and prod.act == ACT_NONE:
            prod.act = act
            return self.alias(node, src, prod.out)
        x = self.tensor(node, src)
        out = x if prod is not None else self.like(x)  # in place when nothing else reads x
        return self.emit(node, ActOp(node.name, x, out, act))

    def add(self, node: torch.fx.Node) -> TensorRef:
        a_node, b_node = node.args[0], node.args[1]
        if _arg(node, 2, "alpha", 1) != 1:
            raise self.fail(node, "add with alpha != 1", "write the scaling as a separate layer")
        a, b = self.tensor(node, a_node), self.tensor(node, b_node)
        if (a.c, a.h, a.w, a.flat) != (b.c, b.h, b.w, b.flat):
            raise self.fail(
                node, f"add of shapes {(a.c, a.h, a.w)} and {(b.c, b.h, b.w)}", "broadcasting is not supported"
            )
        # Fuse into the conv epilogue: the conv computed last reads the other operand as its residual.
        candidates = []
        for mine, other, other_node in ((a_node, b, b_node), (b_node, a, a_node)):
            prod = self.sole_producer(mine)
            if mine is not other_node and isinstance(prod, ConvOp) and prod.act == ACT_NONE and prod.residual is None:
                candidates.append((next(i for i, op in enumerate(self.ops) if op is prod), prod, other))
        if candidates:
            _, conv, other = max(candidates, key=lambda t: t[0])
            # Move the conv to the add's place: its only reader is this add, so running it later is safe,
            # and then the other operand is always ready.
            self.ops.remove(conv)  # ops compare by identity
            conv.residual = other
            return self.emit(node, conv)
        prod_a, prod_b = self.sole_producer(a_node), self.sole_producer(b_node)
        out = a if prod_a is not None else b if prod_b is not None and a_node is not b_node else self.like(a)
        return self.emit(node, AddOp(node.name, a, b, out))

    def alias(self, node: torch.fx.Node, src: torch.fx.Node, ref: TensorRef) -> TensorRef:
        """``node`` is the same memory as its input (BN folded, act fused, no-op): pass fusability along."""
        op = self.sole_producer(src)
        if op is not None and len(node.users) == 1:
            self.fusable[node] = op
        return ref

    def pool(self, node: torch.fx.Node, is_max: bool, k: Any, s: Any, p: Any, extra: dict[str, Any]) -> TensorRef:
        if extra.get("dilation", 1) not in (1, (1, 1)) or extra.get("return_indices") or extra.get("divisor_override"):
            raise self.fail(node, "pooling with dilation, indices or a divisor override", "use plain max/avg pooling")
        x = self.tensor(node, node.args[0], image=True)
        (kh, kw), (ph, pw) = _pair(k), _pair(p)
        sh, sw = _pair(s if s not in (None, ()) else k)
        ceil = bool(extra.get("ceil_mode", False))
        oh, ow = _pool_size(x.h, kh, sh, ph, ceil), _pool_size(x.w, kw, sw, pw, ceil)
        if oh < 1 or ow < 1 or 2 * ph > kh or 2 * pw > kw:
            raise self.fail(
                node,
                f"a {kh}x{kw} pool with padding {(ph, pw)} on a {x.h}x{x.w} input",
                "padding must be at most half the window and the window must fit",
            )
        out = self.new_ref(x.c, oh, ow)
        op = PoolOp(node.name, x, out, is_max, kh, kw, sh, sw, ph, pw, bool(extra.get("count_include_pad", True)))
        return self.emit(node, op)

    def adaptive_avg(self, node: torch.fx.Node, size: Any) -> TensorRef:
        x = self.tensor(node, node.args[0], image=True)
        oh, ow = size if isinstance(size, (tuple, list)) else (size, size)
        oh, ow = x.h if oh is None else int(oh), x.w if ow is None else int(ow)
        return self.emit(node, AdaptiveAvgPoolOp(node.name, x, self.new_ref(x.c, oh, ow)))

    def flatten(self, node: torch.fx.Node, start: Any, end: Any = -1) -> TensorRef:
        x = self.tensor(node, node.args[0])
        if start != 1 or end not in (-1, 3):
            raise self.fail(node, f"flatten(start_dim={start}, end_dim={end})", "flatten to (N, features) only")
        return self.alias(node, node.args[0], x.flattened())

    def view(self, node: torch.fx.Node) -> TensorRef:
        x = self.tensor(node, node.args[0])
        args = node.args[1] if len(node.args) == 2 and isinstance(node.args[1], (tuple, list)) else node.args[1:]
        shape = tuple(self.env.get(d) if isinstance(d, torch.fx.Node) else d for d in args)  # x.size(0) -> _SHAPE
        batch_ok = len(shape) == 2 and (
            shape[0] is _SHAPE or shape[0] == self.batch or (shape[0] == -1 and shape[1] == x.size)
        )
        if not (batch_ok and shape[1] in (-1, x.size)):
            raise self.fail(node, f"{node.target} to {len(shape)} dims", "only view/reshape to (N, -1) is supported")
        return self.alias(node, node.args[0], x.flattened())

    def mean(self, node: torch.fx.Node) -> TensorRef:
        dims = _arg(node, 1, "dim")
        dims = tuple(sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else (dims,))))
        if dims != (2, 3):
            raise self.fail(node, f"mean over dims {dims}", "only the global mean over (H, W) is supported")
        x = self.tensor(node, node.args[0], image=True)
        out = self.new_ref(x.c, flat=not _arg(node, 2, "keepdim", False))
        return self.emit(node, AdaptiveAvgPoolOp(node.name, x, out))

    # ----------------------------------------------------------------- dispatch
    def visit(self, node: torch.fx.Node) -> Any:
        if node.op == "placeholder":
            if self.input_ref is not None:
                raise self.fail(node, "a second input", "the engine compiles single-input models")
            self.input_ref = self.new_ref(*self.input_shape)
            return self.input_ref
        if node.op == "get_attr":
            raise self.fail(node, f"a parameter or buffer '{node.target}' used directly in forward()")
        if node.op == "call_module":
            return self.visit_module(node, self.modules[node.target])
        if node.op == "call_function":
            return self.visit_function(node, node.target)
        if node.op == "call_method":
            return self.visit_method(node, node.target)
        raise self.fail(node, f"fx op '{node.op}'")

    def visit_module(self, node: torch.fx.Node, m: nn.Module) -> Any:
        kind = f"{type(m).__name__} module '{node.target}'"
        if isinstance(m, nn.Conv2d):
            return self.conv(node, m)
        if isinstance(m, nn.Linear):
            return self.linear(node, m)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            return self.batchnorm(node, m)
        if isinstance(m, nn.ReLU):
            return self.activation(node, ACT_RELU)
        if isinstance(m, nn.ReLU6) or (isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0, 6)):
            return self.activation(node, ACT_RELU6)
        if isinstance(m, nn.Hardswish):
            return self.activation(node, ACT_HARDSWISH)
        if isinstance(m, nn.MaxPool2d):
            extra = {"dilation": m.dilation, "return_indices": m.return_indices, "ceil_mode": m.ceil_mode}
            return self.pool(node, True, m.kernel_size, m.stride, m.padding, extra)
        if isinstance(m, nn.AvgPool2d):
            extra = {
                "count_include_pad": m.count_include_pad,
                "divisor_override": m.divisor_override,
                "ceil_mode": m.ceil_mode,
            }
            return self.pool(node, False, m.kernel_size, m.stride, m.padding, extra)
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.adaptive_avg(node, m.output_size)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, m.start_dim, m.end_dim)
        if isinstance(m, _NOOP_MODULES):
            return self.alias(node, node.args[0], self.tensor(node, node.args[0]))
        raise self.fail(node, kind)

    def visit_function(self, node: torch.fx.Node, fn: Any) -> Any:
        name = getattr(fn, "__name__", repr(fn))
        if fn in _RELU_FNS:
            return self.activation(node, ACT_RELU)
        if fn is F.relu6:
            return self.activation(node, ACT_RELU6)
        if fn is F.hardswish:
            return self.activation(node, ACT_HARDSWISH)
        if fn is F.hardtanh and _clamp_act(_arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0)) == ACT_RELU6:
            return self.activation(node, ACT_RELU6)
        if fn in (torch.clamp, torch.clip) and (act := _clamp_act(_arg(node, 1, "min"), _arg(node, 2, "max"))):
            return self.activation(node, act)
        if fn in _ADD_FNS and all(isinstance(a, torch.fx.Node) for a in node.args[:2]):
            return self.add(node)
        if fn is F.max_pool2d:
            extra = {
                "dilation": _arg(node, 4, "dilation", 1),
                "ceil_mode": _arg(node, 5, "ceil_mode", False),
                "return_indices": _arg(node, 6, "return_indices"),
            }
            return self.pool(
                node, True, _arg(node, 1, "kernel_size"), _arg(node, 2, "stride"), _arg(node, 3, "padding", 0), extra
            )
        if fn is F.avg_pool2d:
            extra = {
                "ceil_mode": _arg(node, 4, "ceil_mode", False),
                "count_include_pad": _arg(node, 5, "count_include_pad", True),
                "divisor_override": _arg(node, 6, "divisor_override"),
            }
            return self.pool(
                node, False, _arg(node, 1, "kernel_size"), _arg(node, 2, "stride"), _arg(node, 3, "padding", 0), extra
            )
        if fn is F.adaptive_avg_pool2d:
            return self.adaptive_avg(node, _arg(node, 1, "output_size"))
        if fn in _FLATTEN_FNS:
            return self.flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if fn in _NOOP_FNS:
            return self.alias(node, node.args[0], self.tensor(node, node.args[0]))
        if fn is torch.mean:
            return self.mean(node)
        if (fn is getattr and node.args[1] == "shape") or (
            fn is operator.getitem and self.env.get(node.args[0]) is _SHAPE
        ):
            return _SHAPE  # x.shape[0] and friends, which only feed view(N, -1)
        raise self.fail(node, f"function {name}")

    def visit_method(self, node: torch.fx.Node, method: str) -> Any:
        if method in ("relu", "relu_"):
            return self.activation(node, ACT_RELU)
        if method in ("clamp", "clamp_", "clip") and (act := _clamp_act(_arg(node, 1, "min"), _arg(node, 2, "max"))):
            return self.activation(node, act)
        if method in ("add", "add_", "__add__") and isinstance(_arg(node, 1, "other"), torch.fx.Node):
            return self.add(node)
        if method == "flatten":
            return self.flatten(node, _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1))
        if method in ("view", "reshape"):
            return self.view(node)
        if method == "mean":
            return self.mean(node)
        if method == "contiguous":
            return self.alias(node, node.args[0], self.tensor(node, node.args[0]))
        if method == "size":
            return _SHAPE
        raise self.fail(node, f"method Tensor.{method}")

    def run(self) -> Graph:
        out_ref: TensorRef | None = None
        for node in self.gm.graph.nodes:
            if node.op == "output":
                out_ref = self.tensor(node, node.args[0])
                continue
            self.env[node] = self.visit(node)
        assert self.input_ref is not None and out_ref is not None
        if out_ref.buf == self.input_ref.buf:  # the network returns its input (e.g. only no-ops)
            buf = len(self.sizes)
            self.sizes[buf] = out_ref.size
            copy = CopyOp("output_copy", out_ref, replace(out_ref, buf=buf))
            self.ops.append(copy)
            out_ref = copy.out
        return Graph(self.name, self.ops, self.input_ref, out_ref, self.sizes)


def capture(model: nn.Module, example_input: torch.Tensor) -> Graph:
    """Trace ``model`` (in eval mode) for inputs shaped like ``example_input`` and lower it to the IR.

    The model's train/eval mode is restored afterwards; BatchNorm is folded with its running statistics
    and dropout is dropped, i.e. the compiled model computes what ``model.eval()`` computes.
    """
    name = type(model).__name__
    if example_input.dim() != 4:
        raise EngineError(
            f"The example input for {name} has shape {tuple(example_input.shape)}; pass one NCHW batch, "
            "e.g. torch.zeros(1, 3, 224, 224)."
        )
    was_training = model.training
    model.eval()
    try:
        try:
            gm = torch.fx.symbolic_trace(model)
        except Exception as exc:  # fx raises TraceError, TypeError, ... for data-dependent Python control flow
            raise EngineError(
                f"torch.fx cannot trace {name} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); make its "
                "forward() traceable: no data-dependent Python control flow, every module registered as a submodule."
            ) from None
        return _Capture(gm, name, tuple(example_input.shape)).run()
    finally:
        model.train(was_training)


__all__ = ["SUPPORTED", "capture"]
