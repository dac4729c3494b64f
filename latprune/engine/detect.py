"""Scheme detection: which sparsity structure a weight's zeros have, and which engine kernel should run the layer.

Every packer in the kernel table is exact for any weight (a zero the format cannot skip is stored and multiplied),
so the choice is only about speed: each candidate kernel's cost is estimated from the work its packed format
really does (its *effective density*: the union of the structure over the zeros, padding included) and from how
fast it does that work relative to the dense kernel on the target ISA (``Isa.costs``, measured per ISA by
benchmarks/engine_costs.py on MobileNetV1 / ResNet18 layer shapes at 50-90 % sparsity, 1 thread). The numbers are
rough, which is fine: autotune and the latency profiler measure, this only has to avoid bad choices without
measuring.
"""

from __future__ import annotations

import numpy as np

from latprune.engine.isa import Isa, host_isa
from latprune.engine.kernels import ConvMeta, KernelSpec, kernels_for
from latprune.engine.kernels.dense import is_direct
from latprune.engine.kernels.npas import is_fc_layer
from latprune.errors import EngineError
from latprune.schemes import Scheme, SchemeLayer, detection_order, get_scheme, list_schemes

#: A weight "has" a scheme's structure when the zeros inside the entries the structure keeps are at most this
#: fraction of all its zeros (trained weights are almost never exactly zero by chance, random zeros are).
STRUCTURE_TOLERANCE = 0.02

#: Efficiency assumed for a sparse kernel the target ISA's KernelCosts do not list (a kernel family added later, not
#: yet measured by benchmarks/engine_costs.py): conservative.
DEFAULT_EFFICIENCY = 0.25


def _scheme(name: str) -> Scheme:
    """The registry entry of ``name``, or EngineError listing the schemes the engine knows."""
    if name not in list_schemes():
        raise EngineError(f"Unknown sparsity scheme '{name}'; choose one of: {', '.join(list_schemes())}.")
    return get_scheme(name)


def scheme_layer(meta: ConvMeta) -> SchemeLayer:
    """The engine's view of a layer for the scheme registry: its kind, kernel, and whether it is a matrix-vector
    product (a linear layer, or a 1x1 conv on a 1x1 image)."""
    kind = "linear" if meta.is_linear else "depthwise" if meta.is_depthwise else "conv"
    return SchemeLayer(kind, (meta.kh, meta.kw), fc=is_fc_layer(meta))


def scheme_applies(scheme: str, meta: ConvMeta) -> bool:
    """Whether ``scheme`` is defined for this layer (shared vocabulary: depthwise convs get no weight sparsity)."""
    return _scheme(scheme).applies(scheme_layer(meta))


def _check(weight: np.ndarray, meta: ConvMeta) -> np.ndarray:
    weight = np.asarray(weight, dtype=np.float32)
    expected = (meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)
    if weight.shape != expected:
        raise EngineError(
            f"The weight has shape {weight.shape} but layer {meta} needs {expected}; pass the matching one."
        )
    return weight


def scheme_mask(weight: np.ndarray, meta: ConvMeta, scheme: str) -> np.ndarray:
    """The smallest mask with ``scheme``'s structure that keeps every nonzero (bool, the weight's shape).

    For nm24 (a limit, not a covering) this is the nonzeros themselves; ``fits_scheme`` checks the limit.
    """
    spec = _scheme(scheme)
    w = _check(weight, meta)
    if spec.kernel_sizes and (meta.kh, meta.kw) not in spec.kernel_sizes:
        sizes = " or ".join(f"{kh}x{kw}" for kh, kw in spec.kernel_sizes)
        raise EngineError(f"The {scheme} scheme needs {sizes} kernels; layer {meta} has {meta.kh}x{meta.kw}.")
    return spec.cover(w != 0)


def structure_violation(weight: np.ndarray, meta: ConvMeta, scheme: str) -> float:
    """Zeros inside the entries ``scheme``'s structure keeps, as a fraction of all zeros (0 = a perfect fit)."""
    w = _check(weight, meta)
    zeros = int(w.size - np.count_nonzero(w))
    if zeros == 0:
        return 0.0
    limit = _scheme(scheme).limit
    if limit is not None:
        return 0.0 if limit(w != 0) else 1.0
    kept = int(scheme_mask(w, meta, scheme).sum())
    return (kept - (w.size - zeros)) / zeros


