"""Export bundles: weights reload on a fresh zoo model, ONNX and the saved engine match torch, manifest, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

import latprune.engine.build as engine_build
import latprune.engine.runtime as engine_runtime
from latprune.cli import main
from latprune.data import BatchLoader, ImageData
from latprune.engine import CompiledModel
from latprune.errors import EngineError, LatpruneError, PlanError
from latprune.export import MANIFEST_NAME, ExportConfig, export_checkpoint, export_model
from latprune.models import ModelSpec
from latprune.prune import PruningPlan, apply_plan, build_pruned, load_pruned, uniform_plan, weight_masks
from latprune.train import TrainConfig, checkpoint_meta, load_model_from_checkpoint, train_model

from helpers import randomize_bn

SPEC = ModelSpec("resnet20", num_classes=3, in_channels=1, input_size=12, width_mult=0.25)


def pruned_model(seed: int = 0) -> tuple[nn.Module, PruningPlan]:
    """resnet20 at width 0.25, half its channels kept and group-of-4 sparsity 0.5, weight masks attached."""
    model = randomize_bn(SPEC.build(seed=seed), torch.Generator().manual_seed(seed))
    plan = uniform_plan(model, SPEC.input_size, SPEC.in_channels, 0.5, 0.5, "group4", model_spec=SPEC)
    return apply_plan(model, plan).eval(), plan


def inputs(n: int, seed: int) -> torch.Tensor:
    return torch.randn(
        n, SPEC.in_channels, SPEC.input_size, SPEC.input_size, generator=torch.Generator().manual_seed(seed)
    )


def assert_close(out: np.ndarray | torch.Tensor, ref: torch.Tensor) -> None:
    err = float((torch.as_tensor(out) - ref).abs().max())
    assert err <= 1e-5 * float(ref.abs().max()) + 1e-6, f"max abs error {err}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of a pruned model (with an aarch64 C project), shared by the tests that inspect its parts."""
    model, plan = pruned_model()
    with torch.no_grad():
        before = model(inputs(3, 1))
    out = tmp_path_factory.mktemp("bundle")
    bundle = export_model(model, plan, out, ExportConfig(targets=("aarch64",)), example_input=inputs(2, 0))
    return model, plan, bundle, before


def test_export_leaves_the_model_as_it_was(exported):
    model, _, _, before = exported
    assert weight_masks(model) and parametrize.is_parametrized(model.conv1, "weight")
    with torch.no_grad():
        assert torch.equal(model(inputs(3, 1)), before)


def test_weights_load_on_a_fresh_zoo_model(exported):
    model, plan, bundle, _ = exported
    x = inputs(3, 2)
    with torch.no_grad():
        ref = model(x)
        rebuilt, loaded_plan = load_pruned(bundle.weights)
        assert loaded_plan == plan == PruningPlan.load(bundle.plan)
        torch.testing.assert_close(rebuilt.eval()(x), ref, rtol=0, atol=0)
        state_dict = torch.load(bundle.weights, weights_only=True)["state_dict"]
        assert not any("parametrizations" in k for k in state_dict)  # masks are baked
        torch.testing.assert_close(build_pruned(PruningPlan.load(bundle.plan), state_dict).eval()(x), ref)
    assert weight_masks(rebuilt).keys() == weight_masks(model).keys()  # masks come back from the zeros


