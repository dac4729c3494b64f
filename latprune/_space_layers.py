"""The search space's layers and groups: per-layer specs, JCW's bounds, and how kept channel counts are rounded."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from latprune.errors import PlanError
from latprune.graph import ChannelGraph, LayerInfo, LayerKind
from latprune.schemes import SchemeLayer, get_scheme, layer_scheme

#: JCW's candidate list for channel width ratios and weight sparsities.
WIDTH_CHOICES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
SPARSITY_CHOICES: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(11))
_WIDTHS = np.asarray(WIDTH_CHOICES)
_SPARSITIES = np.asarray(SPARSITY_CHOICES)


@dataclass(frozen=True)
class SpaceBounds:
    """Lower bounds on width and upper bounds on sparsity, as the official JCW search uses.

    Very thin or very sparse layers lose accuracy that fine-tuning cannot win back, and residual-coupled
    groups or strided layers feed many later layers, so they get tighter bounds than the rest.
    """

    min_width: float = 0.5
    min_width_residual: float = 0.7
    min_width_strided: float = 0.6
    max_sparsity: float = 0.7
    max_sparsity_strided: float = 0.6
    max_sparsity_first_last: float = 0.5


@dataclass(frozen=True)
class LayerSpec:
    """A conv or linear layer of the space (full sizes; ``in_group``/``out_group`` index ``SearchSpace.groups``).

    ``in_group`` is None when the input is not exactly one group (the image, or a concatenation: then
    ``in_parts`` lists ``(group, repeat)`` and ``in_fixed`` the channels of no group; ``layer_dims`` uses those).
    ``scheme_choices`` lists the schemes the search picks among for this layer (``scheme``, the first, is its
    default); it is empty when the layer has only ``scheme``, as in JCW's one-scheme spaces.
    """

    name: str
    kind: LayerKind
    c_in: int
    c_out: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    in_group: int | None
    out_group: int | None
    scheme: str = "group4"
    sparse: bool = True
    in_parts: tuple[tuple[int, int], ...] = ()
    in_fixed: int = 0
    max_sparsity: float = 1.0  # the role bound (first/last, strided, SpaceBounds.max_sparsity), not on the grid
    scheme_choices: tuple[str, ...] = ()

    @property
    def options(self) -> tuple[str, ...]:
        """The schemes this layer can take, its default first."""
        return self.scheme_choices or (self.scheme,)


@dataclass(frozen=True)
class GroupSpec:
    """One width variable: channels that must keep the same indices in every member layer."""

    name: str
    channels: int
    members: tuple[str, ...]
    min_width: float
    fixed: bool
    multiple: int = 1  # kept channel counts are rounded to this (4 where a member layer packs groups of 4)


def kept_channels(width: float, channels: int, multiple: int = 1) -> int:
    """Channels kept at ``width``: rounded to a multiple of ``multiple``, at least ``multiple``, never 0.

    Width 1.0 keeps every channel (the dense model) even when ``channels`` is not a multiple.
    """
    return int(kept_channels_array(np.asarray([width]), channels, multiple)[0])


def kept_channels_array(widths: np.ndarray, channels: int, multiple: int = 1) -> np.ndarray:
    """Vectorised ``kept_channels`` over an array of widths (same rounding, so search and pruning agree)."""
    widths = np.asarray(widths, dtype=np.float64)
    k = np.round(widths * channels / multiple + 1e-9) * multiple  # +eps: round half up, 0.5 * 12 / 4 -> 2
    k = np.minimum(np.maximum(k, multiple), channels)
    k = np.where(widths >= 1.0 - 1e-9, channels, k)
    return np.maximum(k, 1).astype(np.int64)


def scheme_layer(info: LayerInfo) -> SchemeLayer:
    """The registry's view of a graph layer: the space treats only linear layers as matrix-vector products."""
    return SchemeLayer(info.kind, info.kernel, fc=info.kind == "linear")


def requested_schemes(scheme: str) -> tuple[str, ...]:
    """The schemes a space is asked for: one name ("group4"), or several joined by commas ("group4,pattern"), in
    which case every layer chooses among those that apply to it. Unknown names fail with the list of valid ones."""
    names = tuple(dict.fromkeys(s.strip() for s in scheme.split(",") if s.strip()))
    if not names:
        raise PlanError(
            f"The scheme '{scheme}' names no scheme; write one such as group4, or several like group4,pattern."
        )
    for name in names:
        get_scheme(name)
    return names


