"""The training loop on tiny models: learning, exact resume, checkpoints, schedules, masks, and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from torch.nn.utils import parametrize

from latprune.cli import build_parser, main
from latprune.data import Augment, BatchLoader, ImageData
from latprune.errors import LatpruneError, ModelError
from latprune.train import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    ModelSpec,
    TrainConfig,
    checkpoint_meta,
    evaluate,
    load_model_from_checkpoint,
    lr_factor,
    train_baseline,
    train_model,
)

from helpers import WeightMask

SPEC = ModelSpec("resnet20", num_classes=3, in_channels=1, input_size=12, width_mult=0.25)
CONFIG = TrainConfig(epochs=3, batch_size=32, lr=0.05, seed=0, threads=1)


def tiny_data(n: int = 96, seed: int = 0) -> ImageData:
    """Images whose class sets their brightness, so a few epochs separate them."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 40, (n, 1, 12, 12), generator=g) + labels.view(-1, 1, 1, 1) * 100
    return ImageData(images.to(torch.uint8), labels)


def loader(data: ImageData, train: bool = True, seed: int = 0) -> BatchLoader:
    augment = Augment(2, True) if train else None
    return BatchLoader(data, (0.5,), (0.3,), 32, shuffle=train, augment=augment, seed=seed)


class InterruptAt(BatchLoader):
    """A loader that raises KeyboardInterrupt when asked to start ``stop_epoch``, as a Ctrl-C would."""

    stop_epoch = 2

    def set_epoch(self, epoch: int) -> None:
        if epoch == self.stop_epoch:
            raise KeyboardInterrupt
        super().set_epoch(epoch)


def run(out: Path, config: TrainConfig = CONFIG, *, resume: bool = False, model: nn.Module | None = None):
    model = model if model is not None else SPEC.build(seed=config.seed)
    data = tiny_data()
    result = train_model(
        model,
        loader(data, seed=config.seed),
        config,
        out,
        eval_data={"val": loader(tiny_data(30, seed=1), train=False)},
        meta=checkpoint_meta(SPEC),
        resume=resume,
        show_progress=False,
    )
    return model, result


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_training_learns_and_writes_files(tmp_path):
    _, result = run(tmp_path / "a")
    history = result.history
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.6  # chance is 1/3
    metrics = json.loads((tmp_path / "a" / METRICS_NAME).read_text())
    assert metrics["finished"] is True and metrics["model"] == "resnet20" and len(metrics["history"]) == 3
    ckpt = torch.load(tmp_path / "a" / CHECKPOINT_NAME, weights_only=True)
    for key in ("model", "model_kwargs", "state_dict", "epoch", "metrics", "optimizer", "scheduler", "config", "rng"):
        assert key in ckpt
    assert ckpt["epoch"] == 3 and ckpt["model_kwargs"] == SPEC.kwargs()
    assert ckpt["metrics"]["val_acc"] == history[-1]["val_acc"]


def test_resume_continues_exactly(tmp_path):
    """An interrupted run resumed from its checkpoint ends bit-identical to an uninterrupted one."""
    straight, full = run(tmp_path / "straight")
    data = tiny_data()
    interrupted = InterruptAt(data, (0.5,), (0.3,), 32, shuffle=True, augment=Augment(2, True), seed=0)
    with pytest.raises(KeyboardInterrupt):
        train_model(
            SPEC.build(seed=0), interrupted, CONFIG, tmp_path / "b", meta=checkpoint_meta(SPEC), show_progress=False
        )
    assert torch.load(tmp_path / "b" / CHECKPOINT_NAME, weights_only=True)["epoch"] == 2
    # A differently initialised model proves the weights come from the checkpoint, not from the seed.
    resumed, result = run(tmp_path / "b", resume=True, model=SPEC.build(seed=123))
    assert same_weights(straight, resumed)
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in full.history]


def test_seed_makes_runs_reproducible(tmp_path):
    a, _ = run(tmp_path / "a", replace(CONFIG, epochs=1))
    b, _ = run(tmp_path / "b", replace(CONFIG, epochs=1))
    c, _ = run(tmp_path / "c", replace(CONFIG, epochs=1, seed=1))
    assert same_weights(a, b) and not same_weights(a, c)


def test_existing_run_needs_resume_and_same_settings(tmp_path):
    run(tmp_path / "a", replace(CONFIG, epochs=1))
    with pytest.raises(LatpruneError, match="already holds a checkpoint; pass --resume"):
        run(tmp_path / "a", replace(CONFIG, epochs=1))
    with pytest.raises(LatpruneError, match=r"trained with lr=0\.05, not 0\.1"):
        run(tmp_path / "a", replace(CONFIG, epochs=1, lr=0.1), resume=True)
    # Finished runs resume to a no-op that still reports their history.
    _, result = run(tmp_path / "a", replace(CONFIG, epochs=1, eval_batch_size=7), resume=True)
    assert len(result.history) == 1


def test_load_model_from_checkpoint(tmp_path):
    model, _ = run(tmp_path / "a", replace(CONFIG, epochs=1))
    loaded, ckpt = load_model_from_checkpoint(tmp_path / "a")  # a run folder works as well as the file
    assert not loaded.training and ckpt["model"] == "resnet20"
    x = torch.randn(4, 1, 12, 12)
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), loaded(x), atol=1e-6)
    torch.save({"state_dict": {}}, tmp_path / "bare.pt")
    with pytest.raises(ModelError, match=r"bare\.pt' lacks model, model_kwargs"):
        load_model_from_checkpoint(tmp_path / "bare.pt")
    with pytest.raises(LatpruneError, match="does not exist"):
        load_model_from_checkpoint(tmp_path / "missing.pt")


