"""Device fingerprints: the CPU, ISA, compiler and engine build that latency profiles and tuning choices depend on."""

from __future__ import annotations

import hashlib
import os
import platform
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from latprune._version import __version__

_ENGINE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DeviceFingerprint:
    """Everything that changes measured latency apart from the model: hardware, toolchain and engine code.

    ``engine_hash`` digests the engine's C sources and kernel modules, so a profile taken before a kernel
    changed is recognised as stale even when the version number did not move.
    """

    cpu_model: str
    machine: str
    isa: str
    cores: int
    compiler: str
    cflags: tuple[str, ...]
    latprune_version: str
    engine_hash: str

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["cflags"] = list(self.cflags)
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DeviceFingerprint:
        names = {f.name for f in fields(cls)}
        if not isinstance(d, dict) or set(d) != names:
            raise ValueError(f"fingerprint needs exactly the keys {sorted(names)}")
        return cls(**{**d, "cflags": tuple(str(f) for f in d["cflags"]), "cores": int(d["cores"])})

    def differences(self, other: DeviceFingerprint) -> list[str]:
        """Human-readable 'field: this vs other' for every field that differs."""
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(
                    f"{f.name} {' '.join(a) if isinstance(a, tuple) else a!s} vs "
                    f"{' '.join(b) if isinstance(b, tuple) else b!s}"
                )
        return out


def engine_hash() -> str:
    """A short digest of the engine's C sources and kernel/dispatch Python code (the engine's real version)."""
    h = hashlib.sha256()
    files = sorted(
        [*_ENGINE_DIR.glob("csrc/*.[ch]"), *_ENGINE_DIR.glob("kernels/*.py"), *_ENGINE_DIR.glob("*.py")],
        key=lambda p: p.relative_to(_ENGINE_DIR).as_posix(),
    )
    for f in files:
        h.update(f.relative_to(_ENGINE_DIR).as_posix().encode())
        h.update(b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def current_fingerprint() -> DeviceFingerprint:
    """The fingerprint of this machine with the engine as installed now."""
    from latprune.engine.build import cflags, compiler_version
    from latprune.engine.isa import cpu_model, host_isa

    isa = host_isa()
    return DeviceFingerprint(
        cpu_model=cpu_model(),
        machine=platform.machine(),
        isa=isa.name,
        cores=os.cpu_count() or 1,
        compiler=compiler_version(),
        cflags=tuple(cflags(isa)),
        latprune_version=__version__,
        engine_hash=engine_hash(),
    )
