"""The two halves of profiling: a jobs file written on the host, measurements taken on the device, then a profile.

``emit_jobs`` needs only the model and its search space; ``measure_jobs`` needs only the engine (it runs on
the phone or board being profiled); ``assemble_profile`` turns the measurements into a ``LatencyProfile``.
``latprune profile`` runs all three in one process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latprune._busy import LoadCheck
from latprune._io import atomic_write_json, read_json
from latprune.engine.fingerprint import DeviceFingerprint
from latprune.errors import LatpruneError, ProfileError
from latprune.latency.grid import GridConfig, plan_grids
from latprune.latency.predictor import TrilinearPredictor
from latprune.latency.profile import (
    AdditiveTerm,
    CalibrationPoint,
    GridSpec,
    LatencyProfile,
    LatencyTable,
    LayerSignature,
    ModelSpec,
)
from latprune.latency.sampling import sample_archs

JOBS_FORMAT = "latprune-latency-jobs"
MEASUREMENTS_FORMAT = "latprune-latency-measurements"
FORMAT_VERSION = 1
#: Version 2: tables hold kernel time with the layer runner's Python call overhead taken out (``call_overhead_ms``).
MEASUREMENTS_VERSION = 2


STATISTICS = ("median", "min", "cpu")


@dataclass(frozen=True)
class TimingConfig:
    """How to time each measurement, for layers and whole models alike.

    A sample is one or more back-to-back calls lasting at least ~1 ms (so a 10 µs layer is not dominated by the
    timer), taken ``repeats`` times after ``warmup`` calls. ``statistic`` reduces the samples: "median" of wall
    time (the default), "min" of wall time, or "cpu", the median of the calling thread's CPU time (single-thread
    runs only). On a shared machine a 30 ms model run is nearly always preempted while 1 ms layer samples mostly
    are not, so wall-clock medians of the two disagree there (measured here under load: 25-38 ms wall for 9.5 ms
    of CPU time on MobileNetV2). CPU time excludes the preemption; on a quiet device all three agree.
    """

    warmup: int = 2
    repeats: int = 7
    model_warmup: int = 5
    model_repeats: int = 30
    statistic: str = "median"
    model_rounds: int = 3  # whole models are timed in this many interleaved rounds (see measure.time_models)

    def __post_init__(self) -> None:
        if min(self.repeats, self.model_repeats) < 1 or min(self.warmup, self.model_warmup) < 0:
            raise ProfileError(
                f"Timing needs repeats >= 1 and warmup >= 0, got {self.repeats}/{self.model_repeats} repeats and "
                f"{self.warmup}/{self.model_warmup} warmup; pass positive --repeats."
            )
        if self.statistic not in STATISTICS:
            raise ProfileError(f"The timing statistic '{self.statistic}' is not one of {', '.join(STATISTICS)}.")

    def to_json(self) -> dict[str, Any]:
        return {
            "warmup": self.warmup,
            "repeats": self.repeats,
            "model_warmup": self.model_warmup,
            "model_repeats": self.model_repeats,
            "statistic": self.statistic,
            "model_rounds": self.model_rounds,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TimingConfig:
        return cls(
            int(d["warmup"]),
            int(d["repeats"]),
            int(d["model_warmup"]),
            int(d["model_repeats"]),
            str(d["statistic"]),
            int(d["model_rounds"]),
        )


def check_statistic(statistic: str, threads: int) -> None:
    """CPU time is one thread's; with more threads it would add up the workers' time instead of the latency."""
    if statistic == "cpu" and threads != 1:
        raise ProfileError(
            f"The 'cpu' timing statistic measures one thread's CPU time, so it needs 1 thread, not {threads}; "
            "use --statistic median or min."
        )


@dataclass(frozen=True)
class TableJob:
    """Measure one signature over its grid; weights are drawn from ``seed`` on the device."""

    signature: LayerSignature
    grid: GridSpec
    seed: int


@dataclass(frozen=True)
class ModelJob:
    """Measure one whole model end to end: the dense model, or a pruned architecture of the space."""

    name: str
    widths: tuple[float, ...] | None  # None: the unpruned model
    sparsities: tuple[float, ...] | None
    schemes: tuple[str, ...] | None = None  # per layer, where the space lets layers choose (None: the defaults)

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "widths": None if self.widths is None else list(self.widths),
            "sparsities": None if self.sparsities is None else list(self.sparsities),
        }
        if self.schemes is not None:  # absent from one-scheme jobs, so their files (and digests) stay as they were
            d["schemes"] = list(self.schemes)
        return d

    @classmethod
    def from_json(cls, m: dict[str, Any]) -> ModelJob:
        return cls(
            str(m["name"]),
            None if m["widths"] is None else tuple(float(w) for w in m["widths"]),
            None if m["sparsities"] is None else tuple(float(s) for s in m["sparsities"]),
            None if m.get("schemes") is None else tuple(str(s) for s in m["schemes"]),
        )

    def arch(self) -> Any:
        """The job's architecture (a ``latprune.space.Arch``); None for the unpruned model."""
        from latprune.space import Arch

        return None if self.widths is None else Arch(self.widths, self.sparsities or (), self.schemes or ())


