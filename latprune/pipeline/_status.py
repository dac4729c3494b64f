"""``status.json`` of a `latprune run`: which stages are done, what each produced, how long it took; a rerun with
the same settings resumes at the first stage not done (checked field by field, default-aware)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from latprune._io import LOCK_NAME, atomic_write_json, read_json
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
#: The first stage each setting changes (the others: "baseline"), see _check_same_run.
_SETTING_STAGE = {
    **dict.fromkeys(("preset", "population", "generations", "mode", "selection", "latency_budget_ms"), "search"),
    "top_k": "select",
    **dict.fromkeys(("finetune_method", "finetune_epochs", "finetune_lr", "distill"), "retrain"),
}
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
            if not _is_status(saved):
                raise LatpruneError(f"'{self.path}' is not a latprune run status, or is damaged; choose another --out.")
            stages = saved.get("stages", {})
            done = {name for name, entry in stages.items() if entry.get("done")}
            _check_same_run(self.path, saved["config"], self.data["config"], done)
            self.data["stages"] = stages
            if config.redo_from is not None:
                for stage in STAGES[STAGES.index(config.redo_from) :]:
                    self.data["stages"].pop(stage, None)
        elif any(p.name != LOCK_NAME for p in out_dir.iterdir()):  # a fresh run would overwrite what is there
            raise LatpruneError(
                f"The folder '{out_dir}' holds other files but no latprune run (status.json); pick a new or empty "
                "--out, so that nothing in it is overwritten."
            )
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


def _is_status(saved: Any) -> bool:
    """Whether a status.json holds what Status reads (an edited or foreign one is refused, not a traceback)."""
    if not isinstance(saved, dict) or saved.get("format") != RUN_FORMAT or not isinstance(saved.get("config"), dict):
        return False
    stages = saved.get("stages", {})
    return isinstance(stages, dict) and all(isinstance(entry, dict) for entry in stages.values())


def _check_same_run(path: Path, saved: dict[str, Any], now: dict[str, Any], done: set[str]) -> None:
    """Refuse a setting that differs from what a finished stage used; one that no finished stage used yet may
    change, so a run refused for a bad value (an impossible --latency-budget) is corrected in the same folder.
    A run recorded before a field existed ran with its default."""
    for key, value in now.items():
        if (
            key not in _RESUMABLE
            and _SETTING_STAGE.get(key, "baseline") in done
            and saved.get(key, _DEFAULTS.get(key)) != value
        ):
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
