"""Multi-objective architecture search (numpy, pymoo; no torch): registered algorithms behind one ask/tell protocol,
NSGA-II with JCW's uniform non-dominated sorting selection first among them, and one driver for all."""

from latprune.search.algorithms import (
    AlgorithmSpec,
    DecisionSpace,
    SearchAlgorithm,
    get_algorithm,
    list_algorithms,
    register_algorithm,
)
from latprune.search.config import MODES, PRESETS, SearchConfig, SearchPreset, get_preset
from latprune.search.driver import run_search
from latprune.search.interfaces import (
    AccuracyEstimator,
    LatencyPredictor,
    PlainSpace,
    SpaceLike,
    TimedEstimator,
)
from latprune.search.results import Candidate, SearchResult, pareto_front, search_cost
from latprune.search.selection import SELECTIONS, UniformNondominatedSurvival, uniform_nondominated_select

__all__ = [
    "MODES",
    "PRESETS",
    "SELECTIONS",
    "AccuracyEstimator",
    "AlgorithmSpec",
    "Candidate",
    "DecisionSpace",
    "LatencyPredictor",
    "PlainSpace",
    "SearchAlgorithm",
    "SearchConfig",
    "SearchPreset",
    "SearchResult",
    "SpaceLike",
    "TimedEstimator",
    "UniformNondominatedSurvival",
    "get_algorithm",
    "get_preset",
    "list_algorithms",
    "pareto_front",
    "register_algorithm",
    "run_search",
    "search_cost",
    "uniform_nondominated_select",
]
