"""The search space's precomputed index: matrices that turn many encodings into per-layer channels, sparsities,
schemes and kernel sizes in a few vectorised numpy operations (what the predictor and the super-net call)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from latprune._space_layers import _SPARSITIES, _WIDTHS
from latprune.schemes import get_scheme

if TYPE_CHECKING:
    from latprune._space_layers import GroupSpec, LayerSpec


class SpaceIndex:
    """Mixin of ``SearchSpace``: ``_build_index`` once, then the vectorised per-layer views of encodings."""

    groups: tuple[GroupSpec, ...]
    layers: tuple[LayerSpec, ...]

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    @property
    def n_choices(self) -> int:
        """Scheme variables: one per layer with a choice of schemes."""
        return sum(1 for ly in self.layers if ly.scheme_choices)

    @property
    def n_kernel_choices(self) -> int:
        """Kernel-size variables (the last ones): one per layer with a choice of sizes."""
        return sum(1 for ly in self.layers if ly.kernel_choices)

    @property
    def _kernel_start(self) -> int:
        return self.n_groups + len(self.layers) + self.n_choices

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
        # Layers with a choice of kernel sizes, and each one's sizes (padded with its largest).
        self._kernel_layers = np.asarray([li for li, ly in enumerate(self.layers) if ly.kernel_choices], np.int64)
        width = max((len(self.layers[li].kernel_choices) for li in self._kernel_layers), default=1)
        self._kernel_sizes = np.asarray(
            [list(ly.kernels) + [ly.kernels[-1]] * (width - len(ly.kernels)) for ly in self.layers], dtype=np.int64
        ).reshape(len(self.layers), width)  # (L, K): a layer without a choice has its own size everywhere
        self._own_kernel = np.asarray([ly.own_kernel_index for ly in self.layers], dtype=np.int64)

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
            k = X[:, g + n_layers : g + n_layers + self.n_choices]  # (n, C) the chosen option of each layer with one
            rows = np.arange(len(self._choice_layers))
            s = sparsity[:, self._choice_layers]  # (n, C)
            keep = self._opt_prunes[rows, k] & (s >= self._opt_least[rows, k] - 1e-9)
            sparsity[:, self._choice_layers] = np.where(keep, s, 0.0)
        return c_in, c_out, sparsity

    def layer_options(self, X: np.ndarray) -> np.ndarray:
        """Index into ``layers[j].options`` of every layer's scheme, shape (n, L), for encodings ``X`` (n, n_var)."""
        X = np.atleast_2d(np.asarray(X))
        out = np.zeros((X.shape[0], len(self.layers)), dtype=np.int64)
        start = self.n_groups + len(self.layers)
        out[:, self._choice_layers] = X[:, start : start + self.n_choices]
        return out

    def layer_kernel_index(self, X: np.ndarray) -> np.ndarray:
        """Index into ``layers[j].kernels`` of every layer's kernel size, shape (n, L), for encodings ``X``."""
        X = np.atleast_2d(np.asarray(X))
        out = np.tile(self._own_kernel, (X.shape[0], 1))  # (n, L)
        out[:, self._kernel_layers] = X[:, self._kernel_start :]
        return out

    def layer_kernels(self, X: np.ndarray) -> np.ndarray:
        """Every layer's square kernel size, shape (n, L), for encodings ``X`` (n, n_var)."""
        idx = self.layer_kernel_index(X)  # (n, L)
        return self._kernel_sizes[np.arange(len(self.layers))[None, :], idx]
