"""Retraining a pruned model from its dense parent: masked fine-tuning, ADMM then masked retraining, or GMP.

Every method ends in the same place: the plan's channels removed and its weight masks attached as
parametrizations, trained with the zeros held, and saved as a pruned checkpoint that
``load_model_from_checkpoint`` (and so ``latprune eval``) rebuilds from the plan it carries.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from latprune._io import locks_output
from latprune._limits import check_threads
from latprune.data import BatchLoader, DataConfig, DataSplits, load_splits, make_loader
from latprune.errors import LatpruneError, ModelError, PlanError
from latprune.models import ModelSpec
from latprune.prune.apply import apply_plan, attach_masks, model_spec_from_checkpoint
from latprune.prune.plan import PruningPlan
from latprune.train.admm import ADMMHook
from latprune.train.checkpoint import (
    checkpoint_data_config,
    checkpoint_meta,
    load_model_from_checkpoint,
    resolve_checkpoint_path,
)
from latprune.train.config import DEVICES, TrainConfig
from latprune.train.distill import DistillHook
from latprune.train.distributed import init_distributed, is_main
from latprune.train.gmp import GMPHook, attach_dense_masks
from latprune.train.loop import CHECKPOINT_NAME, TrainHook, TrainResult, train_model
from latprune.train.run import eval_loaders

METHODS = ("masked", "admm", "gmp")
PLAN_NAME = "plan.json"
ADMM_DIR = "admm"  # the ADMM phase's run folder inside out_dir; the masked retraining is out_dir itself
# Settings that may change between a run and its resumption (where it runs, not what it computes).
_RUNTIME_FIELDS = frozenset({"device", "threads", "eval_batch_size"})


@dataclass(frozen=True)
class FinetuneConfig:
    """How to retrain a pruned model: the method, its SGD settings, and the options of ADMM, GMP and distillation.

    ``epochs`` is the masked training every method ends with (for GMP, the whole run, during which the masks
    tighten). ADMM first trains ``admm_epochs`` without masks under its penalty, then hard-prunes.
    """

    method: str = "masked"
    epochs: int = 10
    lr: float = 0.01
    batch_size: int = 128
    weight_decay: float = 5e-4
    momentum: float = 0.9
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    eval_batch_size: int = 1000
    # Knowledge distillation from the dense parent.
    distill: bool = False
    distill_temperature: float = 4.0
    distill_alpha: float = 0.5
    # ADMM: the penalty phase before the hard prune, and its ρ schedule (×rho_factor per epoch up to rho_max).
    admm_epochs: int = 10
    admm_lr: float | None = None  # None: the same peak lr as the retraining
    rho_init: float = 1e-3
    rho_factor: float = 1.5
    rho_max: float = 1.0
    # GMP: the cubic schedule runs from gmp_start to gmp_end (fractions of all steps), updating every k steps.
    gmp_start: float = 0.0
    gmp_end: float = 0.75
    gmp_frequency: int = 100

    def __post_init__(self) -> None:
        checks = [
            (self.method in METHODS, "method", f"one of {', '.join(METHODS)}"),
            (self.epochs >= 1, "epochs", "at least 1"),
            (self.device in DEVICES, "device", f"one of {', '.join(DEVICES)}"),
            (self.distill_temperature > 0, "distill_temperature", "positive"),
            (0.0 <= self.distill_alpha <= 1.0, "distill_alpha", "in [0, 1]"),
            (self.admm_epochs >= 1, "admm_epochs", "at least 1"),
            (self.admm_lr is None or self.admm_lr > 0, "admm_lr", "positive (or unset)"),
            (self.rho_init > 0, "rho_init", "positive"),
            (self.rho_factor >= 1, "rho_factor", "at least 1"),
            (self.rho_max >= self.rho_init, "rho_max", "at least rho_init"),
            (0.0 <= self.gmp_start < 1.0, "gmp_start", "in [0, 1)"),
            (self.gmp_start <= self.gmp_end <= 1.0, "gmp_end", "in [gmp_start, 1]"),
            (self.gmp_frequency >= 1, "gmp_frequency", "at least 1 step"),
        ]
        checks += [(math.isfinite(v), k, "finite") for k, v in asdict(self).items() if isinstance(v, float)]
        for ok, name, need in checks:
            if not ok:
                raise LatpruneError(
                    f"Fine-tuning setting {name}={getattr(self, name)!r} is invalid; it must be {need}."
                )
        self.train_config()  # the SGD fields fail here with TrainConfig's own sentence

    def train_config(self, admm_phase: bool = False) -> TrainConfig:
        """The training-loop settings of the retraining (or of ADMM's penalty phase): cosine, no warm-up."""
        return TrainConfig(
            epochs=self.admm_epochs if admm_phase else self.epochs,
            batch_size=self.batch_size,
            lr=(self.admm_lr or self.lr) if admm_phase else self.lr,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            seed=self.seed,
            device=self.device,
            threads=self.threads,
            eval_batch_size=self.eval_batch_size,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_dict(self) -> dict[str, Any]:
        """The settings that decide the result (no device or threads), stored in checkpoints and checked on resume."""
        return {k: v for k, v in asdict(self).items() if k not in _RUNTIME_FIELDS}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> FinetuneConfig:
        """Rebuild from a checkpoint's ``finetune`` dict, ignoring keys another latprune version added."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def _check_plan(plan: PruningPlan, spec: ModelSpec, path: Path) -> None:
    """One sentence when the plan was made for another model than the parent (apply_plan checks the layers)."""
    if plan.model is not None and plan.model != spec:
        raise PlanError(
            f"The plan was made for {plan.model.describe()} but the parent checkpoint '{path}' holds "
            f"{spec.describe()}; make the plan from this checkpoint (`latprune prune --checkpoint`)."
        )
    if plan.in_channels != spec.in_channels or tuple(plan.input_size) != (spec.input_size, spec.input_size):
        raise PlanError(
            f"The plan is for {plan.in_channels}x{plan.input_size[0]}x{plan.input_size[1]} inputs but the parent "
            f"checkpoint '{path}' takes {spec.in_channels}x{spec.input_size}x{spec.input_size}; make the plan for it."
        )


def _data_config(ckpt: Mapping[str, Any], data: DataConfig | None, path: Path) -> DataConfig:
    """``data`` if given, else the dataset and validation split the parent was trained with."""
    return data if data is not None else checkpoint_data_config(dict(ckpt), path)


def _load_data(
    data: DataConfig, spec: ModelSpec, config: FinetuneConfig, device: torch.device
) -> tuple[BatchLoader, dict[str, BatchLoader]]:
    """The seeded training loader and the val/test evaluation loaders, after checking the data fits the model."""
    splits = load_splits(data)
    info = splits.info
    if (info.num_classes, info.in_channels) != (spec.num_classes, spec.in_channels):
        raise ModelError(
            f"The parent model is for {spec.num_classes} classes x {spec.in_channels} channels, but '{data.name}' "
            f"has {info.num_classes} x {info.in_channels}; pass the dataset it was trained on."
        )
    if device.type == "cuda":  # small datasets fit on the GPU: no host-to-device copy per batch
        splits = DataSplits(splits.train.to(device), splits.val.to(device), splits.test.to(device), info)
    train = make_loader(splits.train, info, config.batch_size, train=True, seed=config.seed, device=device)
    return train, eval_loaders(splits, config.eval_batch_size, device)


def _claim_out_dir(out_dir: Path, plan: PruningPlan, resume: bool) -> None:
    """Write ``out_dir/plan.json``, refusing first to overwrite another run's (before any training starts)."""
    started = [p for p in (out_dir / CHECKPOINT_NAME, out_dir / ADMM_DIR / CHECKPOINT_NAME) if p.exists()]
    if started and not resume:
        raise LatpruneError(
            f"The folder '{out_dir}' already holds a checkpoint; pass --resume to continue it or pick a new --out."
        )
    plan_path = out_dir / PLAN_NAME
    if started and plan_path.exists() and PruningPlan.load(plan_path) != plan:
        raise PlanError(
            f"The folder '{out_dir}' holds a fine-tuning run of another plan ({plan_path}); resume it with that "
            "plan or pick a new --out."
        )
    if is_main():  # under torchrun only rank 0 writes
        out_dir.mkdir(parents=True, exist_ok=True)
        plan.save(plan_path)


def _distill_hooks(parent: nn.Module, config: FinetuneConfig, device: torch.device) -> list[TrainHook]:
    """A fresh distillation hook whose teacher is a frozen copy of the dense parent (none if distill is off)."""
    if not config.distill:
        return []
    teacher = copy.deepcopy(parent).to(device)
    return [DistillHook(teacher, config.distill_temperature, config.distill_alpha)]


@locks_output("out_dir")
def finetune(
    parent_checkpoint: str | Path,
    plan: PruningPlan,
    config: FinetuneConfig,
    out_dir: str | Path,
    *,
    data: DataConfig | None = None,
    resume: bool = False,
    show_progress: bool = True,
) -> TrainResult:
    """Prune the dense parent by ``plan`` and retrain it with ``config.method``; writes ``out_dir``'s files.

    ``out_dir`` gets checkpoint.pt (a pruned checkpoint carrying the plan and the fine-tuning settings),
    plan.json and metrics.json with val and test accuracy per epoch. ADMM's penalty phase runs in
    ``out_dir/admm`` first (dense-weight checkpoints); a finished phase is never redone, and ``resume``
    continues a killed run where it stopped, in either phase. ``data`` overrides the dataset (and
    validation split) recorded in the parent checkpoint.
    """
    out_dir = Path(out_dir)
    path = resolve_checkpoint_path(parent_checkpoint)
    device = config.train_config().resolve_device()
    check_threads(config.threads if device.type == "cpu" else None)
    init_distributed(device)  # before data moves to a GPU: each rank then uses its own
    parent, ckpt = load_model_from_checkpoint(path)  # on the CPU: apply_plan traces it there
    if ckpt.get("plan") is not None:
        raise PlanError(
            f"The checkpoint '{path}' is already pruned; pass the dense parent it was pruned from as --checkpoint."
        )
    spec = model_spec_from_checkpoint(ckpt, str(path))
    _check_plan(plan, spec, path)
    plan = PruningPlan(spec, plan.input_size, plan.in_channels, plan.groups, plan.layers, plan.importance)
    data = _data_config(ckpt, data, path)
    train_loader, eval_data = _load_data(data, spec, config, device)
    meta = {**checkpoint_meta(spec, data), "plan": plan.to_dict(), "finetune": config.result_dict()}
    shrunk = apply_plan(copy.deepcopy(parent), plan, masks=False)  # fails here, with one sentence, if it does not fit
    _claim_out_dir(out_dir, plan, resume)
    hooks = _distill_hooks(parent, config, device)
    if config.method == "masked":
        student = attach_masks(shrunk, plan)
    elif config.method == "gmp":
        student = attach_dense_masks(shrunk, plan.layers)
        total = config.epochs * len(train_loader)
        start, end = round(config.gmp_start * total), round(config.gmp_end * total)
        hooks.append(GMPHook(plan.layers, start, max(start, end), config.gmp_frequency, config.epochs))
    else:
        admm = ADMMHook(plan.layers, config.rho_init, config.rho_factor, config.rho_max)
        phase_hooks = [*_distill_hooks(parent, config, device), admm]  # distillation first: it mixes the task loss
        student = _admm_phase(
            shrunk,
            plan,
            config,
            out_dir,
            train_loader,
            eval_data=eval_data,
            meta=meta,
            hooks=phase_hooks,
            resume=resume,
            show_progress=show_progress,
        )
    return train_model(
        student,
        train_loader,
        config.train_config(),
        out_dir,
        eval_data=eval_data,
        meta=meta,
        resume=resume,
        show_progress=show_progress,
        hooks=hooks,
    )


def _admm_phase(
    shrunk: nn.Module,
    plan: PruningPlan,
    config: FinetuneConfig,
    out_dir: Path,
    train_loader: BatchLoader,
    *,
    eval_data: Mapping[str, BatchLoader],
    meta: Mapping[str, Any],
    hooks: list[TrainHook],
    resume: bool,
    show_progress: bool,
) -> nn.Module:
    """Train the channel-shrunk parent under the ADMM penalty, then hard-prune it: the model to retrain masked.

    Once the retraining has a checkpoint, the ADMM phase is done and is not even reloaded: the model gets
    placeholder masks, and the retraining's resume overwrites its weights and masks.
    """
    if (out_dir / CHECKPOINT_NAME).exists():
        return attach_masks(shrunk, plan)
    train_model(
        shrunk,
        train_loader,
        config.train_config(admm_phase=True),
        out_dir / ADMM_DIR,
        eval_data=eval_data,
        meta={**meta, "phase": "admm"},
        resume=resume,
        show_progress=show_progress,
        hooks=hooks,
    )
    return attach_masks(shrunk, plan)  # the hard prune: masks by magnitude from the ADMM-trained weights


__all__ = ["ADMM_DIR", "METHODS", "PLAN_NAME", "FinetuneConfig", "finetune"]
