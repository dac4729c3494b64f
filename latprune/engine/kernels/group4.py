"""Group-of-4 weight-sparse kernels (csrc/lp_group4.c): JCW sparse 1x1 and k x k convolution with register tiles."""

from __future__ import annotations

import numpy as np

from latprune.engine.isa import Isa
from latprune.engine.kernels import ConvMeta, KernelSpec, register_kernel
from latprune.engine.kernels.dense import grid_scratch_floats, group_tap_offsets, is_direct

#: Output channels that share one list of nonzero input positions.
GROUP = 4
#: The padded input copy's channel stride is a multiple of this many floats (one 64-byte cache line).
PAD_FLOATS = 16


def padded_stride(meta: ConvMeta) -> int:
    """Channel stride (floats) of the padded input copy of the "pad" variants, or 0 where the layer has none: a 1x1
    stride-1 layer read in place whose channels are not a whole number of cache lines (14x14, 7x7).
    Must match lp_g4_pad_stride in csrc/lp_group4.c."""
    hw = meta.h * meta.w
    if not is_direct(meta) or hw % PAD_FLOATS == 0:
        return 0
    return -(-hw // PAD_FLOATS) * PAD_FLOATS


def group4_scratch_floats(meta: ConvMeta) -> int:
    """The grid's scratch, or the padded copy's (c_in channels of ``padded_stride`` floats)."""
    return max(grid_scratch_floats(meta), meta.c_in * padded_stride(meta))


def _variant_names() -> tuple[str, ...]:
    """Variant index -> name, in the order lp_group4_conv decodes it: tile width (index % 3: the ISA's
    ``TileShape.g4_widths``, wide / mid / narrow = 4 / 3 / 2 vectors on AVX-512 and NEON, 3 / 2 / 1 on AVX2 and
    generic), order (index // 3 % 3: the group outermost, the same with a prefetch of the next tile's rows, the column
    tile outermost), the padded input copy (index // 9)."""
    orders = ("", "_pf", "_cols")
    widths = ("wide", "mid", "narrow")
    return tuple(f"{w}{o}{'_pad' if pad else ''}" for pad in (0, 1) for o in orders for w in widths)


#: Every variant's name; the index is what the C function receives.
VARIANTS = _variant_names()


def tunable_variants(meta: ConvMeta) -> tuple[int, ...]:
    """The variants that differ on this layer: the "pad" ones only where the layer has a padded copy."""
    return tuple(i for i, name in enumerate(VARIANTS) if padded_stride(meta) or not name.endswith("_pad"))


def group4_union_mask(weight: np.ndarray, meta: ConvMeta) -> np.ndarray:
    """(ceil(c_out/4), K) bool: which (ci, ky, kx) positions any of a group's 4 output channels uses."""
    k = meta.c_in * meta.kh * meta.kw
    w = np.asarray(weight, dtype=np.float32).reshape(meta.c_out, k)  # (c_out, K)
    groups = -(-meta.c_out // GROUP)
    padded = np.zeros((groups * GROUP, k), dtype=np.float32)
    padded[: meta.c_out] = w
    return (padded.reshape(groups, GROUP, k) != 0).any(axis=1)  # (groups, K)


def group4_density(weight: np.ndarray, meta: ConvMeta) -> float:
    """Fraction of (group, position) pairs the kernel computes: the work relative to the dense layer."""
    mask = group4_union_mask(weight, meta)
    return float(mask.mean()) if mask.size else 0.0


def pack_group4(weight: np.ndarray, meta: ConvMeta, isa: Isa) -> dict[str, np.ndarray]:
    """CSR over groups of 4 output channels: the union of their nonzero positions, 4 values per position.

    Zeros inside a group's union are stored explicitly, so any weight packs correctly; the format only pays
    off when the 4 channels of a group share their zeros (the group4 pruning scheme makes them do so).
    ``pad_offsets`` are the same positions in the padded input copy of the "pad" variants (empty where the layer
    has none, see ``padded_stride``).
    """
    k = meta.c_in * meta.kh * meta.kw
    groups = -(-meta.c_out // GROUP)
    w = np.zeros((groups * GROUP, k), dtype=np.float32)
    w[: meta.c_out] = np.asarray(weight, dtype=np.float32).reshape(meta.c_out, k)  # (c_out, K)
    w = w.reshape(groups, GROUP, k)  # (groups, 4, K)
    mask = (w != 0).any(axis=1)  # (groups, K)
    g_idx, k_idx = np.nonzero(mask)  # sorted by group, then by position
    values = w[g_idx, :, k_idx]  # (nnz, 4)
    group_ptr = np.zeros(groups + 1, dtype=np.int32)
    np.cumsum(mask.sum(axis=1), out=group_ptr[1:])
    offsets = group_tap_offsets(meta).reshape(k)[k_idx]  # (nnz,)
    stride = padded_stride(meta)
    pad_offsets = k_idx * stride if stride else np.zeros(0)  # 1x1: position k is input channel k
    return {
        "values": np.ascontiguousarray(values, dtype=np.float32).ravel(),
        "group_ptr": group_ptr,
        "offsets": np.ascontiguousarray(offsets, dtype=np.int32),
        "pad_offsets": np.ascontiguousarray(pad_offsets, dtype=np.int32),
    }


GROUP4_CONV = register_kernel(
    KernelSpec(
        name="group4_conv",
        c_function="lp_group4_conv",
        source="lp_group4.c",
        scheme="group4",
        supports=lambda meta: meta.groups == 1,
        pack=pack_group4,
        scratch_floats=group4_scratch_floats,
        variants=VARIANTS,
        tunable_variants=tunable_variants,
        description="Group-of-4 sparse convolution (1x1 and k x k, any stride/padding; linear too): 4 rows x "
        "w*LANES columns accumulated in registers over the group's nonzero positions; 1x1 layers with channels "
        "that are not whole cache lines can first copy the input to aligned, padded channels.",
    )
)

__all__ = [
    "GROUP",
    "GROUP4_CONV",
    "PAD_FLOATS",
    "VARIANTS",
    "group4_density",
    "group4_scratch_floats",
    "group4_union_mask",
    "pack_group4",
    "padded_stride",
    "tunable_variants",
]