def test_onnx_matches_torch_at_another_batch_size(exported):
    model, _, bundle, _ = exported
    x = inputs(5, 3)
    session = ort.InferenceSession(str(bundle.onnx), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert out.shape == (5, SPEC.num_classes)
    assert np.abs(out - ref.numpy()).max() <= 1e-4 * max(float(ref.abs().max()), 1.0)
    # compact: the ONNX graph carries the pruned channel counts, not the zoo model's
    assert bundle.onnx.stat().st_size < 0.6 * 4 * sum(p.numel() for p in SPEC.build().parameters())


def test_engine_loads_without_a_compiler_and_matches(exported, monkeypatch):
    model, _, bundle, _ = exported

    def no_compiler(*args: object, **kwargs: object) -> None:
        raise AssertionError("CompiledModel.load called the C compiler")

    monkeypatch.setattr(engine_build, "build_shared_library", no_compiler)
    monkeypatch.setattr(engine_runtime, "build_shared_library", no_compiler)
    cm = CompiledModel.load(bundle.engine)
    assert cm.backend == "c" and any(layer.kernel.startswith("group4") for layer in cm.spec.layers)
    x = inputs(3, 4)
    with torch.no_grad():
        assert_close(cm(x), model(x))


def test_manifest_lists_every_file_with_size_and_sha256(exported):
    _, plan, bundle, _ = exported
    manifest = json.loads(bundle.manifest.read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    on_disk = {p.relative_to(bundle.out_dir).as_posix() for p in bundle.out_dir.rglob("*") if p.is_file()}
    assert set(listed) == on_disk - {MANIFEST_NAME}
    for path, f in listed.items():
        data = (bundle.out_dir / path).read_bytes()
        assert f["size_bytes"] == len(data) and f["sha256"] == hashlib.sha256(data).hexdigest(), path
    assert manifest["size_bytes"] == bundle.size_bytes == sum(f["size_bytes"] for f in listed.values())
    assert {"plan.json", "weights.pt", "model.onnx", "engine/model.so", "c/aarch64/model.c"} <= set(listed)
    assert manifest["input_shape"] == [1, 12, 12] and manifest["output_shape"] == [3]
    assert manifest["engine"]["isa"] == CompiledModel.load(bundle.engine).spec.isa
    summary = manifest["plan"]
    assert summary["kept_channels"] == sum(len(g.keep) for g in plan.groups) < summary["total_channels"]
    assert summary["schemes"] == ["group4"] and 0 < summary["nonzero_params"] < summary["params"]
    assert json.loads((bundle.c["aarch64"] / "model.json").read_text())["isa"] == "neon"


def tiny_loader(n: int = 32) -> BatchLoader:
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % SPEC.num_classes
    images = torch.randint(0, 40, (n, 1, 12, 12), generator=gen) + labels.view(-1, 1, 1, 1) * 100
    return BatchLoader(ImageData(images.to(torch.uint8), labels), (0.5,), (0.3,), 16, shuffle=True, seed=0)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory) -> Path:
    """A pruned model fine-tuned for one epoch by train_model, as `latprune finetune` writes it."""
    model, plan = pruned_model(seed=1)
    out = tmp_path_factory.mktemp("run")
    meta = {**checkpoint_meta(SPEC), "plan": plan.to_dict()}
    config = TrainConfig(epochs=1, batch_size=16, lr=0.01, seed=0, threads=1)
    train_model(model, tiny_loader(), config, out, meta=meta, show_progress=False)
    return out / "checkpoint.pt"


def test_cli_exports_a_trained_checkpoint(trained_checkpoint, tmp_path, capsys):
    out = tmp_path / "bundle"
    argv = ["export", "--checkpoint", str(trained_checkpoint), "--out", str(out), "--target", "aarch64"]
    assert main([*argv, "--threads", "2"]) == 0
    text = capsys.readouterr().out
    for part in ("model.onnx", "weights.pt", "engine/", "c/aarch64/", "total"):
        assert part in text
    model, ckpt = load_model_from_checkpoint(trained_checkpoint)
    again, again_ckpt = load_model_from_checkpoint(out / "weights.pt")  # the bundle's weights are a checkpoint too
    assert again_ckpt["epoch"] == ckpt["epoch"] == 1 and again_ckpt["plan"] == ckpt["plan"]
    x = inputs(2, 5)
    cm = CompiledModel.load(out / "engine")
    assert cm.threads == 2
    with torch.no_grad():
        ref = model(x)
        torch.testing.assert_close(again(x), ref)
        assert_close(cm(x), ref)
    assert main(["export", "--checkpoint", str(trained_checkpoint.parent), "--out", str(out), "--no-onnx"]) == 0
    files = {f["path"] for f in json.loads((out / MANIFEST_NAME).read_text())["files"]}
    assert "model.onnx" not in files and not any(f.startswith("c/") for f in files)


def test_dense_checkpoint_exports_without_a_plan(tmp_path):
    model = randomize_bn(SPEC.build(seed=2), torch.Generator().manual_seed(2))
    ckpt = {**checkpoint_meta(SPEC), "state_dict": model.state_dict(), "epoch": 0, "metrics": {}}
    torch.save(ckpt, tmp_path / "dense.pt")
    bundle = export_checkpoint(tmp_path / "dense.pt", tmp_path / "out", ExportConfig(onnx=False))
    assert bundle.plan is None and bundle.onnx is None and not (tmp_path / "out" / "plan.json").exists()
    fresh = SPEC.build()
    fresh.load_state_dict(torch.load(bundle.weights, weights_only=True)["state_dict"])
    x = inputs(2, 6)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x))
        assert_close(CompiledModel.load(bundle.engine)(x), model(x))
    assert json.loads(bundle.manifest.read_text())["plan"]["pruned"] is False


def test_missing_checkpoint_exits_2_with_one_sentence(tmp_path, capsys):
    missing = tmp_path / "nope.pt"
    assert main(["export", "--checkpoint", str(missing), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(missing) in err and "does not exist" in err
    assert not (tmp_path / "out" / MANIFEST_NAME).exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--out", "b", "--c", "c"], "not both or neither"),
        (["--model", "resnet20", "--out", "b"], "--checkpoint PATH"),
        (["--model", "resnet20", "--c", "c", "--target", "host", "--target", "aarch64"], "writes one C project"),
    ],
)
def test_cli_flag_mistakes_exit_2(argv, message, capsys):
    assert main(["export", *argv]) == 2
    assert message in capsys.readouterr().err


class Cumsum(nn.Module):
    """A conv followed by an op the engine has no kernel for."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).cumsum(1)


def test_bad_inputs_fail_with_one_sentence_and_leave_no_manifest(exported, tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(LatpruneError, match="is a file"):
        export_model(nn.Conv2d(1, 1, 1), None, a_file, example_input=torch.zeros(1, 1, 4, 4))
    with pytest.raises(LatpruneError, match=r"shape \(4, 4\)"):
        export_model(nn.Conv2d(1, 1, 1), None, tmp_path / "x", example_input=torch.zeros(4, 4))
    _, plan, _, _ = exported
    with pytest.raises(PlanError, match="output channels but the plan keeps"):
        export_model(SPEC.build(), plan, tmp_path / "x", example_input=inputs(1, 0))  # dense model, pruned plan
    with pytest.raises(EngineError, match="Unknown export target 'arm'"):
        ExportConfig(targets=("arm",))
    # a failed export over a finished one removes the old manifest first, so the folder reads as unfinished
    out = tmp_path / "bundle"
    out.mkdir()
    (out / MANIFEST_NAME).write_text("{}")
    with pytest.raises(EngineError, match="cumsum"):
        export_model(Cumsum(), None, out, example_input=torch.zeros(1, 1, 8, 8))
    assert not (out / MANIFEST_NAME).exists()