def test_evaluate_restores_mode_and_counts():
    model = SPEC.build(seed=0).train()
    loss, acc = evaluate(model, loader(tiny_data(30), train=False))
    assert model.training and 0.0 <= acc <= 1.0 and loss > 0
    assert acc in {k / 30 for k in range(31)}


def test_masked_weights_stay_zero(tmp_path):
    """A model carrying a parametrized weight mask (as pruning will) trains with its zeros held."""
    model = SPEC.build(seed=0)
    conv = (
        model.layer1[0].conv1
        if hasattr(model, "layer1")
        else next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    )
    mask = (torch.rand(conv.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    parametrize.register_parametrization(conv, "weight", WeightMask(mask))
    _, result = run(tmp_path / "m", replace(CONFIG, epochs=1), model=model)
    assert torch.all(conv.weight[mask == 0] == 0) and conv.weight.abs().sum() > 0
    state = torch.load(result.checkpoint_path, weights_only=True)["state_dict"]
    assert any(k.endswith("parametrizations.weight.original") for k in state)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_lr_schedules(schedule):
    config = TrainConfig(epochs=10, schedule=schedule, warmup_epochs=1.0)
    f = lr_factor(config, steps_per_epoch=10)
    values = [f(s) for s in range(100)]
    peak = max(range(100), key=values.__getitem__)
    assert values[0] < 0.2 and values[peak] == pytest.approx(1.0, abs=0.02) and 8 <= peak <= 10
    assert values[-1] < 0.01 and all(a >= b for a, b in zip(values[peak:], values[peak + 1 :], strict=False))
    no_warm = lr_factor(TrainConfig(epochs=2), 5)
    assert no_warm(0) == 1.0


def test_config_rejects_bad_values():
    with pytest.raises(LatpruneError, match="schedule='step' is invalid"):
        TrainConfig(schedule="step")
    with pytest.raises(LatpruneError, match="warmup_epochs=5 is invalid"):
        TrainConfig(epochs=5, warmup_epochs=5)
    with pytest.raises(LatpruneError, match="lr=0 is invalid"):
        TrainConfig(lr=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_without_gpu_is_one_sentence():
    with pytest.raises(LatpruneError, match="--device cuda was asked for"):
        TrainConfig(device="cuda").resolve_device()


def test_unknown_baseline_preset():
    with pytest.raises(LatpruneError, match="Unknown baseline preset 'huge'"):
        train_baseline("huge")


def test_cli_train_then_eval(tmp_path, monkeypatch, capsys, fake_fashion_mnist):
    fake_fashion_mnist(tmp_path / "data", n_train=40, n_test=20)
    monkeypatch.setenv("LATPRUNE_DATA", str(tmp_path / "data"))
    out = tmp_path / "runs" / "cli"
    args = ["train", "--data", "fashion-mnist", "--epochs", "1", "--out", str(out), "--width-mult", "0.25"]
    args += ["--batch-size", "16", "--val-per-class", "1", "--threads", "1", "--lr", "0.05"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "checkpoint:" in printed and str(out / CHECKPOINT_NAME) in printed
    assert main(["eval", "--checkpoint", str(out), "--split", "val", "test", "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "fashion-mnist    val         10" in table and "test        20" in table
    assert main(args) == 2  # exists without --resume: one sentence, exit status 2
    assert "pass --resume" in capsys.readouterr().err


def test_train_baseline_preset_runs_and_resumes(tmp_path, monkeypatch, capsys, fake_fashion_mnist):
    """train_baseline trains a preset, prints a table and the paths, and a rerun resumes."""
    import latprune.train.baseline as baseline_mod
    from latprune.data import DataConfig

    fake_fashion_mnist(tmp_path / "data", n_train=30, n_test=10)
    monkeypatch.setenv("LATPRUNE_DATA", str(tmp_path / "data"))
    tiny = baseline_mod.BaselinePreset(
        "resnet20", DataConfig("fashion-mnist", val_per_class=1), replace(CONFIG, epochs=1), tmp_path / "demo"
    )
    monkeypatch.setitem(baseline_mod.BASELINE_PRESETS, "tiny", tiny)
    result = train_baseline("tiny", threads=1)
    printed = capsys.readouterr().out
    assert result.checkpoint_path == tmp_path / "demo" / CHECKPOINT_NAME and result.checkpoint_path.is_file()
    assert "epoch" in printed and "test" in printed and f"metrics:    {result.metrics_path}" in printed
    again = train_baseline("tiny", threads=1, show_progress=False)
    assert again.history == result.history


def test_every_train_flag_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in ("train", "eval"):
        for action in subparsers.choices[name]._actions:
            if action.dest != "help":
                assert action.help and action.help.endswith((".", ")")), f"{name} {action.option_strings}"


def test_pruned_checkpoint_loads_for_eval(tmp_path):
    from latprune.models import ModelSpec
    from latprune.prune import apply_plan, save_pruned, uniform_plan
    from latprune.train import load_model_from_checkpoint

    spec = ModelSpec("resnet20", 10, 1, 16, 0.5)
    model = spec.build(seed=0).eval()
    plan = uniform_plan(model, 16, 1, 0.6, 0.5, model_spec=spec)
    apply_plan(model, plan)
    path = save_pruned(tmp_path / "pruned.pt", model, plan, extra={"epoch": 0, "metrics": {}})
    loaded, ckpt = load_model_from_checkpoint(path)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.allclose(loaded(x), model(x), atol=1e-5)
    assert "plan" in ckpt
