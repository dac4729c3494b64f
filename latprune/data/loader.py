"""A batch iterator over an in-memory dataset: on 2 CPU cores it beats DataLoader workers by a wide margin."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from latprune.data.datasets import DatasetInfo, ImageData
from latprune.data.transforms import Augment, apply_augment, normalize


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch) alone, so any epoch can be replayed exactly after a resume."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class BatchLoader:
    """Yield (normalised float images, int64 labels) batches on ``device`` from an :class:`ImageData`.

    Shuffling and augmentation draw from :func:`epoch_generator` (seed, epoch): call :meth:`set_epoch` before
    each epoch, like ``DistributedSampler``. ``rank`` / ``world_size`` give each process a disjoint shard of
    every epoch's permutation, so distributed training can reuse this loader unchanged.
    """

    def __init__(
        self,
        data: ImageData,
        mean: Sequence[float],
        std: Sequence[float],
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Augment | None = None,
        drop_last: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        self.data = data
        self.mean, self.std = tuple(mean), tuple(std)
        self.batch_size = batch_size
        self.shuffle, self.drop_last = shuffle, drop_last
        self.augment = augment if augment is not None and not augment.is_identity else None
        self.seed, self.epoch = seed, 0
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def num_samples(self) -> int:
        """Images this process sees per epoch."""
        n = len(self.data) // self.world_size
        return n - n % self.batch_size if self.drop_last else n

    def __len__(self) -> int:
        n = self.num_samples
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = epoch_generator(self.seed, self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        shard = n // self.world_size
        order = order[self.rank * shard : (self.rank + 1) * shard][: self.num_samples]
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size].to(self.data.images.device)
            images = self.data.images[idx].to(self.device, non_blocking=True)
            if self.augment is not None:
                images = apply_augment(images, self.augment, gen)
            labels = self.data.labels[idx].to(self.device, non_blocking=True)
            yield normalize(images, self.mean, self.std), labels


def make_loader(
    data: ImageData,
    info: DatasetInfo,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> BatchLoader:
    """A training loader (shuffled, dataset's default augmentation) or an evaluation loader (in order, plain)."""
    return BatchLoader(
        data,
        info.mean,
        info.std,
        batch_size,
        shuffle=train,
        augment=info.augment if train else None,
        seed=seed,
        device=device,
    )
