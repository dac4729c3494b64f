"""The training loop: SGD + Nesterov with a per-step schedule, atomic per-epoch checkpoints and exact resume."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from latprune._io import atomic_write_json, locks_output
from latprune._limits import check_threads
from latprune._version import __version__
from latprune.data import BatchLoader
from latprune.errors import LatpruneError
from latprune.train.checkpoint import CHECKPOINT_NAME, atomic_torch_save, load_checkpoint
from latprune.train.config import RESUMABLE_FIELDS, TrainConfig
from latprune.train.distributed import (
    DistEnv,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    current_env,
    init_distributed,
    wrap_ddp,
)

METRICS_NAME = "metrics.json"
CHECKPOINT_FORMAT = "latprune.checkpoint/1"
_ONECYCLE_START_DIV = 25.0  # one-cycle starts at lr / 25 ...
_ONECYCLE_FINAL_DIV = 1e4  # ... and ends at lr / 25 / 1e4, as torch.optim.lr_scheduler.OneCycleLR does
_ONECYCLE_DEFAULT_RISE = 0.3

Batch = tuple[torch.Tensor, torch.Tensor]


class TrainData(Protocol):
    """What the loop needs from training data: batches, a length, and (optionally) ``set_epoch``.

    :class:`latprune.data.BatchLoader` fits; so does a ``DataLoader`` with a ``DistributedSampler``
    wrapped to forward ``set_epoch``.
    """

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...


class TrainHook:
    """Extends the loop without forking it: ADMM's penalty and dual updates, GMP's mask schedule, distillation.

    Subclasses override what they need; the defaults do nothing. A hook's :meth:`state_dict` is saved in every
    checkpoint and restored on resume, so a hook with state (ADMM's Z and U, a GMP step count) resumes exactly.
    """

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        """Called before epoch ``epoch`` (0-based) starts."""

    def loss(
        self, model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        """The loss to minimise for this batch, given the task loss; return ``loss`` to leave it unchanged."""
        return loss

    def after_step(self, model: nn.Module, step: int) -> None:
        """Called after the optimiser step; ``step`` counts optimiser steps from the start of training (0-based)."""

    def after_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """Called after epoch ``epoch``'s training, before evaluation; returns extra metrics for the epoch's row."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


@dataclass(frozen=True)
class TrainResult:
    """Where a run's files are and what it reached."""

    out_dir: Path
    checkpoint_path: Path
    metrics_path: Path
    history: tuple[dict[str, float], ...]

    @property
    def final(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


def lr_factor(config: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The LR multiplier at each optimiser step: linear warm-up then cosine, or one-cycle.

    Stepping per batch (not per epoch) keeps short runs — a 2-epoch demo — as smooth as long ones.
    """
    total = max(1, config.epochs * steps_per_epoch)
    warm = round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":

        def cosine(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))

        return cosine
    rise = warm if warm > 0 else round(_ONECYCLE_DEFAULT_RISE * total)
    low, final = 1.0 / _ONECYCLE_START_DIV, 1.0 / (_ONECYCLE_START_DIV * _ONECYCLE_FINAL_DIV)

    def onecycle(step: int) -> float:
        if step < rise:
            return low + (1.0 - low) * step / max(1, rise)
        t = min(1.0, (step - rise) / max(1, total - rise))
        return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))

    return onecycle


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD with (Nesterov) momentum over the trainable parameters; parametrized weights train their ``original``."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[Batch], device: str | torch.device = "cpu") -> tuple[float, float]:
    """Mean cross-entropy and top-1 accuracy (a fraction in [0, 1]) of ``model`` over ``data``.

    The model's train/eval mode is restored afterwards, so this can be called mid-training.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    for images, labels in data:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        logits = model(images)
        loss_sum += F.cross_entropy(logits, labels, reduction="sum").double()
        correct += (logits.argmax(1) == labels).sum()
        count += labels.shape[0]
    model.train(was_training)
    if count == 0:
        return float("nan"), float("nan")
    return float(loss_sum) / count, int(correct) / count


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DistributedDataParallel wrapper, so checkpoints never carry ``module.`` prefixes."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _epoch_seed(seed: int, epoch: int, rank: int | None = None) -> int:
    """A seed for the global RNG during one epoch (dropout etc.), derived from (seed, epoch) only.

    In a distributed run each rank adds its ``rank``, so ranks do not drop the same units of different images.
    """
    entropy = [seed, epoch, 1] + ([rank] if rank is not None else [])
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint32)[0])


@contextlib.contextmanager
def _epoch_rng(seed: int, epoch: int, device: torch.device, rank: int | None = None) -> Iterator[None]:
    """Seed torch's global RNG for one epoch and restore it afterwards, so the caller's state is untouched."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(_epoch_seed(seed, epoch, rank))
        yield


def train_one_epoch(
    model: nn.Module,
    data: TrainData,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    device: torch.device,
    desc: str,
    show_progress: bool = True,
    hooks: Sequence[TrainHook] = (),
) -> dict[str, float]:
    """One pass over ``data``; returns train loss, accuracy, seconds and images/s.

    ``loss`` is the task loss the progress bar shows; each hook may add terms to what is minimised. Hooks see the
    bare model even when ``model`` is DDP-wrapped. In a distributed run the returned metrics are summed over
    all ranks (the progress bar shows rank-local ones), so every rank reports the same global numbers.
    """
    bare = unwrap(model)
    model.train()
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    count = 0
    start = time.perf_counter()
    bar = tqdm(data, total=len(data), desc=desc, leave=False, disable=not show_progress, dynamic_ncols=True)
    for step, (images, labels) in enumerate(bar):
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        labels = labels.to(device, non_blocking=True)
        logits = model(images)
        loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
        if not torch.isfinite(loss):
            raise LatpruneError(
                f"Training diverged at {desc}, step {step} (loss {float(loss)}); lower --lr or raise --warmup."
            )
        objective = loss
        for hook in hooks:
            objective = hook.loss(bare, images, logits, labels, objective)
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        scheduler.step()
        for hook in hooks:
            hook.after_step(bare, scheduler.last_epoch - 1)
        loss_sum += loss.detach().double() * labels.shape[0]
        correct += (logits.detach().argmax(1) == labels).sum()
        count += labels.shape[0]
        if show_progress and (step % 20 == 0 or step == len(data) - 1):
            elapsed = time.perf_counter() - start
            bar.set_postfix(
                loss=f"{float(loss_sum) / count:.4f}",
                acc=f"{int(correct) / count:.4f}",
                img_s=f"{count / max(elapsed, 1e-9):.0f}",
                lr=f"{scheduler.get_last_lr()[0]:.4g}",
            )
    bar.close()
    if current_env().is_distributed:
        totals = all_reduce_sum(torch.stack([loss_sum, correct.double(), loss_sum.new_tensor(float(count))]))
        loss_sum, correct, count = totals[0], totals[1].round().long(), int(totals[2].round())
    seconds = time.perf_counter() - start
    return {
        "train_loss": float(loss_sum) / max(count, 1),
        "train_acc": int(correct) / max(count, 1),
        "train_seconds": seconds,
        "img_per_s": count / max(seconds, 1e-9),
    }


def _check_resumable(ckpt: dict[str, Any], path: Path, config: TrainConfig, meta: Mapping[str, Any]) -> None:
    """Refuse to resume a checkpoint made with different settings: the schedule and data order would not match."""
    saved = ckpt.get("config", {})
    for key, value in config.to_dict().items():
        if key not in RESUMABLE_FIELDS and key in saved and saved[key] != value:
            raise LatpruneError(
                f"The checkpoint '{path}' was trained with {key}={saved[key]!r}, not {value!r}; resume with the same "
                "setting or start a new --out folder."
            )
    for key, value in meta.items():
        if key in ckpt and ckpt[key] != value:
            raise LatpruneError(
                f"The checkpoint '{path}' has {key}={ckpt[key]!r}, not {value!r}; resume with the same model and data "
                "or start a new --out folder."
            )


@locks_output("out_dir")
def train_model(
    model: nn.Module,
    train_data: TrainData,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    eval_data: Mapping[str, Iterable[Batch]] | None = None,
    meta: Mapping[str, Any] | None = None,
    resume: bool = False,
    show_progress: bool = True,
    hooks: Sequence[TrainHook] = (),
) -> TrainResult:
    """Train ``model`` in place for ``config.epochs`` epochs, writing ``out_dir/checkpoint.pt`` after every epoch.

    ``eval_data`` maps a split name ("val", "test") to batches evaluated after every epoch; its metrics are
    named ``<split>_loss`` / ``<split>_acc``. ``meta`` is stored verbatim in the checkpoint (for zoo models
    ``model`` and ``model_kwargs``, see :func:`checkpoint_meta`) and must match on resume. Shuffling,
    augmentation and dropout are seeded per (seed, epoch), so a resumed run continues exactly as an
    uninterrupted one would. The model may carry torch parametrizations (weight masks): they are trained
    through and saved in its state dict. ``hooks`` (:class:`TrainHook`) add loss terms and per-step or
    per-epoch updates; their state is checkpointed with the model's.

    Under torchrun (see :mod:`latprune.train.distributed`) this starts the process group, wraps the model in
    DDP, splits a :class:`~latprune.data.BatchLoader` ``train_data`` over the ranks (``config.batch_size`` stays
    the global batch; other iterables must already be each rank's shard), evaluates the whole ``eval_data`` on
    every rank, and lets only rank 0 write files and show progress; every rank returns the same history.
    """
    out_dir = Path(out_dir)
    ckpt_path, metrics_path = out_dir / CHECKPOINT_NAME, out_dir / METRICS_NAME
    meta = dict(meta or {})
    eval_data = dict(eval_data or {})
    device = config.resolve_device()
    check_threads(config.threads if device.type == "cpu" else None)
    env = init_distributed(device)
    show_progress = show_progress and env.is_main
    train_data = _rank_shard(train_data, env)
    if config.threads is not None and device.type == "cpu":
        torch.set_num_threads(config.threads)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model.to(device=device, memory_format=memory_format)
    steps = len(train_data)
    if steps == 0:
        raise LatpruneError("The training data yields no batch; use more images or a smaller --batch-size.")
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(config, steps))
    history: list[dict[str, float]] = []
    if ckpt_path.exists():
        if not resume:
            raise LatpruneError(
                f"The folder '{out_dir}' already holds a checkpoint; pass --resume to continue it or pick a new --out."
            )
        history = _restore(ckpt_path, model, optimizer, scheduler, config, meta, device, hooks)
    trained = wrap_ddp(model, env, device)
    barrier()  # every rank has checked for (and read) the checkpoint before rank 0 writes the next one
    start_epoch = len(history)
    epochs = range(start_epoch, config.epochs)
    for epoch in tqdm(epochs, desc="epochs", disable=not show_progress or len(epochs) == 0, dynamic_ncols=True):
        set_epoch = getattr(train_data, "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        with _epoch_rng(config.seed, epoch, device, env.rank if env.is_distributed else None):
            for hook in hooks:
                hook.before_epoch(model, epoch)
            row: dict[str, float] = {"epoch": epoch + 1, "lr": scheduler.get_last_lr()[0]}
            row |= train_one_epoch(
                trained,
                train_data,
                optimizer,
                scheduler,
                config,
                device,
                f"epoch {epoch + 1}/{config.epochs}",
                show_progress,
                hooks,
            )
            for hook in hooks:
                row |= hook.after_epoch(model, epoch)
        broadcast_buffers(model)  # every rank evaluates, and rank 0 saves, rank 0's BN statistics
        eval_start = time.perf_counter()
        for split, data in eval_data.items():
            row[f"{split}_loss"], row[f"{split}_acc"] = evaluate(model, data, device)
        row["eval_seconds"] = time.perf_counter() - eval_start
        history.append(row)
        if env.is_main:
            _save(ckpt_path, model, optimizer, scheduler, config, meta, epoch + 1, history, hooks)
            atomic_write_json(metrics_path, _metrics_json(config, meta, history, finished=epoch + 1 == config.epochs))
        barrier()  # no rank moves on (or stops, and resumes) before this epoch's checkpoint is on disk
        if show_progress:
            tqdm.write(_epoch_line(row))
    if env.is_main and (not metrics_path.exists() or start_epoch == config.epochs):
        atomic_write_json(metrics_path, _metrics_json(config, meta, history, finished=True))
    barrier()
    return TrainResult(out_dir, ckpt_path, metrics_path, tuple(history))


def _rank_shard(train_data: TrainData, env: DistEnv) -> TrainData:
    """This rank's share of ``train_data``: a whole-data BatchLoader is split; anything else is taken as is."""
    if not env.is_distributed or not isinstance(train_data, BatchLoader):
        return train_data
    if train_data.world_size == 1:
        return train_data.sharded(env.rank, env.world_size)
    if (train_data.rank, train_data.world_size) != (env.rank, env.world_size):
        raise LatpruneError(
            f"The training loader is shard {train_data.rank} of {train_data.world_size} but this process is rank "
            f"{env.rank} of {env.world_size}; build it with make_loader's defaults or rank={env.rank}."
        )
    return train_data


def _restore(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    meta: Mapping[str, Any],
    device: torch.device,
    hooks: Sequence[TrainHook] = (),
) -> list[dict[str, float]]:
    """Load a run's state into the fresh model, optimiser, scheduler and hooks; returns the finished epochs' metrics."""
    ckpt = load_checkpoint(path, map_location=device)
    _check_resumable(ckpt, path, config, meta)
    unwrap(model).load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    saved_hooks = ckpt.get("hooks", [])
    if len(saved_hooks) != len(hooks):
        raise LatpruneError(
            f"The checkpoint '{path}' was trained with {len(saved_hooks)} training hook(s), not {len(hooks)}; resume "
            "with the same --method and options or start a new --out folder."
        )
    for hook, state in zip(hooks, saved_hooks, strict=True):
        hook.load_state_dict(state)
    history = list(ckpt["metrics"]["history"])
    if len(history) != int(ckpt["epoch"]):
        raise LatpruneError(f"The checkpoint '{path}' records {ckpt['epoch']} epochs but {len(history)} metric rows.")
    return history


def _save(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    config: TrainConfig,
    meta: Mapping[str, Any],
    epoch: int,
    history: list[dict[str, float]],
    hooks: Sequence[TrainHook] = (),
) -> None:
    """Write the full training state atomically: a kill at any moment leaves the previous epoch's checkpoint."""
    ckpt = {
        "format": CHECKPOINT_FORMAT,
        "latprune_version": __version__,
        **meta,
        "state_dict": unwrap(model).state_dict(),
        "epoch": epoch,
        "metrics": {"history": history, **(history[-1] if history else {})},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "hooks": [hook.state_dict() for hook in hooks],
        "config": config.to_dict(),
        # The loop reseeds every epoch from (seed, epoch), so these two numbers are the whole RNG state to resume.
        "rng": {"seed": config.seed, "next_epoch": epoch},
    }
    atomic_torch_save(path, ckpt)


def _metrics_json(
    config: TrainConfig, meta: Mapping[str, Any], history: list[dict[str, float]], finished: bool
) -> dict[str, Any]:
    plain_meta = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool, dict, list, type(None)))}
    return {
        **plain_meta,
        "finished": finished,
        "epochs_done": len(history),
        "final": history[-1] if history else {},
        "history": history,
        "config": config.to_dict(),
    }


def _epoch_line(row: Mapping[str, float]) -> str:
    parts = [f"epoch {int(row['epoch'])}", f"loss {row['train_loss']:.4f}", f"train {row['train_acc']:.2%}"]
    parts += [f"{k[:-4]} {v:.2%}" for k, v in row.items() if k.endswith("_acc") and k != "train_acc"]
    parts += [f"{row['train_seconds']:.0f}s", f"{row['img_per_s']:.0f} img/s"]
    return " | ".join(parts)
