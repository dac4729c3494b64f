"""Known datasets, where to find them on disk, and loading them into memory as uint8 tensors (or, for image
folders too large for memory, as a file list streamed from disk)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from latprune._limits import check_seed
from latprune.data.folder import FolderData, folder_data
from latprune.data.readers import list_image_folder, read_cifar, read_idx_pair, read_image_folder
from latprune.data.sampling import stratified_split
from latprune.data.transforms import Augment
from latprune.errors import DataError

SYSTEM_DATA_DIR = Path("/usr/share/datasets")
#: An image folder whose decoded pixels would exceed this many bytes is streamed from disk by worker processes
#: (:class:`~latprune.data.folder.FolderData`) instead of decoded into memory; ``$LATPRUNE_DATA_IN_MEMORY`` sets it.
IN_MEMORY_ENV = "LATPRUNE_DATA_IN_MEMORY"
DEFAULT_IN_MEMORY_BYTES = 2 * 1024**3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_FOLDER_IMAGE_SIZE = 224


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about a dataset: classes, channels, resolution, normalisation, augmentation."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = field(default_factory=Augment)
    class_names: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class ImageData:
    """A dataset held in memory: (N, C, H, W) uint8 images and (N,) int64 labels on one device."""

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise DataError(f"Images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} {self.images.shape}.")
        if self.labels.shape != (self.images.shape[0],):
            raise DataError(f"{self.labels.shape[0]} labels do not match {self.images.shape[0]} images.")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, indices: torch.Tensor) -> ImageData:
        """The images at ``indices`` (a copy, so the parent can be freed)."""
        idx = indices.to(self.images.device)
        return ImageData(self.images[idx], self.labels[idx])

    def to(self, device: str | torch.device) -> ImageData:
        return ImageData(self.images.to(device), self.labels.to(device))


#: A split of a dataset: in memory, or an image folder streamed from disk. Both have labels, len, subset and to.
Images = ImageData | FolderData


def in_memory(data: Images) -> ImageData:
    """``data`` with its pixels in memory: streamed folders are decoded (by worker processes) into one tensor.

    For subsets that are read again and again, such as the super-net's few images per class.
    """
    if isinstance(data, ImageData):
        return data
    return ImageData(data.decode(), data.labels.to(data.device))


def in_memory_limit() -> int:
    """Bytes of decoded pixels above which an image folder is streamed (see :data:`IN_MEMORY_ENV`)."""
    raw = os.environ.get(IN_MEMORY_ENV, "").strip()
    if not raw:
        return DEFAULT_IN_MEMORY_BYTES
    if not raw.isdigit():
        raise DataError(f"{IN_MEMORY_ENV}={raw!r} is not a number of bytes; set it like 2000000000, or unset it.")
    return int(raw)


@dataclass(frozen=True)
class _Known:
    """A dataset latprune can find by name: its files and statistics."""

    files: tuple[str, ...]  # relative paths that must all exist (".gz" optional for IDX files)
    subdir: str | None  # the standard archive's own folder name, looked for inside a candidate root
    info: DatasetInfo


_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")
_KNOWN: dict[str, _Known] = {
    "fashion-mnist": _Known(
        _IDX_FILES,
        None,
        DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), Augment(2, True), _FMNIST_CLASSES),
    ),
    # Digits are not mirror-symmetric, so no flip.
    "mnist": _Known(
        _IDX_FILES, None, DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), Augment(2, False), tuple("0123456789"))
    ),
    "cifar10": _Known(
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"),
        "cifar-10-batches-py",
        DatasetInfo("cifar10", 10, 3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), Augment(4, True)),
    ),
    "cifar100": _Known(
        ("train", "test"),
        "cifar-100-python",
        DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), Augment(4, True)),
    ),
}
_ALIASES = {"fashion_mnist": "fashion-mnist", "fmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar-100": "cifar100"}


def list_datasets() -> list[str]:
    """Names ``--data`` understands besides a path to an image folder."""
    return sorted(_KNOWN)


def canonical_name(name: str) -> str:
    key = name.strip().lower()
    return _ALIASES.get(key, key)


def _holds_files(folder: Path, files: Sequence[str], gz_optional: bool) -> bool:
    def present(rel: str) -> bool:
        return (folder / rel).is_file() or (gz_optional and (folder / f"{rel}.gz").is_file())

    return folder.is_dir() and all(present(f) for f in files)


def _candidate_roots(name: str) -> list[Path]:
    """Where ``name`` is looked for, in order: $LATPRUNE_DATA (itself, then /name), the user cache, the system."""
    roots: list[Path] = []
    env = os.environ.get("LATPRUNE_DATA")
    if env:
        roots += [Path(env).expanduser(), Path(env).expanduser() / name]
    roots += [Path.home() / ".cache" / "latprune" / "data" / name, SYSTEM_DATA_DIR / name]
    return roots


def find_dataset_root(name: str) -> Path:
    """The folder holding dataset ``name``'s files, or an image folder when ``name`` is a path to one.

    Known names are searched in $LATPRUNE_DATA (the folder itself or $LATPRUNE_DATA/<name>),
    ~/.cache/latprune/data/<name>, then /usr/share/datasets/<name>; the first complete copy wins.
    """
    key = canonical_name(name)
    if key not in _KNOWN:
        path = Path(name).expanduser()
        if path.is_dir():
            return path
        raise DataError(
            f"Unknown dataset '{name}'; use one of {', '.join(list_datasets())}, or a path to an image folder "
            "with one subfolder per class."
        )
    known = _KNOWN[key]
    for root in _candidate_roots(key):
        for folder in (root, root / known.subdir) if known.subdir else (root,):
            if _holds_files(folder, known.files, gz_optional=known.subdir is None):
                return folder
    if key == "fashion-mnist":
        hint = "install it with 'sudo apt-get install dataset-fashion-mnist', or put the four *-ubyte.gz files"
    else:
        hint = (
            f"put the files ({', '.join(known.files)}{' or its ' + known.subdir + '/ folder' if known.subdir else ''})"
        )
    raise DataError(
        f"Dataset '{key}' was not found; {hint} in ~/.cache/latprune/data/{key} (or set LATPRUNE_DATA to their folder)."
    )


def _idx_file(root: Path, stem: str) -> Path:
    return root / stem if (root / stem).is_file() else root / f"{stem}.gz"


def _folder_split(root: Path, train: bool) -> Path:
    """ImageNet layout: ``root/train`` and ``root/val`` (or ``root/test``); a bare class tree is train-only."""
    if train:
        return root / "train" if (root / "train").is_dir() else root
    for name in ("val", "test"):
        if (root / name).is_dir():
            return root / name
    raise DataError(
        f"The image folder '{root}' has no val/ or test/ subfolder, so it has no test split; "
        "arrange it as root/train/<class>/ and root/val/<class>/."
    )


def load_dataset(name: str, *, train: bool, image_size: int | None = None) -> tuple[Images, DatasetInfo]:
    """Load the train or test split of a known dataset (or an image folder).

    ``image_size`` only applies to image folders (default 224); the known datasets keep their native size.
    An image folder is decoded into memory when its pixels fit in :func:`in_memory_limit` bytes, else it is
    returned as a :class:`FolderData` that loaders stream from disk.
    """
    key = canonical_name(name)
    root = find_dataset_root(name)
    streamed: FolderData | None = None
    if key in ("fashion-mnist", "mnist"):
        prefix = "train" if train else "t10k"
        images, labels = read_idx_pair(
            _idx_file(root, f"{prefix}-images-idx3-ubyte"), _idx_file(root, f"{prefix}-labels-idx1-ubyte")
        )
        info = _KNOWN[key].info
    elif key in ("cifar10", "cifar100"):
        info = _KNOWN[key].info
        images, labels = read_cifar(root, train, info.num_classes)
    else:
        size = image_size or DEFAULT_FOLDER_IMAGE_SIZE
        folder = _folder_split(root, train)
        classes, samples = list_image_folder(folder)
        if len(samples) * 3 * size * size > in_memory_limit():
            streamed = folder_data([f for f, _ in samples], [c for _, c in samples], size)
            labels = streamed.labels
        else:
            images, labels, classes = read_image_folder(folder, size)
        train_classes = classes if train else read_folder_classes(_folder_split(root, True))
        if tuple(classes) != tuple(train_classes):
            raise DataError(
                f"The image folder '{folder}' has classes that differ from its training folder's; "
                "give both the same class subfolders."
            )
        info = DatasetInfo(
            root.name, len(classes), 3, size, IMAGENET_MEAN, IMAGENET_STD, Augment(size // 8, True), tuple(classes)
        )
    if int(labels.max()) >= info.num_classes:
        raise DataError(f"The labels under '{root}' exceed the {info.num_classes} classes of '{key}'.")
    return (ImageData(images, labels) if streamed is None else streamed), info


def read_folder_classes(folder: Path) -> list[str]:
    """Class names of an image folder (sorted subfolder names), without decoding any image."""
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass(frozen=True)
class DataConfig:
    """Which dataset to load and how to carve the validation split out of its training set."""

    name: str = "fashion-mnist"
    val_per_class: int = 500
    split_seed: int = 0
    image_size: int | None = None

    def __post_init__(self) -> None:
        """Refuse now what loading would find out only after reading the whole dataset (or silently ignore)."""
        if self.val_per_class < 0:
            raise DataError(f"The validation split needs --val-per-class 0 or more, got {self.val_per_class}.")
        check_seed(self.split_seed, "--split-seed")
        if self.image_size is not None and self.image_size < 8:
            raise DataError(f"--image-size {self.image_size} is too small; pass at least 8 pixels, or leave it unset.")


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train (minus validation), validation (carved from train) and test data, with the dataset's info."""

    train: Images
    val: Images
    test: Images
    info: DatasetInfo


def load_splits(config: DataConfig) -> DataSplits:
    """Load a dataset and split it into train / val / test; the val split never overlaps test."""
    train_all, info = load_dataset(config.name, train=True, image_size=config.image_size)
    test, _ = load_dataset(config.name, train=False, image_size=config.image_size)
    train_idx, val_idx = stratified_split(train_all.labels, config.val_per_class, config.split_seed)
    return DataSplits(train_all.subset(train_idx), train_all.subset(val_idx), test, info)
