"""Training and evaluation: a resumable SGD loop with atomic checkpoints, and rebuilding models from checkpoints."""

from latprune.train.admm import ADMMHook
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
from latprune.train.distill import DistillHook
from latprune.train.distributed import DistEnv, dist_env, init_distributed
from latprune.train.finetune import FinetuneConfig, finetune
from latprune.train.gmp import GMPHook
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
    "ADMMHook",
    "BaselinePreset",
    "DistEnv",
    "DistillHook",
    "EvalResult",
    "FinetuneConfig",
    "GMPHook",
    "ModelSpec",
    "TrainConfig",
    "TrainHook",
    "TrainResult",
    "checkpoint_meta",
    "dist_env",
    "evaluate",
    "evaluate_checkpoint",
    "finetune",
    "format_history_table",
    "format_summary",
    "init_distributed",
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
