"""Capture a PyTorch CNN with torch.fx into the engine IR, folding BatchNorm and fusing activations and adds.

Every node is visited even after one the engine cannot compile, so the error lists every unsupported op once
(op type, how many nodes, the first module path); shapes downstream of such a node come from running the model
once (fx's ShapeProp). With ``allow_torch_ops`` (``compile(backend="torch")``) those nodes become ``TorchOp``s
that the torch backend runs with the model's own code instead.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from latprune.engine._capture_layers import Layers
from latprune.engine._capture_report import Reporting
from latprune.engine._capture_tensors import ChannelsLast, TensorOps, Unsupported, arg, has_ref
from latprune.engine.activations import (
    ACT_GELU,
    ACT_GELU_TANH,
    ACT_HARDSIGMOID,
    ACT_HARDSWISH,
    ACT_NONE,
    ACT_RELU,
    ACT_RELU6,
    ACT_SIGMOID,
    ACT_SILU,
    ACT_TANH,
)
from latprune.engine.ir import (
    ActOp,
    AddOp,
    ChannelScaleOp,
    ConvOp,
    CopyOp,
    Graph,
    LayerNormOp,
    PoolOp,
    TensorRef,
)
from latprune.engine.views import place_concatenations
from latprune.errors import EngineError

SUPPORTED = (
    "Conv2d, Linear (also on a channels-last permute), BatchNorm (module or F.batch_norm), channel LayerNorm, "
    "ReLU/ReLU6/Hardswish/Sigmoid/SiLU/Hardsigmoid/GELU/Tanh, max/avg/adaptive-avg pooling, residual add, "
    "squeeze-excite gate multiply, per-channel scale/shift by a parameter, cat/split/chunk/channel slices, "
    "flatten/view(N, -1), dropout and identity"
)
_ACT_FUNCTIONS = {
    F.relu: ACT_RELU, torch.relu: ACT_RELU, torch.relu_: ACT_RELU, F.relu_: ACT_RELU, F.relu6: ACT_RELU6,
    F.hardswish: ACT_HARDSWISH, torch.sigmoid: ACT_SIGMOID, F.sigmoid: ACT_SIGMOID, F.silu: ACT_SILU,
    F.hardsigmoid: ACT_HARDSIGMOID, torch.tanh: ACT_TANH, F.tanh: ACT_TANH,
}  # fmt: skip
_ACT_METHODS = {"relu": ACT_RELU, "relu_": ACT_RELU, "sigmoid": ACT_SIGMOID, "sigmoid_": ACT_SIGMOID}
_ACT_METHODS |= {"tanh": ACT_TANH, "tanh_": ACT_TANH}
_ACT_MODULES = (
    (nn.ReLU, ACT_RELU), (nn.ReLU6, ACT_RELU6), (nn.Hardswish, ACT_HARDSWISH), (nn.Sigmoid, ACT_SIGMOID),
    (nn.SiLU, ACT_SILU), (nn.Hardsigmoid, ACT_HARDSIGMOID), (nn.Tanh, ACT_TANH),
)  # fmt: skip
_NOOP_FNS = {F.dropout, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout}
_NOOP_MODULES = (nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.FeatureAlphaDropout, nn.Identity)


def _clamp_act(lo: Any, hi: Any) -> int | None:
    if lo == 0 and hi == 6:
        return ACT_RELU6
    if lo == 0 and hi is None:
        return ACT_RELU
    return None


def _gelu(approximate: Any) -> int:
    if approximate == "none":
        return ACT_GELU
    if approximate == "tanh":
        return ACT_GELU_TANH
    raise Unsupported(f"GELU with approximate={approximate!r}")


def _data_users(node: torch.fx.Node) -> list[torch.fx.Node]:
    """The users of ``node`` that read its values; ``x.ndim`` or ``x.shape`` (timm's BatchNormAct2d asserts
    ``x.ndim == 4``) read only its shape, so they do not stop a BatchNorm from folding into the conv before it."""
    shape_only = ("ndim", "shape", "dtype", "device")
    return [
        u
        for u in node.users
        if not (u.op == "call_function" and u.target is getattr and u.args[1] in shape_only)
        and not (u.op == "call_method" and u.target in ("size", "dim"))
    ]


def _stock_forward(m: nn.Module) -> bool:
    """Whether ``m`` computes what its torch.nn class computes (a subclass with its own forward() does not)."""
    base = next(c for c in type(m).__mro__ if getattr(nn, c.__name__, None) is c)  # the torch.nn class it extends
    return type(m).forward is base.forward


def model_name(model: nn.Module) -> str:
    """The architecture's name for messages: a model library's own config name when it has one (timm builds
    MobileNets and MnasNets with its EfficientNet class), else the class name."""
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict) and isinstance(cfg.get("architecture"), str):
            return f"{cfg['architecture']} ({type(model).__name__})"
    return type(model).__name__


class _Capture(Layers, TensorOps, Reporting):
    """Walks the fx graph once, in topological order, emitting ops and fusing as it goes."""

    def __init__(self, gm: torch.fx.GraphModule, name: str, input_shape: tuple[int, ...], torch_ops: bool) -> None:
        self.gm = gm
        self.name = name
        self.batch, *self.input_shape = input_shape  # (N, C, H, W)
        self.torch_ops = torch_ops
        self.modules = dict(gm.named_modules())
        self.env: dict[torch.fx.Node, Any] = {}
        self.ops: list[Any] = []
        self.sizes: dict[int, int] = {}
        # node -> the op that produced it, only while that op's result has no other reader (safe to fuse into)
        self.fusable: dict[torch.fx.Node, Any] = {}
        self.input_ref: TensorRef | None = None
        self.order = {n: i for i, n in enumerate(gm.graph.nodes)}
        self.buf_nodes: dict[int, list[torch.fx.Node]] = {}  # buffer -> nodes whose value lives in it
        self.cat_bufs: set[int] = set()  # outputs of concatenations: never overwritten (see views.py)
        self.param_paths: dict[int, str] = {}  # id(parameter tensor) -> its path, to name functional layers
        self.problems: dict[str, list[tuple[str, str]]] = {}  # op kind -> [(module path, detail)]
        self.unrunnable: set[str] = set()  # kinds the torch backend cannot run either

    # ----------------------------------------------------------------- helpers
    def fail(self, what: str, hint: str = "") -> Unsupported:
        return Unsupported(what, hint)

    def new_ref(self, c: int, h: int = 1, w: int = 1, flat: bool = False) -> TensorRef:
        """A fresh buffer holding a per-image (c, h, w) image, or (c,) features when ``flat``."""
        ref = TensorRef(len(self.sizes), c, h, w, flat)
        self.sizes[ref.buf] = ref.size
        return ref

    def like(self, x: TensorRef) -> TensorRef:
        return self.new_ref(x.c, x.h, x.w, x.flat)

    def tensor(self, node: torch.fx.Node, a: Any, image: bool | None = None) -> TensorRef:
        ref = self.env.get(a) if isinstance(a, torch.fx.Node) else None
        if isinstance(ref, ChannelsLast):
            raise self.fail(
                "an op on a channels-last (permuted) tensor",
                "between permute(0, 2, 3, 1) and permute(0, 3, 1, 2) only LayerNorm, Linear, activations, adds and "
                "per-channel scale/shift run",
            )
        if not isinstance(ref, TensorRef):
            raise self.fail(f"an operand {type(ref).__name__} that is not a tensor the engine computed")
        if image is True and ref.flat:
            raise self.fail("a (N, features) input where an NCHW image is needed")
        return ref

    def emit(self, node: torch.fx.Node, op: Any) -> TensorRef:
        self.ops.append(op)
        if len(_data_users(node)) == 1:
            self.fusable[node] = op
        return op.out

    def sole_producer(self, a: Any) -> Any:
        """The op that made ``a`` if nothing else reads its result (so it can absorb a BN/act/add)."""
        return self.fusable.get(a) if isinstance(a, torch.fx.Node) else None

    def alias(self, node: torch.fx.Node, src: torch.fx.Node, ref: Any) -> Any:
        """``node`` is the same memory as its input (BN folded, act fused, no-op): pass fusability along."""
        op = self.sole_producer(src)
        if op is not None and len(_data_users(node)) == 1:
            self.fusable[node] = op
        return ref

    def can_overwrite(self, node: torch.fx.Node, ref: TensorRef) -> bool:
        """Whether ``node`` may write its result over ``ref``: a whole arena buffer that no later node reads."""
        if ref.buf == self.input_ref.buf or ref.buf in self.cat_bufs:
            return False
        if ref.offset != 0 or self.sizes[ref.buf] != ref.size:
            return False
        here = self.order[node]
        return all(self.order[u] <= here for m in self.buf_nodes.get(ref.buf, ()) for u in m.users)

    # ----------------------------------------------------------------- activations and adds
    def activation(self, node: torch.fx.Node, act: int) -> Any:
        src = node.args[0]
        value = self.env.get(src)
        if isinstance(value, ChannelsLast):
            return ChannelsLast(self.activation_on(node, src, value.ref, act))
        return self.activation_on(node, src, self.tensor(node, src), act)

    def activation_on(self, node: torch.fx.Node, src: torch.fx.Node, x: TensorRef, act: int) -> TensorRef:
        prod = self.sole_producer(src)
        if isinstance(prod, (ConvOp, AddOp, PoolOp, ChannelScaleOp, LayerNormOp)) and prod.act == ACT_NONE:
            prod.act = act
            return self.alias(node, src, prod.out)
        out = x if self.can_overwrite(node, x) else self.like(x)  # in place when nothing else reads x
        return self.emit(node, ActOp(node.name, x, out, act))

    def add(self, node: torch.fx.Node, a_node: Any, b_node: Any) -> Any:
        a_val, b_val = self.env.get(a_node), self.env.get(b_node)
        if isinstance(a_val, ChannelsLast) and isinstance(b_val, ChannelsLast):
            return ChannelsLast(self.add_refs(node, a_node, b_node, a_val.ref, b_val.ref))
        return self.add_refs(node, a_node, b_node, self.tensor(node, a_node), self.tensor(node, b_node))

    def add_refs(self, node: torch.fx.Node, a_node: Any, b_node: Any, a: TensorRef, b: TensorRef) -> TensorRef:
        if (a.c, a.h, a.w, a.flat) != (b.c, b.h, b.w, b.flat):
            raise self.fail("add with broadcasting", f"shapes {(a.c, a.h, a.w)} and {(b.c, b.h, b.w)}")
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
        out = a if self.can_overwrite(node, a) else b if self.can_overwrite(node, b) else self.like(a)
        return self.emit(node, AddOp(node.name, a, b, out))

    # ----------------------------------------------------------------- dispatch
    def visit(self, node: torch.fx.Node) -> Any:
        if node.op == "placeholder":
            if self.input_ref is not None:
                raise self.fail("a second input", "the engine compiles single-input models")
            self.input_ref = self.new_ref(*self.input_shape)
            return self.input_ref
        if node.op == "get_attr":
            value = self.gm
            for atom in str(node.target).split("."):
                value = getattr(value, atom)
            if isinstance(value, torch.Tensor):
                value = value.detach()
                self.param_paths[id(value)] = str(node.target)
            return value
        if node.op == "call_module":
            m = self.modules[node.target]
            if not _stock_forward(m):
                raise self.fail(f"{type(m).__name__} module made an fx leaf", "let fx trace into its forward()")
            return self.visit_module(node, m)
        if not has_ref(self.env, node) and node.op in ("call_function", "call_method"):
            return self.fold(node)
        if node.op == "call_function":
            return self.visit_function(node, node.target)
        return self.visit_method(node, str(node.target))

    def visit_module(self, node: torch.fx.Node, m: nn.Module) -> Any:
        if isinstance(m, nn.Conv2d):
            return self.conv_module(node, m)
        if isinstance(m, nn.Linear):
            return self.linear(node, str(node.target), node.args[0], m.weight, m.bias)
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            stats = (m.running_mean, m.running_var, m.weight if m.affine else None, m.bias if m.affine else None)
            return self.batchnorm(node, str(node.target), stats, m.eps)
        if isinstance(m, nn.LayerNorm):
            return self.layernorm(node, m.normalized_shape, m.weight, m.bias, m.eps)
        for cls, act in _ACT_MODULES:
            if isinstance(m, cls):
                return self.activation(node, act)
        if isinstance(m, nn.GELU):
            return self.activation(node, _gelu(m.approximate))
        if isinstance(m, nn.Hardtanh) and (m.min_val, m.max_val) == (0, 6):
            return self.activation(node, ACT_RELU6)
        if isinstance(m, nn.MaxPool2d):
            extra = {"dilation": m.dilation, "return_indices": m.return_indices, "ceil_mode": m.ceil_mode}
            return self.pool(node, True, m.kernel_size, m.stride, m.padding, extra)
        if isinstance(m, nn.AvgPool2d):
            extra = {"count_include_pad": m.count_include_pad, "divisor_override": m.divisor_override}
            return self.pool(node, False, m.kernel_size, m.stride, m.padding, {**extra, "ceil_mode": m.ceil_mode})
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return self.adaptive_avg(node, m.output_size)
        if isinstance(m, nn.Flatten):
            return self.flatten(node, m.start_dim, m.end_dim)
        if isinstance(m, _NOOP_MODULES):
            return self.alias(node, node.args[0], self.env[node.args[0]])
        raise self.fail(f"{type(m).__name__} module")

    def visit_function(self, node: torch.fx.Node, fn: Any) -> Any:
        if fn in _ACT_FUNCTIONS:
            return self.activation(node, _ACT_FUNCTIONS[fn])
        if fn is F.gelu:
            return self.activation(node, _gelu(arg(node, 1, "approximate", "none")))
        if fn is F.hardtanh and _clamp_act(arg(node, 1, "min_val", -1.0), arg(node, 2, "max_val", 1.0)) == ACT_RELU6:
            return self.activation(node, ACT_RELU6)
        if fn in (torch.clamp, torch.clip) and (act := _clamp_act(arg(node, 1, "min"), arg(node, 2, "max"))):
            return self.activation(node, act)
        if fn is F.max_pool2d:
            extra = {"dilation": arg(node, 4, "dilation", 1), "ceil_mode": arg(node, 5, "ceil_mode", False)}
            extra["return_indices"] = arg(node, 6, "return_indices")
            k, s, p = arg(node, 1, "kernel_size"), arg(node, 2, "stride"), arg(node, 3, "padding", 0)
            return self.pool(node, True, k, s, p, extra)
        if fn is F.avg_pool2d:
            extra = {"ceil_mode": arg(node, 4, "ceil_mode", False)}
            extra["count_include_pad"] = arg(node, 5, "count_include_pad", True)
            extra["divisor_override"] = arg(node, 6, "divisor_override")
            k, s, p = arg(node, 1, "kernel_size"), arg(node, 2, "stride"), arg(node, 3, "padding", 0)
            return self.pool(node, False, k, s, p, extra)
        if fn is F.adaptive_avg_pool2d:
            return self.adaptive_avg(node, arg(node, 1, "output_size"))
        if fn is torch.flatten:
            return self.flatten(node, arg(node, 1, "start_dim", 0), arg(node, 2, "end_dim", -1))
        if fn in _NOOP_FNS:
            return self.alias(node, node.args[0], self.env[node.args[0]])
        if fn is torch.mean:
            return self.mean(node)
        if fn is F.layer_norm:
            eps = arg(node, 4, "eps", 1e-5)
            w, b = self.const(node, 2, "weight"), self.const(node, 3, "bias")
            return self.layernorm(node, arg(node, 1, "normalized_shape"), w, b, eps)
        return self.visit_tensor_function(node, fn)

    def visit_method(self, node: torch.fx.Node, method: str) -> Any:
        if method in _ACT_METHODS:
            return self.activation(node, _ACT_METHODS[method])
        if method in ("clamp", "clamp_", "clip") and (act := _clamp_act(arg(node, 1, "min"), arg(node, 2, "max"))):
            return self.activation(node, act)
        if method == "flatten":
            return self.flatten(node, arg(node, 1, "start_dim", 0), arg(node, 2, "end_dim", -1))
        if method in ("view", "reshape"):
            return self.view(node)
        if method == "mean":
            return self.mean(node)
        if method == "contiguous":
            return self.alias(node, node.args[0], self.env[node.args[0]])
        return self.visit_tensor_method(node, method)

    def run(self) -> Graph:
        out_ref: Any = None
        for node in self.gm.graph.nodes:
            if node.op == "output":
                out_ref = self.env.get(node.args[0])
                if not isinstance(out_ref, TensorRef):
                    self.problems.setdefault("an output that is not one NCHW or (N, features) tensor", []).append(
                        ("the model's output", "")
                    )
                    self.unrunnable.add("output")
                continue
            value = self.visit_reporting(node)
            self.env[node] = value
            self.register(node, value)
        if self.problems and (not self.torch_ops or self.unrunnable):
            raise EngineError(self.message(SUPPORTED))
        assert self.input_ref is not None and isinstance(out_ref, TensorRef)
        graph = Graph(self.name, self.ops, self.input_ref, out_ref, self.sizes)
        place_concatenations(graph)
        out_ref = graph.output
        whole = out_ref.offset == 0 and self.sizes.get(out_ref.buf) == out_ref.size
        if out_ref.buf == self.input_ref.buf or not whole:  # the output must own its buffer (caller memory)
            copy = CopyOp("output_copy", out_ref, self.new_ref(out_ref.c, out_ref.h, out_ref.w, out_ref.flat))
            graph.ops.append(copy)
            graph.output = copy.out
        return graph


def capture(model: nn.Module, example_input: torch.Tensor, allow_torch_ops: bool = False) -> Graph:
    """Trace ``model`` (in eval mode) for inputs shaped like ``example_input`` and lower it to the IR.

    The model's train/eval mode is restored afterwards; BatchNorm is folded with its running statistics
    and dropout is dropped, i.e. the compiled model computes what ``model.eval()`` computes. Unsupported ops
    are refused all at once, or with ``allow_torch_ops`` kept as TorchOps for the torch backend.
    """
    name = model_name(model)
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
        try:
            with torch.no_grad():
                ShapeProp(gm).propagate(example_input.detach().float().cpu())  # shapes for error reporting
        except Exception as exc:
            raise EngineError(
                f"{name} fails on an input of shape {tuple(example_input.shape)} ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:160]}); pass an example input the model accepts."
            ) from None
        return _Capture(gm, name, tuple(example_input.shape), allow_torch_ops).run()
    finally:
        model.train(was_training)


__all__ = ["SUPPORTED", "capture", "model_name"]
