"""Multi-objective architecture search: NSGA-II with JCW's uniform non-dominated sorting selection (numpy, pymoo)."""

from latprune.search.config import MODES, PRESETS, SearchConfig, SearchPreset, get_preset
from latprune.search.driver import run_search
from latprune.search.interfaces import (
    AccuracyEstimator,
    LatencyPredictor,
    PlainSpace,
    SpaceLike,
    TimedEstimator,
)
from latprune.search.results import Candidate, SearchResult, pareto_front
from latprune.search.selection import SELECTIONS, UniformNondominatedSurvival, uniform_nondominated_select

__all__ = [
    "MODES",
    "PRESETS",
    "SELECTIONS",
    "AccuracyEstimator",
    "Candidate",
    "LatencyPredictor",
    "PlainSpace",
    "SearchConfig",
    "SearchPreset",
    "SearchResult",
    "SpaceLike",
    "TimedEstimator",
    "UniformNondominatedSurvival",
    "get_preset",
    "pareto_front",
    "run_search",
    "uniform_nondominated_select",
]
