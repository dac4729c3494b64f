"""A synthetic pruning problem with known latency and error for tests and benchmarks (label its results synthetic)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from latprune.search.interfaces import PlainSpace

# Encodings follow the real space's candidate list: index i means width (or sparsity) i / 10.
_GRID = 10


@dataclass(frozen=True)
class SyntheticProblem:
    """``n_groups`` width variables (index 5..10, width 0.5..1.0) then ``n_layers`` sparsity variables (0..7).

    Layer ``l`` reads the channels of group ``(l - 1) % n_groups`` (the image for ``l = 0``) and writes group
    ``l % n_groups``; its latency is ``cost_l * w_in * w_out * (1 - s_l)`` (a FLOP-like bilinear model), plus a fixed
    overhead. Its true error grows convexly with pruning; the estimator adds Gaussian noise of std ``noise``, drawn
    from a generator seeded by ``seed`` and the queried batch, so it is deterministic (also across a resume) but,
    like a super-net, mis-ranks candidates whose true errors are close.
    """

    n_groups: int = 4
    n_layers: int = 8
    seed: int = 0
    noise: float = 0.01

    def space(self) -> PlainSpace:
        lower = (5,) * self.n_groups + (0,) * self.n_layers
        upper = (_GRID,) * self.n_groups + (7,) * self.n_layers
        return PlainSpace(lower, upper, (True,) * self.n_groups + (False,) * self.n_layers)

    def _coefficients(self) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 7])
        cost = rng.uniform(0.05, 0.3, size=self.n_layers)  # ms at full width, no sparsity
        importance = rng.uniform(0.5, 1.5, size=self.n_layers)
        return cost, importance

    def _widths(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=float).reshape(-1, self.n_groups + self.n_layers)  # (n, n_var)
        groups = X[:, : self.n_groups] / _GRID  # (n, G)
        sparsity = X[:, self.n_groups :] / _GRID  # (n, L)
        layer = np.arange(self.n_layers)
        w_out = groups[:, layer % self.n_groups]  # (n, L)
        w_in = np.where(layer == 0, 1.0, groups[:, (layer - 1) % self.n_groups])  # (n, L)
        return w_in, w_out, sparsity

    def latency_ms(self, X: np.ndarray) -> np.ndarray:
        cost, _ = self._coefficients()
        w_in, w_out, sparsity = self._widths(X)
        return 0.05 + (cost * w_in * w_out * (1.0 - sparsity)).sum(axis=1)

    def true_error(self, X: np.ndarray) -> np.ndarray:
        _, importance = self._coefficients()
        _, w_out, sparsity = self._widths(X)
        damage = importance * (1.5 * (1.0 - w_out) ** 2 + 0.8 * sparsity**2)  # (n, L)
        return np.clip(0.05 + damage.sum(axis=1) / self.n_layers, 0.0, 1.0)

    def predictor(self) -> SyntheticLatency:
        return SyntheticLatency(self)

    def estimator(self) -> SyntheticEstimator:
        return SyntheticEstimator(self)


@dataclass(frozen=True)
class SyntheticLatency:
    """:class:`~latprune.search.interfaces.LatencyPredictor` of a :class:`SyntheticProblem` (exact, no noise)."""

    problem: SyntheticProblem

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.problem.latency_ms(X)


class SyntheticEstimator:
    """:class:`~latprune.search.interfaces.AccuracyEstimator` of a :class:`SyntheticProblem`: true error + noise."""

    def __init__(self, problem: SyntheticProblem) -> None:
        self.problem = problem
        self.calls = 0

    def evaluate(self, X: np.ndarray) -> np.ndarray:
        self.calls += 1
        X = np.ascontiguousarray(X, dtype=np.int64)
        digest = hashlib.sha256(X.tobytes()).digest()
        rng = np.random.default_rng([self.problem.seed, int.from_bytes(digest[:8], "little")])
        noise = rng.normal(0.0, self.problem.noise, size=len(X))
        return np.clip(self.problem.true_error(X) + noise, 0.0, 1.0)