def fits_scheme(weight: np.ndarray, meta: ConvMeta, scheme: str) -> bool:
    """Whether the zeros of ``weight`` have ``scheme``'s structure (within STRUCTURE_TOLERANCE)."""
    if not scheme_applies(scheme, meta):
        return False
    return structure_violation(weight, meta, scheme) <= STRUCTURE_TOLERANCE


def detect_scheme(weight: np.ndarray, meta: ConvMeta) -> str:
    """The most specific scheme whose structure the zeros have: "dense" when there are none."""
    w = _check(weight, meta)
    if np.count_nonzero(w) == w.size:
        return "dense"
    for scheme in detection_order():
        if fits_scheme(w, meta, scheme):
            return scheme
    return "unstructured"  # zeros no registered structure explains (a depthwise conv takes none)


def effective_density(spec: KernelSpec, weight: np.ndarray, meta: ConvMeta) -> float:
    """Multiply-adds the kernel's packed format performs, as a fraction of the dense layer's (padding included)."""
    w = _check(weight, meta)
    return float(get_scheme(spec.scheme).work(w != 0)) / w.size


def estimated_cost(spec: KernelSpec, weight: np.ndarray, meta: ConvMeta, isa: Isa | None = None) -> float:
    """Estimated time of ``spec`` on this layer relative to the dense kernel (1.0), with the cost model measured for
    ``isa`` (default: the host's target, ``host_isa``)."""
    if not get_scheme(spec.scheme).prunes:
        return 1.0
    # Relative to the dense kernel, which tiles pixels too, so small images do not change the ratio much
    # (measured: the 7x7 ResNet18 layers gave the sparse kernels their best ratios).
    costs = (isa or host_isa()).costs
    efficiency = (costs.fc_efficiency if is_fc_layer(meta) else costs.efficiency).get(spec.name, DEFAULT_EFFICIENCY)
    return costs.sparse_overhead + effective_density(spec, weight, meta) / efficiency


def dense_kernel(meta: ConvMeta) -> KernelSpec:
    """The dense kernel for ``meta``: the specialised one (depthwise, linear) where it applies."""
    specs = kernels_for("dense", meta)
    if not specs:
        raise EngineError(f"No dense engine kernel handles layer {meta}; this is a gap in the engine.")
    special = [
        s for s in specs if ("depthwise" in s.name, "linear" in s.name) == (meta.is_depthwise, is_fc_layer(meta))
    ]
    return (special or specs)[0]


#: NPAS conv variants 0..2: (vectors per pixel tile, throughput relative to the widest tile). Block-punched's widest
#: tile is the ISA's ``TileShape.bp_nv`` vectors instead of 4.
_TILES = {0: (4, 1.0), 1: (2, 0.88), 2: (1, 0.6)}


