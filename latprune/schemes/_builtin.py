"""The schemes of JCW and NPAS: each one mask generator (pruning) and one covering (engine) in one registry entry.

Registration order is the order the engine tries kernels in when a layer declares no scheme (ties keep the earlier).
"""

from __future__ import annotations

import numpy as np
import torch

from latprune.errors import PlanError
from latprune.schemes._registry import SchemeParams, register_scheme
from latprune.schemes._structure import (
    BLOCK_IN,
    BLOCK_OUT,
    FULL_PATTERN,
    ROWS,
    PATTERNS_3x3,
    as_4d,
    at_most_2_of_4,
    block_union,
    blocked_mask,
    kernel_patterns,
    row_union,
)


def _nonzeros(nz: np.ndarray) -> np.ndarray:
    return nz


def _count(nz: np.ndarray) -> int:
    return int(np.count_nonzero(nz))


def _rows_cover(nz: np.ndarray) -> np.ndarray:
    return row_union(nz).repeat(ROWS, axis=0)[: nz.shape[0]]


def _rows_work(nz: np.ndarray) -> int:
    """Every kept (row block, position) computes all 4 rows, the padding rows of the last block included."""
    return int(row_union(nz.reshape(nz.shape[0], -1)).sum()) * ROWS


@register_scheme(
    "dense",
    unit=lambda w, p: 1,
    cover=lambda nz: np.ones_like(nz),
    work=lambda nz: int(nz.size),
    description="dense keeps every weight",
    kinds=("conv", "depthwise", "linear"),
    prunes=False,
)
def dense_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """No weight sparsity: only sparsity 0.0 is valid (make_mask returns all-ones for it before calling this)."""
    raise PlanError(
        f"Layer '{layer}' uses the dense scheme but asks for sparsity {sparsity}; use 0.0 or a sparse scheme."
    )


@register_scheme(
    "group4",
    unit=lambda w, p: 4,
    cover=_rows_cover,
    work=_rows_work,
    description="group4 removes the 4 weights at one (input channel, kh, kw) of 4 adjacent filters together",
    channel_multiple=4,
    kernel_formats=("block_fc", "group4"),  # on a matrix-vector layer group4 zeros are block_fc zeros
    specificity=3,
)
def group4_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """JCW: output channels in consecutive groups of 4 share their zero positions (the last group may be smaller)."""
    return blocked_mask(weight, sparsity, 4, 1)


def _block_punched_cover(nz: np.ndarray) -> np.ndarray:
    return block_union(nz).repeat(BLOCK_OUT, axis=0).repeat(BLOCK_IN, axis=1)[: nz.shape[0], : nz.shape[1]]


@register_scheme(
    "block_punched",
    unit=lambda w, p: p.block_out * p.block_in,
    cover=_block_punched_cover,
    work=lambda nz: int(block_union(nz).sum()) * BLOCK_OUT * BLOCK_IN,
    description="block_punched needs a conv weight (use block_fc for linear layers)",
    kinds=("conv",),
    fallback=(("linear", "block_fc"),),
    channel_multiple=4,
    kernel_formats=("block_punched", "group4"),  # 4x4 block zeros are also group-of-4 zeros
    specificity=5,
)
def block_punched_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """NPAS: within a block of filters x channels, a kernel position is removed for the whole block."""
    return blocked_mask(weight, sparsity, params.block_out, params.block_in)


_PATTERN_MATRIX = torch.zeros(len(PATTERNS_3x3), 9, dtype=torch.float64)
for _i, _p in enumerate(PATTERNS_3x3):
    _PATTERN_MATRIX[_i, list(_p)] = 1.0
_PATTERN_TABLE = np.zeros((FULL_PATTERN + 2, 9), dtype=bool)  # row 0: removed kernel, 1..8 patterns, 9: full
for _i, _p in enumerate(PATTERNS_3x3):
    _PATTERN_TABLE[_i + 1, list(_p)] = True
_PATTERN_TABLE[FULL_PATTERN + 1] = True


def _pattern_work(nz: np.ndarray) -> int:
    """4 multiply-adds per patterned kernel, 9 per kernel kept full."""
    pid = kernel_patterns(nz)
    return 4 * int(np.count_nonzero((pid >= 0) & (pid < FULL_PATTERN))) + 9 * int(np.count_nonzero(pid == FULL_PATTERN))