@dataclass(frozen=True)
class ProfileJobs:
    """Everything the device needs to measure, and nothing about the host."""

    model: ModelSpec
    scheme: str
    threads: int
    grid_n: int
    grid_m: int
    timing: TimingConfig
    tables: tuple[TableJob, ...]
    models: tuple[ModelJob, ...]

    @property
    def n_points(self) -> int:
        return sum(len(t.grid.points()) for t in self.tables)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": JOBS_FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.model.to_dict(),
            "scheme": self.scheme,
            "threads": self.threads,
            "grid": {"n_channels": self.grid_n, "n_sparsity": self.grid_m},
            "timing": self.timing.to_json(),
            "tables": [
                {"key": t.signature.key, "signature": t.signature.to_json(), "grid": t.grid.to_json(), "seed": t.seed}
                for t in self.tables
            ],
            "models": [m.to_json() for m in self.models],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ProfileJobs:
        if not isinstance(d, dict) or d.get("format") != JOBS_FORMAT or d.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"it is not a version-{FORMAT_VERSION} latprune profiling jobs file")
        tables = []
        for t in d["tables"]:
            grid = GridSpec.from_json(t["grid"])
            grid.validate()
            tables.append(TableJob(LayerSignature.from_json(t["signature"]), grid, int(t["seed"])))
        models = tuple(ModelJob.from_json(m) for m in d["models"])
        return cls(
            ModelSpec.from_dict(d["model"]),
            str(d["scheme"]),
            int(d["threads"]),
            int(d["grid"]["n_channels"]),
            int(d["grid"]["n_sparsity"]),
            TimingConfig.from_json(d["timing"]),
            tuple(tables),
            models,
        )

    def digest(self) -> str:
        """A hash of the canonical JSON, so measurements cannot be assembled against different jobs."""
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True, eq=False)
class Measurements:
    """What the device measured for a jobs file: one latency array per table, one latency per model (ms)."""

    jobs: ProfileJobs
    fingerprint: DeviceFingerprint
    tables: tuple[np.ndarray, ...]  # same order as jobs.tables, each shaped like its grid
    models: tuple[float, ...]  # same order as jobs.models
    seconds: float
    call_overhead_ms: float = 0.0  # median Python-to-C call overhead taken out of every table point
    load: LoadCheck = field(default_factory=LoadCheck)  # whether the machine looked busy while measuring

    def to_json(self) -> dict[str, Any]:
        return {
            "format": MEASUREMENTS_FORMAT,
            "format_version": MEASUREMENTS_VERSION,
            "jobs_digest": self.jobs.digest(),
            "fingerprint": self.fingerprint.to_json(),
            "seconds": round(self.seconds, 3),
            "call_overhead_ms": round(self.call_overhead_ms, 6),
            "load": self.load.to_json(),
            "tables": [
                {"key": j.signature.key, "ms": np.round(ms, 6).tolist()}
                for j, ms in zip(self.jobs.tables, self.tables, strict=True)
            ],
            "models": [
                {"name": j.name, "ms": round(ms, 6)} for j, ms in zip(self.jobs.models, self.models, strict=True)
            ],
            "jobs": self.jobs.to_json(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Measurements:
        if not isinstance(d, dict) or d.get("format") != MEASUREMENTS_FORMAT:
            raise ValueError("it is not a latprune measurements file")
        if d.get("format_version") != MEASUREMENTS_VERSION:
            raise ValueError(
                f"it is format {d.get('format_version')}, not {MEASUREMENTS_VERSION}; measure the jobs again with "
                "`latprune measure`"
            )
        jobs = ProfileJobs.from_json(d["jobs"])
        if d["jobs_digest"] != jobs.digest():
            raise ValueError("its embedded jobs were edited after measuring")
        if len(d["tables"]) != len(jobs.tables) or len(d["models"]) != len(jobs.models):
            raise ValueError("it holds a different number of tables or models than its jobs")
        tables = []
        for job, t in zip(jobs.tables, d["tables"], strict=True):
            ms = np.asarray(t["ms"], dtype=np.float64)
            if t["key"] != job.signature.key or ms.shape != job.grid.shape:
                raise ValueError(f"table {t['key']} does not match its job")
            tables.append(ms)
        return cls(
            jobs,
            DeviceFingerprint.from_json(d["fingerprint"]),
            tuple(tables),
            tuple(float(m["ms"]) for m in d["models"]),
            float(d["seconds"]),
            float(d["call_overhead_ms"]),
            LoadCheck.from_json(d.get("load")),
        )


def _load(path: str | Path, what: str, parse: Any) -> Any:
    try:
        data = read_json(path, what=what)
    except LatpruneError as exc:
        raise ProfileError(str(exc)) from None
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        why = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ProfileError(f"The {what} '{path}' is corrupt or incomplete ({why}); write it again.") from None


def save_jobs(jobs: ProfileJobs, path: str | Path) -> Path:
    return atomic_write_json(path, jobs.to_json())


def load_jobs(path: str | Path) -> ProfileJobs:
    return _load(path, "profiling jobs file", ProfileJobs.from_json)


def save_measurements(m: Measurements, path: str | Path) -> Path:
    return atomic_write_json(path, m.to_json())


def load_measurements(path: str | Path) -> Measurements:
    return _load(path, "measurements file", Measurements.from_json)


def emit_jobs(
    model: ModelSpec,
    space: Any,
    *,
    threads: int,
    grid: GridConfig,
    timing: TimingConfig,
    calibration_models: int,
    seed: int,
) -> ProfileJobs:
    """The profiling jobs of ``space``: one table per distinct layer signature, plus whole-model calibration.

    Calibration measures the dense model, the smallest model of the space, and ``calibration_models - 2``
    random ones spread over the latency range (drawn from ``seed``, a stream validation never uses), so the
    additive term's slope is pinned down across the whole range, not just near the mean. Two parameters from
    8 points on a loaded machine were not pinned down (scales from 1.0 to 1.7 between runs); 24 are cheap.
    """
    if threads < 1:
        raise ProfileError(f"The thread count must be at least 1, got {threads}; pass e.g. --threads 1.")
    check_statistic(timing.statistic, threads)
    rng = np.random.default_rng(seed)
    grids = plan_grids(space, grid, rng)
    tables = tuple(
        TableJob(sig, g, int(s)) for (sig, g), s in zip(grids, rng.integers(0, 2**31, len(grids)), strict=True)
    )
    models = [ModelJob("dense", None, None)]
    if calibration_models >= 2:
        g, n_layers = len(space.groups), len(space.layers)
        smallest = np.array(space.xl)  # thinnest widths, highest sparsities, default schemes
        smallest[g : g + n_layers] = space.xu[g : g + n_layers]
        xs = [smallest, *sample_archs(space, rng, calibration_models - 2, "spread")]
        for i, x in enumerate(xs):
            arch = space.decode(np.asarray(x))
            schemes = arch.schemes if getattr(space, "n_choices", 0) else None
            models.append(ModelJob("smallest" if i == 0 else f"random{i}", arch.widths, arch.sparsities, schemes))
    return ProfileJobs(model, space.scheme, threads, grid.n_channels, grid.n_sparsity, timing, tables, tuple(models))


def assemble_profile(m: Measurements, space: Any) -> LatencyProfile:
    """Build the profile from ``m``: the tables as measured, the additive term fitted to the whole models."""
    jobs = m.jobs
    tables = tuple(LatencyTable(j.signature, j.grid, ms) for j, ms in zip(jobs.tables, m.tables, strict=True))
    bare = LatencyProfile(
        fingerprint=m.fingerprint,
        threads=jobs.threads,
        model=jobs.model,
        scheme=jobs.scheme,
        tables=tables,
        additive=AdditiveTerm(0.0, 1.0),
        grid_n=jobs.grid_n,
        grid_m=jobs.grid_m,
        build_seconds=m.seconds,
        statistic=jobs.timing.statistic,
        layer_overhead_ms=m.call_overhead_ms,
        load=m.load,
    )
    predictor = TrilinearPredictor(bare, space)
    points = []
    for job, measured in zip(jobs.models, m.models, strict=True):
        arch = space.dense_arch() if job.widths is None else job.arch()
        x = _encode_unbounded(space, arch)
        layer_sum = float(predictor.predict(x[None])[0])
        points.append(CalibrationPoint(job.name, layer_sum, measured, float(predictor.weight_mb(x[None])[0])))
    return dataclasses.replace(bare, additive=AdditiveTerm.fit(points))


def _encode_unbounded(space: Any, arch: Any) -> np.ndarray:
    """Encode ``arch`` ignoring the space's bounds: the jobs may come from a space with other bounds (or a
    restricted one) than the default-bounds space the host rebuilds to assemble the profile."""
    from latprune.space import SearchSpace

    wide = SearchSpace(
        space.groups, space.layers, space.input_size, space.in_channels, space.num_classes, space.scheme,
        np.zeros(space.n_var, dtype=np.int64), np.full(space.n_var, 10, dtype=np.int64),
    )  # fmt: skip
    return wide.encode(arch)
