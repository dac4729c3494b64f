"""Helpers shared by several test modules (tests/ is on pytest's path, see pyproject.toml)."""

from __future__ import annotations

import json

import numpy as np
import torch
import torch.nn as nn

from latprune.schemes import SchemeParams, get_scheme, make_mask


def randomize_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Non-trivial BN statistics, so folding or loading errors show up (fresh BN is the identity)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
    return model.eval()


class WeightMask(nn.Module):
    """A fixed weight mask, attached as pruning attaches one (a parametrization holding a buffer)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask


def structured_mask(
    rng: np.random.Generator,
    scheme: str,
    shape: tuple[int, ...],
    sparsity: float,
    params: SchemeParams | None = None,
) -> np.ndarray:
    """A bool mask of ``shape`` as pruning makes it with ``scheme`` (by magnitude, on a random weight).

    Tests of the engine use it, so the structures they run are the registry's own, never a copy. A 1x1 weight
    of a matrix-vector scheme (block_fc) is masked as the linear weight it is; the sparsity is kept inside what the
    scheme accepts (at least its minimum, below 1).
    """
    w = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    spec = get_scheme(scheme)
    if spec.fc_only and w.dim() == 4:
        w = w.reshape(shape[0], shape[1])  # (out, in, 1, 1) -> (out, in)
    if spec.prunes:
        sparsity = min(max(sparsity, spec.min_sparsity), 0.99)
    return make_mask(scheme, w, sparsity, params or SchemeParams()).reshape(shape).numpy()


def tiny_parent(path, *, data: str = "fashion-mnist"):
    """An untrained resnet20 (width 0.25) checkpoint for 1x28x28 images with 10 classes, shaped as `latprune train`
    writes one (split settings included): commands that refuse a bad input before any work need no trained weights.
    """
    from latprune.models import ModelSpec
    from latprune.train.checkpoint import atomic_torch_save

    spec = ModelSpec("resnet20", num_classes=10, in_channels=1, input_size=28, width_mult=0.25)
    model = spec.build(seed=0)
    data_cfg = {"name": data, "val_per_class": 2, "split_seed": 0, "image_size": None}
    ckpt = {"model": spec.name, "model_kwargs": spec.kwargs(), "state_dict": model.state_dict(), "epoch": 1}
    return atomic_torch_save(path, {**ckpt, "metrics": {}, "data": data_cfg})


def cost_model_profile(checkpoint, path, threads: int = 1):
    """A latency profile of ``checkpoint``'s search space on this device whose tables come from a cost model, not
    timings (profiling itself is tested in test_latency*.py; here it would compile dozens of layers for nothing)."""
    from latprune.engine.fingerprint import current_fingerprint
    from latprune.latency.grid import GridConfig, plan_grids
    from latprune.latency.profile import AdditiveTerm, LatencyProfile, LatencyTable, save_profile
    from latprune.models import ModelSpec
    from latprune.space import SearchSpace
    from latprune.train import load_model_from_checkpoint

    model, ckpt = load_model_from_checkpoint(checkpoint)
    spec = ModelSpec.from_dict({"name": ckpt["model"], **ckpt["model_kwargs"]})
    space = SearchSpace.from_model(model, spec.input_size, spec.in_channels, scheme="group4")
    tables = []
    for sig, grid in plan_grids(space, GridConfig(n_channels=2, n_sparsity=2), np.random.default_rng(0)):
        ci, co, sp = np.meshgrid(grid.cin, grid.cout, grid.sparsity, indexing="ij")  # (I, J, K) each
        cost = 1e-4 * (co if grid.tied else ci * co / 8) * (1 - sp) + 1e-3  # ms, falls with width and sparsity
        tables.append(LatencyTable(sig, grid, cost.astype(np.float64)))
    prof = LatencyProfile(
        current_fingerprint(), threads, spec, "group4", tuple(tables), AdditiveTerm(0.01, 1.0), 2, 2, 0.0
    )
    return save_profile(prof, path)


class WorkStarted(AssertionError):
    """Raised where a command's real work begins, in tests that expect it to refuse its input before that."""