def _tile_waste(meta: ConvMeta, vectors: int, lanes: int) -> float:
    """Computed pixels per useful output pixel of a pixel tile of ``vectors`` vectors of ``lanes`` floats (row padding
    plus the last, partial tile)."""
    tile = vectors * lanes
    wide = meta.h_out * -(-(meta.w + 2 * meta.pad_w) // meta.stride_w)  # pixels incl. the garbage columns
    return -(-wide // tile) * tile / (meta.h_out * meta.w_out)


#: Columns of one packed 1x1 input panel (LP_PK_COLS in csrc/lp_dense.c); 1-3 leftover columns are its column tail.
_PK_COLS = 48


def _dense_1x1_in_place(meta: ConvMeta, isa: Isa) -> bool:
    """Whether a direct 1x1 layer runs faster from the input in place (dense_conv variant 3: column tile outermost)
    than through packed input panels (variant 0). Packing copies K x 48 input floats per column tile and reuses
    them over c_out / MR weight panels: with 8-row tiles (32 registers), whose in-place loop loads only 3 vectors
    per 24 FMAs, the copy does not pay where there are no more outputs than inputs. Measured on AVX-512 (Zen 4,
    in-place / packed): MobileNetV2 projections 144->24 @56 0.82, 192->32 @28 0.88, 384->64 @14 0.90, 576->96 @14
    0.92; MobileNetV1 512->512 @14 0.95, 256->256 @28 0.97, 128->128 @56 1.01; expansions 24->144 @56 1.14,
    32->192 @28 1.06, 64->128 @56 1.05. Packing keeps the fused column tail of 7x7 maps (1024 -> 1024 in place 1.06)
    and always pays with 4-row tiles (AVX2 in place 1.05-1.2). NEON has the same 8-row tiles (not measured)."""
    hw = meta.h * meta.w
    tail = 0 < hw % _PK_COLS <= 3
    return isa.tiles.dense_mr >= 8 and is_direct(meta) and meta.groups == 1 and not tail and meta.c_out <= meta.c_in


def default_variant(spec: KernelSpec, meta: ConvMeta, nthreads: int = 1, isa: Isa | None = None) -> int:
    """A sensible variant without measuring (autotune measures): for the NPAS conv kernels, the tile width that
    wastes least of the last pixel tile, weighing narrower tiles' lower throughput; for dense 1x1 layers, packed
    input panels or the input in place (``_dense_1x1_in_place``); index 0 for other kernels. Pixel-outer order
    (variants 0..2) keeps the input tile in cache across filters; every variant splits its (filter, tile) work items
    evenly over ``nthreads``, so the count does not change the pick. ``isa``: the target whose vector width and
    register count set the tiles (default: the host's)."""
    isa = isa or host_isa()
    if spec.name == "dense_conv":
        return 3 if _dense_1x1_in_place(meta, isa) else 0
    if spec.source != "lp_npas.c" or len(spec.variants) != 6:
        return 0
    widest = isa.tiles.bp_nv if spec.scheme == "block_punched" else _TILES[0][0]
    vectors = {v: widest if v == 0 else n for v, (n, _) in _TILES.items()}
    cost = {v: _tile_waste(meta, vectors[v], isa.lanes) / rel for v, (_, rel) in _TILES.items()}
    return min(cost, key=cost.__getitem__)


def _candidates(weight: np.ndarray, meta: ConvMeta, declared: str | None) -> list[KernelSpec]:
    dense = dense_kernel(meta)
    if meta.is_depthwise or (declared is not None and not get_scheme(declared).prunes):
        return [dense]
    if np.count_nonzero(weight) == weight.size:  # nothing to skip (group4 at density 1 ties dense on AVX-512)
        return [dense]
    if declared is not None and scheme_applies(declared, meta) and kernels_for(declared, meta):
        violation = structure_violation(weight, meta, declared)
        if violation > STRUCTURE_TOLERANCE:
            raise EngineError(
                f"Layer {meta} is declared '{declared}' but its zeros do not have that structure ({violation:.0%} of "
                f"its zeros fall inside kept blocks); re-prune it with '{declared}' or declare 'unstructured'."
            )
        # The kernels of the scheme and of the schemes its structure implies run the weight with no wasted work.
        return [dense, *(s for scheme in get_scheme(declared).formats for s in kernels_for(scheme, meta))]
    # Nothing declared (or a scheme that does not apply to this layer): every kernel is exact on any weight.
    sparse = [s for scheme in list_schemes() if get_scheme(scheme).prunes for s in kernels_for(scheme, meta)]
    return [dense, *sparse]


def choose_kernel(
    weight: np.ndarray, meta: ConvMeta, declared_scheme: str | None = None, nthreads: int = 1, isa: Isa | None = None
) -> tuple[KernelSpec, int]:
    """Pick the kernel expected to be fastest for this layer's weight, and its variant.

    ``declared_scheme`` restricts the choice to the kernels of that scheme and of the schemes its structure implies
    (block-punched zeros are group4 zeros), or dense when the weight is too dense for them to pay off, and raises
    EngineError when the zeros violate its structure. A scheme that is not defined
    for the layer (pattern on a 1x1 conv, any scheme on a depthwise conv) is ignored: depthwise convs run dense,
    other layers are chosen from their zeros. ``isa``: the code's target, whose cost model and tiles decide (default:
    the host's).
    """
    if declared_scheme is not None:
        _scheme(declared_scheme)  # unknown names fail with the list of valid ones
    w = _check(weight, meta)
    candidates = _candidates(w, meta, declared_scheme)
    costs = [estimated_cost(spec, w, meta, isa) for spec in candidates]
    best = candidates[int(np.argmin(costs))]  # ties keep the earlier candidate: dense first
    return best, default_variant(best, meta, nthreads, isa)


__all__ = [
    "DEFAULT_EFFICIENCY",
    "STRUCTURE_TOLERANCE",
    "choose_kernel",
    "default_variant",
    "dense_kernel",
    "detect_scheme",
    "effective_density",
    "estimated_cost",
    "fits_scheme",
    "scheme_applies",
    "scheme_layer",
    "scheme_mask",
    "structure_violation",
]
