"""PruningPlan: the kept channels, scheme and sparsity of every layer, serialisable and replayable on a fresh model."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch.nn as nn

from latprune._io import atomic_write_json, read_json
from latprune.errors import PlanError
from latprune.graph import ChannelGraph, build_graph
from latprune.models import ModelSpec
from latprune.prune.channels import CRITERIA, Criterion, group_importance, select_channels
from latprune.schemes import SchemeParams, get_scheme
from latprune.space import Arch, SearchSpace, SpaceBounds, kept_channels

PLAN_VERSION = 1


@dataclass(frozen=True)
class GroupPlan:
    """The channels a coupled group keeps (indices into its full ``channels``, sorted ascending)."""

    name: str
    channels: int
    keep: tuple[int, ...]


@dataclass(frozen=True)
class LayerPlan:
    """One layer's weight sparsity and the groups its output / input channels come from."""

    name: str
    scheme: str
    sparsity: float
    params: SchemeParams = SchemeParams()  # noqa: RUF009 - frozen dataclass, safe as a default
    out_group: str | None = None
    in_groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class PruningPlan:
    """Everything needed to shrink and sparsify a model the same way again, as plain data."""

    model: ModelSpec | None  # None for a model that is not in the zoo (apply_plan still works on it)
    input_size: tuple[int, int]
    in_channels: int
    groups: tuple[GroupPlan, ...]
    layers: tuple[LayerPlan, ...]
    importance: str = "l1"
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        for g in self.groups:
            if not g.keep:
                raise PlanError(f"Group '{g.name}' keeps no channel; keep at least one (raise its width).")
            if list(g.keep) != sorted(set(g.keep)) or g.keep[0] < 0 or g.keep[-1] >= g.channels:
                raise PlanError(
                    f"Group '{g.name}' keeps channels {list(g.keep)[:8]}..., which are not sorted unique indices "
                    f"in [0, {g.channels}); regenerate the plan."
                )
        for ly in self.layers:
            if not 0.0 <= ly.sparsity < 1.0:
                raise PlanError(f"Layer '{ly.name}' has sparsity {ly.sparsity}; use a value in [0, 1).")
            get_scheme(ly.scheme)  # unknown names fail here with the list of valid ones

    def group(self, name: str) -> GroupPlan:
        for g in self.groups:
            if g.name == name:
                return g
        raise PlanError(f"The plan has no channel group named '{name}'.")

    def layer(self, name: str) -> LayerPlan:
        for ly in self.layers:
            if ly.name == name:
                return ly
        raise PlanError(f"The plan has no layer named '{name}'.")

    def kept_out_channels(self, layer: str) -> tuple[int, ...] | None:
        """Kept output-channel indices of ``layer`` (None: all kept, e.g. the classifier)."""
        ly = self.layer(layer)
        return None if ly.out_group is None else self.group(ly.out_group).keep

    def layer_schemes(self) -> dict[str, str]:
        """Scheme of every sparse layer by name (what ``latprune.engine.compile(schemes=...)`` takes)."""
        return {ly.name: ly.scheme for ly in self.layers if ly.sparsity > 0}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "model": None if self.model is None else dataclasses.asdict(self.model),
            "input_size": list(self.input_size),
            "in_channels": self.in_channels,
            "importance": self.importance,
            "groups": [{"name": g.name, "channels": g.channels, "keep": list(g.keep)} for g in self.groups],
            "layers": [
                {
                    "name": ly.name,
                    "scheme": ly.scheme,
                    "sparsity": ly.sparsity,
                    "params": dataclasses.asdict(ly.params),
                    "out_group": ly.out_group,
                    "in_groups": list(ly.in_groups),
                }
                for ly in self.layers
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "The pruning plan") -> PruningPlan:
        """Rebuild a plan from its JSON; ``source`` (e.g. "The pruning plan 'p.json'") starts every error."""
        if not isinstance(d, dict):
            raise PlanError(f"{source} is a JSON {_json_kind(d)}, not a plan object; make it with `latprune prune`.")
        if d.get("version") != PLAN_VERSION:
            raise PlanError(f"{source} has version {d.get('version')!r}; this latprune reads version {PLAN_VERSION}.")
        try:
            return cls(
                model=None if d["model"] is None else ModelSpec(**d["model"]),
                input_size=(int(d["input_size"][0]), int(d["input_size"][1])),
                in_channels=int(d["in_channels"]),
                groups=tuple(GroupPlan(g["name"], int(g["channels"]), tuple(g["keep"])) for g in d["groups"]),
                layers=tuple(
                    LayerPlan(
                        ly["name"],
                        ly["scheme"],
                        float(ly["sparsity"]),
                        SchemeParams(**ly["params"]),
                        ly["out_group"],
                        tuple(ly["in_groups"]),
                    )
                    for ly in d["layers"]
                ),
                importance=d.get("importance", "l1"),
            )
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise PlanError(f"{source} {_bad_field(d) or f'has a bad field ({exc!r})'}; regenerate it.") from None

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PruningPlan:
        return cls.from_dict(read_json(path, "pruning plan"), source=f"The pruning plan '{path}'")


