"""Random architectures for calibration and validation: independent draws, or spread over the latency range."""

from __future__ import annotations

from typing import Any

import numpy as np

SAMPLINGS = ("spread", "uniform")


def sample_archs(space: Any, rng: np.random.Generator, n: int, sampling: str) -> np.ndarray:
    """``n`` encoded architectures (n, n_var) inside the space's bounds.

    "uniform" draws every variable independently; each architecture is then an average of many independent
    choices, so their latencies cluster within a few percent of the mean and a correlation mostly measures
    timing noise. "spread" draws one level per architecture (uniform in [0, 1]) and jitters it per variable
    (σ = 0.15), wide and dense at high levels, thin and sparse at low ones, so the sample covers the range
    the search explores, from the smallest model to the dense one.
    """
    if sampling == "uniform":
        return space.sample_x(rng, n)
    level = rng.uniform(0.0, 1.0, size=(n, 1))
    u = np.clip(level + rng.normal(0.0, 0.15, size=(n, space.n_var)), 0.0, 1.0)  # (n, n_var)
    g = getattr(space, "n_groups", 0)
    n_sparsity = space.n_var - g - getattr(space, "n_choices", 0)  # scheme choices (last) stay uniform
    u[:, g : g + n_sparsity] = 1.0 - u[:, g : g + n_sparsity]  # sparsity variables: a high level means little sparsity
    lo, hi = np.asarray(space.xl), np.asarray(space.xu)
    return np.rint(lo + (hi - lo) * u).astype(np.int64)
