"""The only things the search sees: integer encodings, a latency predictor and an accuracy estimator."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from latprune.errors import SearchError

RESTRICT_MODES: tuple[str, ...] = ("joint", "weight-only", "channel-only")


@runtime_checkable
class LatencyPredictor(Protocol):
    """Predicts end-to-end latency of encoded architectures (latprune.latency implements it)."""

    def predict(self, X: np.ndarray) -> np.ndarray:
        """``X`` (n, n_var) int encodings -> (n,) predicted latency in milliseconds."""
        ...


@runtime_checkable
class AccuracyEstimator(Protocol):
    """Estimates error rates of encoded architectures (latprune.supernet implements it with a super-net).

    The search calls :meth:`evaluate` once per generation with all of P ∪ Q, because a JCW super-net is rebuilt
    from exactly the candidates it must rank; their errors are only comparable within one call.
    """

    def evaluate(self, X: np.ndarray) -> np.ndarray:
        """``X`` (n, n_var) int encodings -> (n,) estimated error rates in [0, 1]."""
        ...


@runtime_checkable
class TimedEstimator(Protocol):
    """An estimator that also reports where its last :meth:`evaluate` spent its time (seconds per phase).

    Optional: when present, the per-generation JSON records it (the search-cost experiment reads it).
    """

    last_timing: Mapping[str, float]


@runtime_checkable
class SpaceLike(Protocol):
    """What the search needs from a search space: integer bounds, mode restriction and decoding for reports.

    ``latprune.space.SearchSpace`` satisfies it; :class:`PlainSpace` is the minimal stand-alone version.
    Fixed variables have ``xl == xu``. A space may also say which variables are unordered labels (a
    ``categorical`` (n_var,) bool array, e.g. each layer's scheme); the driver passes that on to the algorithm.
    """

    @property
    def n_var(self) -> int: ...

    @property
    def xl(self) -> np.ndarray: ...

    @property
    def xu(self) -> np.ndarray: ...

    def restrict(self, mode: str) -> SpaceLike: ...

    def decode(self, x: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class PlainArch:
    """The decoded form of a :class:`PlainSpace` vector: just the integers (there is no model behind it)."""

    values: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"values": list(self.values)}


@dataclass(frozen=True)
class PlainSpace:
    """A search space given as plain integer bounds, for synthetic problems and tests.

    ``is_width[i]`` marks width variables. ``restrict("weight-only")`` fixes widths at their upper bound (full width);
    ``restrict("channel-only")`` fixes the other (sparsity) variables at their lower bound (no sparsity), matching
    the meaning of the real space's modes when index 0 means sparsity 0.
    """

    lower: tuple[int, ...]
    upper: tuple[int, ...]
    is_width: tuple[bool, ...]

    def __post_init__(self) -> None:
        if not (len(self.lower) == len(self.upper) == len(self.is_width)) or not self.lower:
            raise SearchError("PlainSpace needs non-empty lower, upper and is_width tuples of one length.")
        bad = [i for i, (lo, hi) in enumerate(zip(self.lower, self.upper, strict=True)) if lo > hi]
        if bad:
            raise SearchError(f"PlainSpace variable {bad[0]} has lower bound above upper bound; swap them.")

    @property
    def n_var(self) -> int:
        return len(self.lower)

    @property
    def xl(self) -> np.ndarray:
        return np.asarray(self.lower, dtype=np.int64)

    @property
    def xu(self) -> np.ndarray:
        return np.asarray(self.upper, dtype=np.int64)

    def restrict(self, mode: str) -> PlainSpace:
        if mode == "joint":
            return self
        if mode == "weight-only":
            lo = tuple(hi if w else lo for lo, hi, w in zip(self.lower, self.upper, self.is_width, strict=True))
            return PlainSpace(lo, self.upper, self.is_width)
        if mode == "channel-only":
            hi = tuple(hi if w else lo for lo, hi, w in zip(self.lower, self.upper, self.is_width, strict=True))
            return PlainSpace(self.lower, hi, self.is_width)
        raise SearchError(f"Unknown space restriction '{mode}'; use one of {', '.join(RESTRICT_MODES)}.")

    def decode(self, x: np.ndarray) -> PlainArch:
        return PlainArch(tuple(int(v) for v in np.asarray(x).reshape(-1)))


def arch_to_dict(arch: Any) -> Any:
    """JSON form of a decoded architecture (``to_dict()`` when it has one, else the object itself)."""
    return arch.to_dict() if hasattr(arch, "to_dict") else arch
