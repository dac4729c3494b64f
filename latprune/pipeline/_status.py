"""``status.json`` of a `latprune run`: which stages are done, what each produced, how long it took; a rerun with
the same settings resumes at the first stage not done (checked field by field, default-aware)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latprune._io import atomic_write_json, read_json
from latprune.errors import LatpruneError
from latprune.pipeline._config import STAGES, RunConfig

RUN_FORMAT = "latprune.run/1"
# Settings that may change between a run and its resumption: they only change how results are measured or shown.
_RESUMABLE = frozenset(
    (
        "threads",
        "timing_runs",
        "device",
        "export",
        "checkpoint",
        "profile",
        "force_profile",
        "profile_grid",
        "redo_from",
        "runtimes",
        "workers",
    )
)
# A run recorded before a field existed ran with its default (as the search driver's check).
_DEFAULTS = {
    f.name: list(f.default) if isinstance(f.default, tuple) else f.default
    for f in dataclasses.fields(RunConfig)
    if f.default is not dataclasses.MISSING
}


class Status:
    """``status.json``: which stages are done, what each produced, and how long it took."""

    def __init__(self, out_dir: Path, config: RunConfig) -> None:
        self.path = out_dir / "status.json"
        self.stages = config.stages
        self.data: dict[str, Any] = {"format": RUN_FORMAT, "config": config.to_dict(), "stages": {}}
        if self.path.exists():
            saved = read_json(self.path, what="run status")
            if saved.get("format") != RUN_FORMAT:
                raise LatpruneError(f"'{self.path}' is not a latprune run status; choose another --out.")
            _check_same_run(self.path, saved["config"], self.data["config"])
            self.data["stages"] = saved.get("stages", {})
            if config.redo_from is not None:
                for stage in STAGES[STAGES.index(config.redo_from) :]:
                    self.data["stages"].pop(stage, None)
        self.save()

    def done(self, stage: str) -> dict[str, Any] | None:
        entry = self.data["stages"].get(stage)
        return entry if entry and entry.get("done") else None

    def start(self, stage: str) -> None:
        self.data["current"] = stage
        self.data["stages"].setdefault(stage, {})["started"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        self.save()

    def finish(self, stage: str, seconds: float, **outputs: Any) -> None:
        self.data["stages"][stage] |= {"done": True, "seconds": round(seconds, 2), **outputs}
        self.data["current"] = None
        self.save()

    def save(self) -> None:
        atomic_write_json(self.path, self.data)


def _check_same_run(path: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    for key, value in now.items():
        if key not in _RESUMABLE and saved.get(key, _DEFAULTS.get(key)) != value:
            raise LatpruneError(
                f"The run in '{path.parent}' was started with {key}={saved.get(key)!r}, not {value!r}; rerun with the "
                "same setting to resume it, or choose another --out."
            )


def stage(status: Status, name: str, text: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one stage unless ``status.json`` says it is done; returns its recorded outputs."""
    at = f"[{status.stages.index(name) + 1}/{len(status.stages)}] {name}"
    done = status.done(name)
    if done is not None:
        print(f"{at}: done earlier ({text})")
        return done
    print(f"\n{at}: {text}")
    status.start(name)
    t0 = time.perf_counter()
    outputs = fn()
    status.finish(name, time.perf_counter() - t0, **outputs)
    return status.done(name) or {}
