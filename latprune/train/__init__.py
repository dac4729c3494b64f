"""Training and evaluation: a resumable SGD loop with atomic checkpoints, and rebuilding models from checkpoints."""

from latprune.train.baseline import (
    BASELINE_DIR,
    BASELINE_PRESETS,
    BaselinePreset,
    format_history_table,
    format_summary,
    train_baseline,
)
from latprune.train.checkpoint import checkpoint_meta, load_model_from_checkpoint, resolve_checkpoint_path
from latprune.train.config import ModelSpec, TrainConfig
from latprune.train.loop import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    TrainHook,
    TrainResult,
    evaluate,
    lr_factor,
    make_optimizer,
    train_model,
    train_one_epoch,
    unwrap,
)
from latprune.train.run import EvalResult, evaluate_checkpoint, train_zoo_model

__all__ = [
    "BASELINE_DIR",
    "BASELINE_PRESETS",
    "CHECKPOINT_NAME",
    "METRICS_NAME",
    "BaselinePreset",
    "EvalResult",
    "ModelSpec",
    "TrainConfig",
    "TrainHook",
    "TrainResult",
    "checkpoint_meta",
    "evaluate",
    "evaluate_checkpoint",
    "format_history_table",
    "format_summary",
    "load_model_from_checkpoint",
    "lr_factor",
    "make_optimizer",
    "resolve_checkpoint_path",
    "train_baseline",
    "train_model",
    "train_one_epoch",
    "train_zoo_model",
    "unwrap",
]
