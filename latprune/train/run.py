"""Train or evaluate a zoo model on a named dataset: what `latprune train` / `latprune eval` call."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from latprune._io import locks_output
from latprune._limits import check_threads
from latprune.data import BatchLoader, DataConfig, DataSplits, load_splits, make_loader
from latprune.errors import DataError, ModelError
from latprune.train.checkpoint import (
    checkpoint_data_config,
    checkpoint_meta,
    load_model_from_checkpoint,
    resolve_checkpoint_path,
)
from latprune.train.config import ModelSpec, TrainConfig
from latprune.train.distributed import init_distributed
from latprune.train.loop import TrainResult, evaluate, train_model


def eval_loaders(splits: DataSplits, batch_size: int, device: torch.device) -> dict[str, BatchLoader]:
    """Evaluation loaders for the val split (when it is not empty) and the test split."""
    loaders = {}
    if len(splits.val):
        loaders["val"] = make_loader(splits.val, splits.info, batch_size, train=False, device=device)
    loaders["test"] = make_loader(splits.test, splits.info, batch_size, train=False, device=device)
    return loaders


@locks_output("out_dir")
def train_zoo_model(
    model_name: str,
    data: DataConfig,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    width_mult: float = 1.0,
    resume: bool = False,
    show_progress: bool = True,
) -> TrainResult:
    """Train a fresh (seeded) zoo model on ``data``'s train split, reporting val and test accuracy every epoch.

    Runs unchanged under torchrun (see :mod:`latprune.train.distributed`): ``config.batch_size`` is the global batch.
    """
    device = config.resolve_device()
    check_threads(config.threads if device.type == "cpu" else None)
    init_distributed(device)  # before any tensor goes to "cuda": under torchrun that must mean this rank's GPU
    splits = load_splits(data)
    info = splits.info
    spec = ModelSpec(model_name, info.num_classes, info.in_channels, info.input_size, width_mult)
    model = spec.build(seed=config.seed)
    if device.type == "cuda":  # small datasets fit on the GPU: no host-to-device copy per batch
        splits = DataSplits(splits.train.to(device), splits.val.to(device), splits.test.to(device), info)
    train_loader = make_loader(splits.train, info, config.batch_size, train=True, seed=config.seed, device=device)
    return train_model(
        model,
        train_loader,
        config,
        out_dir,
        eval_data=eval_loaders(splits, config.eval_batch_size, device),
        meta=checkpoint_meta(spec, data),
        resume=resume,
        show_progress=show_progress,
    )


@dataclass(frozen=True)
class EvalResult:
    """Accuracy of a checkpoint on one split."""

    checkpoint: Path
    dataset: str
    split: str
    loss: float
    accuracy: float
    images: int


def evaluate_checkpoint(
    checkpoint: str | Path,
    data_name: str | None = None,
    *,
    splits: Sequence[str] = ("test",),
    device: str = "cpu",
    batch_size: int = 1000,
    threads: int | None = None,
) -> list[EvalResult]:
    """Evaluate a checkpoint on the named splits ("train", "val", "test") of its dataset.

    The val split is carved exactly as during training (the checkpoint stores the split settings),
    so "val" here is the same held-out set the training run reported.
    """
    path = resolve_checkpoint_path(checkpoint)
    if batch_size < 1:
        raise DataError(f"The evaluation batch size {batch_size} must be at least 1; pass e.g. --batch-size 1000.")
    torch_device = TrainConfig(device=device, threads=threads).resolve_device()
    check_threads(threads if torch_device.type == "cpu" else None)
    if threads is not None and torch_device.type == "cpu":
        torch.set_num_threads(threads)
    model, ckpt = load_model_from_checkpoint(path, map_location=torch_device)
    data = checkpoint_data_config(ckpt, path, data_name)
    name = data.name
    loaded = load_splits(data)
    kwargs = ckpt["model_kwargs"]
    if (loaded.info.num_classes, loaded.info.in_channels) != (kwargs["num_classes"], kwargs["in_channels"]):
        raise ModelError(
            f"The checkpoint '{path}' is for {kwargs['num_classes']} classes x {kwargs['in_channels']} channels, "
            f"but '{name}' has {loaded.info.num_classes} x {loaded.info.in_channels}; pass its own dataset."
        )
    results = []
    for split in splits:
        if split not in ("train", "val", "test"):
            raise DataError(f"Unknown split '{split}'; use train, val or test.")
        part = getattr(loaded, split)
        loader = make_loader(part, loaded.info, batch_size, train=False, device=torch_device)
        loss, acc = evaluate(model, loader, torch_device)
        results.append(EvalResult(path, name, split, loss, acc, len(part)))
    return results
