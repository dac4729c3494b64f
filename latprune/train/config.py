"""Typed, frozen training configuration and the zoo-model description stored in every checkpoint."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from latprune._limits import MAX_SEED
from latprune.errors import LatpruneError
from latprune.models import ModelSpec

SCHEDULES = ("cosine", "onecycle")
DEVICES = ("cpu", "cuda")
# Fields that may differ between a run and its resumption without changing the result's meaning.
RESUMABLE_FIELDS = frozenset({"device", "threads", "eval_batch_size"})


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (SGD with Nesterov momentum, per-step LR schedule)."""

    epochs: int = 30
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    eval_batch_size: int = 1000
    channels_last: bool = True

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.eval_batch_size >= 1, "eval_batch_size", "at least 1"),
            (self.lr > 0, "lr", "positive"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", "≥ 0"),
            (self.schedule in SCHEDULES, "schedule", f"one of {', '.join(SCHEDULES)}"),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "in [0, epochs)"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}"),
            (self.threads is None or self.threads >= 1, "threads", "at least 1 (or unset)"),
            (not (self.nesterov and self.momentum == 0), "momentum", "positive when nesterov is on"),
            (0 <= self.seed <= MAX_SEED, "seed", f"in [0, {MAX_SEED}]"),
        ]
        checks += [(math.isfinite(v), k, "finite") for k, v in asdict(self).items() if isinstance(v, float)]
        for ok, name, need in checks:
            if not ok:
                raise LatpruneError(f"Training setting {name}={getattr(self, name)!r} is invalid; it must be {need}.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Rebuild from a checkpoint's ``config``, ignoring keys a newer/older latprune added."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    def resolve_device(self) -> torch.device:
        """The torch device, with a clear sentence when CUDA is asked for but this torch build cannot use it."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise LatpruneError(
                "--device cuda was asked for but this torch has no usable GPU; install a CUDA build of torch "
                "(see README, 'Using a GPU') or use --device cpu."
            )
        return torch.device(self.device)


__all__ = ["ModelSpec", "TrainConfig"]
