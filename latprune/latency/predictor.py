"""The trilinear latency predictor (JCW §2.5): per-layer grid interpolation, summed, plus an additive term."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from latprune.errors import ProfileError
from latprune.latency.profile import LatencyProfile, LatencyTable, LayerSignature


class _Space(Protocol):
    """What the predictor needs from a search space (``latprune.space.SearchSpace`` provides it)."""

    layers: Sequence[Any]
    n_var: int

    def layer_dims(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def _options(layer: Any) -> tuple[str, ...]:
    """The schemes a layer can take (a space layer without a choice has just its own)."""
    return tuple(getattr(layer, "options", ())) or (str(layer.scheme),)


class _Axis:
    """One interpolation axis of every table: finds each layer's grid segment, one numpy pass per table."""

    def __init__(self, grids: Sequence[Sequence[float]]) -> None:
        self.grids = [np.asarray(g, dtype=np.float64) for g in grids]

    def locate(self, x: np.ndarray, table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower grid index and the fraction ``t`` of the way to the next point, for values ``x`` (n, L) of
        layers whose tables are ``table`` (n, L).

        Outside the grid ``t`` leaves [0, 1], which extends the first or last segment linearly: below the
        first channel count the latency falls along the first segment's slope toward its intercept at 0
        channels (the clip at 0 ms happens after summing the corners). A one-point axis has t = 0.
        """
        i0 = np.zeros(x.shape, dtype=np.int64)
        t = np.zeros(x.shape)
        for u, g in enumerate(self.grids):
            if len(g) < 2:
                continue
            at = table == u  # (n, L) entries interpolated in table u
            if not at.any():
                continue
            xs = x[at]
            k = np.clip(np.searchsorted(g, xs, side="right") - 1, 0, len(g) - 2)
            i0[at] = k
            t[at] = (xs - g[k]) / (g[k + 1] - g[k])
        return i0, t


def _kernel_area(layer: Any) -> int:
    """kh * kw of a layer spec whose ``kernel`` is an int or a pair."""
    k = layer.kernel
    return int(k[0]) * int(k[1]) if isinstance(k, (tuple, list)) else int(k) * int(k)


class TrilinearPredictor:
    """Predict end-to-end engine latency (ms) of pruned architectures from a device profile (the search's
    ``latprune.search.LatencyPredictor``).

    Each layer's latency is the trilinear interpolation of its signature's table at its (input channels,
    output channels, sparsity): T = sum_ijk tau(c_in - i) tau(c_out - j) tau(s - k) T_ijk on the grid's
    normalised indices, with tau(x) = max(0, 1 - |x|) (JCW eq. 7-8). Grid axes need not be evenly spaced
    (channel counts are rounded to integers), so the normalised index is piecewise linear in the value.
    The model's latency is ``offset + scale * sum(layers) + ms_per_mb * weight_mb`` (see ``AdditiveTerm``).
    Everything is vectorised over architectures and layers.
    """

    def __init__(self, profile: LatencyProfile, space: _Space) -> None:
        self.profile = profile
        self.space = space
        tables: list[LatencyTable] = []
        index: dict[int, int] = {}
        n_options = max((len(_options(layer)) for layer in space.layers), default=1)
        option_table = np.zeros((len(space.layers), n_options), dtype=np.int64)  # (L, K) table of each option
        for li, layer in enumerate(space.layers):
            for k, scheme in enumerate(_options(layer)):
                sig = LayerSignature.of_layer(layer, scheme)
                table = profile.table_for(sig)
                if table is None:
                    raise ProfileError(
                        f"The latency profile (model {profile.model.name}) has no table for layer '{layer.name}' "
                        f"({sig.key}); profile this model, input size and scheme with `latprune profile`."
                    )
                if id(table) not in index:
                    index[id(table)] = len(tables)
                    tables.append(table)
                option_table[li, k] = index[id(table)]
        self._option_table = option_table
        self._tied = np.array([t.grid.tied for t in tables])  # (U,)
        self._cin = _Axis([t.grid.cin for t in tables])
        self._cout = _Axis([t.grid.cout for t in tables])
        self._sp = _Axis([t.grid.sparsity for t in tables])
        self._flat = np.concatenate([t.ms.ravel() for t in tables])  # all tables, C order
        sizes = np.array([t.ms.size for t in tables])
        self._offset = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # (U,) start of each table in _flat
        shapes = np.array([t.ms.shape for t in tables])  # (U, 3)
        stride = np.stack([shapes[:, 1] * shapes[:, 2], shapes[:, 2], np.ones(len(tables), int)], 1)
        self._stride = np.where(shapes > 1, stride, 0)  # (U, 3); a one-point axis never moves: its upper corner is it
        # MB of fp32 weights per (output channel x input channel x density); depthwise: per output channel.
        groups = [1 if layer.kind == "depthwise" else int(layer.groups) for layer in space.layers]
        self._mb_per = np.array([_kernel_area(ly) * 4e-6 / g for ly, g in zip(space.layers, groups, strict=True)])
        self._dw = np.array([layer.kind == "depthwise" for layer in space.layers])  # (L,)

    @property
    def threads(self) -> int:
        """The engine thread count the profile was measured with."""
        return self.profile.threads

    def _as_matrix(self, archs: np.ndarray | Sequence[Any]) -> np.ndarray:
        """Accept an (n, n_var) int array, one vector, or a list of decoded architectures (encoded here)."""
        if not isinstance(archs, np.ndarray) and len(archs) and dataclasses.is_dataclass(archs[0]):
            x = np.stack([np.asarray(self.space.encode(a)) for a in archs])  # type: ignore[attr-defined]
        else:
            x = np.atleast_2d(np.asarray(archs))
        if x.ndim != 2 or x.shape[1] != self.space.n_var:
            raise ProfileError(
                f"Architectures must be an (n, {self.space.n_var}) integer array for this search space, "
                f"got shape {tuple(x.shape)}."
            )
        return x

    def interpolate(
        self, c_in: np.ndarray, c_out: np.ndarray, sparsity: np.ndarray, options: np.ndarray | None = None
    ) -> np.ndarray:
        """Per-layer latency (ms), shape (n, L), at the given per-layer dimensions (each (n, L)); ``options`` (n, L)
        picks each layer's scheme (an index into its ``options``; None: every layer's default)."""
        c_in = np.asarray(c_in, dtype=np.float64)
        c_out = np.asarray(c_out, dtype=np.float64)
        sparsity = np.asarray(sparsity, dtype=np.float64)
        layers = np.arange(c_out.shape[-1])
        table = self._option_table[layers, 0 if options is None else options]  # (n, L) or (L,)
        table = np.broadcast_to(table, c_out.shape)
        c_in = np.where(self._tied[table], c_out, c_in)  # depthwise: one channel count for both
        i, ti = self._cin.locate(c_in, table)
        j, tj = self._cout.locate(c_out, table)
        k, tk = self._sp.locate(sparsity, table)
        si, sj, sk = np.moveaxis(self._stride[table], -1, 0)  # (n, L) each
        idx = self._offset[table] + i * si + j * sj + k * sk  # (n, L) lower corner in _flat
        out = np.zeros(c_out.shape)
        for di, wi in ((0, 1 - ti), (1, ti)):
            for dj, wj in ((0, 1 - tj), (1, tj)):
                wij = wi * wj
                for dk, wk in ((0, 1 - tk), (1, tk)):
                    out += wij * wk * self._flat[idx + (di * si + dj * sj + dk * sk)]
        return np.maximum(out, 0.0)

    def _options_of(self, x: np.ndarray) -> np.ndarray | None:
        layer_options = getattr(self.space, "layer_options", None)
        return None if layer_options is None else layer_options(x)

    def predict_layers(self, archs: np.ndarray | Sequence[Any]) -> np.ndarray:
        """Per-layer latency (ms) of each architecture, shape (n, L) (before the additive term)."""
        x = self._as_matrix(archs)
        c_in, c_out, sparsity = self.space.layer_dims(x)
        return self.interpolate(c_in, c_out, sparsity, self._options_of(x))

    def _weight_mb(self, c_in: np.ndarray, c_out: np.ndarray, sparsity: np.ndarray) -> np.ndarray:
        """MB of nonzero fp32 weights of each architecture, shape (n,), from per-layer dimensions (each (n, L))."""
        fan_in = np.where(self._dw, 1.0, np.asarray(c_in, dtype=np.float64))  # (n, L)
        return (np.asarray(c_out, dtype=np.float64) * fan_in * (1.0 - np.asarray(sparsity)) * self._mb_per).sum(1)

    def weight_mb(self, archs: np.ndarray | Sequence[Any]) -> np.ndarray:
        """MB of nonzero weights of each architecture, shape (n,): what a pass streams through the caches."""
        return self._weight_mb(*self.space.layer_dims(self._as_matrix(archs)))

    def predict(self, archs: np.ndarray | Sequence[Any]) -> np.ndarray:
        """Predicted end-to-end latency in ms, shape (n,), for an (n, n_var) int array (or a list of Archs)."""
        term = self.profile.additive
        x = self._as_matrix(archs)
        c_in, c_out, sparsity = self.space.layer_dims(x)
        layers = self.interpolate(c_in, c_out, sparsity, self._options_of(x)).sum(axis=1)  # (n,)
        if term.ms_per_mb == 0.0:
            return term.offset_ms + term.scale * layers
        return term.offset_ms + term.scale * layers + term.ms_per_mb * self._weight_mb(c_in, c_out, sparsity)
