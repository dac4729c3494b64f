"""Profile a zoo model's search space on this device: emit the jobs, measure them, assemble the profile."""

from __future__ import annotations

from dataclasses import dataclass, field

from latprune._limits import check_seed
from latprune.errors import ProfileError
from latprune.latency.grid import GridConfig
from latprune.latency.jobs import Measurements, ProfileJobs, TimingConfig, assemble_profile, emit_jobs
from latprune.latency.measure import build_model, measure_jobs
from latprune.latency.profile import LatencyProfile
from latprune.models import ModelSpec


@dataclass(frozen=True)
class ProfileConfig:
    """How to profile: threads (as the engine will run the model), sparsity scheme, grid, timing, calibration."""

    threads: int = 1
    scheme: str = "group4"
    grid: GridConfig = field(default_factory=GridConfig)
    timing: TimingConfig = field(default_factory=TimingConfig)
    calibration_models: int = 24  # whole models measured to fit the additive term (dense, smallest, random)
    seed: int = 0

    def __post_init__(self) -> None:
        check_seed(self.seed)


def model_space(spec: ModelSpec, scheme: str) -> object:
    """The default search space of ``spec``'s zoo model for ``scheme`` (what the profile's tables cover)."""
    from latprune.space import SearchSpace

    model, _ = build_model(spec)
    return SearchSpace.from_model(model, spec.input_size, spec.in_channels, scheme=scheme)


def make_jobs(spec: ModelSpec, config: ProfileConfig) -> ProfileJobs:
    """The profiling jobs for ``spec`` (host side; nothing is timed)."""
    space = model_space(spec, config.scheme)
    return emit_jobs(
        spec,
        space,
        threads=config.threads,
        grid=config.grid,
        timing=config.timing,
        calibration_models=config.calibration_models,
        seed=config.seed,
    )


def assemble(measurements: Measurements) -> LatencyProfile:
    """The profile of device measurements (host side), rebuilding the space the jobs were made for."""
    jobs = measurements.jobs
    space = model_space(jobs.model, jobs.scheme)
    return assemble_profile(measurements, space)


def profile_model(spec: ModelSpec, config: ProfileConfig, progress: bool = True) -> LatencyProfile:
    """Profile ``spec`` on this machine in one process: jobs -> measurements -> profile."""
    if config.calibration_models < 1:
        raise ProfileError(
            f"Profiling needs at least one whole-model measurement (the dense model), got "
            f"{config.calibration_models}; pass --calibration 1 or more."
        )
    return assemble(measure_jobs(make_jobs(spec, config), progress=progress))
