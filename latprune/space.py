"""The search vocabulary: a width per coupled group, a sparsity and a scheme per layer, encoded as integer vectors."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch.nn as nn

from latprune._space_index import SpaceIndex
from latprune._space_layers import (
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

Mode = Literal["joint", "weight-only", "channel-only"]


@dataclass(frozen=True)
class Arch:
    """One architecture: a width ratio per coupled group; per layer a sparsity (0.0 where not sparse), a scheme and
    a kernel size.

    ``schemes`` names each layer's scheme, "dense" where the layer has no weight sparsity. It is empty in an
    architecture written before schemes were chosen per layer: each layer then takes its default in the space.
    ``kernels`` holds each layer's (square) kernel size; empty when the space offers no kernel choice, and then
    every layer keeps the parent's.
    """

    widths: tuple[float, ...]
    sparsities: tuple[float, ...]
    schemes: tuple[str, ...] = ()
    kernels: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("schemes", "kernels"):
            if getattr(self, name) and len(getattr(self, name)) != len(self.sparsities):
                raise PlanError(
                    f"The architecture has {len(self.sparsities)} sparsities but {len(getattr(self, name))} {name}; "
                    f"give one per layer."
                )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"widths": list(self.widths), "sparsities": list(self.sparsities)}
        if self.schemes:
            d["schemes"] = list(self.schemes)
        if self.kernels:
            d["kernels"] = list(self.kernels)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Arch:
        try:
            return cls(
                tuple(float(w) for w in d["widths"]),
                tuple(float(s) for s in d["sparsities"]),
                tuple(str(s) for s in d.get("schemes", ())),
                tuple(int(k) for k in d.get("kernels", ())),
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


class SearchSpace(SpaceIndex):
    """Integer-encoded space: one width index per group, one sparsity index per layer, then one scheme index per
    layer that has a choice of schemes (none in a one-scheme space, so JCW's encodings are unchanged), then one
    kernel-size index per depthwise layer with a choice of sizes (none unless asked for).

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
        kernel_sizes: Sequence[int] = (),
    ) -> None:
        self.groups = tuple(groups)
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)  # as asked of from_model (layers hold the choices)
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
        kernel_sizes: Sequence[int] = (),
    ) -> SearchSpace:
        """Build the space of ``model``: its coupled groups (graph.py) with JCW's per-layer bounds.

        ``scheme`` is one scheme for every layer, or several joined by commas ("group4,pattern,unstructured"):
        each layer then chooses among those that apply to it (a fallback replaces one that does not).
        ``kernel_sizes`` (e.g. (3, 5, 7)) lets every depthwise conv with a square odd kernel and "same" padding
        choose its size among those and its own (see ``_space_layers.kernel_choices``).
        """
        graph = graph if graph is not None else build_graph(model, input_size, in_channels)
        layers = _layer_specs(graph, scheme, bounds, kernel_sizes)
        groups = _group_specs(graph, layers, bounds)
        xl, xu = _variable_bounds(groups, layers)
        num_classes = graph.layers[-1].c_out if graph.layers else 0
        return cls(groups, layers, graph.input_size, graph.in_channels, num_classes, scheme, xl, xu, kernel_sizes)

    # -- basic facts -----------------------------------------------------------------------------------

    @property
    def n_var(self) -> int:
        return len(self.groups) + len(self.layers) + self.n_choices + self.n_kernel_choices

    @property
    def categorical(self) -> np.ndarray:
        """Which variables are unordered labels (the scheme variables; kernel sizes are ordered), shape (n_var,)."""
        flags = np.zeros(self.n_var, dtype=bool)
        start = self.n_groups + len(self.layers)
        flags[start : start + self.n_choices] = True
        return flags

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
        for li, ly in enumerate(self.layers):  # the parent's kernel unless the architecture names another
            k = arch.kernels[li] if arch.kernels else int(ly.kernel[0])
            if k not in ly.kernels:
                raise PlanError(f"Layer '{ly.name}' takes kernel sizes {list(ly.kernels)} in this space, not {k}.")
            if ly.kernel_choices:
                x[self._kernel_start + int(np.flatnonzero(self._kernel_layers == li)[0])] = ly.kernels.index(k)
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
        kernels = tuple(int(k) for k in self.layer_kernels(x[None])[0]) if self.n_kernel_choices else ()
        return Arch(widths, sparsities, schemes, kernels)

    def _describe(self, j: int, idx: int) -> tuple[str, float | str]:
        if j < self.n_groups:
            return f"width of group '{self.groups[j].name}'", WIDTH_CHOICES[int(idx)]
        if j < self.n_groups + len(self.layers):
            return f"sparsity of layer '{self.layers[j - self.n_groups].name}'", SPARSITY_CHOICES[int(idx)]
        if j >= self._kernel_start:
            layer = self.layers[self._kernel_layers[j - self._kernel_start]]
            return f"kernel size of layer '{layer.name}'", layer.kernels[int(idx)]
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
            own = self._own_kernel[self._kernel_layers]  # kernels stay the parent's: a channel-only search
            xl[self._kernel_start :] = xu[self._kernel_start :] = own
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
                space.groups, layers, space.input_size, space.in_channels, space.num_classes, space.scheme, xl, xu,
                self.kernel_sizes,
            )  # fmt: skip
        return space

    def _with_bounds(self, xl: np.ndarray, xu: np.ndarray) -> SearchSpace:
        return SearchSpace(
            self.groups, self.layers, self.input_size, self.in_channels, self.num_classes, self.scheme, xl, xu,
            self.kernel_sizes,
        )  # fmt: skip

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
        } | ({"kernel_sizes": list(self.kernel_sizes)} if self.kernel_sizes else {})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SearchSpace:
        try:
            groups = [GroupSpec(**{**g, "members": tuple(g["members"])}) for g in d["groups"]]
            layers = [_layer_from_dict(ly) for ly in d["layers"]]
            return cls(
                groups, layers, tuple(d["input_size"]), d["in_channels"], d["num_classes"], d["scheme"],
                np.asarray(d["xl"]), np.asarray(d["xu"]), tuple(d.get("kernel_sizes", ())),
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
