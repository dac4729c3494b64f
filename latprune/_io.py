"""Atomic file writes, so that a kill at any moment never leaves a half-written result or checkpoint."""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from latprune.errors import LatpruneError

# mkstemp creates files readable by their owner only; results should get the permissions a plain open() gives.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write through a temporary file in the same directory, fsync it, then rename over ``path``.

    ``os.replace`` is atomic on POSIX and Windows, so readers see either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Atomically replace ``path`` with ``data``."""
    return _atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically replace ``path`` with UTF-8 ``text``."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (keys kept in insertion order, so diffs stay readable)."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


#: What a checkpoint may hold besides containers: ``load_checkpoint`` reads with ``weights_only=True``, which refuses
#: every other Python object, so a crafted file cannot run code when it is loaded.
#: Exact types: a numpy.float64 is a float subclass, but torch pickles it as a numpy object that it then refuses.
_PLAIN_LEAVES = (str, int, float, bool, type(None))


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value of ``obj`` that is not a tensor or plain JSON-like data.

    Writers call this before saving, so that everything latprune writes loads back under ``weights_only=True``
    (a numpy scalar or a config object in a checkpoint would otherwise make the file unloadable).
    """
    if type(obj) in _PLAIN_LEAVES or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, collections.OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} holds a {type(obj).__module__}.{type(obj).__qualname__}; store plain data instead")


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` (checkpoints survive a kill -9 mid-write).

    ``obj`` must hold only tensors and plain data (see :func:`check_plain`): it is checked before anything is
    written, so what is saved always loads back with ``weights_only=True``.
    """
    check_plain(obj)
    return _atomic_write(path, lambda f: torch.save(obj, f))


def read_json(path: str | os.PathLike[str], what: str = "file") -> Any:
    """Load JSON, turning a missing or corrupt file into one sentence that names it."""
    path = Path(path)
    if not path.is_file():
        raise LatpruneError(f"The {what} '{path}' does not exist; check the path.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatpruneError(
            f"The {what} '{path}' is not valid JSON ({exc.__class__.__name__} at {getattr(exc, 'pos', '?')}); "
            "it may be truncated, so regenerate it."
        ) from None


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a latprune checkpoint dict, with one clear sentence for a missing or corrupt file.

    The file is read with ``weights_only=True``: torch's restricted unpickler builds only tensors and plain
    containers, so a crafted checkpoint (a pickle whose loading would call ``os.system``) is refused before
    any of its code runs. latprune writes nothing else into checkpoints (``atomic_torch_save`` checks).
    """
    path = Path(path)
    if not path.is_file():
        raise LatpruneError(f"The checkpoint '{path}' does not exist; train one with `latprune train` or fix the path.")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files saved by older versions
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc).lower().replace(" ", "_"):
            raise LatpruneError(
                f"The checkpoint '{path}' cannot be read (UnpicklingError); it is truncated or not a torch "
                "checkpoint, so retrain or copy it again."
            ) from None
        raise LatpruneError(
            f"The checkpoint '{path}' holds {_refused(exc)}, not only tensors and plain data, and latprune refuses "
            "to unpickle it because that could run code; use a checkpoint written by latprune."
        ) from None
    except Exception as exc:  # torch raises many types for truncated/corrupt zip files
        raise LatpruneError(
            f"The checkpoint '{path}' cannot be read ({exc.__class__.__name__}); it is truncated or not a "
            "torch checkpoint, so retrain or copy it again."
        ) from None
    if not isinstance(ckpt, dict):
        raise LatpruneError(f"The checkpoint '{path}' holds a {type(ckpt).__name__}, not a latprune checkpoint dict.")
    return ckpt


def _refused(exc: Exception) -> str:
    """What torch's restricted unpickler refused (e.g. the global ``posix.system``), from its long message."""
    found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"a reference to {found.group(1) or found.group(2)}"
    return "pickle instructions outside the safe subset"