def _json_kind(value: Any) -> str:
    """The JSON name of a parsed value's type (a plan field's error says what was found)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return {dict: "object", list: "list", str: "string", int: "number", float: "number"}.get(type(value), "value")


_A = {"object": "an object", "list": "a list", "number": "a number", "string": "a string", "null": "null"}
# The fields a plan's JSON needs, as (name, JSON kinds allowed); "groups" and "layers" hold objects of these.
_PLAN_FIELDS = (("model", ("object", "null")), ("input_size", ("list",)), ("in_channels", ("number",)),
                ("groups", ("list",)), ("layers", ("list",)))  # fmt: skip
_GROUP_FIELDS = (("name", ("string",)), ("channels", ("number",)), ("keep", ("list",)))
_LAYER_FIELDS = (("name", ("string",)), ("scheme", ("string",)), ("sparsity", ("number",)), ("params", ("object",)),
                 ("out_group", ("string", "null")), ("in_groups", ("list",)))  # fmt: skip


def _bad_field(d: dict[str, Any]) -> str | None:
    """Which field of a plan's JSON is missing or of the wrong kind, as a clause ("lacks the field 'groups'",
    "has layers[0].sparsity = null, not a number"), so the error names it; None if every field looks right."""

    def check(obj: Any, where: str, fields: tuple[tuple[str, tuple[str, ...]], ...]) -> str | None:
        if not isinstance(obj, dict):
            return f"has {where.rstrip('.')} = {_json_kind(obj)}, not an object"
        for name, kinds in fields:
            if name not in obj:
                return f"lacks the field '{where}{name}'"
            if _json_kind(obj[name]) not in kinds:
                return f"has {where}{name} = {_json_kind(obj[name])}, not {' or '.join(_A[k] for k in kinds)}"
        return None

    found = check(d, "", _PLAN_FIELDS)
    if found is not None:
        return found
    for key, fields in (("groups", _GROUP_FIELDS), ("layers", _LAYER_FIELDS)):
        for i, item in enumerate(d[key]):
            found = found or check(item, f"{key}[{i}].", fields)
    return found


def _layer_groups(graph: ChannelGraph) -> dict[str, tuple[str | None, tuple[str, ...]]]:
    names = [g.name for g in graph.groups]
    return {
        info.name: (
            None if info.out_group is None else names[info.out_group],
            tuple(names[g] for g, _ in info.in_parts),
        )
        for info in graph.layers
    }


def _check_space_matches(space: SearchSpace, graph: ChannelGraph) -> None:
    model_groups = [(g.name, g.channels) for g in graph.groups]
    space_groups = [(g.name, g.channels) for g in space.groups]
    if model_groups != space_groups or [ly.name for ly in space.layers] != [ly.name for ly in graph.layers]:
        raise PlanError("The search space was built for another model (its groups or layers differ); rebuild it.")


def plan_from_arch(
    model: nn.Module,
    space: SearchSpace,
    arch: Arch,
    *,
    importance: Criterion = "l1",
    params: SchemeParams = SchemeParams(),  # noqa: B008 - frozen dataclass, safe as a default
    model_spec: ModelSpec | None = None,
) -> PruningPlan:
    """The plan of ``arch``: each group keeps its ``kept_channels`` most important channels (by ``importance``
    on ``model``'s current weights), each layer gets its scheme in ``arch`` (its default in the space when the
    architecture names none) at the arch's sparsity."""
    # Encoding validates the grid (not the search bounds: any point of the grid can be pruned to); decoding gives
    # what the search sees: "dense" and sparsity 0 on layers without weight sparsity, every layer's scheme named.
    arch = space.decode(space.encode(arch))
    graph = build_graph(model, space.input_size, space.in_channels)
    _check_space_matches(space, graph)
    keep = [kept_channels(w, g.channels, g.multiple) for w, g in zip(arch.widths, space.groups, strict=True)]
    return _make_plan(model, graph, keep, list(arch.schemes), list(arch.sparsities), importance, params, model_spec)


