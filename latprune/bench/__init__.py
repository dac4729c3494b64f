"""Benchmarks of compiled models against other runtimes (moved out of the engine, which imports no model or pruning)."""

from latprune.bench.model import (
    LAYER_SETS,
    BenchConfig,
    BenchResult,
    benchmark_model,
    calibrate_batchnorm,
    format_result,
    sparsify_model,
)
from latprune.bench.runtimes import onnxruntime_session
from latprune.bench.timing import TIMING_ROUNDS, Timing, measure, measure_interleaved

__all__ = [
    "LAYER_SETS",
    "TIMING_ROUNDS",
    "BenchConfig",
    "BenchResult",
    "Timing",
    "benchmark_model",
    "calibrate_batchnorm",
    "format_result",
    "measure",
    "measure_interleaved",
    "onnxruntime_session",
    "sparsify_model",
]
