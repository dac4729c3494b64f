"""Distributed training: 2 gloo processes on the CPU reproduce a 1-process run, and only rank 0 writes files."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
import torch.nn as nn
from torch.nn.utils import parametrize

import latprune.train.loop as loop
from latprune.data import Augment, BatchLoader, DatasetInfo, ImageData, make_loader
from latprune.errors import DataError, LatpruneError
from latprune.space import SearchSpace, SpaceBounds
from latprune.supernet import SupernetConfig, SupernetData, SupernetEstimator
from latprune.train import TrainConfig, TrainHook, train_model
from latprune.train.distributed import (
    DistEnv,
    average_gradients,
    close_distributed,
    current_env,
    dist_env,
    init_distributed,
)

from helpers import WeightMask

WORLD = 2
CONFIG = TrainConfig(epochs=2, batch_size=16, lr=0.05, weight_decay=5e-4, seed=0, threads=1)
JOIN_TIMEOUT_S = 60.0  # a hung collective fails the test instead of the CI job


def tiny_data(n: int = 64, seed: int = 0) -> ImageData:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    images = torch.randint(0, 60, (n, 1, 6, 6), generator=g) + labels.view(-1, 1, 1, 1) * 60
    return ImageData(images.to(torch.uint8), labels)


def tiny_model() -> nn.Module:
    """No BatchNorm (per-rank batch statistics are the one thing DDP does not make equal to one big batch), and a
    masked first layer, as masked fine-tuning trains."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))
    mask = (torch.arange(model[0].weight.numel()) % 3 != 0).float().view_as(model[0].weight)
    parametrize.register_parametrization(model[0], "weight", WeightMask(mask))
    return model


def train_loader(batch_size: int = 16) -> BatchLoader:
    return BatchLoader(tiny_data(), (0.5,), (0.3,), batch_size, shuffle=True, augment=Augment(1, True), seed=3)


def eval_loader() -> BatchLoader:
    return BatchLoader(tiny_data(24, seed=1), (0.5,), (0.3,), 10)


class StopBefore(TrainHook):
    """Raises before epoch ``epoch`` starts, on every rank, as a killed job would stop; records the batch sizes."""

    def __init__(self, epoch: int | None) -> None:
        self.epoch = epoch
        self.batch_sizes: set[int] = set()

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        if epoch == self.epoch:
            raise KeyboardInterrupt

    def loss(
        self, model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        assert not isinstance(model, nn.parallel.DistributedDataParallel)  # hooks see the bare model
        self.batch_sizes.add(images.shape[0])
        return loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, port: int, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    try:
        fn(rank, *args)
    finally:
        close_distributed()


def launch(fn: Callable[..., None], *args: Any) -> None:
    """Run ``fn(rank, *args)`` in WORLD forked processes as torchrun would; fail (never hang) on error or timeout."""
    ctx = mp.start_processes(_entry, args=(_free_port(), fn, args), nprocs=WORLD, join=False, start_method="fork")
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} training processes did not finish within {JOIN_TIMEOUT_S:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()


def _train_worker(rank: int, out: Path, results: Path) -> None:
    writes: list[str] = []
    if rank != 0:  # count what rank 1 would write: it must be nothing
        for name in ("atomic_torch_save", "atomic_write_json"):
            real = getattr(loop, name)

            def counted(path: Any, obj: Any, real: Callable[..., Any] = real) -> Any:
                writes.append(str(path))
                return real(path, obj)

            setattr(loop, name, counted)
    with pytest.raises(KeyboardInterrupt):  # killed before the second epoch ...
        train_model(tiny_model(), train_loader(), CONFIG, out, eval_data={"val": eval_loader()},
                    hooks=[StopBefore(1)], show_progress=False)  # fmt: skip
    model, hook = tiny_model(), StopBefore(None)  # ... and resumed on every rank from rank 0's checkpoint
    result = train_model(model, train_loader(), CONFIG, out, eval_data={"val": eval_loader()},
                         hooks=[hook], resume=True, show_progress=False)  # fmt: skip
    record = {"state": model.state_dict(), "history": result.history, "writes": writes, "batch": hook.batch_sizes}
    torch.save(record | {"env": current_env()}, results / f"rank{rank}.pt")


def test_two_processes_match_one_and_only_rank0_writes(tmp_path):
    reference = tiny_model()
    single = train_model(
        reference, train_loader(), CONFIG, tmp_path / "single", eval_data={"val": eval_loader()}, show_progress=False
    )
    launch(_train_worker, tmp_path / "ddp", tmp_path)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    assert [r["env"] for r in ranks] == [DistEnv(r, WORLD, r, "gloo") for r in range(WORLD)]
    assert ranks[0]["batch"] == ranks[1]["batch"] == {8}  # each rank takes half of the global batch of 16
    assert ranks[1]["writes"] == []  # rank 1 wrote nothing; rank 0 wrote the run folder
    assert (tmp_path / "ddp" / loop.CHECKPOINT_NAME).exists() and (tmp_path / "ddp" / loop.METRICS_NAME).exists()
    for key, value in reference.state_dict().items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key])  # DDP keeps the ranks identical
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-5, atol=1e-6)  # and equal to 1 process
    state = ranks[0]["state"]
    weight = state["0.parametrizations.weight.original"] * state["0.parametrizations.weight.0.mask"]
    assert torch.all(weight.flatten()[::3] == 0) and weight.abs().sum() > 0  # the mask held under DDP
    saved = torch.load(tmp_path / "ddp" / loop.CHECKPOINT_NAME, weights_only=True)
    assert all(torch.equal(saved["state_dict"][k], v) for k, v in ranks[0]["state"].items())
    for r in ranks:  # every rank reports the global metrics, as the single process did
        assert len(r["history"]) == CONFIG.epochs
        for got, want in zip(r["history"], single.history, strict=True):
            assert got["train_acc"] == want["train_acc"] and got["val_acc"] == want["val_acc"]
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-5)