def uniform_plan(
    model: nn.Module,
    input_size: int | tuple[int, int],
    in_channels: int,
    width: float,
    sparsity: float,
    scheme: str = "group4",
    *,
    bounds: SpaceBounds = SpaceBounds(),  # noqa: B008 - frozen dataclass, safe as a default
    importance: Criterion = "l1",
    params: SchemeParams = SchemeParams(),  # noqa: B008
    model_spec: ModelSpec | None = None,
) -> PruningPlan:
    """One width and one sparsity for the whole model, except where a layer's role bounds it tighter.

    Residual-coupled and strided groups keep at least ``bounds.min_width_residual`` / ``min_width_strided``;
    first/last and strided layers take at most ``bounds.max_sparsity_first_last`` / ``max_sparsity_strided``
    (the same roles the search space bounds). Fixed groups (grouped convs) keep every channel.
    """
    if not 0.0 < width <= 1.0:
        raise PlanError(f"The width {width} leaves no channel or is above 1; use a value in (0, 1].")
    if not 0.0 <= sparsity < 1.0:
        raise PlanError(f"The sparsity {sparsity} is outside [0, 1); use e.g. 0.5.")
    if not get_scheme(scheme).prunes and sparsity > 0:
        raise PlanError(
            f"The {scheme} scheme zeroes no weights but sparsity {sparsity} was asked; use 0.0 or a sparse scheme."
        )
    role_bounds = dataclasses.replace(bounds, min_width=0.0, max_sparsity=1.0)
    graph = build_graph(model, input_size, in_channels)
    space = SearchSpace.from_model(model, input_size, in_channels, scheme=scheme, bounds=role_bounds, graph=graph)
    keep = [kept_channels(max(width, g.min_width), g.channels, g.multiple) for g in space.groups]
    sparsities = [min(sparsity, ly.max_sparsity) if ly.sparse else 0.0 for ly in space.layers]
    schemes = [ly.scheme if ly.sparse else "dense" for ly in space.layers]
    for ly, s in zip(space.layers, sparsities, strict=True):
        spec = get_scheme(ly.scheme)
        if 0.0 < s < spec.min_sparsity - 1e-9:
            raise PlanError(
                f"Layer '{ly.name}' would get {ly.scheme} sparsity {s}; {spec.title} needs at least "
                f"{spec.min_sparsity} (or 0.0)."
            )
    return _make_plan(model, graph, keep, schemes, sparsities, importance, params, model_spec)


def _make_plan(
    model: nn.Module,
    graph: ChannelGraph,
    keep_counts: list[int],
    schemes: list[str],
    sparsities: list[float],
    importance: Criterion,
    params: SchemeParams,
    model_spec: ModelSpec | None,
) -> PruningPlan:
    if importance not in CRITERIA:
        raise PlanError(f"Unknown channel importance '{importance}'; choose one of: {', '.join(CRITERIA)}.")
    groups = []
    for g, k in zip(graph.groups, keep_counts, strict=True):
        if g.fixed:
            kept = tuple(range(g.channels))
        else:
            kept = select_channels(group_importance(model, g, importance), k, g.name)
        groups.append(GroupPlan(g.name, g.channels, kept))
    links = _layer_groups(graph)
    layers = tuple(
        LayerPlan(info.name, scheme, round(float(s), 6), params, *links[info.name])
        for info, scheme, s in zip(graph.layers, schemes, sparsities, strict=True)
    )
    return PruningPlan(model_spec, graph.input_size, graph.in_channels, tuple(groups), layers, importance)


def dense_plan(model: nn.Module, input_size: int | tuple[int, int], in_channels: int) -> PruningPlan:
    """The identity plan (every channel kept, no sparsity): a baseline and a test fixture."""
    return uniform_plan(model, input_size, in_channels, 1.0, 0.0, "dense")


__all__ = [
    "PLAN_VERSION",
    "GroupPlan",
    "LayerPlan",
    "ModelSpec",
    "PruningPlan",
    "dense_plan",
    "plan_from_arch",
    "uniform_plan",
]
