"""Retraining a pruned model: masked fine-tuning, ADMM, GMP, distillation, exact resume, and `latprune finetune`."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from latprune.cli import build_parser, main
from latprune.data import BatchLoader
from latprune.errors import LatpruneError, PlanError
from latprune.models import ModelSpec
from latprune.prune import (
    LayerPlan,
    PATTERNS_3x3,
    PruningPlan,
    SchemeParams,
    apply_plan,
    get_scheme,
    make_mask,
    mask_sparsity,
    save_pruned,
    uniform_plan,
    weight_masks,
)
from latprune.train import (
    ADMMHook,
    DistillHook,
    FinetuneConfig,
    GMPHook,
    finetune,
    load_model_from_checkpoint,
)
from latprune.train.admm import project
from latprune.train.checkpoint import atomic_torch_save
from latprune.train.gmp import attach_dense_masks, gmp_fraction, gmp_sparsity

SPEC = ModelSpec("resnet20", num_classes=10, in_channels=1, input_size=28, width_mult=0.25)
DATA = {"name": "fashion-mnist", "val_per_class": 2, "split_seed": 0, "image_size": None}
CONFIG = FinetuneConfig(epochs=2, batch_size=64, lr=0.05, threads=1, admm_epochs=2, rho_init=0.01, gmp_frequency=1)
SCHEMES = ("group4", "block_punched", "pattern", "unstructured")


@pytest.fixture(scope="module")
def parent(tmp_path_factory, fake_fashion_mnist) -> Path:
    """A dense parent checkpoint shaped like `latprune train`'s, on a 160-image fake Fashion-MNIST (2 steps/epoch)."""
    root = tmp_path_factory.mktemp("finetune")
    fake_fashion_mnist(root / "data", n_train=120, n_test=40)
    model = SPEC.build(seed=0)
    path = root / "parent" / "checkpoint.pt"
    ckpt = {"model": SPEC.name, "model_kwargs": SPEC.kwargs(), "state_dict": model.state_dict(), "epoch": 1}
    atomic_torch_save(path, {**ckpt, "metrics": {}, "data": DATA})
    return path


@pytest.fixture(autouse=True)
def _data_env(parent, monkeypatch):
    monkeypatch.setenv("LATPRUNE_DATA", str(parent.parent.parent / "data"))


def make_plan(scheme: str = "group4", sparsity: float = 0.5, spec: ModelSpec = SPEC) -> PruningPlan:
    return uniform_plan(spec.build(seed=0), spec.input_size, spec.in_channels, 0.75, sparsity, scheme, model_spec=spec)


def sparse_layers(plan: PruningPlan) -> list[LayerPlan]:
    return [ly for ly in plan.layers if ly.sparsity > 0]


def check_structure(scheme: str, mask: torch.Tensor, params: SchemeParams) -> None:
    """The mask is made of the scheme's units only (as tests/test_prune_schemes.py checks the generators)."""
    m4 = mask if mask.dim() == 4 else mask[:, :, None, None]  # (out, in) -> (out, in, 1, 1)
    co, ci = m4.shape[:2]
    rows = {"group4": 4, "block_fc": params.block_rows, "block_punched": params.block_out}.get(scheme, 1)
    cols = params.block_in if scheme == "block_punched" else 1
    for o in range(0, co, rows):
        for i in range(0, ci, cols):
            block = m4[o : o + rows, i : i + cols]  # one unit per (kh, kw)
            assert (block == block[:1, :1]).all()
    if scheme == "pattern":
        patterns = {frozenset(p) for p in PATTERNS_3x3}
        for kernel in m4.reshape(co * ci, 9):  # (kernels, 9)
            kept = frozenset(torch.nonzero(kernel).flatten().tolist())
            assert len(kept) in (0, 9) or kept in patterns


def assert_plan_structure(model: nn.Module, plan: PruningPlan) -> None:
    """Every sparse layer's zeros are its mask's, the mask has the scheme's structure, and the plan's sparsity."""
    modules, masks = dict(model.named_modules()), weight_masks(model)
    assert set(masks) == {ly.name for ly in sparse_layers(plan)}
    for ly in sparse_layers(plan):
        weight, mask = modules[ly.name].weight.detach(), masks[ly.name]
        assert (weight[~mask] == 0).all(), ly.name
        check_structure(ly.scheme, mask, ly.params)
        unit = get_scheme(ly.scheme).unit(weight, ly.params)
        assert abs(mask_sparsity(mask) - ly.sparsity) <= unit / weight.numel() + 1e-9, ly.name


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def kill_at_calls(monkeypatch, kills: list[int]) -> None:
    """Raise KeyboardInterrupt at the ``kills``-th (1-based) starts of a training epoch, as Ctrl-C would."""
    original, calls = BatchLoader.set_epoch, [0]

    def set_epoch(self: BatchLoader, epoch: int) -> None:
        calls[0] += 1
        if calls[0] in kills:
            raise KeyboardInterrupt
        original(self, epoch)

    monkeypatch.setattr(BatchLoader, "set_epoch", set_epoch)