def test_sharded_loader_steps_hold_the_single_process_batches():
    whole, shards = train_loader(), [train_loader().sharded(r, WORLD) for r in range(WORLD)]
    for ld in (whole, *shards):
        ld.set_epoch(1)
    assert len(whole) == len(shards[0]) == len(shards[1]) == 4 and shards[0].batch_size == 8
    for (x, y), (x0, y0), (x1, y1) in zip(whole, *shards, strict=True):
        torch.testing.assert_close(x[0::2], x0)  # same images, same crop and flip draws
        torch.testing.assert_close(x[1::2], x1)
        assert torch.equal(y[0::2], y0) and torch.equal(y[1::2], y1)
    with pytest.raises(DataError, match="batch size 15 does not split evenly over 2 processes"):
        train_loader(15).sharded(0, WORLD)


def test_make_loader_follows_torchrun_env(monkeypatch):
    info = DatasetInfo("tiny", 4, 1, 6, (0.5,), (0.3,), Augment(1, True))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    train, val = make_loader(tiny_data(), info, 16, train=True), make_loader(tiny_data(), info, 16, train=False)
    assert (train.rank, train.world_size, train.batch_size) == (1, 2, 8)
    assert (val.rank, val.world_size, val.batch_size) == (0, 1, 16)  # every rank evaluates the whole split
    assert dist_env() == DistEnv(1, 2, 1, None)
    assert current_env() == DistEnv()  # no process group was started: the loop runs as one process


def test_dist_env_without_torchrun_is_one_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    env = dist_env()
    assert env == DistEnv(0, 1, 0, None) and env.is_main and not env.is_distributed
    model = nn.Linear(2, 2)
    model(torch.ones(1, 2)).sum().backward()
    before = model.weight.grad.clone()
    average_gradients(model, env)  # a single process leaves gradients alone
    assert torch.equal(model.weight.grad, before)


# ---------------------------------------------------------------- the super-net estimator over 2 processes

SUPERNET = SupernetConfig(
    channel_epochs=1, weight_epochs=1, classes=None, train_per_class=None, val_per_class=None, batch_size=16,
    lr=0.02, bn_images=16, eval_batch_size=32,
)  # fmt: skip


