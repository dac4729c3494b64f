"""A batch iterator over an in-memory dataset (on 2 CPU cores it beats DataLoader workers by a wide margin), or
over an image folder streamed from disk by DataLoader workers when it does not fit in memory."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from latprune.data.datasets import DatasetInfo, ImageData
from latprune.data.folder import FolderData
from latprune.data.transforms import Augment, apply_augment, normalize
from latprune.errors import DataError


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch) alone, so any epoch can be replayed exactly after a resume."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class BatchLoader:
    """Yield (normalised float images, int64 labels) batches on ``device`` from an :class:`ImageData`.

    Shuffling and augmentation draw from :func:`epoch_generator` (seed, epoch): call :meth:`set_epoch` before
    each epoch, like ``DistributedSampler``. ``rank`` / ``world_size`` give each process a disjoint, strided
    shard of every epoch's permutation: ``batch_size`` is then per process, and step k of the ``world_size``
    shards together holds exactly the images (with the same augmentation draws) of step k of one loader with
    ``world_size * batch_size`` — so distributed SGD reproduces single-process SGD. The last
    ``len(data) % world_size`` images of each permutation are left out so every rank takes the same steps.
    """

    def __init__(
        self,
        data: ImageData | FolderData,
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

    def sharded(self, rank: int, world_size: int) -> BatchLoader:
        """This loader split over ``world_size`` processes: same images per step in total, ``batch_size`` divided.

        Raises a one-sentence :class:`DataError` when the batch size does not divide evenly.
        """
        if self.world_size != 1:
            raise ValueError(f"this loader is already rank {self.rank} of {self.world_size}")
        if self.batch_size % world_size:
            raise DataError(
                f"The batch size {self.batch_size} does not split evenly over {world_size} processes; pass a batch "
                f"size divisible by {world_size} (it is the global batch, shared by all processes)."
            )
        return BatchLoader(
            self.data,
            self.mean,
            self.std,
            self.batch_size // world_size,
            shuffle=self.shuffle,
            augment=self.augment,
            drop_last=self.drop_last,
            seed=self.seed,
            device=self.device,
            rank=rank,
            world_size=world_size,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = epoch_generator(self.seed, self.epoch)
        n = len(self.data)
        order = torch.randperm(n, generator=gen) if self.shuffle else torch.arange(n)
        order = order[: self.num_samples * self.world_size]
        step = self.batch_size * self.world_size
        if isinstance(self.data, FolderData):
            yield from self._stream([order[start : start + step] for start in range(0, len(order), step)], gen)
            return
        # Every rank gathers and augments the whole global batch (cheap uint8 work), then keeps its strided
        # share, so the generator advances identically on all ranks and matches a single-process run.
        for start in range(0, len(order), step):
            idx = order[start : start + step].to(self.data.images.device)
            images = self.data.images[idx].to(self.device, non_blocking=True)
            if self.augment is not None:
                images = apply_augment(images, self.augment, gen)
            labels = self.data.labels[idx].to(self.device, non_blocking=True)
            if self.world_size > 1:
                images, labels = images[self.rank :: self.world_size], labels[self.rank :: self.world_size]
            yield normalize(images, self.mean, self.std), labels

    def _stream(self, batches: list[torch.Tensor], gen: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of a streamed folder: worker processes decode only this rank's share of each global batch.

        Augmentation still draws for the whole global batch (the other ranks' rows are zeros, which a crop or flip
        of one image never reads), so the batches equal those of the same images held in memory.
        """
        data = self.data
        assert isinstance(data, FolderData)
        mine = [b[self.rank :: self.world_size] for b in batches] if self.world_size > 1 else batches
        for batch, idx, images in zip(batches, mine, data.stream(mine), strict=True):
            images = images.to(self.device, non_blocking=True)
            if self.augment is not None:
                full = images.new_zeros((len(batch), *images.shape[1:]))  # (global batch, C, H, W)
                full[self.rank :: self.world_size] = images
                images = apply_augment(full, self.augment, gen)[self.rank :: self.world_size]
            labels = data.labels[idx].to(self.device, non_blocking=True)
            yield normalize(images, self.mean, self.std), labels


def make_loader(
    data: ImageData | FolderData,
    info: DatasetInfo,
    batch_size: int,
    *,
    train: bool,
    seed: int = 0,
    device: str | torch.device = "cpu",
    rank: int | None = None,
    world_size: int | None = None,
) -> BatchLoader:
    """A training loader (shuffled, dataset's default augmentation) or an evaluation loader (in order, plain).

    ``batch_size`` is the global batch. A training loader is split over ``world_size`` processes (default:
    torchrun's ``RANK`` / ``WORLD_SIZE``, one process without them), each taking ``batch_size / world_size``
    images per step; an evaluation loader is never split unless asked, since every rank evaluates the whole
    split and so reports the same metrics without a reduction.
    """
    loader = BatchLoader(
        data,
        info.mean,
        info.std,
        batch_size,
        shuffle=train,
        augment=info.augment if train else None,
        seed=seed,
        device=device,
    )
    if world_size is None:
        world_size = _torchrun_int("WORLD_SIZE") if train else 1
    if rank is None:
        rank = _torchrun_int("RANK") if world_size > 1 else 0
    return loader.sharded(rank, world_size) if world_size > 1 else loader


def _torchrun_int(name: str) -> int:
    """torchrun's RANK / WORLD_SIZE (read here directly: data/ must not import train/); 0 or 1 when absent."""
    raw = os.environ.get(name, "")
    default = 1 if name == "WORLD_SIZE" else 0
    return int(raw) if raw.strip().isdigit() else default