@register_scheme(
    "pattern",
    unit=lambda w, p: 9,
    cover=lambda nz: _PATTERN_TABLE[kernel_patterns(nz) + 1].reshape(nz.shape),
    work=_pattern_work,
    description="pattern needs a 3x3 conv",
    kinds=("conv",),
    kernel_sizes=((3, 3),),
    fallback=(("conv", "block_punched"), ("linear", "block_fc")),
    specificity=6,
)
def pattern_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """NPAS/PatDNN: each 3x3 kernel is removed (connectivity), keeps one 4-entry pattern, or stays full.

    At sparsity >= 5/9 every surviving kernel is patterned and connectivity pruning removes the weakest
    kernels; below it no kernel is removed and only the kernels that lose least to a pattern are patterned.
    """
    co, ci = weight.shape[:2]
    energy = (weight.double() ** 2).reshape(co * ci, 9)  # (kernels, 9)
    kept_by = energy @ _PATTERN_MATRIX.T  # (kernels, 8) energy each pattern keeps
    best = kept_by.argmax(1)
    pattern_keep = _PATTERN_MATRIX[best].bool()  # (kernels, 9)
    n = co * ci
    if sparsity >= 5 / 9:
        n_keep = min(n, round(n * 9 * (1 - sparsity) / 4))
        order = torch.sort(kept_by.max(1).values, descending=True, stable=True).indices
        alive = torch.zeros(n, dtype=torch.bool)
        alive[order[:n_keep]] = True
        keep = pattern_keep & alive[:, None]
    else:
        n_pattern = min(n, round(n * sparsity * 9 / 5))
        loss = energy.sum(1) - kept_by.max(1).values  # energy a pattern would drop
        order = torch.sort(loss, stable=True).indices
        patterned = torch.zeros(n, dtype=torch.bool)
        patterned[order[:n_pattern]] = True
        keep = torch.where(patterned[:, None], pattern_keep, torch.ones_like(pattern_keep))
    return keep.reshape(weight.shape)


@register_scheme(
    "unstructured",
    unit=lambda w, p: 1,
    cover=_nonzeros,
    work=_count,
    description="unstructured handles any conv or linear weight",
    specificity=1,
)
def unstructured_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """Remove the smallest-magnitude weights, exactly round(sparsity * numel) of them."""
    n = round(sparsity * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[torch.sort(weight.abs().reshape(-1), stable=True).indices[:n]] = False
    return keep.reshape(weight.shape)


@register_scheme(
    "block_fc",
    unit=lambda w, p: p.block_rows,
    cover=_rows_cover,
    work=_rows_work,
    description="block_fc is for linear layers only (use block_punched or group4 for convs)",
    fc_only=True,
    fallback=(("conv", "block_punched"),),
    channel_multiple=4,
    kernel_formats=("block_fc", "group4"),  # 4-row blocks sharing columns are group-of-4 zeros of a 1x1 layer
    specificity=4,
)
def block_fc_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """NPAS block-based FC: rows in blocks of ``block_rows``; a column is kept or removed for the whole block."""
    return blocked_mask(weight, sparsity, params.block_rows, 1)


@register_scheme(
    "nm24",
    unit=lambda w, p: 1,
    cover=_nonzeros,
    work=_count,
    description="nm24 handles any conv or linear weight",
    channel_multiple=4,
    min_sparsity=0.5,
    limit=at_most_2_of_4,
    specificity=2,
    label="2:4",
)
def nm24_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """2:4: in every 4 consecutive input channels at a fixed (co, kh, kw), at most 2 weights survive.

    The 2:4 step alone gives about 50% sparsity; more is removed by magnitude among the survivors (below 0.5 the
    structure cannot be met: ``make_mask`` refuses it naming the layer).
    """
    w4 = as_4d(weight).abs()
    co, ci, kh, kw = w4.shape
    pad = (-ci) % 4
    wp = torch.cat([w4, w4.new_full((co, pad, kh, kw), -1.0)], 1) if pad else w4  # padded entries rank lowest
    quads = wp.reshape(co, (ci + pad) // 4, 4, kh, kw)  # (co, ci/4, 4, kh, kw)
    top2 = quads.topk(2, dim=2).indices
    keep = torch.zeros_like(quads, dtype=torch.bool).scatter_(2, top2, True)
    keep = keep.reshape(co, ci + pad, kh, kw)[:, :ci]
    target = round(sparsity * w4.numel())
    extra = target - int((~keep).sum())
    if extra > 0:  # remove the smallest survivors
        scores = torch.where(keep, w4, torch.full_like(w4, float("inf"))).reshape(-1)
        drop = torch.sort(scores, stable=True).indices[:extra]
        keep = keep.reshape(-1).clone()
        keep[drop] = False
    return keep.reshape(weight.shape)