def test_masked_finetune_keeps_zeros_and_rebuilds(parent, tmp_path):
    plan = make_plan("group4")
    start = apply_plan(SPEC.build(seed=0), plan)  # the parent's weights are SPEC.build(seed=0)'s
    result = finetune(parent, plan, replace(CONFIG, epochs=1), tmp_path, show_progress=False)
    model, ckpt = load_model_from_checkpoint(result.checkpoint_path)
    assert_plan_structure(model, plan)
    start_masks = weight_masks(start)
    assert all(torch.equal(start_masks[k], m) for k, m in weight_masks(model).items())  # masks held
    assert not same_state(model.state_dict(), start.state_dict())  # and the kept weights trained
    assert ckpt["finetune"]["method"] == "masked" and PruningPlan.from_dict(ckpt["plan"]) == plan
    assert PruningPlan.load(tmp_path / "plan.json") == plan
    metrics = json.loads(result.metrics_path.read_text())
    assert metrics["finished"] and {"val_acc", "test_acc"} <= set(metrics["history"][0])


@pytest.mark.parametrize("scheme", SCHEMES)
def test_admm_projection_is_exact(scheme):
    g = torch.Generator().manual_seed(0)
    layer = LayerPlan("conv", scheme, 0.6)
    w = torch.randn(8, 8, 3, 3, generator=g)
    z = project(w, layer)
    keep = z != 0
    assert torch.equal(make_mask(scheme, z, 0.6), keep)  # Z has the scheme's structure at the sparsity
    assert torch.equal(project(z, layer), z)  # a projection: applying it twice changes nothing
    assert torch.equal(z[keep], w[keep])  # it keeps the chosen weights as they are
    assert abs(mask_sparsity(keep) - 0.6) < 0.1


def test_admm_pulls_weights_onto_the_sparse_set():
    """Toy problem: fit a dense target under the ADMM penalty; ‖W − Π(W)‖ shrinks as ρ grows."""
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, bias=False)
    target = torch.randn(8, 8, 3, 3, generator=g)
    with torch.no_grad():
        conv.weight.copy_(target)
    model = nn.Sequential(conv)
    hook = ADMMHook([LayerPlan("0", "group4", 0.5)], rho_init=0.05, rho_factor=2.0, rho_max=10.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    residuals = [hook.residual(model)]
    for epoch in range(8):
        hook.before_epoch(model, epoch)
        for _ in range(20):
            task = 0.5 * (conv.weight - target).pow(2).sum()
            loss = hook.loss(model, torch.empty(0), torch.empty(0), torch.empty(0), task)
            opt.zero_grad()
            loss.backward()
            opt.step()
        row = hook.after_epoch(model, epoch)
        residuals.append(hook.residual(model))
    assert residuals[-1] < 0.2 * residuals[0]
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(residuals[1:]))
    assert row["admm_rho"] == 0.05 * 2**7 and hook.rho == 10.0  # ×2 per epoch, capped
    restored = ADMMHook([LayerPlan("0", "group4", 0.5)])
    restored.load_state_dict(hook.state_dict())
    assert restored.rho == hook.rho and torch.equal(restored.u["0"], hook.u["0"])


def test_admm_finetune_ends_on_the_plan(parent, tmp_path):
    plan = make_plan("pattern", 0.6)
    result = finetune(
        parent, plan, replace(CONFIG, method="admm", epochs=1, admm_epochs=2), tmp_path, show_progress=False
    )
    admm_rows = json.loads((tmp_path / "admm" / "metrics.json").read_text())["history"]
    assert [r["admm_rho"] for r in admm_rows] == [0.01, 0.015]
    model, _ = load_model_from_checkpoint(result.checkpoint_path)
    assert_plan_structure(model, plan)


def test_gmp_schedule():
    assert gmp_fraction(0, 10, 110) == 0.0 and gmp_fraction(9, 10, 110) == 0.0
    assert gmp_fraction(10, 10, 110) == 0.0
    assert gmp_fraction(60, 10, 110) == pytest.approx(0.875)  # 1 − (1 − 1/2)³
    assert gmp_fraction(110, 10, 110) == 1.0 and gmp_fraction(500, 10, 110) == 1.0
    assert gmp_sparsity(0.8, 60, 10, 110) == pytest.approx(0.7)
    assert gmp_fraction(5, 5, 5) == 1.0  # an empty ramp prunes at once


