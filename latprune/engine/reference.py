"""The torch reference every engine kernel is checked against: conv2d on the masked dense weight."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from latprune.engine.activations import ACT_HARDSWISH, ACT_NONE, ACT_RELU, ACT_RELU6, apply_act, get_activation
from latprune.engine.kernels import ConvMeta
from latprune.errors import EngineError


def check_layer_args(weight: np.ndarray, bias: np.ndarray | None, meta: ConvMeta, act: int) -> None:
    """Raise one clear EngineError when the weight, bias or activation does not fit ``meta``."""
    expected = (meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)
    if meta.groups < 1 or meta.c_in % meta.groups or meta.c_out % meta.groups:
        raise EngineError(f"Layer {meta}: groups={meta.groups} must divide c_in and c_out; fix the layer shape.")
    if tuple(weight.shape) != expected:
        raise EngineError(
            f"The weight has shape {tuple(weight.shape)} but layer {meta} needs {expected}; pass the matching weight."
        )
    if bias is not None and tuple(np.shape(bias)) != (meta.c_out,):
        raise EngineError(f"The bias has shape {tuple(np.shape(bias))}; layer {meta} needs ({meta.c_out},).")
    get_activation(int(act))  # an unknown code fails with the list of valid ones
    if meta.h_out < 1 or meta.w_out < 1:
        raise EngineError(f"Layer {meta} has an empty output; check its kernel size, stride and padding.")


def as_batch(x: np.ndarray, meta: ConvMeta) -> tuple[np.ndarray, bool]:
    """``x`` as an (n, c_in, h, w) float32 array, and whether it came without a batch dimension."""
    x = np.asarray(x, dtype=np.float32)
    if meta.is_linear and x.ndim in (1, 2):  # (c_in,) or (n, c_in) features
        x = x.reshape(-1, meta.c_in, 1, 1) if x.ndim == 2 else x.reshape(1, meta.c_in, 1, 1)
        return x, False
    single = x.ndim == 3
    if single:
        x = x[None]  # (1, c_in, h, w)
    if x.ndim != 4 or x.shape[1:] != (meta.c_in, meta.h, meta.w):
        raise EngineError(
            f"The input has shape {tuple(x.shape)} but layer {meta} needs (c_in, h, w) = "
            f"{(meta.c_in, meta.h, meta.w)} with an optional batch dimension; pass a matching input."
        )
    return x, single


def conv_reference(
    weight: np.ndarray,
    bias: np.ndarray | None,
    x: np.ndarray,
    meta: ConvMeta,
    act: int = ACT_NONE,
    residual: np.ndarray | None = None,
) -> np.ndarray:
    """``act(conv2d(x, weight) + bias + residual)`` in float64, returned as float32 in the shape of the input.

    Computed in double precision so that the kernels' fp32 rounding is the only error a test sees.
    ``x`` is (c_in, h, w) or (n, c_in, h, w); for a linear layer also (c_in,) or (n, c_in).
    """
    weight = np.asarray(weight, dtype=np.float32)
    check_layer_args(weight, bias, meta, act)
    xb, single = as_batch(x, meta)
    w = torch.from_numpy(weight).double()
    b = torch.from_numpy(np.asarray(bias, dtype=np.float32)).double() if bias is not None else None
    y = F.conv2d(
        torch.from_numpy(xb).double(),
        w,
        b,
        stride=(meta.stride_h, meta.stride_w),
        padding=(meta.pad_h, meta.pad_w),
        groups=meta.groups,
    )  # (n, c_out, h_out, w_out)
    if residual is not None:
        res = torch.from_numpy(np.asarray(residual, dtype=np.float32)).double()
        y = y + res.reshape(y.shape)
    y = apply_act(y, act).float().numpy()
    x_in = np.asarray(x)
    if meta.is_linear and x_in.ndim in (1, 2):
        return y.reshape((*x_in.shape[:-1], meta.c_out))  # (n, c_out) or (c_out,)
    return y[0] if single else y


__all__ = ["ACT_HARDSWISH", "ACT_NONE", "ACT_RELU", "ACT_RELU6", "apply_act", "as_batch", "conv_reference"]
