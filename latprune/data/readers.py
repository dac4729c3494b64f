"""Readers for IDX (MNIST, Fashion-MNIST), CIFAR python batches and ImageNet-layout image folders, to uint8."""

from __future__ import annotations

import gzip
import io
import pickle
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from latprune.errors import DataError

# IDX type codes (http://yann.lecun.com/exdb/mnist/): only unsigned bytes occur in MNIST-family files.
_IDX_UBYTE = 0x08
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def _read_bytes(path: Path) -> bytes:
    """Read a file, transparently un-gzipping ``*.gz``; a truncated gzip stream names the file."""
    if not path.is_file():
        raise DataError(f"The dataset file '{path}' does not exist; download it again or fix the data path.")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"The dataset file '{path}' is truncated or corrupt ({exc.__class__.__name__}); download it again."
        ) from None


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (gzipped or raw) into a uint8 tensor of the shape its header declares.

    The header is checked against the payload size, so a truncated download fails here with the file's
    name rather than later as a reshape error deep in training.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"The file '{path}' is not an IDX file (bad magic number); download it again.")
    if raw[2] != _IDX_UBYTE:
        raise DataError(f"The IDX file '{path}' holds type code {raw[2]:#x}, but latprune reads only uint8 (0x08).")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"The IDX file '{path}' has a truncated header; download it again.")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(
            f"The IDX file '{path}' holds {len(raw) - header} data bytes but its header declares {expected} "
            "(truncated or corrupt); download it again."
        )
    data = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)  # (N, H, W) images or (N,) labels
    return torch.from_numpy(data.copy())


def read_idx_pair(images_path: str | Path, labels_path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read an IDX images/labels pair into (N, 1, H, W) uint8 images and (N,) int64 labels."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dim() != 3:
        raise DataError(
            f"The IDX file '{images_path}' should hold (N, H, W) images but has shape {tuple(images.shape)}."
        )
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"The label file '{labels_path}' holds {labels.shape[0]} labels for {images.shape[0]} images; "
            "the pair does not match, so download both again."
        )
    return images.unsqueeze(1), labels.long()  # (N, 1, H, W)


#: Element types a CIFAR batch's arrays may have (pixels are uint8; labels, when stored as an array, integers).
_CIFAR_DTYPES = frozenset(np.dtype(t) for t in ("u1", "i1", "u2", "i2", "u4", "i4", "u8", "i8"))


class _Refused(pickle.UnpicklingError):
    """Something a CIFAR batch never holds (as opposed to a truncated stream); the message names it."""


class _NdarrayName:
    """What the name ``numpy.ndarray`` resolves to: only a tag for ``_reconstruct``, never a callable class."""


def _cifar_dtype(spec: object, align: object = False, copy: object = True) -> np.dtype:
    """``numpy.dtype`` for the restricted unpickler: only the plain integer types above (no object arrays)."""
    if not isinstance(spec, (str, bytes)):
        raise _Refused(f"a dtype built from a {type(spec).__name__}")
    try:
        dtype = np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else spec)
    except (TypeError, ValueError, UnicodeDecodeError):
        raise _Refused(f"the dtype {spec!r}") from None
    if dtype not in _CIFAR_DTYPES:
        raise _Refused(f"an array of dtype {dtype}")
    return dtype


def _cifar_reconstruct(cls: object, shape: object, dtype: object) -> np.ndarray:
    """``numpy.core.multiarray._reconstruct``: an empty plain ndarray that BUILD then fills (see ``_build``)."""
    if cls is not _NdarrayName:
        raise _Refused(f"an array of class {cls!r}")
    return np.ndarray((0,), dtype=np.uint8)


def _cifar_frombuffer(buf: object, dtype: object, shape: object, order: object) -> np.ndarray:
    """``numpy._core.numeric._frombuffer`` (how protocol 5 pickles arrays)."""
    if not isinstance(dtype, np.dtype) or dtype not in _CIFAR_DTYPES or not isinstance(buf, (bytes, bytearray)):
        raise _Refused("an array of an unexpected type")
    if not isinstance(shape, tuple) or not all(type(d) is int for d in shape):
        raise _Refused(f"an array of shape {shape!r}")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order="F" if order == "F" else "C").copy()


def _latin1(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode`` as Python 3 writes bytes at pickle protocol 2; any other codec is refused."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _Refused(f"a call of _codecs.encode with {encoding!r}")
    return text.encode("latin1")


_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _cifar_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _cifar_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _cifar_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _cifar_frombuffer,
    ("numpy", "ndarray"): _NdarrayName,
    ("numpy", "dtype"): _cifar_dtype,
    ("_codecs", "encode"): _latin1,
}


