"""Checking the estimator (JCW Fig. 6): fine-tune k searched candidates standalone and rank-correlate with it."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from scipy import stats

from latprune._io import atomic_write_bytes, atomic_write_json, locks_output, read_json
from latprune._limits import check_seed
from latprune.data import DataConfig, Images, class_subset, load_splits, make_loader
from latprune.errors import SearchError
from latprune.prune import apply_plan, model_spec_from_checkpoint, plan_from_arch
from latprune.report import figure_png
from latprune.space import SearchSpace
from latprune.supernet._config import SupernetConfig
from latprune.supernet._estimator import SupernetData, supernet_subsets

VALIDATE_FORMAT = "latprune.validate_accuracy/1"
TARGET_TAU = 0.6  # issue 6's target for ResNet20 / Fashion-MNIST


@dataclass(frozen=True)
class ValidateConfig:
    """How the k candidates are fine-tuned standalone (plan -> apply -> masked training) before scoring.

    Fine-tuning uses the super-net's classes with ``train_per_class`` images each from the training split
    (minus validation) and is scored on exactly the validation images the super-net used.
    """

    k: int = 12
    """Candidates taken from the last generation, spread evenly over predicted latency."""
    epochs: int = 1
    """Fine-tuning epochs per candidate."""
    train_per_class: int | None = 1000
    """Training images per class for fine-tuning (None: the whole training split of the super-net's classes)."""
    lr: float = 0.01
    """Peak learning rate of the cosine schedule (the parent's weights are a good start, so keep it low)."""
    batch_size: int = 128
    """Fine-tuning batch size."""
    weight_decay: float = 5e-4
    """SGD weight decay while fine-tuning."""
    seed: int = 0
    """Seed of the fine-tuning data order and augmentation."""

    def __post_init__(self) -> None:
        if self.k < 3:
            raise SearchError(f"--k {self.k} is too few candidates for a rank correlation; use at least 3.")
        if self.epochs < 1 or self.batch_size < 1 or not self.lr > 0:
            raise SearchError(
                f"Fine-tuning needs epochs >= 1, batch_size >= 1 and lr > 0, got {self.epochs}, {self.batch_size}, "
                f"{self.lr}."
            )
        if self.train_per_class is not None and self.train_per_class < 1:
            raise SearchError(f"--train-per-class {self.train_per_class} must be >= 1.")
        if not 0 <= self.weight_decay < math.inf or not self.lr < math.inf:
            raise SearchError(f"--weight-decay {self.weight_decay} and --lr {self.lr} must be finite and not negative.")
        check_seed(self.seed)


@dataclass(frozen=True)
class AccuracyValidation:
    """Rank agreement between the super-net's estimate and standalone fine-tuned accuracy."""

    estimated_acc: tuple[float, ...]
    standalone_acc: tuple[float, ...]
    latency_ms: tuple[float, ...]
    kendall_tau: float
    spearman_rho: float
    json_path: Path
    png_path: Path

    def table(self) -> str:
        """A plain-text table, one row per candidate, sorted by latency, then the two coefficients."""
        rows = [f"{'latency ms':>10} {'estimated acc':>13} {'standalone acc':>14}"]
        order = np.argsort(self.latency_ms)
        for i in order:
            lat, est, true = self.latency_ms[i], self.estimated_acc[i], self.standalone_acc[i]
            rows.append(f"{lat:>10.4f} {100 * est:>12.2f}% {100 * true:>13.2f}%")
        rows.append(f"Kendall tau = {self.kendall_tau:.3f}, Spearman rho = {self.spearman_rho:.3f} (target tau >= 0.6)")
        return "\n".join(rows)


def spread_over_latency(latency: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` candidates whose latencies are spread evenly over the range (closest to k even targets).

    Each target takes the nearest not-yet-taken candidate, so duplicates of one architecture are skipped only
    when they are literally the same row.
    """
    latency = np.asarray(latency, dtype=float)
    k = min(k, len(latency))
    targets = np.linspace(latency.min(), latency.max(), k)
    taken: list[int] = []
    for t in targets:
        order = np.argsort(np.abs(latency - t), kind="stable")
        taken.append(int(next(i for i in order if i not in taken)))
    return np.asarray(sorted(taken, key=lambda i: (latency[i], i)), dtype=int)


def _last_generation(search_dir: Path) -> tuple[int, list[dict[str, Any]]]:
    gens = sorted(search_dir.glob("gen_*.json"))
    if not gens:
        raise SearchError(f"'{search_dir}' holds no gen_XXXX.json; run `latprune search --out {search_dir}` first.")
    data = read_json(gens[-1], what="search generation")
    evaluated = data.get("evaluated")
    if not evaluated:
        raise SearchError(f"'{gens[-1]}' lists no evaluated candidate; the search was interrupted, so resume it.")
    # One super-net call estimated all of P ∪ Q, so their errors are comparable; duplicates add nothing.
    unique: dict[tuple[int, ...], dict[str, Any]] = {}
    for cand in evaluated:
        unique.setdefault(tuple(int(v) for v in cand["x"]), cand)
    return int(data.get("generation", int(gens[-1].stem.split("_")[1]))), list(unique.values())


def _candidate_key(x: tuple[int, ...], config: ValidateConfig, seed: int) -> str:
    """Folder name of a candidate's fine-tuning run: a hash of what decides its result, so reruns reuse it."""
    text = json.dumps([list(x), dataclasses.asdict(config) | {"k": 0}, seed])
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _finetune(
    parent: nn.Module,
    space: SearchSpace,
    x: tuple[int, ...],
    ckpt: dict[str, Any],
    train: Images,
    val: Images,
    data: SupernetData,
    config: ValidateConfig,
    out_dir: Path,
    device: str,
    progress: bool,
) -> dict[str, float]:
    """Plan -> apply (channels removed, masks attached) -> masked fine-tuning; returns the last epoch's metrics."""
    from latprune.train import TrainConfig, train_model  # train imports data; keep supernet importable alone

    plan = plan_from_arch(parent, space, space.decode(np.asarray(x)), model_spec=model_spec_from_checkpoint(ckpt))
    plan.save(out_dir / "plan.json")
    model = apply_plan(copy.deepcopy(parent), plan)
    train_cfg = TrainConfig(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed,
        device=device,
    )
    loader = make_loader(train, data.info, config.batch_size, train=True, seed=config.seed, device=device)
    val_loader = make_loader(val, data.info, 1000, train=False, device=device)
    result = train_model(
        model,
        loader,
        train_cfg,
        out_dir,
        eval_data={"val": val_loader},
        meta={"x": list(x)},
        resume=True,  # a finished folder is reused as is, a killed one continues
        show_progress=progress,
    )
    return result.final


@locks_output("search_dir", flag="--search", must_exist=True)
def validate_accuracy(
    search_dir: str | Path,
    config: ValidateConfig = ValidateConfig(),
    *,
    device: str = "cpu",
    progress: bool = True,
) -> AccuracyValidation:
    """Fine-tune ``config.k`` candidates of a search's last generation and rank-correlate with the super-net.

    Writes ``validate_accuracy.json`` and ``validate_accuracy.png`` into ``search_dir`` and one fine-tuning
    folder per candidate under ``search_dir/validate/`` (reused when run again with the same settings).
    """
    from latprune.train import load_model_from_checkpoint

    search_dir = Path(search_dir)
    record = read_json(search_dir / "search.json", what="search record")
    meta, seed = record.get("meta", {}), int(record.get("config", {}).get("seed", 0))
    if "checkpoint" not in meta or "space" not in record:
        raise SearchError(f"'{search_dir}/search.json' lacks the checkpoint or space; it was not written by a search.")
    gen, evaluated = _last_generation(search_dir)
    if len(evaluated) < 3:
        raise SearchError(f"The last generation of '{search_dir}' holds {len(evaluated)} distinct candidates; need 3.")
    parent, ckpt = load_model_from_checkpoint(meta["checkpoint"])
    space = SearchSpace.from_dict(record["space"])
    data_cfg = DataConfig(**meta["data"]) if isinstance(meta.get("data"), dict) else DataConfig()
    splits = load_splits(data_cfg)
    data = SupernetData(splits.train, splits.val, splits.info)
    supernet_cfg = SupernetConfig.from_dict(meta.get("supernet", {}))
    sn_train, val = supernet_subsets(data, supernet_cfg, seed)
    classes = torch.unique(sn_train.labels)
    train_pool = data.train.subset(torch.nonzero(torch.isin(data.train.labels, classes)).flatten())
    train = train_pool.subset(_per_class(train_pool, config.train_per_class, config.seed))

    latency = np.array([c["latency_ms"] for c in evaluated])
    picked = spread_over_latency(latency, config.k)
    rows = []
    for n, i in enumerate(picked):
        cand = evaluated[i]
        x = tuple(int(v) for v in cand["x"])
        folder = search_dir / "validate" / _candidate_key(x, config, seed)
        if progress:
            print(f"validate-accuracy: candidate {n + 1}/{len(picked)} ({cand['latency_ms']:.4f} ms) -> {folder}")
        t0 = time.perf_counter()
        final = _finetune(parent, space, x, ckpt, train, val, data, config, folder, device, progress)
        rows.append(
            {
                "x": list(x),
                "latency_ms": float(cand["latency_ms"]),
                "estimated_error": float(cand["error"]),
                "estimated_acc": 1.0 - float(cand["error"]),
                "standalone_acc": float(final["val_acc"]),
                "standalone_loss": float(final["val_loss"]),
                "finetune_seconds": time.perf_counter() - t0,
                "folder": str(folder),
            }
        )
    est = np.array([r["estimated_acc"] for r in rows])
    true = np.array([r["standalone_acc"] for r in rows])
    tau, tau_p = stats.kendalltau(est, true)
    rho, rho_p = stats.spearmanr(est, true)
    json_path = search_dir / "validate_accuracy.json"
    png_path = search_dir / "validate_accuracy.png"
    atomic_write_json(
        json_path,
        {
            "format": VALIDATE_FORMAT,
            "search": str(search_dir),
            "generation": gen,
            "config": dataclasses.asdict(config),
            "val_images": len(val),
            "finetune_images": len(train),
            "kendall_tau": _finite(tau),
            "kendall_p": _finite(tau_p),
            "spearman_rho": _finite(rho),
            "spearman_p": _finite(rho_p),
            "target_tau": TARGET_TAU,
            "candidates": rows,
        },
    )
    atomic_write_bytes(png_path, _scatter_png(est, true, np.array([r["latency_ms"] for r in rows]), tau, rho))
    return AccuracyValidation(
        tuple(est.tolist()), tuple(true.tolist()), tuple(r["latency_ms"] for r in rows), float(tau), float(rho),
        json_path, png_path,
    )  # fmt: skip


def _per_class(data: Images, per_class: int | None, seed: int) -> torch.Tensor:
    return class_subset(data.labels, None, per_class, seed)


def _finite(v: float) -> float | None:
    """JSON has no NaN: a correlation of constant inputs is written as null."""
    return float(v) if np.isfinite(v) else None


def _scatter_png(est: np.ndarray, true: np.ndarray, latency: np.ndarray, tau: float, rho: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=120)
    points = ax.scatter(100 * est, 100 * true, c=latency, cmap="viridis", s=36, edgecolors="k", linewidths=0.4)
    fig.colorbar(points, ax=ax, label="predicted latency (ms)")
    ax.set_xlabel("super-net estimated accuracy (%)")
    ax.set_ylabel("standalone fine-tuned accuracy (%)")
    ax.set_title(f"Estimator check (JCW Fig. 6): Kendall τ={tau:.3f}, Spearman ρ={rho:.3f}", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)