def _layer_specs(graph: ChannelGraph, scheme: str, bounds: SpaceBounds) -> list[LayerSpec]:
    """One LayerSpec per conv/linear, with the schemes it can take and its role's sparsity cap."""
    requested = requested_schemes(scheme)
    layers = []
    for info in graph.layers:
        single = len(info.in_parts) == 1 and info.in_parts[0][1] == 1 and info.in_fixed == 0
        # Each requested scheme, or its fallback where it does not apply; duplicates collapse.
        options = tuple(dict.fromkeys(layer_scheme(s, scheme_layer(info)) for s in requested))
        chosen = options[0]
        layers.append(
            LayerSpec(
                info.name, info.kind, info.c_in, info.c_out, info.kernel, info.stride, info.padding,
                info.groups, info.in_hw, info.in_parts[0][0] if single else None, info.out_group,
                chosen, any(get_scheme(s).prunes for s in options), info.in_parts, info.in_fixed,
                scheme_choices=options if len(options) > 1 else (),
            )
        )  # fmt: skip
    n = len(layers)
    return [dataclasses.replace(ly, max_sparsity=_sparsity_cap(i, ly, n, bounds)) for i, ly in enumerate(layers)]


def _group_specs(graph: ChannelGraph, layers: list[LayerSpec], bounds: SpaceBounds) -> list[GroupSpec]:
    """One GroupSpec per coupled group: residual and strided-output groups get the higher width bounds."""
    strided = {ly.out_group for ly in layers if max(ly.stride) > 1 and ly.out_group is not None}
    groups = []
    for gi, g in enumerate(graph.groups):
        members = [ly for ly in layers if ly.out_group == gi or gi in (p for p, _ in ly.in_parts)]
        min_width = bounds.min_width
        if g.residual:
            min_width = max(min_width, bounds.min_width_residual)
        if gi in strided:
            min_width = max(min_width, bounds.min_width_strided)
        # Kept counts round to what the member layers' packed formats tile (4 next to group-of-4 layers).
        multiple = max((get_scheme(s).channel_multiple for ly in members if ly.sparse for s in ly.options), default=1)
        names = tuple(ly.name for ly in members)
        groups.append(GroupSpec(g.name, g.channels, names, 1.0 if g.fixed else min_width, g.fixed, multiple))
    return groups


def _variable_bounds(groups: list[GroupSpec], layers: list[LayerSpec]) -> tuple[np.ndarray, np.ndarray]:
    """Integer bounds: widths from each group's minimum to 1.0, sparsities from 0 to each layer's cap, then one
    scheme index per layer that has a choice of schemes."""
    g = len(groups)
    choices = [len(ly.scheme_choices) for ly in layers if ly.scheme_choices]
    xl = np.zeros(g + len(layers) + len(choices), dtype=np.int64)
    xu = np.zeros(g + len(layers) + len(choices), dtype=np.int64)
    xu[g + len(layers) :] = np.asarray(choices, dtype=np.int64) - 1
    for gi, group in enumerate(groups):
        xl[gi], xu[gi] = _ceil_index(group.min_width, WIDTH_CHOICES), len(WIDTH_CHOICES) - 1
    for li, ly in enumerate(layers):
        if not ly.sparse:
            continue
        xu[g + li] = _floor_index(ly.max_sparsity, SPARSITY_CHOICES)
        least = _ceil_index(get_scheme(ly.scheme).min_sparsity, SPARSITY_CHOICES)
        # E.g. 2:4 zeroes at least half the weights: its minimum and up, or dense where capped below. With a choice
        # of schemes the bounds cannot depend on it, so SearchSpace.layer_dims applies each one's minimum instead.
        if least > 0 and not ly.scheme_choices:
            xl[g + li] = least if xu[g + li] >= least else 0
            xu[g + li] = xu[g + li] if xu[g + li] >= least else 0
    return xl, xu


def _sparsity_cap(index: int, layer: LayerSpec, n_layers: int, bounds: SpaceBounds) -> float:
    """Highest sparsity layer ``index`` may take: first/last and strided layers are capped tighter."""
    if not layer.sparse:
        return 0.0
    cap = bounds.max_sparsity
    if index in (0, n_layers - 1):
        cap = min(cap, bounds.max_sparsity_first_last)
    if max(layer.stride) > 1:
        cap = min(cap, bounds.max_sparsity_strided)
    return cap


def _layer_from_dict(d: dict[str, Any]) -> LayerSpec:
    tuples = ("kernel", "stride", "padding", "in_hw", "scheme_choices")
    fields = {k: (tuple(v) if k in tuples else v) for k, v in d.items()}
    fields["in_parts"] = tuple(tuple(p) for p in d.get("in_parts", ()))
    return LayerSpec(**fields)


def _ceil_index(value: float, choices: Sequence[float]) -> int:
    """Index of the smallest choice >= value."""
    return int(np.searchsorted(np.asarray(choices), value - 1e-9))


def _floor_index(value: float, choices: Sequence[float]) -> int:
    """Index of the largest choice <= value."""
    return int(np.searchsorted(np.asarray(choices), value + 1e-9) - 1)
