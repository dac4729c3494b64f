"""The runtimes latprune's engine is compared with."""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn as nn


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
