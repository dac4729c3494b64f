"""The profiling grid: which (input channels, output channels, sparsity) points each layer signature needs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from latprune.errors import ProfileError
from latprune.latency.profile import GridSpec, LayerSignature
from latprune.schemes import get_scheme


@dataclass(frozen=True)
class GridConfig:
    """JCW's grid resolution, and whether to skip grid points the search space can never reach.

    ``trim_to_space`` keeps, on each axis, only the points inside the range the space produces plus the
    nearest point outside it (so interpolation still brackets every reachable value). With JCW's lower
    bounds (width ≥ 0.5, density ≥ 0.3) this skips about 60% of the points without losing accuracy
    anywhere the search can go; a fixed axis (the image channels of the first conv) collapses to one point.
    """

    n_channels: int = 8  # JCW's N: channel grid i/N * c_max, i = 1..N
    n_sparsity: int = 10  # JCW's M: sparsity grid k/M, k = 0..M-1
    trim_to_space: bool = True
    range_samples: int = 512  # random architectures used (with the bounds) to find each layer's reachable range

    def __post_init__(self) -> None:
        if self.n_channels < 1 or self.n_sparsity < 1:
            raise ProfileError(
                f"The profiling grid needs N ≥ 1 and M ≥ 1, got N={self.n_channels}, M={self.n_sparsity}; "
                "pass e.g. --grid 8,10."
            )


def channel_grid(c_max: int, n: int, multiple: int = 1) -> list[int]:
    """Channel counts i/n * c_max for i = 1..n, rounded to integers (and to ``multiple``), without duplicates."""
    pts = {max(multiple, round(i / n * c_max / multiple) * multiple) for i in range(1, n + 1)}
    return sorted(min(p, c_max) for p in pts)


def sparsity_grid(m: int) -> list[float]:
    """Sparsities k/m for k = 0..m-1 (a fully removed layer is not a layer the engine runs)."""
    return [round(k / m, 6) for k in range(m)]


def trim(points: list[float], lo: float, hi: float) -> list[float]:
    """The points covering [lo, hi]: those inside plus the nearest one at or beyond each end."""
    below = [p for p in points if p <= lo]
    above = [p for p in points if p >= hi]
    first = below[-1] if below else points[0]
    last = above[0] if above else points[-1]
    return [p for p in points if first <= p <= last]


@dataclass(frozen=True)
class LayerRange:
    """The smallest and largest (c_in, c_out, sparsity) a search-space layer can take."""

    cin: tuple[int, int]
    cout: tuple[int, int]
    sparsity: tuple[float, float]


def layer_ranges(space: Any, samples: int, rng: np.random.Generator) -> list[LayerRange]:
    """Reachable ranges of every layer, from the bounds and ``samples`` random architectures."""
    xs = [np.asarray(space.xl)[None], np.asarray(space.xu)[None]]
    if samples > 0:
        xs.append(np.asarray(space.sample_x(rng, samples)))
    x = np.concatenate(xs).astype(np.int64)  # (S, n_var)
    c_in, c_out, sp = (np.asarray(a) for a in space.layer_dims(x))  # (S, L) each
    return [
        LayerRange(
            (int(c_in[:, li].min()), int(c_in[:, li].max())),
            (int(c_out[:, li].min()), int(c_out[:, li].max())),
            (float(sp[:, li].min()), float(sp[:, li].max())),
        )
        for li in range(c_in.shape[1])
    ]


def _multiple(space: Any, group: int | None) -> int:
    """The rounding multiple of a channel group's kept counts (4 next to group-of-4 layers), 1 if unknown."""
    groups = getattr(space, "groups", ())
    return int(getattr(groups[group], "multiple", 1)) if group is not None and group < len(groups) else 1


def grid_for(
    sig: LayerSignature, ranges: list[LayerRange], config: GridConfig, multiples: tuple[int, int] = (1, 1)
) -> GridSpec:
    """The grid of one signature, covering the union of the ranges of every layer that has it.

    Channel points are rounded like the space rounds kept channels (``multiples`` for input and output), so
    every point is a width the search can really produce (e.g. multiples of 4 next to group-of-4 layers).
    """
    tied = sig.kind == "depthwise"
    # A grouped (non-depthwise) conv keeps whole groups: its channel counts stay multiples of the group count.
    g = sig.groups if (sig.groups > 1 and not tied) else 1
    cin = channel_grid(sig.c_in, config.n_channels, max(g, multiples[0]))
    cout = channel_grid(sig.c_out, config.n_channels, max(g, multiples[1]))
    sp: list[float] = [0.0] if tied else sparsity_grid(config.n_sparsity)
    if config.trim_to_space and ranges:
        cin = trim(cin, min(r.cin[0] for r in ranges), max(r.cin[1] for r in ranges))
        cout = trim(cout, min(r.cout[0] for r in ranges), max(r.cout[1] for r in ranges))
        sp = trim(sp, min(r.sparsity[0] for r in ranges), max(r.sparsity[1] for r in ranges))
    if tied:
        cin = [sig.c_in]
    return GridSpec(tuple(int(c) for c in cin), tuple(int(c) for c in cout), tuple(float(s) for s in sp), tied)


def plan_grids(space: Any, config: GridConfig, rng: np.random.Generator) -> list[tuple[LayerSignature, GridSpec]]:
    """One (signature, grid) per distinct layer signature of ``space``, in first-use order; a layer with a choice of
    schemes has one signature per scheme (a scheme that zeroes no weights is measured at sparsity 0 only)."""
    ranges = layer_ranges(space, config.range_samples, rng) if config.trim_to_space else []
    by_sig: dict[LayerSignature, list[LayerRange]] = {}
    mult: dict[LayerSignature, tuple[int, int]] = {}
    for li, layer in enumerate(space.layers):
        for scheme in getattr(layer, "options", None) or (layer.scheme,):
            sig = LayerSignature.of_layer(layer, scheme)
            own = ranges[li : li + 1]
            if own and not get_scheme(scheme).prunes:
                own = [dataclasses.replace(own[0], sparsity=(0.0, 0.0))]
            by_sig.setdefault(sig, []).extend(own)
            m_in = _multiple(space, getattr(layer, "in_group", None))
            m_out = _multiple(space, getattr(layer, "out_group", None))
            old = mult.get(sig, (1, 1))
            mult[sig] = (max(old[0], m_in), max(old[1], m_out))
    return [(sig, grid_for(sig, rs, config, mult[sig])) for sig, rs in by_sig.items()]
