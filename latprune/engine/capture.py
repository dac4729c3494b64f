"""Capture a PyTorch CNN with torch.fx into the engine IR, folding BatchNorm and fusing activations and adds.

Every node is visited even after one the engine cannot compile, so the error lists every unsupported op once
(op type, how many nodes, the first module path); shapes downstream of such a node come from running the model
once (fx's ShapeProp). With ``allow_torch_ops`` (``compile(backend="torch")``) those nodes become ``TorchOp``s
that the torch backend runs with the model's own code instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F
from torch.fx.passes.shape_prop import ShapeProp

from latprune.engine._capture_tensors import BATCH, ChannelsLast, TensorOps, Unsupported, arg, has_ref, module_path
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
from latprune.engine.kernels import ConvMeta
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
_POISON = object()  # a non-tensor value computed from an op that failed: its readers are not reported again


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


class _Capture(TensorOps):
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

    # ----------------------------------------------------------------- layers
    def conv(self, node: torch.fx.Node, name: str, x: TensorRef, weight: torch.Tensor, bias: Any, geometry: tuple):
        stride, padding, dilation, groups = geometry
        if _pair(dilation) != (1, 1):
            raise self.fail("Conv2d with dilation", f"dilation {dilation}; the engine runs undilated convolutions")
        c_out, c_in_g, kh, kw = weight.shape
        if x.c != c_in_g * groups:
            raise self.fail("Conv2d fed the wrong number of channels", f"expects {c_in_g * groups}, gets {x.c}")
        if padding == "valid":
            ph, pw = 0, 0
        elif padding == "same":  # torch allows 'same' for stride 1 only; odd kernels pad symmetrically
            if kh % 2 == 0 or kw % 2 == 0:
                raise self.fail("Conv2d with asymmetric 'same' padding", "use an odd kernel or explicit padding")
            ph, pw = kh // 2, kw // 2
        else:
            ph, pw = _pair(padding)
        sh, sw = _pair(stride)
        meta = ConvMeta(x.c, c_out, x.h, x.w, kh, kw, sh, sw, ph, pw, groups)
        if meta.h_out < 1 or meta.w_out < 1:
            raise self.fail("Conv2d on an input too small for its kernel", f"{x.h}x{x.w} input")
        out = self.new_ref(c_out, meta.h_out, meta.w_out)
        w = weight.detach().float().cpu().numpy().copy()
        b = np.zeros(c_out, np.float32) if bias is None else bias.detach().float().cpu().numpy().copy()
        return self.emit(node, ConvOp(name, x, out, w, b, meta))

    def conv_module(self, node: torch.fx.Node, m: nn.Conv2d) -> TensorRef:
        if m.padding_mode != "zeros":
            raise self.fail("Conv2d with non-zero padding", f"padding_mode={m.padding_mode!r}")
        x = self.tensor(node, node.args[0], image=True)
        return self.conv(node, str(node.target), x, m.weight, m.bias, (m.stride, m.padding, m.dilation, m.groups))

    def linear(self, node: torch.fx.Node, name: str, a: Any, weight: torch.Tensor, bias: Any) -> Any:
        src = self.env.get(a)
        channels_last = isinstance(src, ChannelsLast)
        x = src.ref if channels_last else self.tensor(node, a)
        if not (x.flat or channels_last):
            raise self.fail("Linear applied to an NCHW image", "flatten to (N, features) or permute to channels-last")
        out_f, in_f = weight.shape
        if x.c != in_f:
            raise self.fail("Linear fed the wrong number of features", f"expects {in_f}, gets {x.c}")
        out = self.new_ref(out_f, x.h, x.w, flat=x.flat)
        # (N, C) features: a 1x1 conv on a 1x1 image; channels-last (N, H, W, C): a 1x1 conv over H x W.
        meta = ConvMeta(x.c, out_f, x.h, x.w, is_linear=x.flat)
        w = weight.detach().float().cpu().numpy().reshape(out_f, in_f, 1, 1).copy()  # (out, in, 1, 1)
        b = np.zeros(out_f, np.float32) if bias is None else bias.detach().float().cpu().numpy().copy()
        ref = self.emit(node, ConvOp(name, x, out, w, b, meta))
        return ChannelsLast(ref) if channels_last else ref

    def batchnorm(self, node: torch.fx.Node, name: str, stats: tuple, eps: float) -> Any:
        """BatchNorm with running statistics ``stats`` = (mean, var, weight or None, bias or None)."""
        mean, var, weight, bias = stats
        if mean is None or var is None:
            raise self.fail("BatchNorm without running statistics", "build it with track_running_stats=True")
        scale = (torch.ones_like(var) if weight is None else weight.detach()) / torch.sqrt(var + eps)
        shift = (torch.zeros_like(mean) if bias is None else bias.detach()) - mean * scale
        return self.affine(node, node.args[0], scale.float().cpu().numpy(), shift.float().cpu().numpy(), name)

    def layernorm(self, node: torch.fx.Node, shape: Any, weight: Any, bias: Any, eps: float) -> Any:
        src = self.env.get(node.args[0])
        channels_last = isinstance(src, ChannelsLast)
        x = src.ref if channels_last else self.tensor(node, node.args[0])
        if not (channels_last or x.flat) or tuple(shape) != (x.c,):
            raise self.fail("LayerNorm over more than the channels", "normalise the channels of each pixel only")
        ones, zeros = np.ones(x.c, np.float32), np.zeros(x.c, np.float32)
        w = ones if weight is None else weight.detach().float().cpu().numpy().copy()
        b = zeros if bias is None else bias.detach().float().cpu().numpy().copy()
        out = x if self.can_overwrite(node, x) else self.like(x)
        ref = self.emit(node, LayerNormOp(module_path(node), x, out, w, b, float(eps)))
        return ChannelsLast(ref) if channels_last else ref

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

    def pool(self, node: torch.fx.Node, is_max: bool, k: Any, s: Any, p: Any, extra: dict[str, Any]) -> TensorRef:
        if extra.get("dilation", 1) not in (1, (1, 1)) or extra.get("return_indices") or extra.get("divisor_override"):
            raise self.fail("pooling with dilation, indices or a divisor override", "use plain max/avg pooling")
        x = self.tensor(node, node.args[0], image=True)
        (kh, kw), (ph, pw) = _pair(k), _pair(p)
        sh, sw = _pair(s if s not in (None, ()) else k)
        ceil = bool(extra.get("ceil_mode", False))
        oh, ow = _pool_size(x.h, kh, sh, ph, ceil), _pool_size(x.w, kw, sw, pw, ceil)
        if oh < 1 or ow < 1 or 2 * ph > kh or 2 * pw > kw:
            raise self.fail("pooling with a window or padding that does not fit", f"{kh}x{kw} on {x.h}x{x.w}")
        out = self.new_ref(x.c, oh, ow)
        op = PoolOp(node.name, x, out, is_max, kh, kw, sh, sw, ph, pw, bool(extra.get("count_include_pad", True)))
        return self.emit(node, op)

    def adaptive_avg(self, node: torch.fx.Node, size: Any) -> TensorRef:
        x = self.tensor(node, node.args[0], image=True)
        oh, ow = size if isinstance(size, (tuple, list)) else (size, size)
        oh, ow = x.h if oh is None else int(oh), x.w if ow is None else int(ow)
        return self.emit(node, AdaptiveAvgPoolOp(node.name, x, self.new_ref(x.c, oh, ow)))

    def mean(self, node: torch.fx.Node) -> TensorRef:
        dims = arg(node, 1, "dim")
        dims = tuple(sorted(d % 4 for d in (dims if isinstance(dims, (tuple, list)) else (dims,))))
        if dims != (2, 3):
            raise self.fail("mean over other dims than (H, W)", f"dims {dims}")
        x = self.tensor(node, node.args[0], image=True)
        out = self.new_ref(x.c, flat=not arg(node, 2, "keepdim", False))
        return self.emit(node, AdaptiveAvgPoolOp(node.name, x, out))

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

    # ----------------------------------------------------------------- unsupported nodes
    def visit_reporting(self, node: torch.fx.Node) -> Any:
        """``visit``, but an unsupported node is recorded and replaced by a TorchOp or a placeholder value."""
        inputs = [self.env.get(a) for a in node.all_input_nodes]
        if any(v is _POISON for v in inputs):
            return _POISON  # downstream of a failed non-tensor value: already reported
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
            return _POISON
        refs = outs if isinstance(outs, tuple) else (outs,)
        args, kwargs = self.env_args(node.args), self.env_args(node.kwargs)
        if not self.torch_ops or has_ref(args, kinds=(ChannelsLast,)) or _holds(args, kwargs, BATCH, _POISON):
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

    def message(self) -> str:
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
                f"{'; '.join(items)}; replace those ops with ones the engine supports ({SUPPORTED})."
            )
        return (
            f"Cannot compile {self.name} with the C engine: {kinds}, {'; '.join(items)}; replace them with ops "
            f"the engine supports ({SUPPORTED}), or compile with backend='torch' to run them with PyTorch."
        )

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
            raise EngineError(self.message())
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
