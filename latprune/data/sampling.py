"""Seeded index selection: a stratified validation split carved from the training set, and class/sample subsets."""

from __future__ import annotations

import numpy as np
import torch

from latprune.errors import DataError


def _per_class_indices(labels: torch.Tensor) -> dict[int, np.ndarray]:
    """Indices of each class, in dataset order (so selection depends only on the seed, not on dict order)."""
    y = labels.cpu().numpy()
    return {int(c): np.flatnonzero(y == c) for c in np.unique(y)}


def stratified_split(labels: torch.Tensor, val_per_class: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (train, val), moving ``val_per_class`` random images of every class to val.

    Searching on a split carved from the training set keeps the test set untouched until the final report.
    Both index tensors are sorted, so the split is a pure function of (labels, val_per_class, seed).
    """
    if val_per_class < 0:
        raise DataError(f"The validation split needs val_per_class ≥ 0, got {val_per_class}.")
    rng = np.random.default_rng(seed)
    train_parts, val_parts = [], []
    for cls, idx in sorted(_per_class_indices(labels).items()):
        if val_per_class >= len(idx):
            raise DataError(
                f"Class {cls} has only {len(idx)} training images, too few to hold out {val_per_class} for "
                "validation; lower val_per_class."
            )
        perm = rng.permutation(idx)
        val_parts.append(perm[:val_per_class])
        train_parts.append(perm[val_per_class:])
    train = np.sort(np.concatenate(train_parts))
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.empty(0, dtype=np.int64)
    return torch.from_numpy(train).long(), torch.from_numpy(val).long()


def class_subset(labels: torch.Tensor, num_classes: int | None, per_class: int | None, seed: int) -> torch.Tensor:
    """Indices of a deterministic subset: ``num_classes`` random classes x ``per_class`` random images each.

    JCW trains its super-net on 100 ImageNet classes x 500 images; ``None`` keeps all classes / all images.
    Labels are not remapped, so a model with the full classifier head evaluates the subset unchanged.
    Classes with fewer than ``per_class`` images contribute all they have.
    """
    rng = np.random.default_rng(seed)
    groups = _per_class_indices(labels)
    classes = sorted(groups)
    if num_classes is not None:
        if not 1 <= num_classes <= len(classes):
            raise DataError(f"The subset asks for {num_classes} classes but the data has {len(classes)}.")
        classes = sorted(int(c) for c in rng.choice(classes, size=num_classes, replace=False))
    if per_class is not None and per_class < 1:
        raise DataError(f"The subset needs per_class ≥ 1, got {per_class}.")
    parts = []
    for cls in classes:
        idx = groups[cls]
        if per_class is not None and per_class < len(idx):
            idx = rng.choice(idx, size=per_class, replace=False)
        parts.append(idx)
    return torch.from_numpy(np.sort(np.concatenate(parts))).long()
