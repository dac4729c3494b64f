"""Parameter-sharing super-net accuracy estimator (JCW §2.4): masks, BN recalibration, SupernetEstimator."""

from latprune.supernet._bn import batchnorms, recalibrate_bn
from latprune.supernet._config import PRESETS, SupernetConfig
from latprune.supernet._estimator import SupernetData, SupernetEstimator, SupernetTiming, supernet_subsets
from latprune.supernet._masks import MaskedSupernet, Subnet
from latprune.supernet._space import SpaceAdapter
from latprune.supernet._validate import AccuracyValidation, ValidateConfig, spread_over_latency, validate_accuracy

__all__ = [
    "PRESETS",
    "AccuracyValidation",
    "MaskedSupernet",
    "SpaceAdapter",
    "Subnet",
    "SupernetConfig",
    "SupernetData",
    "SupernetEstimator",
    "SupernetTiming",
    "ValidateConfig",
    "batchnorms",
    "recalibrate_bn",
    "spread_over_latency",
    "supernet_subsets",
    "validate_accuracy",
]
