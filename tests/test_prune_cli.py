"""`latprune prune`: write a plan, apply it to a checkpoint, and the pruned model loads, trains and compiles."""

from __future__ import annotations

import pytest
import torch

from latprune.cli import main
from latprune.prune import ModelSpec, PruningPlan, bake_masks, list_schemes, load_pruned, weight_masks
from latprune.train.checkpoint import atomic_torch_save

SPEC = ModelSpec("resnet20", num_classes=10, in_channels=1, input_size=28, width_mult=0.5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A checkpoint shaped like the training code's (model, model_kwargs, state_dict, epoch, metrics)."""
    model = SPEC.build()
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    ckpt = {"model": SPEC.name, "model_kwargs": SPEC.kwargs(), "state_dict": model.state_dict(), "epoch": 3}
    atomic_torch_save(path, {**ckpt, "metrics": {}, "data": {"dataset": "fashion-mnist"}})
    return path


def test_done_when_command_writes_a_plan(tmp_path, capsys):
    out = tmp_path / "plan.json"
    args = ["prune", "--model", "mobilenet_v2", "--width", "0.75", "--sparsity", "0.8", "--scheme", "group4"]
    assert main([*args, "--out", str(out)]) == 0
    plan = PruningPlan.load(out)
    assert plan.model == ModelSpec("mobilenet_v2", 1000, 3, 224, 1.0)
    assert max(ly.sparsity for ly in plan.layers) == 0.8
    assert any(len(g.keep) < g.channels for g in plan.groups)
    assert f"wrote {out}" in capsys.readouterr().out


@pytest.mark.parametrize("scheme", list_schemes())
def test_plan_then_apply_every_scheme(scheme, checkpoint, tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    sparsity = "0.0" if scheme == "dense" else "0.6"
    args = ["prune", "--model", "resnet20", "--width", "0.6", "--sparsity", sparsity, "--scheme", scheme]
    assert main([*args, "--checkpoint", str(checkpoint), "--out", str(plan_path)]) == 0
    out_dir = tmp_path / "pruned"
    assert main(["prune", "--apply", str(plan_path), "--checkpoint", str(checkpoint), "--out", str(out_dir)]) == 0
    text = capsys.readouterr().out
    assert "parameters:" in text and "layers.0.0.conv1" in text
    model, plan = load_pruned(out_dir / "checkpoint.pt")
    assert plan == PruningPlan.load(out_dir / "plan.json")
    assert bool(weight_masks(model)) == (scheme != "dense")
    x = torch.randn(2, 1, 28, 28)
    # trains: one step keeps the masked zeros and changes the output
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
    loss.backward()
    opt.step()
    modules = dict(model.named_modules())
    for name, mask in weight_masks(model).items():
        assert (modules[name].weight[~mask] == 0).all()


def test_pruned_model_compiles_with_the_engine(checkpoint, tmp_path):
    from latprune.engine.runtime import compile as engine_compile

    plan_path = tmp_path / "plan.json"
    args = ["prune", "--model", "resnet20", "--width", "0.75", "--sparsity", "0.7", "--scheme", "group4"]
    assert main([*args, "--checkpoint", str(checkpoint), "--out", str(plan_path)]) == 0
    assert main(["prune", "--apply", str(plan_path), "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 0
    model, plan = load_pruned(tmp_path / "checkpoint.pt")
    model = bake_masks(model).eval()
    x = torch.randn(1, 1, 28, 28)
    compiled = engine_compile(model, x, schemes=plan.layer_schemes())
    assert any(c.kernel.startswith("group4") for c in compiled.spec.layers)
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(compiled(x)), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "resnet20", "--width", "0", "--sparsity", "0.5"], "width 0.0 leaves no channel"),
        (["--model", "resnet20", "--width", "0.5", "--sparsity", "1.0"], "sparsity 1.0 is outside"),
        (["--model", "resnet20", "--width", "0.5"], "needs --model, --width and --sparsity"),
        (["--apply", "plan.json"], "needs --checkpoint"),
        (["--model", "resnet20", "--width", "0.5", "--sparsity", "0.5", "--scheme", "dense"], "dense scheme zeroes no"),
        (["--model", "resnet20", "--width", "0.5", "--sparsity", "0.3", "--scheme", "nm24"], "2:4 needs at least"),
    ],
)
def test_bad_flags_give_one_sentence(argv, message, tmp_path, capsys):
    assert main(["prune", *argv, "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_plan_for_another_model_is_refused(checkpoint, tmp_path, capsys):
    plan_path = tmp_path / "plan.json"
    args = ["prune", "--model", "resnet20", "--width", "0.5", "--sparsity", "0.5", "--input-size", "32"]
    assert main([*args, "--out", str(plan_path)]) == 0
    assert main(["prune", "--apply", str(plan_path), "--checkpoint", str(checkpoint), "--out", str(tmp_path)]) == 2
    assert "plan was made for" in capsys.readouterr().err


def test_run_folders_are_accepted_and_data_carries_over(checkpoint, tmp_path):
    plan_path = tmp_path / "plan.json"
    args = ["prune", "--model", "resnet20", "--width", "0.5", "--sparsity", "0.5"]
    assert main([*args, "--checkpoint", str(checkpoint.parent), "--out", str(plan_path)]) == 0
    out = tmp_path / "run"
    assert main(["prune", "--apply", str(plan_path), "--checkpoint", str(checkpoint.parent), "--out", str(out)]) == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["data"] == {"dataset": "fashion-mnist"} and ckpt["model_kwargs"] == SPEC.kwargs()
    model, _ = load_pruned(out)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 10)
