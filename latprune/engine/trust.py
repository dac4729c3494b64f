"""Loading compiled code only from places nobody else can write, and only the bytes that were built.

``ctypes`` runs a library's constructors the moment it loads it, so a library swapped into the engine cache
or into a saved model's folder is code execution. Three defences, checked before every load:

- the folder holding a library, and the library itself, must belong to this user (or root) and must not be
  writable by group or others: otherwise another user could plant or swap it, and root would run it;
- each cache entry is stored under a content-addressed name with a sidecar holding its sha256, written
  before the library appears, so a reader always finds a matching pair, and concurrent builders never
  overwrite each other's entry;
- cache names also hash a random per-cache salt (``salt``, readable by its owner only), so nobody else can
  predict which file a build will look for.
"""

from __future__ import annotations

import functools
import hashlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

from latprune.errors import EngineError

SIDECAR_SUFFIX = ".sha256"
_SALT_NAME = "salt"


def _owner_name(uid: int) -> str:
    try:
        import pwd

        return f"'{pwd.getpwuid(uid).pw_name}' (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def check_private(path: Path, what: str) -> os.stat_result:
    """Refuse ``path`` unless it is a real file or folder (no symlink) owned by this user or root and not
    writable by group or others; returns its ``lstat``."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise EngineError(f"The {what} '{path}' cannot be read ({exc.strerror}); check the path.") from None
    if stat.S_ISLNK(st.st_mode):
        raise EngineError(f"The {what} '{path}' is a symbolic link; latprune loads compiled code only from real files.")
    if st.st_uid not in (os.getuid(), 0):
        raise EngineError(
            f"The {what} '{path}' belongs to {_owner_name(st.st_uid)}, not to you, so it could hold code planted by "
            "them; use your own folder (e.g. set LATPRUNE_CACHE) or copy the files into one."
        )
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise EngineError(
            f"The {what} '{path}' is writable by group or others, who could swap compiled code in it; "
            f"run `chmod go-w '{path}'` or use another folder."
        )
    return st


def private_dir(path: Path, what: str) -> Path:
    """Create ``path`` owner-only (0700) if missing, then :func:`check_private` it; an owned folder that others
    can read (but not write) is narrowed to 0700, since nobody else could have planted anything in it."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineError(f"The {what} '{path}' cannot be created ({exc.strerror}); set LATPRUNE_CACHE.") from None
    st = check_private(path, what)
    if not stat.S_ISDIR(st.st_mode):
        raise EngineError(f"The {what} '{path}' is not a folder; remove it or set LATPRUNE_CACHE elsewhere.")
    if st.st_uid == os.getuid() and st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _salt(cache: Path) -> str:
    """The cache's random salt, created once (owner-only) and read by every process that uses the cache.

    It is written to a temporary file and hard-linked into place, so a concurrent process never reads it empty.
    """
    path = cache / _SALT_NAME
    if not os.path.lexists(path):
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=".salt.")  # created 0600
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(16))
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            os.unlink(tmp)
    check_private(path, "engine cache salt")
    return path.read_text().strip()


def cache_key(cache: Path, parts: list[str]) -> str:
    """A cache file stem from ``parts`` (source, flags, ...) and the cache's salt: unpredictable to others."""
    return hashlib.sha256("\0".join([_salt(cache), *parts]).encode()).hexdigest()[:24]


def read_verified(path: Path, sha256: str | None = None, what: str = "compiled library") -> bytes:
    """The bytes of ``path`` once its folder and itself pass :func:`check_private` and they hash to ``sha256``
    (default: the digest in the library's sidecar, ``<path>.sha256``)."""
    check_private(path.parent, f"folder of the {what}")
    st = check_private(path, what)
    if not stat.S_ISREG(st.st_mode):
        raise EngineError(f"The {what} '{path}' is not a regular file; rebuild it.")
    if sha256 is None:
        sidecar = path.with_name(path.name + SIDECAR_SUFFIX)
        if not sidecar.is_file():
            raise EngineError(f"The {what} '{path}' has no recorded sha256 ({sidecar.name}); delete it to rebuild it.")
        check_private(sidecar, f"sha256 record of the {what}")
        sha256 = sidecar.read_text().strip()
    data = path.read_bytes()
    if sha256_bytes(data) != sha256:
        raise EngineError(
            f"The {what} '{path}' does not match the sha256 recorded when it was built (replaced or corrupt); "
            "delete it to rebuild it, or save the model again."
        )
    return data


def verify_library(path: Path, sha256: str | None = None, what: str = "compiled library") -> str:
    """Check ``path`` before it is loaded (see :func:`read_verified`); returns its sha256."""
    return sha256_bytes(read_verified(Path(path), sha256, what))


def lookup(cache: Path, stem: str, suffix: str) -> Path | None:
    """A verified cache entry ``<stem>-<digest16><suffix>``, or None when there is none (or none verifies).

    An entry that fails verification is skipped, never loaded; the rebuild gets its own content-addressed name.
    """
    for path in sorted(cache.glob(f"{stem}-*{suffix}")):
        try:
            digest = verify_library(path, what="cached library")
        except EngineError:
            continue
        if path.name == f"{stem}-{digest[:16]}{suffix}":
            return path
    return None


def store(cache: Path, stem: str, suffix: str, built: Path) -> Path:
    """Install ``built`` as ``<stem>-<digest16><suffix>`` with its sidecar, both owner-only, and return it.

    The sidecar is written first and the library renamed into place last, so a reader never sees a library
    without its digest; the name depends on the content, so a concurrent build never replaces an entry.
    """
    data = built.read_bytes()
    digest = sha256_bytes(data)
    target = cache / f"{stem}-{digest[:16]}{suffix}"
    write_private(target.with_name(target.name + SIDECAR_SUFFIX), (digest + "\n").encode(), 0o600)
    write_private(target, data, 0o700 if suffix == ".so" else 0o600)
    return target


def write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` atomically to ``path`` with ``mode`` from the start (never briefly readable by others)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # created 0600
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = [
    "cache_key",
    "check_private",
    "lookup",
    "private_dir",
    "read_verified",
    "store",
    "verify_library",
    "write_private",
]
