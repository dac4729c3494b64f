"""Search configuration: one frozen dataclass, plus the named presets (paper, quick)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from latprune._limits import check_seed
from latprune._overrides import override
from latprune.errors import SearchError
from latprune.search.algorithms import list_algorithms
from latprune.search.selection import SELECTIONS

MODES: tuple[str, ...] = ("joint", "weight-only", "channel-only", "sequential")


@dataclass(frozen=True)
class SearchConfig:
    """Everything that decides what a search does; two runs with equal configs give the same front.

    ``generations`` counts the evolutionary steps after the initial population, so a search makes
    ``generations + 1`` estimator calls (the initial population, then P ∪ Q once per step).
    ``algorithm`` names a registered search algorithm (:func:`latprune.search.list_algorithms`); ``selection``,
    ``latency_targets`` and the SBX / mutation settings are NSGA-II's.
    ``mode`` picks the JCW Table 3 ablation: joint channel+weight, weight-only (WSO, widths 1.0),
    channel-only (CWO, sparsity 0), or sequential (SCW, see :mod:`latprune.search.driver`).
    ``latency_targets`` is the N of JCW eq. 9 for uniform selection (the official JCW configuration uses 4).
    ``latency_budget_ms`` only changes the report (best candidate under the budget), never the search.
    """

    population: int = 16
    generations: int = 10
    algorithm: str = "nsga2"
    selection: str = "uniform"
    latency_targets: int = 4
    mode: str = "joint"
    seed: int = 0
    crossover_prob: float = 0.9
    crossover_eta: float = 15.0
    mutation_eta: float = 20.0
    sequential_channel_share: float = 0.5
    sequential_widths: int = 4
    latency_budget_ms: float | None = None

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.population < 4:
            raise SearchError(f"The population size {self.population} is too small; use at least 4.")
        if self.generations < 0:
            raise SearchError(f"The number of generations {self.generations} is negative; use 0 or more.")
        if self.algorithm not in list_algorithms():
            raise SearchError(
                f"Unknown search algorithm '{self.algorithm}'; use one of {', '.join(list_algorithms())}."
            )
        if self.selection not in SELECTIONS:
            raise SearchError(f"Unknown selection '{self.selection}'; use one of {', '.join(SELECTIONS)}.")
        if self.latency_targets < 1:
            raise SearchError(f"The number of latency targets {self.latency_targets} must be at least 1.")
        if self.mode not in MODES:
            raise SearchError(f"Unknown search mode '{self.mode}'; use one of {', '.join(MODES)}.")
        if not 0.0 <= self.crossover_prob <= 1.0:
            raise SearchError(f"The crossover probability {self.crossover_prob} is outside [0, 1].")
        if not (0 < self.crossover_eta < math.inf and 0 < self.mutation_eta < math.inf):  # NaN too
            raise SearchError("The SBX and polynomial-mutation distribution indices (eta) must be positive.")
        if not 0.0 < self.sequential_channel_share < 1.0:
            raise SearchError(
                f"The sequential channel-stage share {self.sequential_channel_share} must lie strictly between 0 and 1."
            )
        if self.sequential_widths < 1:
            raise SearchError(f"The number of width choices kept for SCW ({self.sequential_widths}) must be >= 1.")
        if self.mode == "sequential" and self.generations < 2:
            raise SearchError("The sequential mode needs at least 2 generations (one per stage); raise --generations.")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise SearchError(f"The latency budget {self.latency_budget_ms} ms must be positive.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def override(self, **changes: Any) -> SearchConfig:
        """A copy with the given fields replaced (None values are ignored, so CLI flags left unset keep the preset's).

        Unknown field names are rejected by name so a typo never silently does nothing.
        """
        return override(self, changes, "search setting")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SearchError(
                f"The search config has unknown field(s) {', '.join(unknown)}; it is from another version."
            )
        return cls(**data)


@dataclass(frozen=True)
class SearchPreset:
    """A named budget: the search's size plus the name of the super-net schedule the estimator uses at that size.

    The super-net schedule itself is ``latprune.supernet.SupernetConfig.preset(supernet_preset)`` (the search package
    imports no torch, so it refers to it by name): "paper" is JCW's 10 + 20 epochs on 100 classes x 500 images.
    """

    name: str
    population: int
    generations: int
    supernet_preset: str
    description: str

    def search_config(self) -> SearchConfig:
        """The preset's :class:`SearchConfig` (change fields with ``dataclasses.replace``)."""
        return SearchConfig(population=self.population, generations=self.generations)


PRESETS: dict[str, SearchPreset] = {
    "paper": SearchPreset(
        name="paper",
        population=64,
        generations=128,
        supernet_preset="paper",
        description="JCW §3.1: population 64, 128 steps, super-net 10 + 20 epochs per step (days on a CPU).",
    ),
    "quick": SearchPreset(
        name="quick",
        population=16,
        generations=10,
        supernet_preset="quick",
        description="About 10 minutes with ResNet20 / Fashion-MNIST on a 2-core CPU.",
    ),
}


def get_preset(name: str) -> SearchPreset:
    """The preset called ``name``, or one sentence listing the valid names."""
    if name not in PRESETS:
        raise SearchError(f"Unknown search preset '{name}'; use one of {', '.join(PRESETS)}.")
    return PRESETS[name]