def supernet_inputs() -> tuple[nn.Module, SearchSpace, SupernetData, np.ndarray]:
    """A BN-free parent (so 2 processes can match 1 exactly), its space, quadrant data and 3 candidates."""
    torch.manual_seed(0)
    parent = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    ).eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(16)
    images = torch.randint(0, 90, (len(labels), 1, 8, 8), generator=g)
    for c in range(4):
        images[labels == c, :, (c // 2) * 4 : (c // 2) * 4 + 4, (c % 2) * 4 : (c % 2) * 4 + 4] += 150
    data = ImageData(images.to(torch.uint8), labels)
    val = torch.arange(len(labels)) % 4 == 0
    info = DatasetInfo("quadrants", 4, 1, 8, (0.3,), (0.3,), Augment(1, True))
    split = SupernetData(data.subset(torch.nonzero(~val).flatten()), data.subset(torch.nonzero(val).flatten()), info)
    space = SearchSpace.from_model(parent, 8, 1, scheme="group4", bounds=SpaceBounds(0.1, 0.1, 0.1, 0.9, 0.9, 0.9))
    X = np.stack([np.clip(np.full(space.n_var, v), space.xl, space.xu) for v in (0, 3, 9)])  # (3, n_var)
    return parent, space, split, X


def _supernet_worker(rank: int, results: Path) -> None:
    parent, space, data, X = supernet_inputs()
    est = SupernetEstimator(parent, space, data, SUPERNET, seed=5, progress=False)
    sizes: set[int] = set()
    forward = est.supernet.forward

    def recorded(x: torch.Tensor, masks: Any) -> torch.Tensor:
        sizes.add(x.shape[0])
        return forward(x, masks)

    est.supernet.forward = recorded  # type: ignore[method-assign]
    errors = est.evaluate(X)
    torch.save({"errors": errors, "state": est.model.state_dict(), "sizes": sizes}, results / f"supernet{rank}.pt")


def test_supernet_over_two_processes_matches_one(tmp_path):
    parent, space, data, X = supernet_inputs()
    single = SupernetEstimator(parent, space, data, SUPERNET, seed=5, progress=False)
    errors = single.evaluate(X)
    launch(_supernet_worker, tmp_path)
    ranks = [torch.load(tmp_path / f"supernet{r}.pt", weights_only=False) for r in range(WORLD)]
    for r in ranks:  # every rank returns every candidate's error (each scored on one rank), as one process does
        np.testing.assert_array_equal(r["errors"], errors)
        assert r["sizes"] == {8}  # and trains on half of each global batch of 16
    for key, value in single.model.state_dict().items():
        assert torch.equal(ranks[0]["state"][key], ranks[1]["state"][key])
        torch.testing.assert_close(ranks[0]["state"][key], value, rtol=1e-5, atol=1e-6)
    assert not torch.equal(single.model.state_dict()["0.weight"], parent.state_dict()["0.weight"])  # it trained


def _average_worker(rank: int, results: Path) -> None:
    torch.distributed.init_process_group("gloo")
    env = current_env()
    a, b, c = (nn.Parameter(torch.zeros(3)) for _ in range(3))
    a.grad = torch.full((3,), float(rank + 1))  # ranks 1 and 2: mean 1.5
    b.grad = torch.full((3,), 4.0) if rank == 1 else None  # only rank 1: mean 2 (None counts as zero)
    average_gradients([a, b, c], env)  # c has no gradient anywhere: stays None, so SGD skips it
    torch.save({"a": a.grad, "b": b.grad, "c": c.grad}, results / f"avg{rank}.pt")


def test_average_gradients_treats_missing_as_zero(tmp_path):
    launch(_average_worker, tmp_path)
    for r in range(WORLD):
        got = torch.load(tmp_path / f"avg{r}.pt")
        assert torch.equal(got["a"], torch.full((3,), 1.5)) and torch.equal(got["b"], torch.full((3,), 2.0))
        assert got["c"] is None


def test_unreachable_process_group_is_one_sentence(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(LatpruneError, match="Could not start the gloo process group for rank 0 of 2") as err:
        init_distributed("cpu")
    assert "\n" not in str(err.value) and "unset WORLD_SIZE" in str(err.value)
    assert current_env() == DistEnv()
