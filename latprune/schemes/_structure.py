"""The building blocks the schemes share: blocked magnitude masks (torch) and block unions of nonzeros (numpy).

Masks are computed by pruning on torch weights; coverings are computed by the engine on numpy weights. Both sides
use the same block sizes and the same 3x3 patterns, defined here once.
"""

from __future__ import annotations

import numpy as np
import torch

#: Output channels (rows) of one group4 / block_fc block: the engine's packed formats tile 4 rows together.
ROWS = 4
#: Filters x input channels of one block-punched block in the engine's packed format (NPAS's default block).
BLOCK_OUT = 4
BLOCK_IN = 4
#: Kernel positions (kh * 3 + kw) of the 8 four-entry 3x3 patterns: centre + 3 of its 4-neighbours (missing bottom,
#: left, top, right), then centre + 2 adjacent 4-neighbours + the corner between them (top-left, top-right,
#: bottom-left, bottom-right). Pattern id 8 in the packed format is the full 9-entry kernel.
PATTERNS_3x3: tuple[tuple[int, int, int, int], ...] = (
    (1, 3, 4, 5),
    (1, 4, 5, 7),
    (3, 4, 5, 7),
    (1, 3, 4, 7),
    (0, 1, 3, 4),
    (1, 2, 4, 5),
    (3, 4, 6, 7),
    (4, 5, 7, 8),
)
FULL_PATTERN = len(PATTERNS_3x3)
_PATTERN_BITS = np.array([sum(1 << k for k in p) for p in PATTERNS_3x3], dtype=np.int64)


# ----------------------------------------------------------------------------------------------- torch: masks


def as_4d(weight: torch.Tensor) -> torch.Tensor:
    return weight if weight.dim() == 4 else weight[:, :, None, None]  # (out, in) -> (out, in, 1, 1)


def remove_lowest(scores: torch.Tensor, sizes: torch.Tensor, target: float) -> torch.Tensor:
    """Which units to remove: lowest score first, stopping where the removed weight count is closest to target.

    Returns a bool tensor shaped like ``scores`` (True = removed). Ties break by position, so masks are
    deterministic.
    """
    flat, flat_sizes = scores.reshape(-1), sizes.reshape(-1).to(torch.float64)
    order = torch.sort(flat, stable=True).indices
    cum = torch.cumsum(flat_sizes[order], 0)  # removed weights after taking the first i+1 units
    cum = torch.cat([cum.new_zeros(1), cum])
    n = int(torch.argmin((cum - target).abs()))
    removed = torch.zeros_like(flat, dtype=torch.bool)
    removed[order[:n]] = True
    return removed.reshape(scores.shape)


def _blocks(length: int, size: int) -> torch.Tensor:
    """Block id of each index in ``range(length)`` for consecutive blocks of ``size`` (the last may be smaller)."""
    return torch.arange(length) // size


def _blocked_scores(w4: torch.Tensor, block_o: int, block_i: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of squares and weight counts per (out block, in block, kh, kw) unit of a 4-D weight."""
    co, ci, kh, kw = w4.shape
    bo, bi = -(-co // block_o), -(-ci // block_i)
    sq = torch.zeros(bo, bi, kh, kw, dtype=torch.float64)
    count = torch.zeros(bo, bi, kh, kw, dtype=torch.float64)
    ob, ib = _blocks(co, block_o), _blocks(ci, block_i)
    idx = (ob[:, None] * bi + ib[None, :]).reshape(-1)  # (co*ci,) unit id per (o, i)
    flat = (w4.double() ** 2).reshape(co * ci, kh * kw)  # (co*ci, kh*kw)
    sq.view(bo * bi, kh * kw).index_add_(0, idx, flat)
    count.view(bo * bi, kh * kw).index_add_(0, idx, torch.ones_like(flat))
    return sq, count


def blocked_mask(weight: torch.Tensor, sparsity: float, block_o: int, block_i: int) -> torch.Tensor:
    """Remove whole (block_o filters x block_i channels) units at one kernel position, lowest mean energy first."""
    w4 = as_4d(weight)
    co, ci = w4.shape[:2]
    sq, count = _blocked_scores(w4, block_o, block_i)
    removed = remove_lowest(sq / count, count, sparsity * w4.numel())  # (bo, bi, kh, kw)
    ob, ib = _blocks(co, block_o), _blocks(ci, block_i)
    keep = ~removed[ob][:, ib]  # (co, ci, kh, kw)
    return keep.reshape(weight.shape)


# ----------------------------------------------------------------------------------------------- numpy: coverings


def row_union(nz: np.ndarray, rows: int = ROWS) -> np.ndarray:
    """(c_out, ...) bool -> (ceil(c_out/rows), ...) bool: which entries any row of each block of ``rows`` keeps."""
    nb = -(-nz.shape[0] // rows)
    padded = np.zeros((nb * rows, *nz.shape[1:]), dtype=bool)
    padded[: nz.shape[0]] = nz
    return padded.reshape(nb, rows, *nz.shape[1:]).any(axis=1)


def block_union(nz: np.ndarray) -> np.ndarray:
    """(c_out, cpg, kh, kw) bool -> (ceil(c_out/4), ceil(cpg/4), kh, kw): kept positions of each 4x4 block."""
    co, ci, kh, kw = nz.shape
    nbo, nbi = -(-co // BLOCK_OUT), -(-ci // BLOCK_IN)
    padded = np.zeros((nbo * BLOCK_OUT, nbi * BLOCK_IN, kh, kw), dtype=bool)
    padded[:co, :ci] = nz
    return padded.reshape(nbo, BLOCK_OUT, nbi, BLOCK_IN, kh, kw).any(axis=(1, 3))


def kernel_patterns(weight: np.ndarray) -> np.ndarray:
    """Pattern id of every 3x3 kernel: -1 if all zero, 0..7 the first pattern covering its nonzeros, 8 otherwise."""
    k9 = np.asarray(weight).reshape(weight.shape[0], weight.shape[1], 9)  # (c_out, cpg, 9)
    bits = (k9 != 0).astype(np.int64) @ (1 << np.arange(9, dtype=np.int64))  # (c_out, cpg)
    covered = (bits[..., None] & ~_PATTERN_BITS) == 0  # (c_out, cpg, 8)
    pid = np.where(covered.any(axis=-1), covered.argmax(axis=-1), FULL_PATTERN)
    return np.where(bits == 0, -1, pid)


def at_most_2_of_4(nz: np.ndarray) -> bool:
    """At most 2 nonzeros in every 4 consecutive input channels at a fixed (co, kh, kw)."""
    co, ci, kh, kw = nz.shape
    padded = np.zeros((co, -(-ci // 4) * 4, kh, kw), dtype=bool)
    padded[:, :ci] = nz
    return bool((padded.reshape(co, -1, 4, kh, kw).sum(axis=2) <= 2).all())
