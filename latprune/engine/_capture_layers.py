"""Capture rules for the layers: conv, linear, BatchNorm (folded), channel LayerNorm and pooling."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx
import torch.nn as nn

from latprune.engine._capture_tensors import ChannelsLast, arg, module_path
from latprune.engine.ir import AdaptiveAvgPoolOp, ConvOp, LayerNormOp, PoolOp, TensorRef
from latprune.engine.kernels import ConvMeta


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _pool_size(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    """Pooled length, torch's rule: with ceil_mode the last window must still start inside the padded input."""
    out = (size + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


class Layers:
    """Mixin of ``_Capture`` (capture.py): one method per kind of layer, each emitting its IR op."""

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
