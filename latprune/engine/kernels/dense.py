"""Dense kernels (csrc/lp_dense.c): any convolution as a register-tiled GEMM over the input grid; depthwise; linear."""

from __future__ import annotations

import numpy as np

from latprune.engine.isa import Isa
from latprune.engine.kernels import ConvMeta, KernelSpec, register_kernel
from latprune.errors import EngineError

# Rows per weight panel and channels per channel-major panel are the ISA's (Isa.tiles: dense_mr, cm_channels), the
# same numbers the C code gets as LP_DENSE_MR and LP_CM.
#: Floats of zeroed slack after the grid planes (LP_MAXNV * 16 lanes read past the end, plus a grid row).
_SLACK = 512


def is_direct(meta: ConvMeta) -> bool:
    """Whether the kernels read the input in place (1x1, stride 1, no padding, >= 16 pixels so a vector tile
    fits); otherwise they read a padded copy (the grid) in scratch. Must match lp_grid_is_direct in lp_dense.c."""
    return (
        meta.kh == meta.kw == 1
        and meta.stride_h == meta.stride_w == 1
        and meta.pad_h == meta.pad_w == 0
        and meta.h * meta.w >= 16
    )


def grid_shape(meta: ConvMeta) -> tuple[int, int]:
    """(Hq, Wq): rows and columns of one phase plane of the padded, stride-split input (see lp_dense.c)."""
    hq = -(-(meta.h + 2 * meta.pad_h) // meta.stride_h)
    wq = -(-(meta.w + 2 * meta.pad_w) // meta.stride_w)
    return hq, wq


def grid_channel_floats(meta: ConvMeta) -> int:
    """Floats from one channel's phase planes to the next's in the grid, rounded up to 16 (64-byte lines)."""
    if is_direct(meta):
        return meta.h * meta.w
    hq, wq = grid_shape(meta)
    return -(-(meta.stride_h * meta.stride_w * hq * wq) // 16) * 16


def grid_scratch_floats(meta: ConvMeta) -> int:
    """Scratch for the padded phase planes of every input channel plus the slack the last tile reads."""
    if is_direct(meta):
        return 0
    return meta.c_in * grid_channel_floats(meta) + grid_shape(meta)[1] + _SLACK


def grid_offsets(meta: ConvMeta, ci: np.ndarray, ky: np.ndarray, kx: np.ndarray) -> np.ndarray:
    """Element offsets of taps (ci, ky, kx) into the grid: where output pixel (0, 0) reads that tap.

    Output pixel (oy, ox) reads the same tap at offset + oy * Wq + ox, so every tap is one shifted row.
    """
    sh, sw = meta.stride_h, meta.stride_w
    hq, wq = grid_shape(meta)
    ci, ky, kx = (np.asarray(a, dtype=np.int64) for a in (ci, ky, kx))
    plane = (ky % sh) * sw + kx % sw
    off = ci * grid_channel_floats(meta) + plane * hq * wq + (ky // sh) * wq + kx // sw
    if off.size and int(off.max()) + hq * wq >= 2**31:
        raise EngineError(f"Layer {meta} is too large for the engine's 32-bit offsets; split it into smaller layers.")
    return off.astype(np.int32)


def group_tap_offsets(meta: ConvMeta) -> np.ndarray:
    """Offsets of every weight position, (groups, K) with K = (c_in/groups)*kh*kw in (ci, ky, kx) order."""
    cg = meta.c_in // meta.groups
    ci, ky, kx = np.meshgrid(np.arange(meta.c_in), np.arange(meta.kh), np.arange(meta.kw), indexing="ij")
    off = grid_offsets(meta, ci.ravel(), ky.ravel(), kx.ravel())  # (c_in*kh*kw,) in (ci, ky, kx) order
    return off.reshape(meta.groups, cg * meta.kh * meta.kw)  # (groups, K)


def uses_channel_major(meta: ConvMeta) -> bool:
    """Whether dense_conv computes this layer with channel-major tiles (a k x k kernel, one group, <= 64 output
    pixels, where pixel-major tiles waste a third of their lanes); must match lp_dense_use_cm in lp_dense.c."""
    return meta.groups == 1 and meta.kh * meta.kw > 1 and meta.h_out * meta.w_out <= 64


def pack_dense_conv(weight: np.ndarray, meta: ConvMeta, isa: Isa) -> dict[str, np.ndarray]:
    """Weights in k-major panels of ``isa.tiles.dense_mr`` rows per group (zero rows pad the last panel), plus tap
    offsets. Small outputs (see ``uses_channel_major``) get panels of ``isa.tiles.cm_channels`` channels instead,
    the lanes of their tiles."""
    mr, cm = isa.tiles.dense_mr, isa.tiles.cm_channels
    if uses_channel_major(meta):
        k = meta.c_in * meta.kh * meta.kw
        panels = -(-meta.c_out // cm)
        padded = np.zeros((panels * cm, k), dtype=np.float32)
        padded[: meta.c_out] = np.asarray(weight, dtype=np.float32).reshape(meta.c_out, k)  # (c_out, K)
        packed = padded.reshape(panels, cm, k).transpose(0, 2, 1)  # (panels, K, CM)
        return {"w": np.ascontiguousarray(packed).ravel(), "off": group_tap_offsets(meta).ravel()}
    mg = meta.c_out // meta.groups
    k = (meta.c_in // meta.groups) * meta.kh * meta.kw
    panels = -(-mg // mr)
    w = np.asarray(weight, dtype=np.float32).reshape(meta.groups, mg, k)  # (groups, Mg, K)
    padded = np.zeros((meta.groups, panels * mr, k), dtype=np.float32)
    padded[:, :mg] = w
    packed = padded.reshape(meta.groups, panels, mr, k).transpose(0, 1, 3, 2)  # (groups, panels, K, MR)
    return {"w": np.ascontiguousarray(packed).ravel(), "off": group_tap_offsets(meta).ravel()}


def pack_depthwise(weight: np.ndarray, meta: ConvMeta, isa: Isa) -> dict[str, np.ndarray]:
    """Per-channel taps (C, kh*kw) and the tap offsets within one channel's grid planes (the same on every ISA)."""
    ky, kx = np.meshgrid(np.arange(meta.kh), np.arange(meta.kw), indexing="ij")
    off = grid_offsets(meta, np.zeros(ky.size, dtype=np.int64), ky.ravel(), kx.ravel())  # (kh*kw,)
    w = np.asarray(weight, dtype=np.float32).reshape(meta.c_out, meta.kh * meta.kw)  # (C, kh*kw)
    return {"w": np.ascontiguousarray(w).ravel(), "off": off}


def pack_linear(weight: np.ndarray, meta: ConvMeta, isa: Isa) -> dict[str, np.ndarray]:
    """The (c_out, c_in) weight, row-major (the same on every ISA)."""
    w = np.asarray(weight, dtype=np.float32).reshape(meta.c_out, meta.c_in)  # (c_out, c_in)
    return {"w": np.ascontiguousarray(w).ravel()}


def _is_linear_shape(meta: ConvMeta) -> bool:
    return meta.h == meta.w == 1 and meta.kh == meta.kw == 1 and meta.groups == 1 and meta.pad_h == meta.pad_w == 0


DENSE_CONV = register_kernel(
    KernelSpec(
        name="dense_conv",
        c_function="lp_dense_conv",
        source="lp_dense.c",
        scheme="dense",
        supports=lambda meta: True,
        pack=pack_dense_conv,
        scratch_floats=grid_scratch_floats,
        variants=("w3", "w2", "w1", "w3_cols", "w2_cols", "w1_cols"),
        description="Any convolution (kernel, stride, padding, groups): MR-row x w*LANES register tiles over the "
        "input grid (MR from the ISA's registers); 1x1 layers read the input directly (variant 0: through packed "
        "input panels); small k x k outputs use channel-major tiles.",
    )
)

DENSE_DEPTHWISE = register_kernel(
    KernelSpec(
        name="dense_depthwise",
        c_function="lp_dense_depthwise",
        source="lp_dense.c",
        scheme="dense",
        supports=lambda meta: meta.is_depthwise,
        pack=pack_depthwise,
        scratch_floats=grid_scratch_floats,
        variants=("3x3_w4", "w2", "w1", "w3"),
        description="Depthwise convolution, any kernel/stride/padding: per channel, shifted vector loads of its "
        "padded phase planes; variant 0 reads 3x3 pad-1 stride-1/2 layers in place (masked loads on AVX-512, lane "
        "shuffles per output row on the narrower ISAs).",
    )
)

DENSE_LINEAR = register_kernel(
    KernelSpec(
        name="dense_linear",
        c_function="lp_dense_linear",
        source="lp_dense.c",
        scheme="dense",
        supports=_is_linear_shape,
        pack=pack_linear,
        scratch_floats=lambda meta: 0,
        variants=("default",),
        description="Dense linear layer (1x1 conv on a 1x1 image): four vectorised dot products at a time.",
    )
)

__all__ = [
    "DENSE_CONV",
    "DENSE_DEPTHWISE",
    "DENSE_LINEAR",
    "grid_channel_floats",
    "grid_offsets",
    "grid_scratch_floats",
    "grid_shape",
    "group_tap_offsets",
    "is_direct",
    "pack_dense_conv",
    "pack_depthwise",
    "pack_linear",
    "uses_channel_major",
]
