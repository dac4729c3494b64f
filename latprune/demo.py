"""The quick start's main job: train ResNet20 on Fashion-MNIST, prune it, and measure the speed-up on this CPU.

Until the full search pipeline (``latprune run``) lands, the demo shows the product's promise end to end on
one hand-picked architecture: a short dense baseline, a JCW group-of-4 pruning plan, a masked fine-tune, and
both models compiled by the engine and timed against ONNX Runtime on the dense model.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from latprune._io import atomic_write_json
from latprune.data import DataConfig, load_splits, make_loader
from latprune.engine import compile
from latprune.engine.bench import measure, onnxruntime_session
from latprune.engine.isa import cpu_model
from latprune.errors import PlanError
from latprune.models import ModelSpec
from latprune.prune import apply_plan, bake_masks, list_schemes, uniform_plan
from latprune.train import TrainConfig, load_model_from_checkpoint, train_baseline, train_model
from latprune.train.checkpoint import checkpoint_meta
from latprune.train.run import eval_loaders


@dataclass(frozen=True)
class DemoConfig:
    """What the demo prunes, how long it fine-tunes, and how it times."""

    out_dir: Path = Path("runs/demo")
    width: float = 0.75
    sparsity: float = 0.7
    scheme: str = "group4"
    finetune_epochs: int = 1
    finetune_lr: float = 0.01
    threads: int = 1  # latency is measured at batch 1 with this many threads
    runs: int = 200
    device: str = "cpu"  # where training runs

    def __post_init__(self) -> None:
        # Checked before any training, so a typo costs seconds, not the baseline's epochs.
        if not 0.0 < self.width <= 1.0:
            raise PlanError(f"The demo's --width is {self.width}; use a value in (0, 1].")
        if not 0.0 <= self.sparsity < 1.0:
            raise PlanError(f"The demo's --sparsity is {self.sparsity}; use a value in [0, 1).")
        if self.scheme not in list_schemes():
            raise PlanError(f"Unknown sparsity scheme '{self.scheme}'; choose one of: {', '.join(list_schemes())}.")


@dataclass(frozen=True)
class DemoRow:
    """One model of the final table."""

    name: str
    params: int
    test_acc: float
    engine_ms: float
    onnxruntime_ms: float
    torch_ms: float


@dataclass(frozen=True)
class DemoResult:
    rows: tuple[DemoRow, ...]
    report_path: Path
    plot_path: Path
    notes: tuple[str, ...] = field(default=())


def _time_model(model: nn.Module, x: torch.Tensor, threads: int, runs: int) -> tuple[float, float, float]:
    """Median batch-1 latency (ms) of ``model`` on the engine, ONNX Runtime and PyTorch eager."""
    model = model.to(memory_format=torch.contiguous_format).eval()
    xa = x.numpy()
    engine = compile(model, x, threads=threads)
    engine_ms = measure(lambda: engine(xa), warmup=20, runs=runs).median_ms
    sess = onnxruntime_session(model, x, threads)
    ort_ms = measure(lambda: sess.run(None, {"x": xa}), warmup=20, runs=runs).median_ms
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            torch_ms = measure(lambda: model(x), warmup=20, runs=runs).median_ms
    finally:
        torch.set_num_threads(old)
    return engine_ms, ort_ms, torch_ms


def run_demo(cfg: DemoConfig = DemoConfig()) -> DemoResult:
    """Run (or resume) every stage and return the table; each training stage resumes from its checkpoint."""
    print("[1/3] dense baseline: ResNet20 on Fashion-MNIST (short preset)")
    base = train_baseline("demo", out_dir=cfg.out_dir / "baseline", device=cfg.device)
    dense, ckpt = load_model_from_checkpoint(base.checkpoint_path)
    spec = ModelSpec(ckpt["model"], **ckpt["model_kwargs"])
    data = DataConfig(**ckpt["data"])

    label = f"pruned: width {cfg.width:g}, {cfg.scheme} {cfg.sparsity:.0%}"
    print(f"\n[2/3] {label}, fine-tuned {cfg.finetune_epochs} epoch(s) with the masks held")
    plan = uniform_plan(dense, spec.input_size, spec.in_channels, cfg.width, cfg.sparsity, cfg.scheme, model_spec=spec)
    pruned = apply_plan(copy.deepcopy(dense), plan)
    train_cfg = TrainConfig(
        epochs=cfg.finetune_epochs, lr=cfg.finetune_lr, warmup_epochs=0.0, device=cfg.device, seed=0
    )
    device = train_cfg.resolve_device()
    splits = load_splits(data)
    loader = make_loader(splits.train, splits.info, train_cfg.batch_size, train=True, seed=0, device=device)
    tuned = train_model(
        pruned,
        loader,
        train_cfg,
        cfg.out_dir / "pruned",
        eval_data=eval_loaders(splits, train_cfg.eval_batch_size, device),
        meta={**checkpoint_meta(spec, data), "plan": plan.to_dict()},
        resume=True,
    )
    plan.save(cfg.out_dir / "pruned" / "plan.json")

    print(f"\n[3/3] batch-1 latency on this CPU ({cpu_model()}, {cfg.threads} thread(s), median of {cfg.runs} runs)")
    x = torch.randn(1, spec.in_channels, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))
    rows = []
    for name, model, result in (("dense ResNet20", dense, base), (label, pruned, tuned)):
        model = bake_masks(copy.deepcopy(model).cpu())
        engine_ms, ort_ms, torch_ms = _time_model(model, x, cfg.threads, cfg.runs)
        params = sum(int((p != 0).sum()) for p in model.parameters())
        rows.append(DemoRow(name, params, float(result.final["test_acc"]), engine_ms, ort_ms, torch_ms))
    report = cfg.out_dir / "report.json"
    atomic_write_json(
        report,
        {
            "cpu": cpu_model(),
            "threads": cfg.threads,
            "rows": [vars(r) for r in rows],
            "plan": str(cfg.out_dir / "pruned" / "plan.json"),
        },
    )
    plot = _plot(rows, cfg.out_dir / "demo.png")
    print("\n" + format_table(rows))
    print(f"\nreport: {report}\nplot:   {plot}\nplan:   {cfg.out_dir / 'pruned' / 'plan.json'}")
    return DemoResult(tuple(rows), report, plot)


def format_table(rows: tuple[DemoRow, ...] | list[DemoRow]) -> str:
    """The demo's result table; speed-ups are against ONNX Runtime running the dense model."""
    ref = rows[0].onnxruntime_ms
    head = f"{'model':<38} {'nonzero params':>14} {'test acc':>8} {'engine ms':>9} {'ORT ms':>7} {'PyTorch ms':>10}"
    lines = [head + f" {'engine vs ORT dense':>19}"]
    for r in rows:
        lines.append(
            f"{r.name:<38} {r.params:>14,} {r.test_acc:>8.2%} {r.engine_ms:>9.3f} {r.onnxruntime_ms:>7.3f} "
            f"{r.torch_ms:>10.3f} {ref / r.engine_ms:>18.2f}x"
        )
    return "\n".join(lines)


def _plot(rows: list[DemoRow], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for r, marker in zip(rows, ("o", "*"), strict=False):
        ax.scatter([r.engine_ms], [100 * r.test_acc], s=120, marker=marker, label=f"{r.name} (engine)")
    ax.scatter([rows[0].onnxruntime_ms], [100 * rows[0].test_acc], s=80, marker="s", label="dense (ONNX Runtime)")
    ax.set_xlabel("batch-1 latency on this CPU (ms)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("latprune demo: ResNet20 / Fashion-MNIST")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    span = np.ptp([r.engine_ms for r in rows] + [rows[0].onnxruntime_ms])
    ax.set_xlim(left=max(0.0, min(r.engine_ms for r in rows) - span))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path
