"""`latprune run`: baseline -> profile -> search -> retrain -> compile and measure -> export -> report, resumable.

Every stage writes its outputs atomically into the run folder and records itself in ``status.json`` when done, so
a killed run restarts at the stage it was in; the stages that train (baseline, search, retraining) also resume
inside themselves from their own checkpoints. ``status.json`` is what a person reads to see where a run stopped.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from latprune._busy import LoadCheck, busy_warning, worst
from latprune._io import atomic_write_json, locks_output, read_json
from latprune.bench import TIMING_ROUNDS
from latprune.bench.runtimes import runtime_info, time_runtimes
from latprune.engine import compile
from latprune.engine.isa import cpu_model
from latprune.errors import LatpruneError
from latprune.models import ModelSpec
from latprune.pipeline._config import PIPELINE_PRESETS, RunConfig
from latprune.pipeline._npas import measured_select, phase3_retrain, replace_stage
from latprune.pipeline._preflight import check_run_inputs
from latprune.pipeline._report import ModelRow, RunReport, reference_runtime, write_report
from latprune.pipeline._search_inputs import SearchJob, search_checkpoint
from latprune.pipeline._status import Status, stage
from latprune.prune import PruningPlan, bake_masks, count_params, model_spec_from_checkpoint, plan_from_arch
from latprune.search import Candidate, SearchResult, get_preset
from latprune.space import SearchSpace

#: RunConfig fields that are SearchConfig fields of the same name: they replace the search preset's values.
_SEARCH_SETTINGS = ("population", "generations", "mode", "selection", "seed", "latency_budget_ms")


@locks_output("config.out_dir")
def run_pipeline(config: RunConfig) -> RunReport:
    """Run (or resume) every stage of ``config`` and return the report; see the module docstring for the layout."""
    cfg = check_run_inputs(config.resolved())
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    status = Status(out, cfg)
    print(f"latprune run: {cfg.model} on {cfg.data}, preset '{cfg.preset}', run folder {out}")

    base = stage(status, "baseline", _baseline_text(cfg), lambda: _baseline(cfg, out))
    dense_path = parent_path = Path(base["checkpoint"])
    if "replace" in cfg.stages:  # NPAS phase 1: the search starts from the parent with its slow ops replaced
        text = "time a stand-in for each slow op on the engine; apply those that pay and fine-tune the parent"
        parent_path = Path(stage(status, "replace", text, lambda: replace_stage(cfg, out, dense_path))["checkpoint"])
    prof = stage(status, "profile", _profile_text(cfg), lambda: _profile(cfg, out, parent_path))
    profile_path = Path(prof["profile"])
    stage(status, "search", _search_text(cfg), lambda: _search(cfg, out, parent_path, profile_path))
    sel = stage(status, "select", _select_text(cfg), lambda: _select(cfg, out, parent_path))
    names = [c["name"] for c in sel["models"]]
    stage(status, "retrain", _retrain_text(cfg, len(names)), lambda: _retrain(cfg, out, parent_path, sel["models"]))
    stage(
        status,
        "measure",
        f"compile with the engine; batch-1 latency on {cpu_model()}, {cfg.threads} thread(s), {cfg.timing_runs} "
        f"runs each, interleaved in {TIMING_ROUNDS} rounds",
        lambda: _measure(cfg, out, dense_path, names),
    )
    if cfg.export:
        stage(status, "export", "plan + weights, ONNX and the saved engine per model", lambda: _export(out, names))
    stage(status, "report", "table, report.json, report.html and the Pareto plot", lambda: _report(cfg, out, sel))
    report = RunReport.load(out)
    print("\n" + report.table())
    print(f"\nreport: {out / 'report.html'} (and report.json)\nplot:   {out / 'pareto.png'}\nmodels: {out / 'models'}")
    return report


# ---------------------------------------------------------------------------------------------------------- stages


def _baseline_text(cfg: RunConfig) -> str:
    if cfg.checkpoint is not None:
        return f"load the trained parent {cfg.checkpoint}"
    return f"train a dense {cfg.model} on {cfg.data} for {cfg.baseline_epochs} epoch(s)"


def _baseline(cfg: RunConfig, out: Path) -> dict[str, Any]:
    from latprune.data import DataConfig
    from latprune.train import TrainConfig, evaluate_checkpoint, train_zoo_model

    if cfg.checkpoint is not None:
        path = Path(cfg.checkpoint)
    else:
        train_cfg = TrainConfig(epochs=cfg.baseline_epochs or 1, warmup_epochs=0.0, seed=cfg.seed, device=cfg.device)
        result = train_zoo_model(cfg.model, DataConfig(cfg.data), train_cfg, out / "baseline", resume=True)
        path = result.checkpoint_path
    test = evaluate_checkpoint(path, splits=("test",), device=cfg.device)[0]
    print(f"dense parent: {test.accuracy:.2%} test accuracy ({path})")
    return {"checkpoint": str(path), "test_acc": test.accuracy}


def _profile_text(cfg: RunConfig) -> str:
    if cfg.profile is not None:
        return f"load the latency profile {cfg.profile}"
    return f"time every prunable layer over its (c_in, c_out, sparsity) grid with the engine, {cfg.threads} thread(s)"


def _profile(cfg: RunConfig, out: Path, parent: Path) -> dict[str, Any]:
    from latprune.latency.grid import GridConfig
    from latprune.latency.profile import load_profile, save_profile
    from latprune.latency.profiling import ProfileConfig, profile_model
    from latprune.train.checkpoint import load_checkpoint, resolve_checkpoint_path

    if cfg.profile is not None:
        # Refuse another device's profile, or one timed with other --threads, now rather than mid-search.
        load_profile(cfg.profile, force=cfg.force_profile, threads=cfg.threads)
        return {"profile": str(cfg.profile)}
    spec = model_spec_from_checkpoint(load_checkpoint(resolve_checkpoint_path(parent)))
    n, m = cfg.profile_grid
    grid = GridConfig(n_channels=n, n_sparsity=m)
    config = ProfileConfig(threads=cfg.threads, scheme=cfg.schemes, grid=grid, kernel_sizes=cfg.kernels)
    profile = profile_model(spec, config)
    path = save_profile(profile, out / "profile.json")
    print(f"profile: {len(profile.tables)} tables in {profile.build_seconds:.0f} s -> {path}")
    return {"profile": str(path)}


def _search_text(cfg: RunConfig) -> str:
    if cfg.search == "npas":
        return (
            f"NPAS (RL controller + TPE), {cfg.population} candidates per generation, {cfg.generations} generations, "
            f"budget {cfg.latency_budget_ms:g} ms, schemes {cfg.schemes}"
        )
    return f"NSGA-II, population {cfg.population}, {cfg.generations} generations, {cfg.mode}, {cfg.selection} selection"


def _search(cfg: RunConfig, out: Path, parent: Path, profile: Path) -> dict[str, Any]:
    preset = PIPELINE_PRESETS[cfg.preset].search_preset
    run_dir = out / "search"
    settings = {k: getattr(cfg, k) for k in _SEARCH_SETTINGS} | {"algorithm": cfg.search}
    search = get_preset(preset).search_config().override(**settings)
    job = SearchJob(
        parent, profile, run_dir, preset, search, data=cfg.data, force_profile=cfg.force_profile, device=cfg.device,
        resume=(run_dir / "state.json").exists(), workers=cfg.workers,
    )  # fmt: skip
    outcome = search_checkpoint(job)
    print(outcome.table)
    return {"search": str(run_dir), "front": len(outcome.result.front)}


def _select_text(cfg: RunConfig) -> str:
    if cfg.search == "npas":
        return (
            f"the {cfg.shortlist} most accurate candidates predicted under {cfg.latency_budget_ms:g} ms, compiled and "
            "measured; the most accurate that measures under it"
        )
    if cfg.latency_budget_ms is not None:
        return f"the most accurate candidate at or under {cfg.latency_budget_ms:g} ms predicted"
    return f"{cfg.top_k} candidates of the Pareto front, spread evenly over predicted latency"


def _select(cfg: RunConfig, out: Path, parent_path: Path) -> dict[str, Any]:
    from latprune.train import load_model_from_checkpoint

    if cfg.search == "npas":
        return measured_select(cfg, out, parent_path)
    result = SearchResult.load(out / "search")
    if cfg.latency_budget_ms is not None:
        if result.best_under_budget is None:
            raise LatpruneError(result.budget_note or f"No candidate meets {cfg.latency_budget_ms:g} ms; raise it.")
        picked = [result.best_under_budget]
    else:
        picked = top_k_candidates(result, cfg.top_k or 1)
    record = read_json(out / "search" / "search.json", what="search record")
    space = SearchSpace.from_dict(record["space"])
    parent, ckpt = load_model_from_checkpoint(parent_path)
    spec = model_spec_from_checkpoint(ckpt)
    models = []
    for i, cand in enumerate(sorted(picked, key=lambda c: c.latency_ms)):
        name = f"m{i}"
        plan = plan_from_arch(parent, space, space.decode(np.asarray(cand.x)), model_spec=spec)
        folder = out / "models" / name
        plan.save(folder / "plan.json")
        models.append(
            {
                "name": name,
                "x": list(cand.x),
                "predicted_ms": cand.latency_ms,
                "estimated_error": cand.error,
                "arch": cand.arch,
                "plan": str(folder / "plan.json"),
            }
        )
        print(f"{name}: {cand.latency_ms:.4f} ms predicted, {cand.error:.2%} estimated error -> {folder}")
    return {"models": models}


def top_k_candidates(result: SearchResult, k: int) -> list[Candidate]:
    """``k`` distinct candidates spread evenly over predicted latency: from the Pareto front, and when the front is
    smaller than ``k``, topped up from the rest of the final population the same way."""
    from latprune.supernet import spread_over_latency

    def spread(cands: list[Candidate], n: int) -> list[Candidate]:
        if n <= 0 or not cands:
            return []
        return [cands[i] for i in spread_over_latency(np.array([c.latency_ms for c in cands]), min(n, len(cands)))]

    picked = spread(list(result.front), k)
    seen = {c.x for c in picked}
    rest = list({c.x: c for c in result.population if c.x not in seen}.values())
    return sorted(picked + spread(rest, k - len(picked)), key=lambda c: c.latency_ms)


def _retrain_text(cfg: RunConfig, n: int) -> str:
    if cfg.search == "npas":
        return (
            f"phase 3: masked, ADMM and GMP retraining {cfg.phase3_epochs} epoch(s) each on a subset, then the best "
            f"(validation accuracy) for {cfg.finetune_epochs} epoch(s)" + (", distilled" if cfg.distill else "")
        )
    return f"{n} model(s), {cfg.finetune_method} fine-tuning for {cfg.finetune_epochs} epoch(s)" + (
        ", distilled from the parent" if cfg.distill else ""
    )


def _retrain(cfg: RunConfig, out: Path, parent: Path, models: list[dict[str, Any]]) -> dict[str, Any]:
    from latprune.train import FinetuneConfig, finetune

    if cfg.search == "npas":
        return phase3_retrain(cfg, out, parent, models)
    epochs = cfg.finetune_epochs or 1
    ft = FinetuneConfig(
        method=cfg.finetune_method,
        epochs=epochs,
        admm_epochs=epochs,  # ADMM: as many epochs of penalised training as of masked retraining after it
        lr=cfg.finetune_lr or 0.01,
        distill=bool(cfg.distill),
        seed=cfg.seed,
        device=cfg.device,
    )
    accs = {}
    for m in models:
        print(f"{m['name']}: fine-tuning ({m['predicted_ms']:.4f} ms predicted)")
        result = finetune(parent, PruningPlan.load(m["plan"]), ft, out / "models" / m["name"] / "finetune", resume=True)
        accs[m["name"]] = float(result.final["test_acc"])
    return {"test_acc": accs}


def _time_runtimes(
    model: nn.Module,
    x: torch.Tensor,
    threads: int,
    runs: int,
    baselines: tuple[str, ...],
    schemes: dict[str, str] | None = None,
) -> dict:
    """Batch-1 latency (ms) of ``model`` compiled by the engine and on each baseline runtime, and the size of the
    engine's packed weights.

    They run in this process with the same thread count, interleaved in rounds, and each reports its fastest
    round's median (see :func:`latprune.bench.measure_interleaved` for why).
    """
    model = model.to(memory_format=torch.contiguous_format).eval()
    xa = x.numpy()
    engine = compile(model, x, threads=threads, schemes=schemes)  # each layer's scheme declared, as export does
    timings = time_runtimes(
        model, x, threads, ("engine", *baselines), warmup=20, runs=runs, prepared={"engine": lambda: engine(xa)}
    )
    weights = int(engine.blob.nbytes) if engine.blob is not None else 0
    load = worst(t.load for t in timings.values()).to_json()  # was the machine busy meanwhile (latprune._busy)
    return {"latency_ms": {k: t.median_ms for k, t in timings.items()}, "engine_weights_bytes": weights, "load": load}


def _measure(cfg: RunConfig, out: Path, parent: Path, names: list[str]) -> dict[str, Any]:
    from latprune.train import load_model_from_checkpoint

    dense, ckpt = load_model_from_checkpoint(parent)
    spec = ModelSpec.from_dict({"name": ckpt["model"], **ckpt["model_kwargs"]})
    x = torch.randn(1, spec.in_channels, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))
    timed = functools.partial(_time_runtimes, x=x, threads=cfg.threads, runs=cfg.timing_runs, baselines=cfg.runtimes)
    rows = {"dense": timed(dense) | {"params": count_params(dense)}}
    ref = reference_runtime(cfg.runtimes)
    for name in names:
        model, ckpt = load_model_from_checkpoint(out / "models" / name / "finetune")
        model = bake_masks(copy.deepcopy(model))
        schemes = PruningPlan.from_dict(ckpt["plan"]).layer_schemes()
        rows[name] = timed(model, schemes=schemes) | {"params": count_params(model, nonzero=True)}
        ms = rows[name]["latency_ms"]["engine"]
        speedup = rows["dense"]["latency_ms"][ref] / ms
        print(f"{name}: engine {ms:.3f} ms ({speedup:.2f}x {runtime_info(ref).label} on the dense model)")
    load = worst(LoadCheck.from_json(row.get("load")) for row in rows.values())
    warning = busy_warning(load, "The measure stage")
    if warning:
        print(f"warning: {warning}")
    record = {"cpu": cpu_model(), "threads": cfg.threads, "models": rows, "load": load.to_json()}
    atomic_write_json(out / "measure.json", record)
    return {"measure": str(out / "measure.json")}


def _export(out: Path, names: list[str]) -> dict[str, Any]:
    from latprune.export import ExportConfig, export_checkpoint

    sizes = {}
    for name in names:
        bundle = export_checkpoint(out / "models" / name / "finetune", out / "models" / name / "export", ExportConfig())
        sizes[name] = bundle.size_bytes
        print(f"{name}: {bundle.size_bytes / 1e6:.2f} MB -> {out / 'models' / name / 'export'}")
    return {"export_bytes": sizes}


def _report(cfg: RunConfig, out: Path, sel: dict[str, Any]) -> dict[str, Any]:
    status = read_json(out / "status.json", what="run status")["stages"]
    timing = read_json(out / "measure.json", what="latency measurements")
    dense_acc = float(status["baseline"]["test_acc"])
    dense_t = timing["models"]["dense"]
    rows = [ModelRow.dense(dense_t, dense_acc)]
    for m in sel["models"]:
        t = timing["models"][m["name"]]
        rows.append(
            ModelRow.pruned(
                m, t, dense_t, float(status["retrain"]["test_acc"][m["name"]]), dense_acc,
                status.get("export", {}).get("export_bytes", {}).get(m["name"]),
            )
        )  # fmt: skip
    report = RunReport(
        model=cfg.model,
        data=cfg.data,
        cpu=timing["cpu"],
        threads=int(timing["threads"]),
        preset=cfg.preset,
        rows=tuple(rows),
        stage_seconds={k: float(v.get("seconds", 0.0)) for k, v in status.items()},
        load_warning=busy_warning(LoadCheck.from_json(timing.get("load")), "The measure stage"),
        latency_budget_ms=cfg.latency_budget_ms,
        search=cfg.search,
    )
    write_report(report, out)
    return {"report": str(out / "report.json")}
