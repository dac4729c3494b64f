"""The runtime registry: every registered runtime computes the model's output and is timed by name; reports key
their latencies by runtime and still read the reports written before."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from latprune.bench import runtimes
from latprune.bench.runtimes import get_runtime, list_runtimes, time_runtimes
from latprune.errors import EngineError
from latprune.models import ModelSpec
from latprune.pipeline import RunReport

from helpers import randomize_bn


def _output(result: object) -> np.ndarray:
    """The first output of a runtime's call, whatever container the runtime returns it in."""
    if isinstance(result, torch.Tensor):
        return result.detach().numpy()
    if hasattr(result, "values"):  # a dict of outputs (OpenVINO's OVDict)
        result = next(iter(result.values()))
    if isinstance(result, (list, tuple)):
        result = result[0]
    return np.asarray(result)


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, torch.Tensor]:
    model = randomize_bn(ModelSpec("resnet20", 10, 1, 16, 0.25).build(seed=0), torch.Generator().manual_seed(1))
    return model.eval(), torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", list_runtimes(available_only=False))
def test_every_runtime_runs_the_model(name, tiny):
    if name not in list_runtimes():
        with pytest.raises(EngineError, match="not installed"):
            get_runtime(name)
        pytest.skip(f"{name} is not installed here")
    model, x = tiny
    call = get_runtime(name).prepare(model, x, 1)
    with torch.inference_mode():
        ref = model(x).numpy()
        got = _output(call())
    np.testing.assert_allclose(got.reshape(ref.shape), ref, rtol=1e-3, atol=1e-3 * np.abs(ref).max())


def test_timings_are_keyed_by_runtime(tiny):
    model, x = tiny
    timed = time_runtimes(model, x, 1, ("engine", "torch"), warmup=1, runs=5)
    assert list(timed) == ["engine", "torch"] and all(t.median_ms > 0 for t in timed.values())
    assert {"engine", "onnxruntime", "torch"} <= set(list_runtimes())
    with pytest.raises(EngineError, match="Unknown runtime 'tvm'"):
        get_runtime("tvm")


def test_a_runtime_without_its_package_is_refused_in_one_sentence(monkeypatch):
    missing = dataclasses.replace(runtimes._RUNTIMES["torch"], available=lambda: False)
    monkeypatch.setitem(runtimes._RUNTIMES, "torch", missing)
    assert "torch" not in list_runtimes() and "torch" in list_runtimes(available_only=False)
    with pytest.raises(EngineError, match="PyTorch eager runtime is not installed"):
        get_runtime("torch")


def test_a_version_1_report_still_loads(tmp_path):
    row = {
        "name": "dense", "architecture": "width 1.0, dense", "predicted_ms": None, "engine_ms": 2.0,
        "onnxruntime_ms": 3.0, "torch_ms": 5.0, "speedup_vs_dense_engine": 1.0, "speedup_vs_dense_onnxruntime": 1.5,
        "test_acc": 0.9, "acc_drop": 0.0, "nonzero_params": 10, "engine_weights_bytes": 40, "export_bytes": None,
    }  # fmt: skip
    pruned = row | {"name": "m0", "engine_ms": 1.0, "speedup_vs_dense_engine": 2.0, "speedup_vs_dense_onnxruntime": 3.0}
    old = {
        "format": "latprune.report/1", "latprune_version": "0", "model": "resnet20", "data": "fashion-mnist",
        "cpu": "cpu", "threads": 1, "preset": "quick", "rows": [row, pruned], "stage_seconds": {},
    }  # fmt: skip
    (tmp_path / "report.json").write_text(json.dumps(old))
    report = RunReport.load(tmp_path)
    m0 = report.rows[1]
    assert m0.latency_ms == {"engine": 1.0, "onnxruntime": 3.0, "torch": 5.0}
    assert m0.speedup_vs_dense == {"engine": 2.0, "onnxruntime": 3.0, "torch": 5.0}
    assert report.reference == "onnxruntime" and "ORT ms" in report.table().splitlines()[0]
