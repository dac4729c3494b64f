"""Weight-sparsity schemes of JCW and NPAS: one mask generator per scheme, behind a decorator registry."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# The 8 four-entry 3x3 patterns (flat indices into the 3x3 kernel) are the engine's packed-format vocabulary:
# masks use exactly the set the pattern kernel can pack.
from latprune.engine.kernels.npas import PATTERNS_3x3
from latprune.errors import PlanError


@dataclass(frozen=True)
class SchemeParams:
    """Block sizes of the block schemes (NPAS's defaults); other schemes ignore them."""

    block_out: int = 4  # block_punched: filters per block
    block_in: int = 4  # block_punched: input channels per block
    block_rows: int = 4  # block_fc: output features per block

    def __post_init__(self) -> None:
        for field in ("block_out", "block_in", "block_rows"):
            if getattr(self, field) < 1:
                raise PlanError(f"The scheme parameter {field}={getattr(self, field)} must be at least 1.")


MaskFn = Callable[[torch.Tensor, float, SchemeParams, str], torch.Tensor]


@dataclass(frozen=True)
class Scheme:
    """A sparsity scheme: which layers it handles, its mask generator, and its unit size (for the tolerance)."""

    name: str
    make: MaskFn
    supports: Callable[[torch.Tensor], bool]
    unit: Callable[[torch.Tensor, SchemeParams], int]  # largest number of weights removed together
    description: str


_SCHEMES: dict[str, Scheme] = {}


def register_scheme(
    name: str,
    *,
    supports: Callable[[torch.Tensor], bool],
    unit: Callable[[torch.Tensor, SchemeParams], int],
    description: str,
) -> Callable[[MaskFn], MaskFn]:
    """Register ``make(weight, sparsity, params, layer) -> bool mask`` as scheme ``name``."""

    def deco(fn: MaskFn) -> MaskFn:
        if name in _SCHEMES:
            raise ValueError(f"scheme '{name}' is already registered")
        _SCHEMES[name] = Scheme(name, fn, supports, unit, description)
        return fn

    return deco


def list_schemes() -> list[str]:
    """Names of every registered scheme, in registration order."""
    return list(_SCHEMES)


def get_scheme(name: str) -> Scheme:
    try:
        return _SCHEMES[name]
    except KeyError:
        raise PlanError(f"Unknown sparsity scheme '{name}'; choose one of: {', '.join(_SCHEMES)}.") from None


def make_mask(
    scheme: str,
    weight: torch.Tensor,
    sparsity: float,
    params: SchemeParams = SchemeParams(),
    layer: str = "<layer>",
) -> torch.Tensor:
    """Boolean keep-mask of ``weight`` (conv (c_out, c_in/g, kh, kw) or linear (out, in)) at ``sparsity``.

    Masks are chosen by magnitude (group or block L2 norm) and hit ``sparsity`` within one unit of the
    scheme (a group, block or kernel); raises PlanError naming ``layer`` for a bad value or a layer the
    scheme cannot handle.
    """
    spec = get_scheme(scheme)
    if not 0.0 <= sparsity < 1.0:
        raise PlanError(f"Layer '{layer}' has sparsity {sparsity}; use a value in [0, 1).")
    if not spec.supports(weight):
        shape = "x".join(str(s) for s in weight.shape)
        raise PlanError(
            f"Layer '{layer}' (weight {shape}) cannot use the '{scheme}' scheme; {spec.description}, "
            "so pick another scheme for it."
        )
    if sparsity == 0.0:
        return torch.ones_like(weight, dtype=torch.bool)
    with torch.no_grad():  # masks are small index work: compute on the CPU, return on the weight's device
        return spec.make(weight.detach().float().cpu(), sparsity, params, layer).to(weight.device)


def _as_4d(weight: torch.Tensor) -> torch.Tensor:
    return weight if weight.dim() == 4 else weight[:, :, None, None]  # (out, in) -> (out, in, 1, 1)


def _remove_lowest(scores: torch.Tensor, sizes: torch.Tensor, target: float) -> torch.Tensor:
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


def _blocked_mask(weight: torch.Tensor, sparsity: float, block_o: int, block_i: int) -> torch.Tensor:
    """Remove whole (block_o filters x block_i channels) units at one kernel position, lowest mean energy first."""
    w4 = _as_4d(weight)
    co, ci = w4.shape[:2]
    sq, count = _blocked_scores(w4, block_o, block_i)
    removed = _remove_lowest(sq / count, count, sparsity * w4.numel())  # (bo, bi, kh, kw)
    ob, ib = _blocks(co, block_o), _blocks(ci, block_i)
    keep = ~removed[ob][:, ib]  # (co, ci, kh, kw)
    return keep.reshape(weight.shape)


def _any_weight(weight: torch.Tensor) -> bool:
    return weight.dim() in (2, 4)


def _conv_only(weight: torch.Tensor) -> bool:
    return weight.dim() == 4


@register_scheme(
    "dense",
    supports=_any_weight,
    unit=lambda w, p: 1,
    description="dense keeps every weight",
)
def dense_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """No weight sparsity: only sparsity 0.0 is valid (make_mask returns all-ones for it before calling this)."""
    raise PlanError(
        f"Layer '{layer}' uses the dense scheme but asks for sparsity {sparsity}; use 0.0 or a sparse scheme."
    )


@register_scheme(
    "group4",
    supports=_any_weight,
    unit=lambda w, p: 4,
    description="group4 removes the 4 weights at one (input channel, kh, kw) of 4 adjacent filters together",
)
def group4_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """JCW: output channels in consecutive groups of 4 share their zero positions (the last group may be smaller)."""
    return _blocked_mask(weight, sparsity, 4, 1)


@register_scheme(
    "block_punched",
    supports=_conv_only,
    unit=lambda w, p: p.block_out * p.block_in,
    description="block_punched needs a conv weight (use block_fc for linear layers)",
)
def block_punched_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """NPAS: within a block of filters x channels, a kernel position is removed for the whole block."""
    return _blocked_mask(weight, sparsity, params.block_out, params.block_in)


@register_scheme(
    "block_fc",
    supports=lambda w: w.dim() == 2,
    unit=lambda w, p: p.block_rows,
    description="block_fc is for linear layers only (use block_punched or group4 for convs)",
)
def block_fc_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """NPAS block-based FC: rows in blocks of ``block_rows``; a column is kept or removed for the whole block."""
    return _blocked_mask(weight, sparsity, params.block_rows, 1)


@register_scheme(
    "unstructured",
    supports=_any_weight,
    unit=lambda w, p: 1,
    description="unstructured handles any conv or linear weight",
)
def unstructured_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """Remove the smallest-magnitude weights, exactly round(sparsity * numel) of them."""
    n = round(sparsity * weight.numel())
    keep = torch.ones(weight.numel(), dtype=torch.bool)
    keep[torch.sort(weight.abs().reshape(-1), stable=True).indices[:n]] = False
    return keep.reshape(weight.shape)


@register_scheme(
    "nm24",
    supports=_any_weight,
    unit=lambda w, p: 1,
    description="nm24 handles any conv or linear weight",
)
def nm24_mask(weight: torch.Tensor, sparsity: float, params: SchemeParams, layer: str) -> torch.Tensor:
    """2:4: in every 4 consecutive input channels at a fixed (co, kh, kw), at most 2 weights survive.

    The 2:4 step alone gives about 50% sparsity; more is removed by magnitude among the survivors. Below
    0.5 the structure cannot be met, so that is an error naming the layer.
    """
    if sparsity < 0.5 - 1e-9:
        raise PlanError(f"Layer '{layer}' asks nm24 for sparsity {sparsity}; 2:4 needs at least 0.5 (or 0.0).")
    w4 = _as_4d(weight).abs()
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


_PATTERN_MATRIX = torch.zeros(len(PATTERNS_3x3), 9, dtype=torch.float64)
for _i, _p in enumerate(PATTERNS_3x3):
    _PATTERN_MATRIX[_i, list(_p)] = 1.0


@register_scheme(
    "pattern",
    supports=lambda w: w.dim() == 4 and tuple(w.shape[2:]) == (3, 3),
    unit=lambda w, p: 9,
    description="pattern needs a 3x3 conv",
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


def mask_sparsity(mask: torch.Tensor) -> float:
    """Fraction of zeros in a keep-mask."""
    return 1.0 - float(mask.float().mean())


__all__ = [
    "PATTERNS_3x3",
    "Scheme",
    "SchemeParams",
    "get_scheme",
    "list_schemes",
    "make_mask",
    "mask_sparsity",
    "register_scheme",
]