def refuse_work(monkeypatch) -> None:
    """Make every command's real work (training, timing, searching, compiling, exporting, the pipeline's stages)
    raise :class:`WorkStarted`, so a test fails at once, without doing the work, if a bad input is found late."""

    import importlib
    import pkgutil

    import latprune

    # Import every module first: one that binds e.g. `compile` at import time must bind the real one, not the stub.
    for module in pkgutil.walk_packages(latprune.__path__, "latprune."):
        if not module.name.endswith("__main__"):  # that one runs the CLI
            importlib.import_module(module.name)

    def started(*args, **kwargs):
        raise WorkStarted("the command started its work before refusing the bad input")

    for target in (
        "latprune.train.loop.train_one_epoch",  # train, finetune
        "latprune.train.run.evaluate",  # eval
        "latprune.latency.measure.measure_table",  # profile, measure
        "latprune.cli._latency.validate_latency",
        "latprune.pipeline._search_inputs.SupernetEstimator",  # search, after every input is checked
        "latprune.supernet._validate.load_splits",  # validate-accuracy
        "latprune.bench.model.compile",  # bench
        "latprune.engine.compile",  # compile
        "latprune.export._write_weights",  # export --out
        "latprune.engine.export.capture",  # export --c
        "latprune.prune.run.uniform_plan",  # prune
        "latprune.prune.run.apply_plan",  # prune --apply
        "latprune.replace._timed",  # replace
        "latprune.pipeline._stages._baseline",  # run, demo: the parent's ~25 s evaluation comes first
    ):
        monkeypatch.setattr(target, started)


def bad_input_files(root, fake_fashion_mnist) -> dict:
    """Good and bad inputs for every command, by name: a tiny parent, its profile and plan, a pruned checkpoint,
    plans with a bad field, corrupt, truncated, empty and hostile files; ``data`` is for $LATPRUNE_DATA."""
    import os
    import pickle

    from latprune.prune.run import UniformPlanConfig, make_uniform_plan, prune_checkpoint
    from latprune.train.checkpoint import atomic_torch_save, load_checkpoint

    root.mkdir(parents=True, exist_ok=True)
    f = {"data": fake_fashion_mnist(root / "data", n_train=60, n_test=20), "root": root}
    f["parent"] = tiny_parent(root / "parent.pt")
    f["profile"] = cost_model_profile(f["parent"], root / "profile.json")
    f["profile_two_threads"] = cost_model_profile(f["parent"], root / "profile_two_threads.json", threads=2)
    f["plan"] = make_uniform_plan(
        UniformPlanConfig("resnet20", 0.5, 0.5, checkpoint=str(f["parent"])), root / "plan.json"
    )[1]
    f["pruned"] = prune_checkpoint(f["plan"], f["parent"], root / "pruned").checkpoint
    plan = json.loads(f["plan"].read_text())
    null_sparsity = json.loads(json.dumps(plan))
    null_sparsity["layers"][0]["sparsity"] = None
    texts = {
        "plan_list": json.dumps([plan]),
        "plan_null_sparsity": json.dumps(null_sparsity),
        "plan_no_groups": json.dumps({k: v for k, v in plan.items() if k != "groups"}),
        "corrupt_json": '{"version": 1, "layers": [',
        "empty": "",
        "a_file": "not a folder\n",
    }
    for name, text in texts.items():
        f[name] = root / f"{name}.json"
        f[name].write_text(text)
    ckpt = load_checkpoint(f["parent"])
    f["big"] = atomic_torch_save(
        root / "big.pt", {**ckpt, "model_kwargs": {**ckpt["model_kwargs"], "input_size": "big"}}
    )
    f["corrupt_pt"] = root / "corrupt.pt"
    f["corrupt_pt"].write_bytes(f["parent"].read_bytes()[:2000])
    f["marker"] = root / "pwned"
    f["evil_pt"] = root / "evil.pt"
    f["evil_pt"].write_bytes(pickle.dumps({"model": _Payload(f["marker"])}))
    os.makedirs(root / "empty_dir", exist_ok=True)
    f["empty_dir"] = root / "empty_dir"
    f["fifo"] = root / "fifo.json"
    os.mkfifo(f["fifo"])  # reading it would block forever
    return f


class _Payload:
    """Unpickling this runs ``touch MARKER`` (a crafted checkpoint's payload)."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def refused(capsys, argv: list) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr and no traceback. Returns that line."""
    from latprune.cli import main

    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]
