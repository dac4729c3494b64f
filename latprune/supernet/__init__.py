"""Parameter-sharing super-net accuracy estimator (JCW §2.4): masks, BN recalibration, SupernetEstimator."""

from latprune.supernet._bn import batchnorms, recalibrate_bn
from latprune.supernet._config import PRESETS, SupernetConfig
from latprune.supernet._estimator import SupernetData, SupernetEstimator, SupernetTiming, supernet_subsets
from latprune.supernet._masks import Candidate, MaskedSupernet
from latprune.supernet._space import SpaceAdapter
from latprune.supernet._validate import ValidateConfig, ValidationResult, spread_over_latency, validate_accuracy

__all__ = [
    "PRESETS",
    "Candidate",
    "MaskedSupernet",
    "SpaceAdapter",
    "SupernetConfig",
    "SupernetData",
    "SupernetEstimator",
    "SupernetTiming",
    "ValidateConfig",
    "ValidationResult",
    "batchnorms",
    "recalibrate_bn",
    "spread_over_latency",
    "supernet_subsets",
    "validate_accuracy",
]
