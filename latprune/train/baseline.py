"""Presets for the dense baseline (ResNet20 on Fashion-MNIST): the short demo and the ≥ 93.5% benchmark recipe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from latprune.data import DataConfig
from latprune.errors import LatpruneError
from latprune.train.config import TrainConfig
from latprune.train.loop import TrainResult
from latprune.train.run import train_zoo_model

# Later issues (search, fine-tuning) start from this checkpoint; keep the path stable.
BASELINE_DIR = Path("runs/baseline/resnet20-fashion-mnist")


@dataclass(frozen=True)
class BaselinePreset:
    """A named, fully specified baseline run."""

    model: str
    data: DataConfig
    train: TrainConfig
    out_dir: Path


BASELINE_PRESETS: dict[str, BaselinePreset] = {
    # Two epochs: enough to show the whole loop in a few minutes on 2 cores (a usable, not converged, model).
    "demo": BaselinePreset("resnet20", DataConfig("fashion-mnist"), TrainConfig(epochs=2), Path("runs/demo")),
    # The benchmark recipe: batch 128, lr 0.1 with Nesterov, wd 5e-4, cosine, crop pad 2 + flip, 30 epochs.
    "benchmark": BaselinePreset(
        "resnet20", DataConfig("fashion-mnist"), TrainConfig(epochs=30, warmup_epochs=1.0), BASELINE_DIR
    ),
}


def train_baseline(
    preset: str = "demo",
    *,
    out_dir: str | Path | None = None,
    device: str | None = None,
    threads: int | None = None,
    resume: bool = True,
    show_progress: bool = True,
) -> TrainResult:
    """Train (or resume, or just reload when finished) a baseline preset; prints a summary when ``show_progress``.

    Resuming is the default so that re-running a baseline after an interruption continues the run
    instead of refusing to overwrite it.
    """
    if preset not in BASELINE_PRESETS:
        raise LatpruneError(f"Unknown baseline preset '{preset}'; choose one of {', '.join(BASELINE_PRESETS)}.")
    p = BASELINE_PRESETS[preset]
    config = replace(p.train, device=device or p.train.device, threads=threads or p.train.threads)
    result = train_zoo_model(p.model, p.data, config, out_dir or p.out_dir, resume=resume, show_progress=show_progress)
    if show_progress:
        print(format_summary(result))
    return result


def format_history_table(history: Sequence[dict[str, float]]) -> str:
    """A plain-text table of a run's per-epoch metrics."""
    splits = [k[:-4] for k in (history[0] if history else {}) if k.endswith("_acc") and k != "train_acc"]
    split_heads = " ".join(f"{s:>7}" for s in splits)
    lines = [f"{'epoch':>5} {'lr':>8} {'loss':>7} {'train':>7} {split_heads} {'s/epoch':>8}"]
    for row in history:
        accs = " ".join(f"{row[f'{s}_acc']:>7.2%}" for s in splits)
        lines.append(
            f"{int(row['epoch']):>5} {row['lr']:>8.4f} {row['train_loss']:>7.4f} {row['train_acc']:>7.2%} {accs} "
            f"{row['train_seconds']:>8.1f}"
        )
    return "\n".join(lines)


def format_summary(result: TrainResult) -> str:
    """The history table followed by where the files went."""
    return (
        f"{format_history_table(result.history)}\n"
        f"checkpoint: {result.checkpoint_path}\nmetrics:    {result.metrics_path}"
    )
