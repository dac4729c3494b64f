"""Atomic file writes, so that a kill at any moment never leaves a half-written result or checkpoint; and the
lock that gives one job at a time each output folder or file."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
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
        why = "is not a regular file (a folder, pipe or device)" if path.exists() else "does not exist"
        raise LatpruneError(f"The {what} '{path}' {why}; check the path.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LatpruneError(
            f"The {what} '{path}' is not valid JSON ({exc.__class__.__name__} at {getattr(exc, 'pos', '?')}); "
            "it may be truncated, so regenerate it."
        ) from None


#: The lock file inside an output folder; a file output ``DIR/NAME`` is locked through ``DIR/.NAME.latprune.lock``.
LOCK_NAME = ".latprune.lock"
# Lock files this process holds: a job that calls another job on its own folder must not refuse itself.
_HELD: set[str] = set()


@contextlib.contextmanager
def output_lock(
    path: str | os.PathLike[str],
    *,
    file: bool = False,
    flag: str = "--out",
    must_exist: bool = False,
    mode: int = 0o777,
) -> Iterator[Path]:
    """Check that ``path`` can take a job's output, then hold an exclusive lock on it until the job ends.

    Two jobs writing one folder both "succeeded" and left one's results, or timed each other's load; the lock
    refuses the second in one sentence naming the first one's PID. It is ``fcntl.flock`` on a lock file holding
    the PID, so the kernel releases it when its holder dies, even by kill -9, and a killed job simply resumes.
    Checking here, at the start of the job, also turns an ``--out`` that is a file (or a folder, for a ``file``
    output) or cannot be written into one sentence before any work, not after it. Under torchrun only rank 0
    (which writes) takes the lock. Yields ``path``, whose folder (``path`` itself unless ``file``) exists; a
    folder made here is removed again if the job fails before writing anything into it. ``must_exist`` is for
    an input folder the job also writes into (a search run): a missing one is refused, not created. ``mode``:
    the permissions of the folders made (less the umask).
    """
    path = Path(path)
    if must_exist and not path.is_dir():
        raise LatpruneError(f"{flag} '{path}' is not an existing folder; check the path.")
    folder = path.parent if file else path
    made = not folder.exists()
    _check_output(path, file, flag, mode)
    lock = folder / (f".{path.name}{LOCK_NAME}" if file else LOCK_NAME)
    key = os.path.realpath(lock)
    if key in _HELD or os.environ.get("RANK", "0") not in ("", "0"):  # held by this job, or by torchrun's rank 0
        yield path
        return
    fd = _acquire(lock, path, flag)
    _HELD.add(key)
    failed = False
    try:
        yield path
    except BaseException:
        failed = True
        raise
    finally:
        _HELD.discard(key)
        with contextlib.suppress(OSError):
            lock.unlink()  # before the unlock: a job that opened this file now sees it gone and makes a new one
        os.close(fd)
        if failed and made:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when still empty: a refused job leaves no folder behind


def locks_output(
    param: str, *, file: bool = False, flag: str = "--out", must_exist: bool = False
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Run the decorated job under :func:`output_lock` on its argument ``param`` ("out_dir", or "job.out_dir"
    for an attribute of one), so a library call is as safe as the command that makes it."""
    name, *attrs = param.split(".")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args: Any, **kwargs: Any) -> Any:
            target = signature.bind(*args, **kwargs).arguments[name]
            for attr in attrs:
                target = getattr(target, attr)
            with output_lock(target, file=file, flag=flag, must_exist=must_exist):
                return fn(*args, **kwargs)

        return locked

    return decorate


def _check_output(path: Path, file: bool, flag: str, mode: int) -> None:
    """One sentence when ``path`` cannot be the output asked for; creates the folder it goes in."""
    try:
        kind: int | None = path.stat().st_mode
    except FileNotFoundError:
        kind = None
    except OSError as exc:
        raise _unwritable(path, exc, flag) from None
    if kind is not None and file and stat.S_ISDIR(kind):
        raise LatpruneError(f"{flag} '{path}' is a folder; pass the path of a file to write.")
    if kind is not None and file and not stat.S_ISREG(kind):
        raise LatpruneError(f"{flag} '{path}' is not a regular file (a device or pipe); pass a file path to write.")
    if kind is not None and not file and not stat.S_ISDIR(kind):
        raise LatpruneError(f"{flag} '{path}' is a file, not a folder; pass a folder path to {flag}.")
    folder = path.parent if file else path
    try:
        folder.mkdir(mode=mode, parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, exc, flag) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise _unwritable(path, PermissionError(13, "Permission denied"), flag)


def _unwritable(path: Path, exc: OSError, flag: str) -> LatpruneError:
    why = exc.strerror or type(exc).__name__
    return LatpruneError(f"{flag} '{path}' cannot be written ({why}); pick another {flag} or fix its permissions.")


def _acquire(lock: Path, path: Path, flag: str) -> int:
    """Open and lock ``lock`` without waiting, write this PID into it, and return its descriptor."""
    while True:
        try:  # never through a symbolic link, nor blocking on a pipe: someone else may have put the file there
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise _unwritable(path, exc, flag) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # truncating a hard link would clobber its target
            os.close(fd)
            raise LatpruneError(f"'{lock}' is not a lock file latprune made (a link or a device); remove it.")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            pid = f"PID {holder}" if holder.isdigit() else "its PID is not written yet"
            raise LatpruneError(
                f"{flag} '{path}' is in use by another latprune job ({pid}); wait for it to finish, or pick another "
                f"{flag}."
            ) from None
        try:
            same = os.stat(lock, follow_symlinks=False).st_ino == st.st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder removed it between our open and our lock: lock the file that is there now
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd
