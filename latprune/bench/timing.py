"""Timing several runtimes fairly on a machine whose speed flips: interleaved rounds, each keeping its best."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Wall-clock median and minimum, and the median CPU time of the calling thread, in milliseconds.

    With one thread every runtime here computes on the calling thread, so its CPU time is the latency
    minus the time the OS had it preempted: on a busy machine it is the steadier number to compare.
    """

    median_ms: float
    min_ms: float
    cpu_ms: float


def measure(fn: Callable[[], object], warmup: int, runs: int) -> Timing:
    """Time ``fn()`` ``runs`` times after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    return Timing(1e3 * statistics.median(wall), 1e3 * min(wall), 1e3 * statistics.median(cpu))


TIMING_ROUNDS = 10


def measure_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, runs: int, rounds: int = TIMING_ROUNDS
) -> dict[str, Timing]:
    """Time several runtimes in ``rounds`` interleaved rounds of ``runs / rounds`` calls; each keeps its best round.

    This machine (a VM) flips between a fast and a ~1.5x slower state every few seconds, for every runtime
    alike. Timing runtimes one after the other let a slow spell land on one of them and move a speed-up by 50%;
    each runtime's fastest round median (and fastest round CPU-time median) repeats to a few percent.
    """
    per_round = max(5, runs // rounds)
    best: dict[str, Timing] = {}
    for r in range(rounds):
        for name, fn in fns.items():
            t = measure(fn, warmup if r == 0 else 2, per_round)
            old = best.get(name)
            best[name] = (
                t
                if old is None
                else Timing(min(old.median_ms, t.median_ms), min(old.min_ms, t.min_ms), min(old.cpu_ms, t.cpu_ms))
            )
    return best


__all__ = ["TIMING_ROUNDS", "Timing", "measure", "measure_interleaved"]
