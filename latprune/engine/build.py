"""Build generated C into a shared library with the system C compiler, cached by content hash."""

from __future__ import annotations

import ctypes
import functools
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from latprune._version import __version__
from latprune.engine.isa import Isa, host_isa
from latprune.engine.trust import cache_key, lookup, private_dir, store, verify_library
from latprune.errors import EngineError

CSRC_DIR = Path(__file__).parent / "csrc"
BASE_CFLAGS = ("-O3", "-std=gnu11", "-fPIC", "-shared", "-ffp-contract=fast", "-fno-math-errno", "-fopenmp")


def cache_dir() -> Path:
    """Per-user cache of built libraries: ``$LATPRUNE_CACHE/engine`` or ``~/.cache/latprune/engine``.

    Created owner-only; refused when another user owns it or could write to it (see :mod:`latprune.engine.trust`).
    """
    root = os.environ.get("LATPRUNE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "latprune"
    )
    return private_dir(Path(root) / "engine", "engine cache folder")


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


_KERNEL_INCLUDE = re.compile(r'^#include "(lp_\w+\.c)"\s*$', re.MULTILINE)
_ISA_DEFINE = re.compile(r"^#define LP_[A-Z0-9_]+ \d+\s*$", re.MULTILINE)
_ENTRY = re.compile(r"^((?:void|int) lp_\w+\([^;{]*\))\s*\{", re.MULTILINE)


def _compile(cc: list[str], args: list[str], source: str, key: str, what: str) -> None:
    """Run the compiler; on failure keep the source in the cache and raise one sentence with the first error."""
    proc = subprocess.run([*cc, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        keep = cache_dir() / f"failed_{key}.c"
        keep.write_text(source)
        lines = proc.stderr.strip().splitlines()
        first_error = next((ln for ln in lines if "error" in ln), lines[0] if lines else "no message")
        raise EngineError(f"The C compiler '{cc[0]}' failed to build {what} (kept at {keep}): {first_error}")


def isa_prelude(source: str) -> str:
    """The ``#define LP_... <number>`` lines before ``#include "lp_common.h"`` in ``source``: the ISA's lane count
    and tile shapes (``Isa.c_defines``), which the kernels compiled apart from the source must see too."""
    head = source.partition('#include "lp_common.h"')[0]
    return "".join(m.group(0).strip() + "\n" for m in _ISA_DEFINE.finditer(head))


def kernel_object(names: tuple[str, ...], prelude: str, cc: list[str], flags: list[str]) -> Path:
    """The kernel sources ``names`` (files of CSRC_DIR) compiled once, after ``prelude`` (the ISA's #defines), into a
    cached position-independent object.

    Every model links the same object instead of compiling the kernels again inside its own source: the kernels
    are most of the C a model compiles (about 7 s of gcc per model, against well under a second for the rest).
    """
    texts = [(CSRC_DIR / n).read_text() for n in names]
    headers = [f.read_text() for f in sorted(CSRC_DIR.glob("*.h"))]  # every header a kernel may include
    cache = cache_dir()
    key = cache_key(cache, [*names, *texts, *headers, prelude, *cc, compiler_version(), *flags, __version__])
    obj = lookup(cache, f"lpk_{key}", ".o")
    if obj is not None:
        return obj
    source = "\n".join([prelude.rstrip("\n"), '#include "lp_common.h"', *(f'#include "{n}"' for n in names)])
    with tempfile.TemporaryDirectory(prefix="latprune-build-") as tmp:
        src, out = Path(tmp) / "kernels.c", Path(tmp) / "kernels.o"
        src.write_text(source + "\n")
        _compile(cc, [*flags, "-c", str(src), "-o", str(out)], source, key, "the engine's kernels")
        return store(cache, f"lpk_{key}", ".o", out)


def split_kernels(source: str) -> tuple[str, tuple[str, ...]]:
    """``source`` with its ``#include "lp_*.c"`` kernel sources replaced by declarations of their entry points,
    and the names of those sources (what :func:`kernel_object` compiles separately)."""
    names = tuple(_KERNEL_INCLUDE.findall(source))
    decls = []
    for name in names:
        for signature in _ENTRY.findall((CSRC_DIR / name).read_text()):
            decls.append(" ".join(signature.split()) + ";")
    stripped = _KERNEL_INCLUDE.sub("", source, count=0)
    head, sep, rest = stripped.partition('#include "lp_common.h"')
    if not sep:
        return source, ()
    return head + sep + "\n" + "\n".join(decls) + rest, names


def build_shared_library(source: str, isa: Isa | None = None) -> Path:
    """Compile ``source`` into a cached shared library and return its path.

    The kernel sources it includes are compiled once into a shared object file (:func:`kernel_object`) and
    linked, so a model's build compiles only its own code. The cache key covers the source, the kernel sources,
    compiler, flags and latprune version, so a hit is always safe; the library is built in a temporary file and
    stored under a name of its own content with its sha256 beside it (:func:`latprune.engine.trust.store`), so
    concurrent builds never see half a file and :func:`load_library` can verify it.
    """
    flags = [*cflags(isa), f"-I{CSRC_DIR}"]
    cc = find_compiler()
    # Kernel sources and headers are #included from CSRC_DIR, so their contents are part of the key.
    csrc = [f.read_text() for f in sorted(CSRC_DIR.glob("*.[ch]"))]
    cache = cache_dir()
    key = cache_key(cache, [source, *csrc, *cc, compiler_version(), *flags, __version__])
    lib = lookup(cache, f"lp_{key}", ".so")
    if lib is not None:
        return lib
    glue, names = split_kernels(source)
    prelude = isa_prelude(source)
    objects = []
    if names and prelude:
        objects = [str(kernel_object(names, prelude, cc, [f for f in flags if f != "-shared"]))]
    else:
        glue = source
    with tempfile.TemporaryDirectory(prefix="latprune-build-") as tmp:
        src, out = Path(tmp) / "model.c", Path(tmp) / "model.so"
        src.write_text(glue)
        _compile(cc, [*flags, str(src), *objects, "-o", str(out), "-lm"], source, key, "the generated code")
        return store(cache, f"lp_{key}", ".so", out)


def load_library(path: Path, sha256: str | None = None) -> ctypes.CDLL:
    """Load a built library with ctypes, once it is verified: in a folder only its owner can write, and with
    the sha256 recorded when it was built (its cache sidecar, or ``sha256`` from a saved model's manifest)."""
    verify_library(Path(path), sha256)
    return ctypes.CDLL(str(path))
