"""Validate a latency profile: random architectures, compiled and measured end to end, against the prediction."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from latprune._io import atomic_write_json
from latprune._limits import check_seed
from latprune.errors import ProfileError
from latprune.latency.jobs import ModelJob, TimingConfig, check_statistic
from latprune.latency.measure import build_model, compile_model, time_models
from latprune.latency.predictor import TrilinearPredictor
from latprune.latency.profile import LatencyProfile
from latprune.latency.sampling import SAMPLINGS, sample_archs

VALIDATION_FORMAT = "latprune-latency-validation"


@dataclass(frozen=True)
class ValidationConfig:
    """How many random architectures to measure, from which seed, with how many timed runs each.

    The seed stream is separate from the profile's calibration stream, so the additive term is never
    fitted to the models it is judged on.
    """

    samples: int = 100
    seed: int = 1
    warmup: int = 5
    repeats: int = 30
    statistic: str = "median"  # "median", "min" or "cpu" (see TimingConfig)
    rounds: int = 3  # interleaved timing rounds over all models (see measure.time_models)
    sampling: str = "spread"  # "spread" (cover the latency range) or "uniform" (every variable independent)

    def __post_init__(self) -> None:
        check_seed(self.seed)
        if self.repeats < 1 or self.rounds < 1 or self.warmup < 0:
            raise ProfileError(
                f"Validation needs --repeats and rounds of at least 1 and a warm-up of 0 or more, got {self.repeats}, "
                f"{self.rounds} and {self.warmup}."
            )
        if self.samples < 2:
            raise ProfileError(f"Validation needs at least 2 samples to compute a correlation, got {self.samples}.")
        if self.sampling not in SAMPLINGS:
            raise ProfileError(f"The sampling '{self.sampling}' is not one of {', '.join(SAMPLINGS)}.")


@dataclass(frozen=True, eq=False)
class LatencyValidation:
    """Predicted and measured latency (ms) of each sampled architecture, with summary statistics."""

    archs: np.ndarray  # (n, n_var) int
    predicted: np.ndarray  # (n,)
    measured: np.ndarray  # (n,)
    stats: dict[str, float]

    def to_json(self, profile: LatencyProfile, config: ValidationConfig) -> dict[str, Any]:
        return {
            "format": VALIDATION_FORMAT,
            "format_version": 1,
            "model": profile.model.to_dict(),
            "threads": profile.threads,
            "device": profile.fingerprint.cpu_model,
            "engine_hash": profile.fingerprint.engine_hash,
            "seed": config.seed,
            "statistic": config.statistic,
            "rounds": config.rounds,
            "sampling": config.sampling,
            "samples": int(self.archs.shape[0]),
            "stats": {k: round(v, 6) for k, v in self.stats.items()},
            "additive": profile.additive.to_json(),
            "models": [
                {"x": x.tolist(), "predicted_ms": round(float(p), 6), "measured_ms": round(float(m), 6)}
                for x, p, m in zip(self.archs, self.predicted, self.measured, strict=True)
            ],
        }


def latency_stats(predicted: np.ndarray, measured: np.ndarray) -> dict[str, float]:
    """Pearson r, MAPE (%), signed mean error (%), and the shares (%) within ±5% and ±10% of the measurement."""
    predicted, measured = np.asarray(predicted, float), np.asarray(measured, float)
    rel = (predicted - measured) / measured
    r = float(np.corrcoef(predicted, measured)[0, 1]) if np.ptp(measured) > 0 and np.ptp(predicted) > 0 else 0.0
    return {
        "pearson_r": r,
        "mape_pct": float(np.mean(np.abs(rel)) * 100),
        "mean_error_pct": float(np.mean(rel) * 100),
        "within_5_pct": float(np.mean(np.abs(rel) <= 0.05) * 100),
        "within_10_pct": float(np.mean(np.abs(rel) <= 0.10) * 100),
        "measured_min_ms": float(measured.min()),
        "measured_max_ms": float(measured.max()),
    }


def validate_latency(
    profile: LatencyProfile, space: Any, config: ValidationConfig, progress: bool = True
) -> LatencyValidation:
    """Sample ``config.samples`` architectures of ``space``, predict them, then compile and time each one."""
    check_statistic(config.statistic, profile.threads)
    predictor = TrilinearPredictor(profile, space)
    rng = np.random.default_rng([config.seed, 1])
    xs = sample_archs(space, rng, config.samples, config.sampling)  # (n, n_var)
    predicted = predictor.predict(xs)
    calls = []
    for i, x in enumerate(tqdm(xs, desc="compile", unit="model", disable=not progress)):
        arch = space.decode(x)
        model, schemes = build_model(
            profile.model, ModelJob(f"sample{i}", arch.widths, arch.sparsities, arch.schemes), space.scheme, space
        )
        calls.append(compile_model(model, schemes, profile.model, profile.threads))
    timing = TimingConfig(
        model_warmup=config.warmup, model_repeats=config.repeats, statistic=config.statistic, model_rounds=config.rounds
    )
    measured = np.array(time_models(calls, timing, progress))
    return LatencyValidation(xs, predicted, measured, latency_stats(predicted, measured))


def write_validation(
    result: LatencyValidation, profile: LatencyProfile, config: ValidationConfig, out_dir: str | Path, tag: str = ""
) -> tuple[Path, Path]:
    """Write ``validation{tag}.json`` and a predicted-vs-measured scatter ``validation{tag}.png`` into ``out_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    json_path = atomic_write_json(out_dir / f"validation{tag}.json", result.to_json(profile, config))
    s = result.stats
    fig, ax = plt.subplots(figsize=(5, 5))
    lo = 0.95 * min(result.measured.min(), result.predicted.min())
    hi = 1.05 * max(result.measured.max(), result.predicted.max())
    ax.fill_between([lo, hi], [lo * 0.9, hi * 0.9], [lo * 1.1, hi * 1.1], color="0.9", label="±10%")
    ax.plot([lo, hi], [lo, hi], "k-", lw=1, label="y = x")
    ax.scatter(result.measured, result.predicted, s=12, alpha=0.8)
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="measured latency (ms)", ylabel="predicted latency (ms)")
    ax.set_title(
        f"{profile.model.name} {profile.model.input_size}px, {profile.threads} thread(s)\n"
        f"r={s['pearson_r']:.4f}  MAPE={s['mape_pct']:.2f}%  ±10%: {s['within_10_pct']:.0f}%",
        fontsize=10,
    )
    ax.legend(loc="upper left")
    fig.tight_layout()
    png_path = out_dir / f"validation{tag}.png"
    tmp = out_dir / f".validation{tag}.tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(png_path)
    return json_path, png_path
