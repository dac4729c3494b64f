"""Atomic file writes, so that a kill at any moment never leaves a half-written result or checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

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
