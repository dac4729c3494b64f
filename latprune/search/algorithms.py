"""Search algorithms behind one ask/tell protocol, in a registry: NSGA-II is one entry, others register beside it.

The driver (``latprune.search.driver``) owns everything common to all of them: run folders, generation files,
resume after a kill, the latency predictor and the accuracy estimator. An algorithm only proposes integer decision
vectors in a box and learns from their objectives, and hands the driver its state as plain JSON so a killed run
continues exactly where it stopped.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from latprune.errors import SearchError

if TYPE_CHECKING:
    from latprune.search.config import SearchConfig


@dataclass(frozen=True, eq=False)
class DecisionSpace:
    """What an algorithm searches: integer decision variables in ``[lower, upper]`` (both inclusive, shape (d,)).

    ``categorical`` marks variables whose values are unordered labels (a layer's scheme, one of the width vectors
    of the sequential mode): algorithms that model order (SBX, a GP's kernel) should treat them as categories.
    """

    lower: np.ndarray
    upper: np.ndarray
    categorical: np.ndarray

    @property
    def n_dec(self) -> int:
        return len(self.lower)


@runtime_checkable
class SearchAlgorithm(Protocol):
    """One search algorithm, driven generation by generation by ``run_search``.

    Each generation the driver calls :meth:`ask`, predicts latency and estimates error for every row in ONE
    estimator call (a JCW super-net is rebuilt from exactly the candidates it ranks, so errors are comparable
    within a call only), then calls :meth:`tell` with the objectives. :meth:`population` is what the run reports
    (the generation file's ``population`` and, after the last generation, the front), :meth:`state` what
    ``state.json`` saves. Randomness comes only from the seed the algorithm was created with and its saved state.
    """

    def ask(self) -> np.ndarray | None:
        """The next batch of decision vectors, shape (n, n_dec), or None when nothing new can be proposed."""
        ...

    def tell(self, F: np.ndarray) -> None:
        """Objectives of the last batch, shape (n, 2): predicted latency (ms) and estimated error, row for row."""
        ...

    def population(self) -> tuple[np.ndarray, np.ndarray]:
        """(Z, F): the decision vectors the algorithm keeps now, (m, n_dec), and their objectives, (m, 2)."""
        ...

    def state(self) -> dict[str, Any]:
        """Everything needed to continue exactly after the last :meth:`tell`, as plain JSON types."""
        ...


@dataclass(frozen=True)
class AlgorithmSpec:
    """A registered algorithm: how to start it, and how to rebuild it from a saved :meth:`SearchAlgorithm.state`."""

    name: str
    create: Callable[[DecisionSpace, SearchConfig, int], SearchAlgorithm]
    restore: Callable[[DecisionSpace, SearchConfig, int, dict[str, Any]], SearchAlgorithm]
    description: str


_ALGORITHMS: dict[str, AlgorithmSpec] = {}
#: Modules whose import registers the built-in algorithms (imported on first use: pymoo is slow to import).
_BUILTIN_MODULES = ("latprune.search.nsga",)


def register_algorithm(name: str, *, description: str) -> Callable[[type], type]:
    """Register a class with ``create(space, config, seed)`` and ``restore(space, config, seed, state)``
    classmethods returning a :class:`SearchAlgorithm`, as search algorithm ``name``."""

    def deco(cls: type) -> type:
        if name in _ALGORITHMS:
            raise ValueError(f"search algorithm '{name}' is already registered")
        _ALGORITHMS[name] = AlgorithmSpec(name, cls.create, cls.restore, description)  # type: ignore[attr-defined]
        return cls

    return deco


def _load_builtin() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def list_algorithms() -> list[str]:
    """Names of every registered search algorithm."""
    _load_builtin()
    return list(_ALGORITHMS)


def get_algorithm(name: str) -> AlgorithmSpec:
    """The algorithm called ``name``, or one sentence listing the valid names."""
    _load_builtin()
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise SearchError(f"Unknown search algorithm '{name}'; use one of {', '.join(_ALGORITHMS)}.") from None


__all__ = [
    "AlgorithmSpec",
    "DecisionSpace",
    "SearchAlgorithm",
    "get_algorithm",
    "list_algorithms",
    "register_algorithm",
]
