"""The runtimes a compiled model is compared with, in one registry: the engine itself, ONNX Runtime, PyTorch eager,
and OpenVINO where its package is installed. Timings everywhere are dicts keyed by these names."""

from __future__ import annotations

import importlib.util
import io
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from latprune.bench.timing import Timing, measure_interleaved
from latprune.errors import EngineError

#: prepare(model, example input (N, C, H, W), threads) -> a zero-argument call running the model once on it.
PrepareFn = Callable[[nn.Module, torch.Tensor, int], Callable[[], object]]


@dataclass(frozen=True)
class Runtime:
    """One way to run a model: how to prepare it, and how people call it in tables (``short``) and plots."""

    name: str
    label: str
    short: str
    prepare: PrepareFn
    available: Callable[[], bool]
    marker: str
    color: str
    description: str


_RUNTIMES: dict[str, Runtime] = {}
#: The runtime speed-ups are reported against when it was measured (the strongest common dense CPU baseline).
REFERENCE_RUNTIME = "onnxruntime"
#: The baselines `latprune run` and `latprune bench` time beside the engine unless told otherwise.
DEFAULT_BASELINES = ("onnxruntime", "torch")


def register_runtime(
    name: str,
    *,
    label: str,
    short: str,
    marker: str,
    color: str,
    description: str,
    available: Callable[[], bool] = lambda: True,
) -> Callable[[PrepareFn], PrepareFn]:
    """Register ``prepare(model, example, threads) -> call`` as runtime ``name``."""

    def deco(fn: PrepareFn) -> PrepareFn:
        if name in _RUNTIMES:
            raise ValueError(f"runtime '{name}' is already registered")
        _RUNTIMES[name] = Runtime(name, label, short, fn, available, marker, color, description)
        return fn

    return deco


def list_runtimes(available_only: bool = True) -> list[str]:
    """Names of the registered runtimes (those whose package is installed, unless ``available_only`` is False)."""
    return [name for name, rt in _RUNTIMES.items() if not available_only or rt.available()]


def get_runtime(name: str) -> Runtime:
    """The runtime called ``name``: one sentence for an unknown one, or one whose package is not installed."""
    runtime = _RUNTIMES.get(name)
    if runtime is None:
        raise EngineError(f"Unknown runtime '{name}'; choose among {', '.join(_RUNTIMES)}.")
    if not runtime.available():
        raise EngineError(f"The {runtime.label} runtime is not installed; `pip install {name}`, or leave it out.")
    return runtime


def runtime_info(name: str) -> Runtime | None:
    """The record of ``name`` whether or not its package is installed (for labels in reports), None if unknown."""
    return _RUNTIMES.get(name)


def time_runtimes(
    model: nn.Module,
    example: torch.Tensor,
    threads: int,
    runtimes: Sequence[str],
    *,
    warmup: int,
    runs: int,
    prepared: Mapping[str, Callable[[], object]] | None = None,
) -> dict[str, Timing]:
    """Batch-1 timing of ``model`` on each of ``runtimes``, in this process with the same thread count, interleaved
    in rounds (see :func:`latprune.bench.timing.measure_interleaved` for why). ``prepared`` gives calls already made
    for some runtimes (e.g. an engine model the caller compiled and inspects)."""
    prepared = dict(prepared or {})
    calls = {name: prepared.get(name) or get_runtime(name).prepare(model, example, threads) for name in runtimes}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return measure_interleaved(calls, warmup=warmup, runs=runs, threads=threads)
    finally:
        torch.set_num_threads(old)


@register_runtime(
    "engine",
    label="latprune engine",
    short="engine",
    marker="s",
    color="tab:green",
    description="latprune's sparse engine: the model compiled to generated C (weights as they are, zeros skipped).",
)
def _engine(model: nn.Module, example: torch.Tensor, threads: int) -> Callable[[], object]:
    from latprune.engine import compile

    compiled = compile(model, example, threads=threads)
    xa = example.numpy()
    return lambda: compiled(xa)


def onnxruntime_session(model: nn.Module, x: torch.Tensor, threads: int):
    """An ONNX Runtime session for the dense model with every graph optimisation and ``threads`` intra-op threads."""
    import onnxruntime as ort

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"])
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


@register_runtime(
    "onnxruntime",
    label="ONNX Runtime",
    short="ORT",
    marker="D",
    color="tab:orange",
    description="ONNX Runtime's CPU provider, every graph optimisation on, the model run dense.",
)
def _onnxruntime(model: nn.Module, example: torch.Tensor, threads: int) -> Callable[[], object]:
    session = onnxruntime_session(model, example, threads)
    xa = example.numpy()
    return lambda: session.run(None, {"x": xa})


@register_runtime(
    "torch",
    label="PyTorch eager",
    short="PyTorch",
    marker="^",
    color="tab:red",
    description="PyTorch eager mode (timed under inference_mode with the same thread count).",
)
def _torch(model: nn.Module, example: torch.Tensor, threads: int) -> Callable[[], object]:
    return lambda: model(example)


@register_runtime(
    "openvino",
    label="OpenVINO",
    short="OV",
    marker="v",
    color="tab:purple",
    description="Intel OpenVINO on the CPU, latency hint, fp32, the model run dense (optional: pip install openvino).",
    available=lambda: importlib.util.find_spec("openvino") is not None,
)
def _openvino(model: nn.Module, example: torch.Tensor, threads: int) -> Callable[[], object]:
    import openvino as ov

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        converted = ov.convert_model(model, example_input=example)
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
    request = ov.Core().compile_model(converted, "CPU", config).create_infer_request()
    xa = np.ascontiguousarray(example.numpy())
    return lambda: request.infer({0: xa})


__all__ = [
    "DEFAULT_BASELINES",
    "REFERENCE_RUNTIME",
    "Runtime",
    "get_runtime",
    "list_runtimes",
    "onnxruntime_session",
    "register_runtime",
    "runtime_info",
    "time_runtimes",
]
