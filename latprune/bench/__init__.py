"""Compiled models timed against other runtimes (kept out of the engine, which imports no model or pruning)."""

from latprune.bench.model import (
    LAYER_SETS,
    BenchConfig,
    BenchResult,
    benchmark_model,
    calibrate_batchnorm,
    format_result,
    sparsify_model,
)
from latprune.bench.runtimes import (
    DEFAULT_BASELINES,
    REFERENCE_RUNTIME,
    Runtime,
    get_runtime,
    list_runtimes,
    onnxruntime_session,
    register_runtime,
    runtime_info,
    time_runtimes,
)
from latprune.bench.timing import TIMING_ROUNDS, Timing, measure, measure_interleaved

__all__ = [
    "DEFAULT_BASELINES",
    "LAYER_SETS",
    "REFERENCE_RUNTIME",
    "TIMING_ROUNDS",
    "BenchConfig",
    "BenchResult",
    "Runtime",
    "Timing",
    "benchmark_model",
    "calibrate_batchnorm",
    "format_result",
    "get_runtime",
    "list_runtimes",
    "measure",
    "measure_interleaved",
    "onnxruntime_session",
    "register_runtime",
    "runtime_info",
    "sparsify_model",
    "time_runtimes",
]