@pytest.mark.parametrize("scheme", SCHEMES)
def test_gmp_masks_only_gain_zeros_and_end_exact(scheme):
    g = torch.Generator().manual_seed(0)
    conv = nn.Conv2d(8, 8, 3, bias=False)
    model = attach_dense_masks(nn.Sequential(conv), [LayerPlan("0", scheme, 0.7)])
    hook = GMPHook([LayerPlan("0", scheme, 0.7)], start_step=0, end_step=4, frequency=1)
    keep = torch.ones(8, 8, 3, 3, dtype=torch.bool)
    for step in range(5):
        with torch.no_grad():  # training moves the weights between updates
            conv.parametrizations.weight.original.add_(0.3 * torch.randn(8, 8, 3, 3, generator=g))
        hook.after_step(model, step)
        new = weight_masks(model)["0"]
        assert not (new & ~keep).any(), f"a pruned weight came back at step {step}"
        keep = new.clone()
    assert hook.fraction == 1.0
    assert torch.equal(keep, make_mask(scheme, conv.weight.detach(), 0.7))
    assert abs(mask_sparsity(keep) - 0.7) < 0.1


def test_gmp_reaches_the_plan_after_the_last_epoch_even_if_steps_ran_short():
    conv = nn.Conv2d(8, 8, 3, bias=False)
    model = attach_dense_masks(nn.Sequential(conv), [LayerPlan("0", "group4", 0.5)])
    hook = GMPHook([LayerPlan("0", "group4", 0.5)], start_step=0, end_step=1000, frequency=10, epochs=2)
    for step in range(10):
        hook.after_step(model, step)
    assert hook.after_epoch(model, 0)["gmp_fraction"] == pytest.approx(gmp_fraction(10, 0, 1000))
    assert hook.after_epoch(model, 1) == {"gmp_fraction": 1.0}
    assert mask_sparsity(weight_masks(model)["0"]) == pytest.approx(0.5, abs=4 / conv.weight.numel())


def test_gmp_finetune_reaches_the_plan(parent, tmp_path):
    plan = make_plan("unstructured", 0.6)
    result = finetune(parent, plan, replace(CONFIG, method="gmp", gmp_end=0.5), tmp_path, show_progress=False)
    assert [r["gmp_fraction"] for r in result.history] == [1.0, 1.0]  # 4 steps in all: full sparsity from step 2
    model, _ = load_model_from_checkpoint(result.checkpoint_path)
    assert_plan_structure(model, plan)
    for ly in sparse_layers(plan):  # unstructured removes exactly round(sparsity * numel) weights
        mask = weight_masks(model)[ly.name]
        assert int((~mask).sum()) == round(ly.sparsity * mask.numel()), ly.name


def test_distill_loss_is_ce_at_alpha_0_and_kl_at_alpha_1():
    g = torch.Generator().manual_seed(0)
    teacher = nn.Linear(6, 5)
    images, student = torch.randn(4, 6, generator=g), torch.randn(4, 5, generator=g)
    labels = torch.tensor([0, 1, 2, 3])
    ce = F.cross_entropy(student, labels)
    t = 3.0
    with torch.no_grad():
        p_teacher = F.softmax(teacher(images) / t, 1)
    kl = (p_teacher * (p_teacher.log() - F.log_softmax(student / t, 1))).sum(1).mean()
    model = nn.Identity()
    assert torch.allclose(DistillHook(teacher, t, 0.0).loss(model, images, student, labels, ce), ce)
    assert torch.allclose(DistillHook(teacher, t, 1.0).loss(model, images, student, labels, ce), t**2 * kl)
    mixed = DistillHook(teacher, t, 0.25).loss(model, images, student, labels, ce)
    assert torch.allclose(mixed, 0.75 * ce + 0.25 * t**2 * kl)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


