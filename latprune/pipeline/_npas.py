"""The NPAS stages of `latprune run --search npas` that differ from JCW's: picking the model by MEASURED latency
(NPAS measures on the target), and phase 3, the search over retraining methods before the full retraining."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latprune._io import atomic_write_json, read_json
from latprune.bench.timing import measure_interleaved
from latprune.engine import compile
from latprune.errors import LatpruneError
from latprune.models import ModelSpec
from latprune.pipeline._config import RunConfig
from latprune.prune import PruningPlan, apply_plan, bake_masks, model_spec_from_checkpoint, plan_from_arch
from latprune.search import Candidate, SearchResult
from latprune.space import SearchSpace

#: The retraining methods phase 3 compares (latprune.train.finetune.METHODS, in the order they are tried).
PHASE3_METHODS = ("masked", "admm", "gmp")


def scheme_mix(arch: dict[str, Any] | None) -> str:
    """How many sparse layers take each scheme, e.g. "group4 x5, pattern x9" ("all dense" when none is sparse)."""
    if not isinstance(arch, dict) or not arch.get("schemes"):
        return "one scheme"
    counts: dict[str, int] = {}
    for scheme, s in zip(arch["schemes"], arch["sparsities"], strict=True):
        if s > 0:
            counts[scheme] = counts.get(scheme, 0) + 1
    return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items())) or "all dense"


def measured_select(cfg: RunConfig, out: Path, parent_path: Path) -> dict[str, Any]:
    """The most accurate candidate predicted under the budget whose compiled model MEASURES under it (see
    :func:`pick_measured`), saved as model m0."""
    from latprune.train import load_model_from_checkpoint

    budget = float(cfg.latency_budget_ms)  # type: ignore[arg-type]
    result = SearchResult.load(out / "search")
    space = SearchSpace.from_dict(read_json(out / "search" / "search.json", what="search record")["space"])
    parent, ckpt = load_model_from_checkpoint(parent_path)
    pick, plan, rows = pick_measured(
        parent, space, result, budget, cfg.shortlist, cfg.threads, cfg.timing_runs, model_spec_from_checkpoint(ckpt)
    )
    for r in rows:
        print(
            f"  candidate {100 * r['estimated_error']:.2f}% est. error: {r['predicted_ms']:.4f} ms predicted, "
            f"{r['measured_ms']:.4f} ms measured ({r['schemes']})"
        )
    atomic_write_json(out / "shortlist.json", {"budget_ms": budget, "candidates": rows})
    if pick is None or plan is None:
        fastest = min(r["measured_ms"] for r in rows)
        raise LatpruneError(
            f"None of the {len(rows)} most accurate candidates predicted under {budget:g} ms measures under it (the "
            f"fastest: {fastest:.4g} ms); raise --latency-budget, or rerun this stage on a quieter machine."
        )
    folder = out / "models" / "m0"
    plan.save(folder / "plan.json")
    measured = next(r["measured_ms"] for r in rows if r["x"] == list(pick.x))
    print(f"m0: {measured:.4f} ms measured (budget {budget:g} ms) -> {folder}")
    return {"models": [{**_selected(pick, folder), "measured_before_retraining_ms": measured}]}


def pick_measured(
    parent: torch.nn.Module,
    space: SearchSpace,
    result: SearchResult,
    budget: float,
    k: int,
    threads: int,
    runs: int,
    spec: ModelSpec | None = None,
) -> tuple[Candidate | None, PruningPlan | None, list[dict[str, Any]]]:
    """(candidate, its plan, every row measured): the most accurate of ``result``'s population (estimated error)
    whose compiled model measures under ``budget``.

    The ``k`` most accurate candidates predicted under the budget are compiled (the parent's weights with the
    plan's channels and masks: retraining changes the values, not the structure the engine runs) and timed
    interleaved. When none fits, the predictor ran fast on this machine today: the budget is divided by the worst
    measured/predicted ratio and the ``k`` most accurate candidates predicted under that are measured too.
    Raises when nothing is predicted under the budget; returns (None, None, rows) when nothing measures under it.
    """
    under = sorted((c for c in result.population if c.latency_ms <= budget), key=lambda c: (c.error, c.latency_ms))
    if not under:
        raise LatpruneError(result.budget_note or f"No candidate is predicted under {budget:g} ms; raise the budget.")
    rows: list[dict[str, Any]] = []
    limit, tried = budget, set()
    for _ in range(2):
        pool = [c for c in under if c.latency_ms <= limit and c.x not in tried][:k]
        if not pool:
            break
        plans = [plan_from_arch(parent, space, space.decode(np.asarray(c.x)), model_spec=spec) for c in pool]
        measured = measure_plans(parent, plans, space.in_channels, space.input_size[0], threads, runs)
        rows += [_shortlist_row(c, ms) for c, ms in zip(pool, measured, strict=True)]
        tried |= {c.x for c in pool}
        fits = [i for i, ms in enumerate(measured) if ms <= budget]
        if fits:
            return pool[fits[0]], plans[fits[0]], rows
        limit = budget / max(ms / c.latency_ms for c, ms in zip(pool, measured, strict=True))
    return None, None, rows


def measure_plans(
    parent: torch.nn.Module, plans: list[PruningPlan], in_channels: int, size: int, threads: int, runs: int
) -> list[float]:
    """Batch-1 engine latency (ms) of ``parent`` pruned by each plan: compiled with every layer's scheme declared,
    timed interleaved in rounds, each keeping its fastest round's median (as ``latprune run``'s measure stage)."""
    x = torch.randn(1, in_channels, size, size, generator=torch.Generator().manual_seed(0))
    xa = x.numpy()
    fns = {}
    for i, plan in enumerate(plans):
        model = bake_masks(apply_plan(copy.deepcopy(parent), plan)).eval()
        engine = compile(model, x, threads=threads, schemes=plan.layer_schemes())
        fns[f"p{i}"] = lambda engine=engine: engine(xa)
    timings = measure_interleaved(fns, warmup=10, runs=max(50, runs // 2), threads=threads)
    return [timings[f"p{i}"].median_ms for i in range(len(plans))]


def _shortlist_row(c: Candidate, measured_ms: float) -> dict[str, Any]:
    return {
        "x": list(c.x),
        "predicted_ms": c.latency_ms,
        "measured_ms": measured_ms,
        "estimated_error": c.error,
        "schemes": scheme_mix(c.arch),
    }


def _selected(c: Candidate, folder: Path) -> dict[str, Any]:
    return {
        "name": folder.name,
        "x": list(c.x),
        "predicted_ms": c.latency_ms,
        "estimated_error": c.error,
        "arch": c.arch,
        "plan": str(folder / "plan.json"),
    }


def method_budget(method: str, epochs: int) -> tuple[int, int]:
    """(epochs, admm_epochs) giving ``method`` ``epochs`` epochs of training in all: ADMM splits them between its
    penalty phase and the masked retraining after it (it needs one of each, so it takes at least 2)."""
    if method != "admm":
        return epochs, 1
    admm = max(1, math.ceil(epochs / 2))
    return max(1, epochs - admm), admm


def phase3_retrain(cfg: RunConfig, out: Path, parent: Path, models: list[dict[str, Any]]) -> dict[str, Any]:
    """NPAS phase 3: each retraining method gets the same short budget (``phase3_epochs`` on ``phase3_per_class``
    images per class), the one with the best VALIDATION accuracy (the test set never chooses) then retrains the
    model for ``finetune_epochs`` on the whole training split. Every run resumes after a kill."""
    from latprune.train import finetune

    accs, methods = {}, {}
    for m in models:
        plan, folder = PruningPlan.load(m["plan"]), out / "models" / m["name"]
        trial_acc = {}
        for method in PHASE3_METHODS:
            epochs, admm_epochs = method_budget(method, cfg.phase3_epochs)
            short = _finetune_config(cfg, method, epochs, admm_epochs, cfg.phase3_per_class)
            print(f"{m['name']}: phase 3, {method} for {cfg.phase3_epochs} epoch(s) on a training subset")
            result = finetune(parent, plan, short, folder / "phase3" / method, resume=True)
            trial_acc[method] = float(result.final["val_acc"])
        best = max(PHASE3_METHODS, key=lambda k: (trial_acc[k], -PHASE3_METHODS.index(k)))
        print(
            f"{m['name']}: validation accuracy after the short runs: "
            + ", ".join(f"{k} {v:.2%}" for k, v in trial_acc.items())
            + f"; retraining with {best}"
        )
        epochs, admm_epochs = method_budget(best, cfg.finetune_epochs or 1)
        full = _finetune_config(cfg, best, epochs, admm_epochs, None)
        result = finetune(parent, plan, full, folder / "finetune", resume=True)
        accs[m["name"]] = float(result.final["test_acc"])
        methods[m["name"]] = {"short_val_acc": trial_acc, "chosen": best}
    return {"test_acc": accs, "phase3": methods}


def _finetune_config(cfg: RunConfig, method: str, epochs: int, admm_epochs: int, per_class: int | None) -> Any:
    from latprune.train import FinetuneConfig

    return FinetuneConfig(
        method=method,
        epochs=epochs,
        admm_epochs=admm_epochs,
        lr=cfg.finetune_lr or 0.01,
        distill=bool(cfg.distill),
        seed=cfg.seed,
        device=cfg.device,
        train_per_class=per_class,
    )


def replace_stage(cfg: RunConfig, out: Path, parent_path: Path) -> dict[str, Any]:
    """NPAS phase 1 on the trained parent: time each stand-in rule on the engine (``latprune.replace``); when some
    pay, apply them to the parent (weights kept: a cropped kernel keeps its centre, a removed SE block its input)
    and fine-tune it ``replace_epochs`` on the training split, so the search starts from a replaced parent that has
    recovered. Nothing to replace (ResNets have no site): the parent goes on unchanged."""
    from latprune.data import load_splits, make_loader
    from latprune.models.replace import apply_replacements
    from latprune.replace import ReplaceConfig, plan_replacements
    from latprune.train import TrainConfig, load_model_from_checkpoint, train_model
    from latprune.train.checkpoint import checkpoint_data_config, checkpoint_meta
    from latprune.train.run import eval_loaders

    parent, ckpt = load_model_from_checkpoint(parent_path)
    spec = model_spec_from_checkpoint(ckpt)
    plan = plan_replacements(spec, ReplaceConfig(threads=cfg.threads, runs=cfg.timing_runs), model=parent)
    plan.save(out / "replace.json")
    print(plan.table())
    record = {"plan": str(out / "replace.json"), "applied": list(plan.applied), "original_ms": plan.original_ms}
    if not plan.applied:
        none = not any(r.sites for r in plan.rules)
        why = "the model has none of the ops phase 1 replaces" if none else "no stand-in pays on this CPU"
        print(f"phase 1: {why}; the parent goes on unchanged")
        return record | {"checkpoint": str(parent_path)}
    model = apply_replacements(copy.deepcopy(parent), plan.applied)
    data = checkpoint_data_config(ckpt, parent_path)
    splits = load_splits(data)
    train_cfg = TrainConfig(
        epochs=cfg.replace_epochs, lr=cfg.finetune_lr or 0.01, seed=cfg.seed, device=cfg.device
    )  # a pretrained model: a fine-tuning learning rate, no warm-up
    device = train_cfg.resolve_device()
    loader = make_loader(splits.train, splits.info, train_cfg.batch_size, train=True, seed=cfg.seed, device=device)
    result = train_model(
        model, loader, train_cfg, out / "replaced", eval_data=eval_loaders(splits, 1000, device),
        meta=checkpoint_meta(plan.spec, data), resume=True,
    )  # fmt: skip
    print(f"phase 1: {', '.join(plan.applied)} applied; {result.final['test_acc']:.2%} test accuracy after fine-tuning")
    return record | {
        "checkpoint": str(result.checkpoint_path),
        "combined_ms": plan.combined_ms,
        "test_acc": float(result.final["test_acc"]),
    }