class _CifarUnpickler(pickle._Unpickler):  # the Python unpickler: its BUILD opcode can be replaced
    """Builds only what a CIFAR batch holds: dicts, lists, bytes, str, ints and integer numpy arrays.

    The python-pickle format needs an unpickler, and a plain one calls any function a file names (a crafted
    batch ran ``os.system``). Here ``find_class`` resolves only the few numpy constructors above, each checking
    its arguments, and BUILD (which sets an object's state) fills only a fresh ndarray from raw bytes; any other
    global or state is refused before it is used.
    """

    dispatch: ClassVar[dict[int, Callable[..., None]]] = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> object:
        found = _CIFAR_GLOBALS.get((module, name))
        if found is None:
            raise _Refused(f"a reference to {module}.{name}")
        return found

    def _build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, np.dtype):  # numpy pickles a dtype's state too; accept only the builtin one's own
            if state != inst.__reduce__()[2]:
                raise _Refused(f"an altered {inst} dtype")
            return
        ok = isinstance(inst, np.ndarray) and inst.size == 0 and isinstance(state, tuple) and len(state) == 5
        if ok:
            _, shape, dtype, fortran, raw = state
            ok = isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)
            ok = ok and isinstance(dtype, np.dtype) and dtype in _CIFAR_DTYPES and isinstance(raw, (bytes, str))
        if not ok:
            raise _Refused(f"the state of a {type(inst).__name__}")
        raw = raw.encode("latin1") if isinstance(raw, str) else raw
        inst.__setstate__((1, shape, dtype, bool(fortran), raw))  # numpy checks len(raw) against the shape

    dispatch[pickle.BUILD[0]] = _build


def read_cifar_batch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one CIFAR-10/100 python pickle batch into (N, 3, 32, 32) uint8 images and (N,) int64 labels.

    CIFAR-10 batches store ``labels``, CIFAR-100 files store ``fine_labels``; both keep rows of 3072 bytes,
    channel-major (1024 R, 1024 G, 1024 B). The pickle is read with a restricted unpickler
    (:class:`_CifarUnpickler`) that builds only dicts, lists, bytes, str, ints and integer numpy arrays, so a
    crafted file cannot run code; it is refused in one sentence instead.
    """
    path = Path(path)
    raw = _read_bytes(path)
    try:
        entry = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except _Refused as exc:
        raise DataError(
            f"The CIFAR batch '{path}' holds {exc}, which is not part of a CIFAR batch, so it was refused "
            "unread (unpickling it could run code); download the dataset again from its official source."
        ) from None
    except Exception as exc:  # pickle raises many types on truncated input
        raise DataError(
            f"The CIFAR batch '{path}' cannot be unpickled ({exc.__class__.__name__}); it is truncated or corrupt, "
            "so download it again."
        ) from None
    if not isinstance(entry, dict):
        raise DataError(f"The CIFAR batch '{path}' holds a {type(entry).__name__}, not a batch dictionary.")
    entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
    label_key = "fine_labels" if "fine_labels" in entry else "labels"
    if "data" not in entry or label_key not in entry:
        raise DataError(f"The CIFAR batch '{path}' lacks 'data' or 'labels'; it is not a CIFAR python batch.")
    try:
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DataError(f"The CIFAR batch '{path}' has non-integer data or labels; download it again.") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.ndim != 1 or data.shape[0] != labels.shape[0]:
        raise DataError(
            f"The CIFAR batch '{path}' has data of shape {data.shape} for {labels.shape[0] if labels.ndim else 0} "
            "labels, expected (N, 3072); download it again."
        )
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())  # (N, 3072) -> (N, 3, 32, 32)
    return images, torch.from_numpy(labels)


def read_cifar(root: str | Path, train: bool, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Read the CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) split under ``root``."""
    root = Path(root)
    if num_classes == 10:
        names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    elif num_classes == 100:
        names = ["train"] if train else ["test"]
    else:
        raise DataError(f"CIFAR has 10 or 100 classes, not {num_classes}.")
    parts = [read_cifar_batch(root / name) for name in names]
    images = torch.cat([p[0] for p in parts])
    labels = torch.cat([p[1] for p in parts])
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise DataError(f"The CIFAR files under '{root}' hold labels outside 0..{num_classes - 1}; check the folder.")
    return images, labels


def resize_uint8(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize (N, C, H, W) uint8 images to ``size`` x ``size`` with antialiased bilinear filtering."""
    if images.shape[-2:] == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def list_image_folder(root: str | Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """List an ImageNet-layout folder: one subfolder per class (sorted names), images inside each.

    Returns the class names and (file, class index) pairs in a fixed order (class, then file name),
    so the same folder always gives the same dataset.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"The image folder '{root}' does not exist; pass a folder with one subfolder per class.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(f"The image folder '{root}' has no class subfolders; put each class's images in its own one.")
    samples: list[tuple[Path, int]] = []
    for index, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        samples.extend((f, index) for f in files)
    if not samples:
        raise DataError(f"The image folder '{root}' holds no images ({', '.join(IMAGE_SUFFIXES)}); check the path.")
    return classes, samples


def read_image_folder(
    root: str | Path, image_size: int, *, grayscale: bool = False, show_progress: bool = True
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Decode every image under ``root`` (class = subfolder) to (N, C, size, size) uint8, C = 1 or 3.

    Each image is resized (antialiased) straight to a square: fine for small, roughly square datasets held
    in memory. Larger folders are streamed instead (:class:`latprune.data.folder.FolderData`, chosen by
    ``load_dataset``). Returns images, int64 labels and class names.
    """
    from latprune.data.folder import decode_image

    classes, samples = list_image_folder(root)
    channels = 1 if grayscale else 3
    images = torch.empty(len(samples), channels, image_size, image_size, dtype=torch.uint8)
    labels = torch.empty(len(samples), dtype=torch.int64)
    for i, (path, label) in enumerate(tqdm(samples, desc=f"decode {Path(root).name}", disable=not show_progress)):
        images[i] = decode_image(path, image_size, grayscale)
        labels[i] = label
    return images, labels, classes
