"""Was the machine busy while latprune timed something? Read from the timings themselves, so a result says so.

Two signals, both free to collect while timing:

- the calling thread's CPU time over the wall time of the timed calls. With one engine / ORT / torch thread all
  work runs on the calling thread, so on a quiet machine the ratio is about 1; when other processes hold the
  cores the OS preempts the timed thread and the ratio drops (0.5 here with two CPU-bound jobs on two cores),
  even when the medians look steady. It says nothing with several threads (the work is on other threads), so
  it is only taken for one-thread timing;
- the spread of interleaved rounds: the slowest round's median over the fastest one's. A burst of load makes
  some rounds slow; this VM's own speed flips by ~1.5x when idle, so only a 2x spread counts.

Timed results carry a :class:`LoadCheck`; the report, ``latprune bench`` and latency profiles warn when it
says busy, and a profile keeps it so the warning repeats wherever the profile is used.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Below this CPU / wall ratio the timed thread was preempted for over a fifth of the time.
CPU_RATIO_MIN = 0.8
#: Above this (slowest round median / fastest - 1) the rounds disagree by 2x.
SPREAD_MAX = 1.0


@dataclass(frozen=True)
class LoadCheck:
    """What the timings say about load: ``cpu_ratio`` (None: not one-thread timing) and ``spread`` (None: one
    round). Both None means nothing was measured, which is not a warning."""

    cpu_ratio: float | None = None
    spread: float | None = None

    def reason(self) -> str | None:
        """Why the machine looked busy, as a clause, or None when it did not."""
        why = []
        if self.cpu_ratio is not None and self.cpu_ratio < CPU_RATIO_MIN:
            why.append(f"the timed thread ran only {self.cpu_ratio:.0%} of the wall time")
        if self.spread is not None and self.spread > SPREAD_MAX:
            why.append(f"the slowest timing round took {1 + self.spread:.1f}x the fastest")
        return " and ".join(why) or None

    @property
    def busy(self) -> bool:
        return self.reason() is not None

    def to_json(self) -> dict[str, Any]:
        r = self.reason()
        return {
            "cpu_ratio": None if self.cpu_ratio is None else round(self.cpu_ratio, 4),
            "spread": None if self.spread is None else round(self.spread, 4),
            "busy": r is not None,
            "reason": r,
        }

    @classmethod
    def from_json(cls, d: Any) -> LoadCheck:
        """Read what :meth:`to_json` wrote; a missing or malformed record (older files) is "not measured"."""
        if not isinstance(d, dict):
            return cls()

        def num(key: str) -> float | None:
            v = d.get(key)
            return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

        return cls(num("cpu_ratio"), num("spread"))


def load_check(
    wall: Sequence[float], cpu: Sequence[float] | None = None, rounds: Sequence[float] | None = None
) -> LoadCheck:
    """The check of one timed thing: ``wall`` and ``cpu`` seconds of its timed calls (``cpu`` only for one-thread
    timing), and ``rounds``, its per-round statistic when it was timed in interleaved rounds."""
    ratio = None
    if cpu is not None and sum(wall) > 0:
        ratio = min(1.0, sum(cpu) / sum(wall))
    spread = None
    if rounds is not None and len(rounds) > 1 and min(rounds) > 0:
        spread = max(rounds) / min(rounds) - 1.0
    return LoadCheck(ratio, spread)


def worst(checks: Iterable[LoadCheck]) -> LoadCheck:
    """One check for several timed things: the lowest CPU ratio and the largest spread among them."""
    checks = list(checks)
    ratios = [c.cpu_ratio for c in checks if c.cpu_ratio is not None]
    spreads = [c.spread for c in checks if c.spread is not None]
    return LoadCheck(min(ratios) if ratios else None, max(spreads) if spreads else None)


def busy_warning(check: LoadCheck, what: str) -> str | None:
    """One sentence for people when ``check`` says busy (``what`` names the measurement), else None."""
    reason = check.reason()
    if reason is None:
        return None
    return (
        f"{what} was measured on a busy machine ({reason}), so its latencies may be inflated several-fold; "
        "rerun it on a quiet machine."
    )


class LoadMonitor:
    """Collects what timing loops saw, for a :class:`LoadCheck` at the end: the wall and calling-thread CPU seconds
    of every timed sample, and each timed item's per-round values."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.rounds: dict[int, list[float]] = {}

    def add_sample(self, wall: float, cpu: float) -> None:
        self.wall += wall
        self.cpu += cpu

    def add_round(self, item: int, value: float) -> None:
        self.rounds.setdefault(item, []).append(value)

    def check(self, threads: int) -> LoadCheck:
        """The worst over everything collected; the CPU ratio only counts for one-thread timing."""
        ratio = load_check([self.wall], [self.cpu] if threads == 1 else None)
        return worst([ratio, *(load_check([], None, r) for r in self.rounds.values())])


__all__ = ["CPU_RATIO_MIN", "SPREAD_MAX", "LoadCheck", "LoadMonitor", "busy_warning", "load_check", "worst"]
