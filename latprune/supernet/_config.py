"""SupernetConfig: the super-net schedule (data subset, two training stages, BN recalibration), with presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from latprune._overrides import override
from latprune.errors import SearchError
from latprune.prune import CRITERIA


@dataclass(frozen=True)
class SupernetConfig:
    """How each generation's super-net is trained and how its candidates are scored.

    JCW §3.1 trains the super-net for 30 epochs (10 of "parameter sharing warming up", then 20), batch 256,
    lr 0.1, weight decay 4e-5, on 100 classes x 500 images, validates on 50 images per class, and recomputes
    each candidate's BN statistics on 1280 images. We read the 10 + 20 split as a channel stage (weight
    masks off) followed by a weight-pruning stage (weight masks on).
    """

    channel_epochs: int = 1
    """Stage-1 epochs: candidates train with their channel masks only (sparsity masks off)."""
    weight_epochs: int = 1
    """Stage-2 epochs: candidates train with channel masks and their norm-based weight-sparsity masks."""
    classes: int | None = 10
    """Number of classes in the training subset (None: every class of the dataset)."""
    train_per_class: int | None = 300
    """Training images per class drawn from the train split (None: all of them)."""
    val_per_class: int | None = 100
    """Validation images per class, carved from the training set and disjoint from the training subset."""
    batch_size: int = 64
    """Mini-batch size for super-net training."""
    candidates_per_batch: int = 1
    """How many randomly chosen candidates each batch trains (their gradients are averaged)."""
    lr: float = 0.01
    """Peak SGD learning rate (cosine-decayed over each generation's schedule)."""
    momentum: float = 0.9
    """SGD (Nesterov) momentum."""
    weight_decay: float = 4e-5
    """SGD weight decay."""
    bn_images: int = 256
    """R: training images used to recompute every candidate's BatchNorm statistics before evaluation."""
    eval_batch_size: int = 256
    """Batch size for BN recalibration and validation."""
    warm_start: bool = False
    """False: every generation's shared weights restart from the parent checkpoint (JCW's "reconstruct");
    True: they continue from the previous generation's super-net (as the official code does)."""
    augment: bool = True
    """Random crop (pad 4 for images >= 32 px, else 2) and horizontal flip while training the super-net."""
    importance: str = "l1"
    """Channel importance ranked once on the parent: "l1"/"l2" filter norm or "bn" |gamma|, summed per group."""
    mask_every: int = 1
    """Recompute a candidate's weight-sparsity masks from the current shared weights every this many of its steps."""

    def __post_init__(self) -> None:
        for name in ("channel_epochs", "weight_epochs"):
            if getattr(self, name) < 0:
                raise SearchError(f"Super-net setting {name}={getattr(self, name)} must be >= 0.")
        for name in ("batch_size", "candidates_per_batch", "bn_images", "eval_batch_size", "mask_every"):
            if getattr(self, name) < 1:
                raise SearchError(f"Super-net setting {name}={getattr(self, name)} must be >= 1.")
        for name in ("classes", "train_per_class", "val_per_class"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise SearchError(f"Super-net setting {name}={value} must be >= 1, or None for all.")
        if self.importance not in CRITERIA:
            raise SearchError(f"Unknown channel importance '{self.importance}'; choose one of: {', '.join(CRITERIA)}.")
        if not self.lr > 0 or self.weight_decay < 0 or not 0 <= self.momentum < 1:
            raise SearchError(
                f"Super-net optimiser settings lr={self.lr}, momentum={self.momentum}, "
                f"weight_decay={self.weight_decay} need lr > 0, 0 <= momentum < 1 and weight_decay >= 0."
            )

    @classmethod
    def preset(cls, name: str) -> SupernetConfig:
        """The named preset: "paper" (JCW §3.1) or "quick" (ResNet20 / Fashion-MNIST on a 2-core CPU)."""
        try:
            return _PRESETS[name]
        except KeyError:
            raise SearchError(f"Unknown super-net preset '{name}'; choose one of: {', '.join(_PRESETS)}.") from None

    def override(self, **changes: Any) -> SupernetConfig:
        """A copy with the given fields replaced (None values are ignored, so CLI flags left unset keep the preset).

        Unknown field names are rejected by name so a typo never silently does nothing.
        """
        return override(self, changes, "super-net setting")

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (for run directories)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SupernetConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise SearchError(
                f"Unknown super-net setting(s) {', '.join(unknown)} in a saved config; valid: "
                f"{', '.join(sorted(fields))}."
            )
        return cls(**data)


_PRESETS: dict[str, SupernetConfig] = {
    # JCW §3.1: 10 + 20 epochs, batch 256, lr 0.1, wd 4e-5, 100 classes x 500 images, 50 val/class, R = 1280.
    "paper": SupernetConfig(
        channel_epochs=10,
        weight_epochs=20,
        classes=100,
        train_per_class=500,
        val_per_class=50,
        batch_size=256,
        lr=0.1,
        weight_decay=4e-5,
        bn_images=1280,
        eval_batch_size=256,
    ),
    # ResNet20 / Fashion-MNIST, 2 x 16 candidates: 3000 training images x (1 + 1) epochs, R = 256, 1000 validation
    # images; one generation took 85 s on 1 thread of this 2-core machine while ~8 other jobs ran (2026-11-21).
    "quick": SupernetConfig(),
}
PRESETS: tuple[str, ...] = tuple(_PRESETS)