@pytest.mark.parametrize(
    ("method", "kills"),
    # Each kill hits the start of a 2nd epoch; admm: of its ADMM phase, then (3 epoch starts later) of the retraining.
    [("masked", [2]), ("gmp", [2]), ("admm", [2, 5])],
)
def test_resume_after_a_kill_matches_an_uninterrupted_run(parent, tmp_path, monkeypatch, method, kills):
    plan = make_plan("group4")
    config = replace(CONFIG, method=method, distill=method == "masked", gmp_end=1.0)
    whole = finetune(parent, plan, config, tmp_path / "whole", show_progress=False)
    kill_at_calls(monkeypatch, kills)
    out = tmp_path / "killed"
    for _ in kills:
        with pytest.raises(KeyboardInterrupt):
            finetune(parent, plan, config, out, resume=True, show_progress=False)
    admm_ckpt = out / "admm" / "checkpoint.pt"
    admm_stamp = admm_ckpt.stat().st_mtime_ns if admm_ckpt.exists() else None
    resumed = finetune(parent, plan, config, out, resume=True, show_progress=False)
    if method == "admm":
        assert torch.load(admm_ckpt, weights_only=True)["epoch"] == config.admm_epochs
        assert admm_ckpt.stat().st_mtime_ns == admm_stamp  # the finished ADMM phase was not redone
    a = torch.load(whole.checkpoint_path, weights_only=True)
    b = torch.load(resumed.checkpoint_path, weights_only=True)
    assert same_state(a["state_dict"], b["state_dict"])
    assert [r["train_loss"] for r in whole.history] == [r["train_loss"] for r in resumed.history]
    model, _ = load_model_from_checkpoint(resumed.checkpoint_path)
    assert_plan_structure(model, plan)


def test_plan_for_another_model_is_one_sentence(parent, tmp_path):
    wider = replace(SPEC, width_mult=0.5)
    with pytest.raises(PlanError, match=r"^The plan was made for resnet20 \(10 classes, 1x28x28 input, width 0.5\)"):
        finetune(parent, make_plan(spec=wider), CONFIG, tmp_path, show_progress=False)
    anonymous = replace(make_plan(spec=wider), model=None)
    with pytest.raises(PlanError, match="The plan does not fit the model"):
        finetune(parent, anonymous, CONFIG, tmp_path, show_progress=False)
    assert not (tmp_path / "plan.json").exists()  # nothing written for a plan that does not fit
    plan = make_plan()
    shrunk = apply_plan(SPEC.build(seed=0), plan)
    pruned = save_pruned(tmp_path / "pruned.pt", shrunk, plan, {"epoch": 0, "metrics": {}})
    with pytest.raises(PlanError, match="is already pruned; pass the dense parent"):
        finetune(pruned, plan, CONFIG, tmp_path / "again", show_progress=False)


def test_config_rejects_bad_values():
    with pytest.raises(LatpruneError, match=r"method='sgd' is invalid; it must be one of masked, admm, gmp\.$"):
        FinetuneConfig(method="sgd")
    with pytest.raises(LatpruneError, match=r"gmp_end=0\.1 is invalid"):
        FinetuneConfig(gmp_start=0.2, gmp_end=0.1)
    with pytest.raises(LatpruneError, match=r"Training setting lr=0 is invalid"):
        FinetuneConfig(lr=0)
    assert FinetuneConfig.from_dict({**CONFIG.to_dict(), "future_key": 1}) == CONFIG


def test_cli_prune_then_finetune_then_eval(parent, tmp_path, capsys):
    plan_path, out = tmp_path / "plan.json", tmp_path / "ft"
    args = ["prune", "--model", "resnet20", "--width", "0.75", "--sparsity", "0.5", "--scheme", "block_punched"]
    assert main([*args, "--checkpoint", str(parent), "--out", str(plan_path)]) == 0
    args = ["finetune", "--plan", str(plan_path), "--checkpoint", str(parent), "--out", str(out), "--epochs", "1"]
    args += ["--batch-size", "64", "--threads", "1", "--distill", "--distill-alpha", "0.7"]
    assert main(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("masked fine-tuning done: val ") and "test " in last
    assert str(out / "checkpoint.pt") in last and str(out / "plan.json") in last
    assert main(["eval", "--checkpoint", str(out), "--split", "val", "test", "--threads", "1"]) == 0
    assert "test        40" in capsys.readouterr().out
    assert main(args) == 2  # the folder exists: one sentence asking for --resume
    assert "pass --resume" in capsys.readouterr().err
    other = tmp_path / "other.json"
    args_other = ["prune", "--model", "resnet20", "--width", "0.5", "--sparsity", "0.5", "--checkpoint", str(parent)]
    assert main([*args_other, "--out", str(other)]) == 0
    assert main([*args[:2], str(other), *args[3:], "--resume"]) == 2
    assert "holds a fine-tuning run of another plan" in capsys.readouterr().err
    assert PruningPlan.load(out / "plan.json") == PruningPlan.load(plan_path)  # left as it was
    assert main([*args, "--resume"]) == 0  # finished: nothing is redone
    assert json.loads((out / "metrics.json").read_text())["finetune"]["distill_alpha"] == 0.7


def test_every_finetune_flag_has_help():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for action in subparsers.choices["finetune"]._actions:
        if action.dest != "help":
            assert action.help and action.help.endswith((".", ")")), action.option_strings
