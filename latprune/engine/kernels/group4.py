"""Group-of-4 weight-sparse kernels (csrc/lp_group4.c): JCW sparse 1x1 and k x k convolution with register tiles."""

from __future__ import annotations

import numpy as np

from latprune.engine.kernels import ConvMeta, KernelSpec, register_kernel
from latprune.engine.kernels.dense import grid_scratch_floats, group_tap_offsets

#: Output channels that share one list of nonzero input positions.
GROUP = 4


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


def pack_group4(weight: np.ndarray, meta: ConvMeta) -> dict[str, np.ndarray]:
    """CSR over groups of 4 output channels: the union of their nonzero positions, 4 values per position.

    Zeros inside a group's union are stored explicitly, so any weight packs correctly; the format only pays
    off when the 4 channels of a group share their zeros (the group4 pruning scheme makes them do so).
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
    return {
        "values": np.ascontiguousarray(values, dtype=np.float32).ravel(),
        "group_ptr": group_ptr,
        "offsets": np.ascontiguousarray(offsets, dtype=np.int32),
    }


GROUP4_CONV = register_kernel(
    KernelSpec(
        name="group4_conv",
        c_function="lp_group4_conv",
        source="lp_group4.c",
        scheme="group4",
        supports=lambda meta: meta.groups == 1,
        pack=pack_group4,
        scratch_floats=grid_scratch_floats,
        variants=("w4", "w2", "w3", "w1", "w4_cols", "w2_cols", "w3_cols", "w1_cols"),
        description="Group-of-4 sparse convolution (1x1 and k x k, any stride/padding; linear too): 4 rows x "
        "w*LANES columns accumulated in registers over the group's nonzero positions.",
    )
)

__all__ = ["GROUP", "GROUP4_CONV", "group4_density", "group4_union_mask", "pack_group4"]
