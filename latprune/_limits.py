"""What this machine can give a job, cores and memory, checked before the job starts rather than found out in it."""

from __future__ import annotations

import os

from latprune.errors import ArgumentError


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under taskset or a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def check_threads(threads: int | None, flag: str = "--threads") -> None:
    """Refuse a thread count below 1 or above the usable cores (None: the library's default, always fine).

    More threads than cores make each one wait for a core, as a busy machine does: ``--threads 1000`` ran 50x
    slower, and latencies measured that way were saved as if they were real.
    """
    if threads is None:
        return
    cores = usable_cores()
    if not 1 <= threads <= cores:
        raise ArgumentError(
            f"{flag} {threads} is not between 1 and the {cores} core(s) this process can use; pass {flag} "
            f"{min(max(threads, 1), cores)}, since more threads than cores only wait for each other."
        )


#: Seeds torch and numpy both take (torch.Generator.manual_seed overflows above a signed 64-bit integer).
MAX_SEED = 2**63 - 1


def check_seed(seed: int, flag: str = "--seed") -> None:
    """Refuse a seed numpy's or torch's generators would reject deep inside a job (negative, or past 64 bits)."""
    if not 0 <= seed <= MAX_SEED:
        raise ArgumentError(f"{flag} {seed} is not a seed; pass a whole number from 0 to {MAX_SEED}.")


def available_memory() -> int:
    """Bytes of memory a new allocation can get: MemAvailable from /proc/meminfo, else all physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 1 << 62  # unknown: refuse nothing


def check_memory(nbytes: float, what: str, fix: str) -> None:
    """Refuse, in one sentence, a job whose ``what`` alone needs more than the free memory (``fix``: what to do).

    Without it such a job died deep inside torch with an allocator traceback, or was killed by the OS.
    """
    free = available_memory()
    if nbytes > free:
        raise ArgumentError(
            f"{what} needs {_gb(nbytes)} of memory, more than the {_gb(free)} free on this machine; {fix}."
        )


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:.3g} GB" if nbytes < 1e15 else f"{nbytes:.2g} bytes"


__all__ = ["MAX_SEED", "available_memory", "check_memory", "check_seed", "check_threads", "usable_cores"]
