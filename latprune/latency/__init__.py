"""Latency: profile a device once over a grid of layer shapes, then predict any pruned architecture (JCW §2.5)."""

from latprune.engine.fingerprint import DeviceFingerprint, current_fingerprint
from latprune.latency.grid import GridConfig
from latprune.latency.jobs import (
    Measurements,
    ProfileJobs,
    TimingConfig,
    assemble_profile,
    emit_jobs,
    load_jobs,
    load_measurements,
    save_jobs,
    save_measurements,
)
from latprune.latency.measure import measure_jobs
from latprune.latency.predictor import TrilinearPredictor
from latprune.latency.profile import (
    AdditiveTerm,
    LatencyProfile,
    LatencyTable,
    LayerSignature,
    load_profile,
    save_profile,
)
from latprune.latency.profiling import ProfileConfig, assemble, make_jobs, model_space, profile_model
from latprune.latency.sampling import sample_archs
from latprune.latency.validate import (
    LatencyValidation,
    ValidationConfig,
    latency_stats,
    validate_latency,
    write_validation,
)

__all__ = [
    "AdditiveTerm",
    "DeviceFingerprint",
    "GridConfig",
    "LatencyProfile",
    "LatencyTable",
    "LatencyValidation",
    "LayerSignature",
    "Measurements",
    "ProfileConfig",
    "ProfileJobs",
    "TimingConfig",
    "TrilinearPredictor",
    "ValidationConfig",
    "assemble",
    "assemble_profile",
    "current_fingerprint",
    "emit_jobs",
    "latency_stats",
    "load_jobs",
    "load_measurements",
    "load_profile",
    "make_jobs",
    "measure_jobs",
    "model_space",
    "profile_model",
    "sample_archs",
    "save_jobs",
    "save_measurements",
    "save_profile",
    "validate_latency",
    "write_validation",
]
