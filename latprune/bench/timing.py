"""Timing several runtimes fairly on a machine whose speed flips: interleaved rounds, each keeping its best."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from latprune._busy import LoadCheck, load_check, worst


@dataclass(frozen=True)
class Timing:
    """Wall-clock median and minimum, and the median CPU time of the calling thread, in milliseconds.

    With one thread every runtime here computes on the calling thread, so its CPU time is the latency
    minus the time the OS had it preempted: on a busy machine it is the steadier number to compare.
    """

    median_ms: float
    min_ms: float
    cpu_ms: float
    load: LoadCheck = field(default_factory=LoadCheck)  # did the machine look busy meanwhile (latprune._busy)


def measure(fn: Callable[[], object], warmup: int, runs: int, threads: int = 1) -> Timing:
    """Time ``fn()`` ``runs`` times after ``warmup`` untimed calls (``threads``: how many the runtime uses)."""
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(runs):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
    load = load_check(wall, cpu if threads == 1 else None)
    return Timing(1e3 * statistics.median(wall), 1e3 * min(wall), 1e3 * statistics.median(cpu), load)


TIMING_ROUNDS = 10


def measure_interleaved(
    fns: dict[str, Callable[[], object]], warmup: int, runs: int, rounds: int = TIMING_ROUNDS, threads: int = 1
) -> dict[str, Timing]:
    """Time several runtimes in ``rounds`` interleaved rounds of ``runs / rounds`` calls; each keeps its best round.

    This machine (a VM) flips between a fast and a ~1.5x slower state every few seconds, for every runtime
    alike. Timing runtimes one after the other let a slow spell land on one of them and move a speed-up by 50%;
    each runtime's fastest round median (and fastest round CPU-time median) repeats to a few percent. Each
    result's ``load`` says whether the machine was busy meanwhile: its lowest CPU / wall ratio of a round
    (one-thread runtimes only) and the spread of its round medians.
    """
    per_round = max(5, runs // rounds)
    timed: dict[str, list[Timing]] = {name: [] for name in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            timed[name].append(measure(fn, warmup if r == 0 else 2, per_round, threads))
    best = {}
    for name, ts in timed.items():
        spread = load_check([], None, [t.median_ms for t in ts])
        load = worst([spread, *(t.load for t in ts)])
        best[name] = Timing(min(t.median_ms for t in ts), min(t.min_ms for t in ts), min(t.cpu_ms for t in ts), load)
    return best


__all__ = ["TIMING_ROUNDS", "Timing", "measure", "measure_interleaved"]
