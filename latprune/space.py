"""The search vocabulary: a width per coupled group, a sparsity and a scheme per layer, encoded as integer vectors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch.nn as nn

from latprune._space_layers import (
    _SPARSITIES,
    _WIDTHS,
    SPARSITY_CHOICES,
    WIDTH_CHOICES,
    GroupSpec,
    LayerSpec,
    SpaceBounds,
    _group_specs,
    _layer_from_dict,
    _layer_specs,
    _variable_bounds,
    kept_channels,
    kept_channels_array,
)
from latprune.errors import PlanError
from latprune.graph import ChannelGraph, build_graph
from latprune.schemes import get_scheme

Mode = Literal["joint", "weight-only", "channel-only"]


@dataclass(frozen=True)
class Arch:
    """One architecture: a width ratio per coupled group; per layer a sparsity (0.0 where not sparse) and a scheme.

    ``schemes`` names each layer's scheme, "dense" where the layer has no weight sparsity. It is empty in an
    architecture written before schemes were chosen per layer: each layer then takes its default in the space.
    """

    widths: tuple[float, ...]
    sparsities: tuple[float, ...]
    schemes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.schemes and len(self.schemes) != len(self.sparsities):
            raise PlanError(
                f"The architecture has {len(self.sparsities)} sparsities but {len(self.schemes)} schemes; give one "
                "scheme per layer."
            )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"widths": list(self.widths), "sparsities": list(self.sparsities)}
        if self.schemes:
            d["schemes"] = list(self.schemes)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Arch:
        try:
            return cls(
                tuple(float(w) for w in d["widths"]),
                tuple(float(s) for s in d["sparsities"]),
                tuple(str(s) for s in d.get("schemes", ())),
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            raise PlanError(
                "The architecture dict needs 'widths' and 'sparsities' lists of numbers (and optionally 'schemes')."
            ) from None


def _choice_index(value: float, choices: Sequence[float], what: str) -> int:
    i = int(np.argmin(np.abs(np.asarray(choices) - value)))
    if abs(choices[i] - value) > 1e-6:
        raise PlanError(f"The {what} {value} is not one of the candidates {list(choices)}; pick one of those.")
    return i


class SearchSpace:
    """Integer-encoded space: one width index per group, one sparsity index per layer, then one scheme index per
    layer that has a choice of schemes (none in a one-scheme space, so JCW's encodings are unchanged).

    ``xl``/``xu`` bound each variable (fixed variables have ``xl == xu``); values index ``WIDTH_CHOICES``,
    ``SPARSITY_CHOICES`` and each layer's ``options``. The search only ever sees these integer vectors. A layer
    whose chosen scheme zeroes no weights (dense), or whose sparsity is below its scheme's minimum, has sparsity 0.
    """

    def __init__(
        self,
        groups: Sequence[GroupSpec],
        layers: Sequence[LayerSpec],
        input_size: tuple[int, int],
        in_channels: int,
        num_classes: int,
        scheme: str,
        xl: np.ndarray,
        xu: np.ndarray,
    ) -> None:
        self.groups = tuple(groups)
        self.layers = tuple(layers)
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.scheme = scheme
        self.xl = np.asarray(xl, dtype=np.int64).copy()
        self.xu = np.asarray(xu, dtype=np.int64).copy()
        if self.xl.shape != (self.n_var,) or self.xu.shape != (self.n_var,) or (self.xl > self.xu).any():
            raise PlanError(f"The space bounds need {self.n_var} values each with xl <= xu; rebuild the space.")
        self._build_index()

    # -- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        input_size: int | tuple[int, int],
        in_channels: int = 3,
        scheme: str = "group4",
        bounds: SpaceBounds = SpaceBounds(),  # noqa: B008 - frozen dataclass, safe as a default
        graph: ChannelGraph | None = None,
    ) -> SearchSpace:
        """Build the space of ``model``: its coupled groups (graph.py) with JCW's per-layer bounds.

        ``scheme`` is one scheme for every layer, or several joined by commas ("group4,pattern,unstructured"):
        each layer then chooses among those that apply to it (a fallback replaces one that does not).
        """
        graph = graph if graph is not None else build_graph(model, input_size, in_channels)
        layers = _layer_specs(graph, scheme, bounds)
        groups = _group_specs(graph, layers, bounds)
        xl, xu = _variable_bounds(groups, layers)
        num_classes = graph.layers[-1].c_out if graph.layers else 0
        return cls(groups, layers, graph.input_size, graph.in_channels, num_classes, scheme, xl, xu)

    def _build_index(self) -> None:
        """Precompute the matrices that make ``layer_dims`` a few vectorised numpy operations."""
        g, n = len(self.groups), len(self.layers)
        self._out_onehot = np.zeros((g, n), dtype=np.int64)  # kept (N, G) @ this -> c_out of grouped layers
        self._out_fixed = np.zeros(n, dtype=np.int64)
        self._in_mat = np.zeros((g, n), dtype=np.int64)
        self._in_fixed = np.zeros(n, dtype=np.int64)
        for li, ly in enumerate(self.layers):
            if ly.out_group is None:
                self._out_fixed[li] = ly.c_out
            else:
                self._out_onehot[ly.out_group, li] = 1
            parts = ly.in_parts or (((ly.in_group, 1),) if ly.in_group is not None else ())
            for gi, rep in parts:
                self._in_mat[gi, li] += rep
            self._in_fixed[li] = ly.in_fixed if ly.in_parts or ly.in_group is not None else ly.c_in
        self._channels = np.asarray([gr.channels for gr in self.groups], dtype=np.int64)
        self._multiples = np.asarray([gr.multiple for gr in self.groups], dtype=np.int64)
        self._sparse = np.asarray([ly.sparse for ly in self.layers], dtype=bool)
        # Layers with a choice of schemes, and per (choice, option): does it prune, and from which sparsity.
        self._choice_layers = np.asarray([li for li, ly in enumerate(self.layers) if ly.scheme_choices], np.int64)
        width = max((len(self.layers[li].scheme_choices) for li in self._choice_layers), default=1)
        self._opt_prunes = np.zeros((len(self._choice_layers), width), dtype=bool)
        self._opt_least = np.zeros((len(self._choice_layers), width))
        for c, li in enumerate(self._choice_layers):
            for k, name in enumerate(self.layers[li].scheme_choices):
                self._opt_prunes[c, k] = get_scheme(name).prunes
                self._opt_least[c, k] = get_scheme(name).min_sparsity

    # -- basic facts -----------------------------------------------------------------------------------

    @property
    def n_var(self) -> int:
        return len(self.groups) + len(self.layers) + self.n_choices

    @property
    def categorical(self) -> np.ndarray:
        """Which variables are unordered labels (the scheme variables), shape (n_var,) bool."""
        flags = np.zeros(self.n_var, dtype=bool)
        flags[self.n_groups + len(self.layers) :] = True
        return flags

    @property
    def n_choices(self) -> int:
        """Scheme variables: one per layer with a choice of schemes."""
        return sum(1 for ly in self.layers if ly.scheme_choices)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def group_index(self, name: str) -> int:
        for i, g in enumerate(self.groups):
            if g.name == name:
                return i
        raise PlanError(f"The space has no channel group named '{name}'; group names end in '.out'.")

    def layer_index(self, name: str) -> int:
        for i, ly in enumerate(self.layers):
            if ly.name == name:
                return i
        raise PlanError(f"The space has no layer named '{name}'; check the module path.")

    # -- encoding ------------------------------------------------------------------------------------------

    def encode(self, arch: Arch) -> np.ndarray:
        """Integer vector of ``arch`` (PlanError if a value is off the candidate grid).

        Bounds are not enforced here, so the dense model and other reference points can always be encoded
        (the latency predictor needs them); ``check`` also enforces the bounds.
        """
        if len(arch.widths) != self.n_groups or len(arch.sparsities) != len(self.layers):
            raise PlanError(
                f"The architecture has {len(arch.widths)} widths and {len(arch.sparsities)} sparsities but the "
                f"space needs {self.n_groups} and {len(self.layers)}; it was made for another model."
            )
        x = np.zeros(self.n_var, dtype=np.int64)
        for i, w in enumerate(arch.widths):
            x[i] = _choice_index(w, WIDTH_CHOICES, f"width of group '{self.groups[i].name}'")
        for i, s in enumerate(arch.sparsities):
            x[self.n_groups + i] = _choice_index(s, SPARSITY_CHOICES, f"sparsity of layer '{self.layers[i].name}'")
        choice = {int(li): c for c, li in enumerate(self._choice_layers)}
        for li, name in enumerate(arch.schemes):  # none: every layer at its default scheme
            ly = self.layers[li]
            if name in ly.options:
                if li in choice:
                    x[self.n_groups + len(self.layers) + choice[li]] = ly.options.index(name)
            elif name != "dense" or arch.sparsities[li] > 0:  # "dense" means sparsity 0 on any layer
                raise PlanError(
                    f"Layer '{ly.name}' takes {' or '.join(ly.options)} in this space, not '{name}' at sparsity "
                    f"{arch.sparsities[li]}; choose one of those."
                )
        return x

    def check(self, arch: Arch) -> np.ndarray:
        """``encode(arch)``, raising PlanError naming the first width or sparsity outside the space's bounds."""
        x = self.encode(arch)
        bad = np.flatnonzero((x < self.xl) | (x > self.xu))
        if bad.size:
            j = int(bad[0])
            what, value = self._describe(j, x[j])
            lo, hi = self._describe(j, self.xl[j])[1], self._describe(j, self.xu[j])[1]
            raise PlanError(f"The {what} is {value}, outside the space's bounds [{lo}, {hi}]; choose a value inside.")
        return x

    def decode(self, x: np.ndarray) -> Arch:
        """Architecture of integer vector ``x`` (shape ``(n_var,)``)."""
        x = np.asarray(x)
        if x.shape != (self.n_var,):
            raise PlanError(f"An encoded architecture needs shape ({self.n_var},), got {x.shape}.")
        g = self.n_groups
        widths = tuple(WIDTH_CHOICES[int(i)] for i in x[:g])
        sparsities = tuple(float(s) for s in self.layer_dims(x[None])[2][0])
        options = self.layer_options(x[None])[0]
        schemes = tuple(ly.options[k] if ly.sparse else "dense" for ly, k in zip(self.layers, options, strict=True))
        return Arch(widths, sparsities, schemes)

    def _describe(self, j: int, idx: int) -> tuple[str, float | str]:
        if j < self.n_groups:
            return f"width of group '{self.groups[j].name}'", WIDTH_CHOICES[int(idx)]
        if j < self.n_groups + len(self.layers):
            return f"sparsity of layer '{self.layers[j - self.n_groups].name}'", SPARSITY_CHOICES[int(idx)]
        layer = self.layers[self._choice_layers[j - self.n_groups - len(self.layers)]]
        return f"scheme of layer '{layer.name}'", layer.options[int(idx)]

    def sample(self, rng: np.random.Generator, n: int) -> list[Arch]:
        """``n`` architectures drawn uniformly within the bounds (integers, so every one is on the grid)."""
        return [self.decode(x) for x in self.sample_x(rng, n)]

    def sample_x(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` encoded architectures, shape (n, n_var), drawn uniformly within the bounds."""
        return rng.integers(self.xl, self.xu + 1, size=(n, self.n_var))

    def dense_arch(self) -> Arch:
        """The unpruned model: every width 1.0, every sparsity 0.0 (each layer at its default scheme)."""
        return Arch((1.0,) * self.n_groups, (0.0,) * len(self.layers))

    # -- restriction ---------------------------------------------------------------------------------------

    def restrict(self, mode: Mode) -> SearchSpace:
        """A copy searching only weights ("weight-only": widths fixed at 1.0), only channels ("channel-only":
        sparsities fixed at 0), or both ("joint")."""
        xl, xu = self.xl.copy(), self.xu.copy()
        g = self.n_groups
        if mode == "weight-only":
            xl[:g] = xu[:g] = len(WIDTH_CHOICES) - 1
        elif mode == "channel-only":
            xl[g:] = xu[g:] = 0
        elif mode != "joint":
            raise PlanError(f"Unknown search mode '{mode}'; choose joint, weight-only or channel-only.")
        return self._with_bounds(xl, xu)

    def fix(self, name: str, value: float) -> SearchSpace:
        """A copy with group ``name``'s width, or layer ``name``'s sparsity, fixed at ``value``.

        Fixing a layer's sparsity at 0.0 also marks it not sparse (e.g. "never prune the first conv").
        """
        xl, xu = self.xl.copy(), self.xu.copy()
        if any(g.name == name for g in self.groups):
            j = self.group_index(name)
            xl[j] = xu[j] = _choice_index(value, WIDTH_CHOICES, f"width for group '{name}'")
            return self._with_bounds(xl, xu)
        li = self.layer_index(name)
        if not self.layers[li].sparse and value != 0.0:
            raise PlanError(f"Layer '{name}' ({self.layers[li].kind}) takes no weight sparsity; fix it at 0.0.")
        j = self.n_groups + li
        xl[j] = xu[j] = _choice_index(value, SPARSITY_CHOICES, f"sparsity for layer '{name}'")
        space = self._with_bounds(xl, xu)
        if value == 0.0:
            layers = list(space.layers)
            layers[li] = dataclasses.replace(layers[li], sparse=False, max_sparsity=0.0)
            space = SearchSpace(
                space.groups, layers, space.input_size, space.in_channels, space.num_classes, space.scheme, xl, xu
            )
        return space

    def _with_bounds(self, xl: np.ndarray, xu: np.ndarray) -> SearchSpace:
        return SearchSpace(
            self.groups, self.layers, self.input_size, self.in_channels, self.num_classes, self.scheme, xl, xu
        )

    # -- vectorised dimensions ---------------------------------------------------------------------------

    def kept(self, X: np.ndarray) -> np.ndarray:
        """Kept channels per group, shape (n, G), for encoded architectures ``X`` of shape (n, n_var)."""
        X = np.atleast_2d(np.asarray(X))
        widths = _WIDTHS[X[:, : self.n_groups]]  # (n, G)
        k = np.round(widths * self._channels / self._multiples + 1e-9) * self._multiples
        k = np.minimum(np.maximum(k, self._multiples), self._channels)
        k = np.where(widths >= 1.0 - 1e-9, self._channels, k)
        return np.maximum(k, 1).astype(np.int64)

    def layer_dims(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(c_in, c_out, sparsity) of every layer, each shape (n, L), for encoded architectures ``X`` (n, n_var).

        Uses the same rounding as ``kept_channels`` and ``apply_plan``; depthwise layers report c_in == c_out.
        """
        X = np.atleast_2d(np.asarray(X))
        kept = self.kept(X)  # (n, G)
        c_out = kept @ self._out_onehot + self._out_fixed  # (n, L)
        c_in = kept @ self._in_mat + self._in_fixed  # (n, L)
        g, n_layers = self.n_groups, len(self.layers)
        sparsity = np.where(self._sparse, _SPARSITIES[X[:, g : g + n_layers]], 0.0)  # (n, L)
        if len(self._choice_layers):
            k = X[:, g + n_layers :]  # (n, C) the chosen option of each layer with a choice
            rows = np.arange(len(self._choice_layers))
            s = sparsity[:, self._choice_layers]  # (n, C)
            keep = self._opt_prunes[rows, k] & (s >= self._opt_least[rows, k] - 1e-9)
            sparsity[:, self._choice_layers] = np.where(keep, s, 0.0)
        return c_in, c_out, sparsity

    def layer_options(self, X: np.ndarray) -> np.ndarray:
        """Index into ``layers[j].options`` of every layer's scheme, shape (n, L), for encodings ``X`` (n, n_var)."""
        X = np.atleast_2d(np.asarray(X))
        out = np.zeros((X.shape[0], len(self.layers)), dtype=np.int64)
        out[:, self._choice_layers] = X[:, self.n_groups + len(self.layers) :]
        return out

    # -- serialisation -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": list(self.input_size),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "scheme": self.scheme,
            "groups": [dataclasses.asdict(g) for g in self.groups],
            "layers": [dataclasses.asdict(ly) for ly in self.layers],
            "xl": self.xl.tolist(),
            "xu": self.xu.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        try:
            groups = [GroupSpec(**{**g, "members": tuple(g["members"])}) for g in d["groups"]]
            layers = [_layer_from_dict(ly) for ly in d["layers"]]
            return cls(
                groups, layers, tuple(d["input_size"]), d["in_channels"], d["num_classes"], d["scheme"],
                np.asarray(d["xl"]), np.asarray(d["xu"]),
            )  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise PlanError(f"The search-space dict is missing or has a bad field ({exc}); regenerate it.") from None

    def __repr__(self) -> str:
        return (
            f"SearchSpace({self.n_groups} groups, {len(self.layers)} layers, scheme={self.scheme!r}, "
            f"input={self.in_channels}x{self.input_size[0]}x{self.input_size[1]})"
        )


__all__ = [
    "SPARSITY_CHOICES",
    "WIDTH_CHOICES",
    "Arch",
    "GroupSpec",
    "LayerSpec",
    "SearchSpace",
    "SpaceBounds",
    "kept_channels",
    "kept_channels_array",
]
