"""Build generated C into a shared library with the system C compiler, cached by content hash."""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from latprune._version import __version__
from latprune.engine.isa import Isa, host_isa
from latprune.errors import EngineError

CSRC_DIR = Path(__file__).parent / "csrc"
BASE_CFLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-ffp-contract=fast", "-fno-math-errno", "-fopenmp")


def cache_dir() -> Path:
    """Per-user cache of built libraries: ``$LATPRUNE_CACHE/engine`` or ``~/.cache/latprune/engine``."""
    root = os.environ.get("LATPRUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "latprune"
    )
    path = Path(root) / "engine"
    path.mkdir(parents=True, exist_ok=True)
    return path


@functools.cache
def find_compiler() -> list[str]:
    """The C compiler command: ``$CC`` if set, else ``cc``; one clear error if neither runs."""
    cc = shlex.split(os.environ.get("CC", "") or "cc")
    if not cc or shutil.which(cc[0]) is None:
        raise EngineError(
            f"No C compiler found (CC={os.environ.get('CC', '')!r}, tried '{cc[0] if cc else 'cc'}'); install gcc "
            "or clang, or set CC to one, or pass backend='torch' to run without the sparse engine."
        )
    return cc


@functools.cache
def compiler_version() -> str:
    """First line of ``$CC --version`` (part of fingerprints and of the cache key)."""
    out = subprocess.run([*find_compiler(), "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else "unknown"


def cflags(isa: Isa | None = None) -> list[str]:
    """Compiler flags for ``isa`` (default: the host's), plus ``$LATPRUNE_CFLAGS``."""
    isa = isa or host_isa()
    extra = shlex.split(os.environ.get("LATPRUNE_CFLAGS", ""))
    return [*BASE_CFLAGS, *isa.cflags, *extra]


def build_shared_library(source: str, isa: Isa | None = None) -> Path:
    """Compile ``source`` into a cached shared library and return its path.

    The cache key covers the source, compiler, flags and latprune version, so a hit is always safe;
    the library is built in a temporary file and renamed, so concurrent builds never see half a file.
    """
    flags = [*cflags(isa), f"-I{CSRC_DIR}"]
    cc = find_compiler()
    # Kernel sources and headers are #included from CSRC_DIR, so their contents are part of the key.
    csrc = [f.read_text() for f in sorted(CSRC_DIR.glob("*.[ch]"))]
    key = hashlib.sha256("\0".join([source, *csrc, *cc, compiler_version(), *flags, __version__]).encode())
    key = key.hexdigest()[:24]
    lib = cache_dir() / f"lp_{key}.so"
    if lib.exists():
        return lib
    with tempfile.TemporaryDirectory(prefix="latprune-build-") as tmp:
        src = Path(tmp) / "model.c"
        src.write_text(source)
        out = Path(tmp) / "model.so"
        proc = subprocess.run([*cc, *flags, str(src), "-o", str(out), "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            keep = cache_dir() / f"failed_{key}.c"
            keep.write_text(source)
            lines = proc.stderr.strip().splitlines()
            first_error = next((ln for ln in lines if "error" in ln), lines[0] if lines else "no message")
            raise EngineError(
                f"The C compiler '{cc[0]}' failed to build the generated code (kept at {keep}): {first_error}"
            )
        fd, tmp_lib = tempfile.mkstemp(dir=cache_dir(), suffix=".so.tmp")
        os.close(fd)
        shutil.copyfile(out, tmp_lib)
        os.replace(tmp_lib, lib)
    return lib


def load_library(path: Path) -> ctypes.CDLL:
    """Load a built library with ctypes."""
    return ctypes.CDLL(str(path))
