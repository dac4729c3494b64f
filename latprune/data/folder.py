"""Image folders too large for memory: decoded batch by batch by DataLoader worker processes, never held whole.

ImageNet's 1.28M training images decode to ~190 GB at 224 pixels, so :class:`FolderData` keeps only the file
list and the labels (10 MB) and decodes each batch when a loader asks for it. Subsets and the validation split
are index selections on the file list, exactly as on an in-memory :class:`~latprune.data.datasets.ImageData`,
so both give the same splits, and a :class:`~latprune.data.loader.BatchLoader` gives the same batches from
either (images are decoded by the same :func:`decode_image`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from latprune.errors import DataError

#: Worker processes decoding a streamed folder (``$LATPRUNE_DATA_WORKERS``; default: the cores but one, at most 8,
#: so the training process keeps a core).
WORKERS_ENV = "LATPRUNE_DATA_WORKERS"


def default_workers() -> int:
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw:
        if not raw.isdigit():
            raise DataError(f"{WORKERS_ENV}={raw!r} is not a whole number; set it to the decoding processes, e.g. 4.")
        return int(raw)
    return min(8, max(1, (os.cpu_count() or 1) - 1))


def decode_image(path: str | Path, size: int, grayscale: bool) -> torch.Tensor:
    """One image file as a (C, size, size) uint8 tensor, resized (antialiased) straight to a square."""
    from PIL import Image, UnidentifiedImageError

    from latprune.data.readers import resize_uint8

    try:
        with Image.open(path) as img:
            array = np.asarray(img.convert("L" if grayscale else "RGB"), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise DataError(
            f"The image '{path}' declares over {Image.MAX_IMAGE_PIXELS * 2:,} pixels (a decompression bomb, or not a "
            "photo); delete it or shrink it."
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(
            f"The image '{path}' cannot be decoded ({exc.__class__.__name__}); it is truncated or corrupt, "
            "so replace or delete it."
        ) from None
    tensor = torch.from_numpy(array.copy())
    tensor = tensor.unsqueeze(0) if grayscale else tensor.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    return resize_uint8(tensor.unsqueeze(0), size)[0]


class _Decode(Dataset):
    """What a DataLoader worker runs: file index -> decoded image."""

    def __init__(self, files: Sequence[str], size: int, grayscale: bool) -> None:
        self.files, self.size, self.grayscale = files, size, grayscale

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> torch.Tensor:
        return decode_image(self.files[i], self.size, self.grayscale)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None on other C libraries."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def _return_freed_memory() -> None:
    """Hand memory freed by the last batch back to the OS.

    With DataLoader workers, glibc kept every batch's freed augmentation and normalisation buffers (its dynamic
    mmap threshold puts them on the heap, and the queue's small allocations pin it): the process grew by 1.3 MB
    per batch of 8 images at 160 pixels, 170 MB per pass of a 1000-image folder, as if the folder were held in
    memory after all. ``malloc_trim`` after each batch keeps it flat (measured: 4 MB) for ~1 ms per batch.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _stack(images: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(images)  # (N, C, size, size) uint8


@dataclass(frozen=True, eq=False)
class FolderData:
    """An image folder's samples, decoded on demand: file paths and (N,) int64 labels, no pixels.

    ``device`` is where batches land (``to`` sets it, as ``ImageData.to`` moves tensors); ``workers`` decode.
    """

    files: tuple[str, ...]
    labels: torch.Tensor
    image_size: int
    grayscale: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    workers: int = field(default_factory=default_workers)

    def __post_init__(self) -> None:
        if self.labels.shape != (len(self.files),) or self.labels.dtype != torch.int64:
            raise DataError(f"{len(self.files)} image files need as many int64 labels, got {tuple(self.labels.shape)}.")

    def __len__(self) -> int:
        return len(self.files)

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def subset(self, indices: torch.Tensor) -> FolderData:
        """The samples at ``indices`` (only the file list is copied)."""
        idx = indices.cpu().long()
        return replace(self, files=tuple(self.files[i] for i in idx.tolist()), labels=self.labels[idx])

    def to(self, device: str | torch.device) -> FolderData:
        return replace(self, device=torch.device(device))

    def stream(self, batches: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The decoded (n, C, size, size) uint8 images of each index batch, in order, on ``device``.

        Workers decode ahead of the consumer, but at most ``2 * workers`` batches are in flight, so memory holds a
        few batches whatever the folder's size.
        """
        dataset = _Decode(self.files, self.image_size, self.grayscale)
        lists = [b.tolist() for b in batches]
        if self.workers == 0:
            for indices in lists:
                yield _stack([dataset[i] for i in indices]).to(self.device)
            return
        loader = DataLoader(
            dataset, batch_sampler=lists, num_workers=self.workers, collate_fn=_stack, prefetch_factor=2
        )
        try:
            for images in loader:
                yield images.to(self.device)
                _return_freed_memory()
        except DataError as exc:  # raised in a worker: torch re-raises it with the worker's traceback in the message
            last = str(exc).strip().splitlines()[-1]
            raise DataError(last.split("DataError: ", 1)[-1]) from None

    def decode(self, indices: torch.Tensor | None = None, batch_size: int = 256) -> torch.Tensor:
        """The images at ``indices`` (default: all) decoded into one (N, C, size, size) uint8 tensor."""
        idx = torch.arange(len(self)) if indices is None else indices.cpu().long()
        out = torch.empty(len(idx), self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        pos = 0
        for images in self.stream(list(idx.split(batch_size))):
            out[pos : pos + len(images)] = images.cpu()
            pos += len(images)
        return out.to(self.device)


def folder_data(files: Sequence[Path], labels: Sequence[int], image_size: int, grayscale: bool = False) -> FolderData:
    """A :class:`FolderData` of ``files`` (as listed by ``list_image_folder``) with their class indices."""
    targets = torch.tensor(list(labels), dtype=torch.int64)  # (N,)
    return FolderData(tuple(str(f) for f in files), targets, image_size, grayscale)


__all__ = ["WORKERS_ENV", "FolderData", "decode_image", "default_workers", "folder_data"]
