"""Benchmark NPAS's search against JCW's on ResNet20 / Fashion-MNIST at the same MEASURED latency budgets, per-layer
schemes against the best single scheme, what each phase costs, and (with --phase1) phase 1's measured gains.

    .venv/bin/python benchmarks/npas.py                       # everything (~3-4 h on 2 shared cores)
    .venv/bin/python benchmarks/npas.py --generations 2 --epochs 1 --work runs/npas_try    # a quick trial
    .venv/bin/python benchmarks/npas.py --phase1 mobilenet_v3_small,mobilenet_v3_large,efficientnet_b0  # phase 1

Every arm starts from the shipped parent (benchmarks/results/resnet20-fashion-mnist.pt) and one latency profile of
this machine measured for every NPAS scheme (so JCW's group-of-4 space reads the same tables):

- JCW: NSGA-II (population n, P ∪ Q = 2n candidates per super-net), group4 only; one search serves both budgets.
- NPAS: the registered "npas" search (RL controller + TPE, 2n candidates per super-net), every scheme per layer,
  one search per budget; then phase 3 (masked / ADMM / GMP on an equal short budget, the best retrains).
- Single scheme: the NPAS search restricted to one scheme, at the tighter budget.

Each arm's pick is the most accurate (super-net estimate) of its 4 best candidates predicted under the budget whose
compiled model MEASURES under it; the picks at the tighter budget are then re-estimated together by one super-net
(errors are comparable within one estimator call only). Every pick retrains for the same number of epochs; JCW
with masked fine-tuning (latprune run's default), NPAS with phase 3's choice, the best single scheme with NPAS's
choice too. Each step saves its result in WORK/steps/, so a killed run resumes where it stopped. Writes
benchmarks/results/npas.json, npas.md and npas.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from latprune._io import atomic_write_json, atomic_write_text, read_json
from latprune.engine.isa import cpu_model, host_isa
from latprune.errors import LatpruneError
from latprune.search import search_cost

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PARENT = RESULTS / "resnet20-fashion-mnist.pt"


class Steps:
    """Results of finished steps, one JSON each under ``WORK/steps``: a rerun skips what is done."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "steps"
        self.dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        path = self.dir / f"{name}.json"
        if path.exists():
            print(f"[{name}] done earlier")
            return read_json(path, what="benchmark step")
        print(f"\n[{name}]", flush=True)
        t0 = time.perf_counter()
        out = fn() | {"wall_s": time.perf_counter() - t0}
        atomic_write_json(path, out)
        return out


def profile_step(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from latprune.latency.jobs import TimingConfig
    from latprune.latency.profile import save_profile
    from latprune.latency.profiling import ProfileConfig, profile_model
    from latprune.models import ModelSpec
    from latprune.pipeline._config import NPAS_SCHEMES

    if args.profile:
        return {"profile": str(Path(args.profile).resolve()), "seconds": None}
    spec = ModelSpec("resnet20", 10, 1, 28)
    config = ProfileConfig(threads=args.threads, scheme=NPAS_SCHEMES, timing=TimingConfig(statistic=args.statistic))
    profile = profile_model(spec, config)
    path = save_profile(profile, work / "profile.json")
    return {"profile": str(path), "seconds": profile.build_seconds, "tables": len(profile.tables)}


def validate_step(args: argparse.Namespace, profile_path: str) -> dict[str, Any]:
    from latprune.latency.profile import load_profile
    from latprune.latency.profiling import model_space
    from latprune.latency.validate import ValidationConfig, validate_latency, write_validation

    profile = load_profile(profile_path)
    space = model_space(profile.model, profile.scheme, profile.kernel_sizes)
    config = ValidationConfig(samples=args.validate_samples, seed=1, statistic=args.statistic)
    result = validate_latency(profile, space, config)
    _, png = write_validation(result, profile, config, Path(args.results), tag="_npas_resnet20")
    return {"stats": result.stats, "png": str(png)}


def dense_step(args: argparse.Namespace) -> dict[str, Any]:
    from latprune.pipeline._npas import measure_plans
    from latprune.prune import dense_plan
    from latprune.train import evaluate_checkpoint, load_model_from_checkpoint

    parent, _ = load_model_from_checkpoint(args.checkpoint)
    ms = measure_plans(parent, [dense_plan(parent, 28, 1)], 1, 28, args.threads, 200)[0]
    acc = evaluate_checkpoint(args.checkpoint, splits=("test",))[0].accuracy
    return {"engine_ms": ms, "test_acc": acc}


def search_step(args: argparse.Namespace, work: Path, name: str, algorithm: str, scheme: str | None,
                budget: float | None, profile: str) -> dict[str, Any]:  # fmt: skip
    from latprune.pipeline import SearchJob, search_checkpoint

    population = args.population * (2 if algorithm == "npas" else 1)  # equal candidates per super-net
    config = dataclasses.replace(
        __import__("latprune.search", fromlist=["SearchConfig"]).SearchConfig(),
        population=population, generations=args.generations, algorithm=algorithm, seed=args.seed,
        latency_budget_ms=budget,
    )  # fmt: skip
    out = work / name
    job = SearchJob(
        Path(args.checkpoint), Path(profile), out, "quick", config, scheme=scheme,
        resume=(out / "state.json").exists(),
    )  # fmt: skip
    outcome = search_checkpoint(job)
    print(outcome.table)
    return {"dir": str(out), "cost": search_cost(out), "calls": outcome.result.generations + 1}


def reachable(args: argparse.Namespace, profile: str, scheme: str, budget: float) -> dict[str, Any] | None:
    """None if some architecture of ``scheme``'s space is predicted under ``budget``; else why not (the search would
    only confirm it, at the price of a whole search)."""
    from latprune.latency.predictor import TrilinearPredictor
    from latprune.latency.profile import load_profile
    from latprune.search.results import smallest_latency
    from latprune.space import SearchSpace
    from latprune.train import load_model_from_checkpoint

    parent, _ = load_model_from_checkpoint(args.checkpoint)
    space = SearchSpace.from_model(parent, 28, 1, scheme=scheme)
    _, fastest = smallest_latency(TrilinearPredictor(load_profile(profile), space).predict, space.xl, space.xu)
    if fastest <= budget:
        return None
    return {"dir": None, "unreachable": f"the fastest {scheme} model is predicted at {fastest:.4g} ms", "calls": 0}


def pick_step(args: argparse.Namespace, run_dir: str | None, budget: float, name: str) -> dict[str, Any]:
    """What `latprune run --search npas` picks (``pick_measured``): the most accurate candidate predicted under
    ``budget`` that measures under it, for every arm alike."""
    from latprune.pipeline._npas import pick_measured, scheme_mix
    from latprune.prune import model_spec_from_checkpoint
    from latprune.search import SearchResult
    from latprune.space import SearchSpace
    from latprune.train import load_model_from_checkpoint

    if run_dir is None:
        return {"found": False, "note": "no model of this space is predicted under the budget"}
    result = SearchResult.load(run_dir)
    if not any(c.latency_ms <= budget for c in result.population):
        return {"found": False, "note": f"no candidate predicted under {budget:.4g} ms"}
    space = SearchSpace.from_dict(read_json(Path(run_dir) / "search.json", what="search record")["space"])
    parent, ckpt = load_model_from_checkpoint(args.checkpoint)
    spec = model_spec_from_checkpoint(ckpt)
    pick, plan, rows = pick_measured(parent, space, result, budget, args.shortlist, args.threads, 200, spec)
    if pick is None or plan is None:
        return {"found": False, "shortlist": rows, "note": f"none of {len(rows)} measures under {budget:.4g} ms"}
    plan_path = Path(run_dir) / f"pick_{name}.json"  # one search may serve several budgets (JCW)
    plan.save(plan_path)
    row = next(r for r in rows if r["x"] == list(pick.x))
    return {"found": True, "shortlist": rows, "pick": row | {"schemes": scheme_mix(pick.arch)}, "plan": str(plan_path)}


def joint_estimate_step(args: argparse.Namespace, arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """One super-net trained on the picks of every arm at the tighter budget, scoring them all: comparable errors."""
    from latprune.data import load_splits
    from latprune.pipeline import checkpoint_data
    from latprune.prune import PruningPlan
    from latprune.space import SearchSpace
    from latprune.supernet import SpaceAdapter, SupernetConfig, SupernetData, SupernetEstimator
    from latprune.train import load_model_from_checkpoint

    parent, ckpt = load_model_from_checkpoint(args.checkpoint)
    splits = load_splits(checkpoint_data(ckpt, args.checkpoint, None))
    names, subnets = [], []
    estimator = None
    for name, arm in arms.items():
        if not arm["pick"]["found"]:
            continue
        space = SearchSpace.from_dict(read_json(Path(arm["search"]["dir"]) / "search.json", what="record")["space"])
        if estimator is None:
            data = SupernetData(splits.train, splits.val, splits.info)
            estimator = SupernetEstimator(parent, space, data, SupernetConfig.preset("quick"), args.seed + 7)
        adapter = SpaceAdapter(space, parent)
        subnets.append(adapter.candidates(np.asarray(arm["pick"]["pick"]["x"])[None])[0])
        names.append(name)
        assert PruningPlan.load(arm["pick"]["plan"])  # the plan that will retrain is this candidate's
    errors = estimator.evaluate_candidates(subnets) if estimator is not None else []
    return {"errors": {n: float(e) for n, e in zip(names, errors, strict=True)}}


def retrain_step(args: argparse.Namespace, work: Path, name: str, plan: str, method: str | None,
                 budget: float) -> dict[str, Any]:  # fmt: skip
    """Retrain ``plan`` for ``--epochs``: with ``method``, or (None) NPAS phase 3 choosing it."""
    from latprune.pipeline import RunConfig
    from latprune.pipeline._npas import _finetune_config, method_budget, phase3_retrain
    from latprune.prune import PruningPlan
    from latprune.train import finetune

    cfg = RunConfig(
        out_dir=work, checkpoint=Path(args.checkpoint), search="npas", latency_budget_ms=budget,
        finetune_epochs=args.epochs, finetune_lr=0.01, distill=False, phase3_epochs=args.phase3_epochs,
        phase3_per_class=args.phase3_per_class, seed=args.seed, threads=args.threads,
    )  # fmt: skip
    if method is None:
        out = phase3_retrain(cfg, work, Path(args.checkpoint), [{"name": name, "plan": plan}])
        return {
            "test_acc": out["test_acc"][name],
            "phase3": out["phase3"][name],
            "method": out["phase3"][name]["chosen"],
        }
    epochs, admm = method_budget(method, args.epochs)
    ft = _finetune_config(cfg, method, epochs, admm, None)
    result = finetune(
        Path(args.checkpoint), PruningPlan.load(plan), ft, work / "models" / name / "finetune", resume=True
    )
    return {"test_acc": float(result.final["test_acc"]), "method": method}


def final_measure_step(args: argparse.Namespace, plans: dict[str, str]) -> dict[str, Any]:
    """Every retrained structure and the dense model timed interleaved in one session (the picks' structures are
    what retraining keeps: masks stay where they were)."""
    from latprune.pipeline._npas import measure_plans
    from latprune.prune import PruningPlan, dense_plan
    from latprune.train import load_model_from_checkpoint

    parent, _ = load_model_from_checkpoint(args.checkpoint)
    names = ["dense", *plans]
    loaded = [dense_plan(parent, 28, 1), *(PruningPlan.load(p) for p in plans.values())]
    return {"engine_ms": dict(zip(names, measure_plans(parent, loaded, 1, 28, args.threads, 300), strict=True))}


def epochs_equivalent(calls: int, supernet_images: int = 3000, supernet_epochs: int = 2, train: int = 55000) -> float:
    """Super-net training of a search in epochs of the full training split (the quick preset: 2 epochs on 3,000)."""
    return calls * supernet_epochs * supernet_images / train


def plot(report: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from latprune.report import figure_png

    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    styles = {"jcw": ("s", "tab:orange", "JCW (NSGA-II, group4)"), "npas": ("o", "tab:blue", "NPAS (per-layer)"),
              "single": ("^", "tab:green", "best single scheme (NPAS search)")}  # fmt: skip
    seen = set()
    for row in report["rows"]:
        marker, color, label = styles[row["arm"]]
        ax.scatter(row["engine_ms"], 100 * row["test_acc"], marker=marker, color=color, s=60,
                   label=None if row["arm"] in seen else label)  # fmt: skip
        ax.annotate(row["name"], (row["engine_ms"], 100 * row["test_acc"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")  # fmt: skip
        seen.add(row["arm"])
    d = report["dense"]
    ax.scatter(d["engine_ms"], 100 * d["test_acc"], marker="*", color="k", s=120, label="dense parent")
    for b in report["budgets_ms"]:
        ax.axvline(b, color="0.6", ls="--", lw=1)
    ax.set_xlabel(f"measured batch-1 engine latency (ms), {report['threads']} thread, {report['cpu']}")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ResNet20 / Fashion-MNIST: NPAS vs JCW at the same measured budgets (dashed)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.write_bytes(figure_png(fig, dpi=120))
    return path


def phase1(args: argparse.Namespace) -> int:
    """Phase 1's measured gains: every stand-in rule on each model (random weights: latency does not depend on
    them), at --phase1-size, timed interleaved with the original; writes npas_phase1.json / .md."""
    from latprune.models import ModelSpec, model_info
    from latprune.replace import ReplaceConfig, plan_replacements

    plans = {}
    for name in args.phase1.split(","):
        spec = ModelSpec(name, model_info(name).default_num_classes, 3, args.phase1_size)
        print(f"\n[phase 1: {spec.describe()}]", flush=True)
        plans[name] = plan_replacements(spec, ReplaceConfig(threads=args.threads, runs=args.phase1_runs))
        print(plans[name].table())
    report = {
        "date": dt.date.today().isoformat(), "cpu": cpu_model(), "isa": host_isa().name, "threads": args.threads,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "plans": {k: p.to_json() for k, p in plans.items()},
    }  # fmt: skip
    lines = [
        f"Phase 1, {report['date']}, {report['cpu']} ({report['isa']}), {args.threads} thread, "
        f"{args.phase1_size}x{args.phase1_size}, batch 1; gain = latency saved with the rule at all its sites.",
        "",
        "| model | original ms | rule | sites | ms | gain | applied |",
        "|---|---:|---|---:|---:|---:|---|",
    ]  # fmt: skip
    for name, plan in plans.items():
        for r in plan.rules:
            cells = (
                ("-", "-", "no site")
                if r.ms is None
                else (f"{r.ms:.3f}", f"{r.gain:+.1%}", "yes" if r.applied else "no")
            )
            lines.append(f"| {name} | {plan.original_ms:.3f} | {r.name} | {len(r.sites)} | {' | '.join(cells)} |")
        if plan.combined_ms is not None and plan.combined_gain is not None:
            lines.append(f"| {name} | {plan.combined_original_ms:.3f} | all kept | | {plan.combined_ms:.3f} | "
                         f"{plan.combined_gain:+.1%} | |")  # fmt: skip
    results = Path(args.results)
    atomic_write_json(results / "npas_phase1.json", report)
    atomic_write_text(results / "npas_phase1.md", "\n".join(lines) + "\n")
    print("\n" + "\n".join(lines))
    print(f"Wrote {results / 'npas_phase1.json'} and {results / 'npas_phase1.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(PARENT), help="The trained parent (default: the shipped ResNet20).")
    p.add_argument("--profile", default=None, help="A profile of every NPAS scheme (default: measured here first).")
    p.add_argument("--work", default=str(ROOT / "runs" / "npas_bench"), help="Run folders and step results.")
    p.add_argument("--results", default=str(RESULTS), help="Where npas.json / .md / .png go.")
    p.add_argument("--budgets", default="0.55,0.7", help="Budgets as fractions of the dense measured latency.")
    p.add_argument("--population", type=int, default=16, help="JCW's population n (NPAS: 2n per batch).")
    p.add_argument("--generations", type=int, default=6, help="Search generations after the first, every arm.")
    p.add_argument("--single-schemes", default="group4,block_punched,pattern,unstructured", help="Single-scheme arms.")
    p.add_argument("--shortlist", type=int, default=4, help="Candidates measured per arm before picking.")
    p.add_argument("--epochs", type=int, default=3, help="Retraining epochs of every pick.")
    p.add_argument("--phase3-epochs", type=int, default=2, help="NPAS phase 3: epochs per method on a subset.")
    p.add_argument("--phase3-per-class", type=int, default=1000, help="NPAS phase 3: images per class.")
    p.add_argument("--validate-samples", type=int, default=60, help="Models measured to validate the profile.")
    p.add_argument("--statistic", default="cpu", help="Timing statistic of profiling (cpu: immune to other jobs).")
    p.add_argument("--threads", type=int, default=1, help="Engine threads.")
    p.add_argument("--seed", type=int, default=0, help="Seed of every search and retraining.")
    p.add_argument("--phase1", default=None, help="Only phase 1's gains, on these zoo models (comma-separated).")
    p.add_argument("--phase1-size", type=int, default=224, help="Phase 1: input size (default 224).")
    p.add_argument("--phase1-runs", type=int, default=200, help="Phase 1: timed runs per model variant.")
    args = p.parse_args(argv)
    if args.phase1:
        return phase1(args)
    work = Path(args.work)
    steps = Steps(work)
    try:
        report = run(args, work, steps)
    except LatpruneError as exc:
        print(f"npas benchmark: error: {exc}", file=sys.stderr)
        return 2
    results = Path(args.results)
    atomic_write_json(results / "npas.json", report)
    atomic_write_text(results / "npas.md", markdown(report))
    png = plot(report, results / "npas.png")
    print("\n" + markdown(report))
    print(f"Wrote {results / 'npas.json'}, {results / 'npas.md'} and {png}")
    return 0


def run(args: argparse.Namespace, work: Path, steps: Steps) -> dict[str, Any]:
    from latprune.pipeline._config import NPAS_SCHEMES

    prof = steps.run("profile", lambda: profile_step(args, work))
    val = steps.run("validate", lambda: validate_step(args, prof["profile"]))
    dense = steps.run("dense", lambda: dense_step(args))
    fractions = [float(f) for f in args.budgets.split(",")]
    budgets = [f * dense["engine_ms"] for f in fractions]
    print(f"budgets: {', '.join(f'{b:.4f} ms ({f:.0%} of dense)' for b, f in zip(budgets, fractions, strict=True))}")
    profile = prof["profile"]
    arms: dict[str, dict[str, Any]] = {}
    jcw = steps.run("search-jcw", lambda: search_step(args, work, "search-jcw", "nsga2", "group4", None, profile))
    for i, b in enumerate(budgets):
        tag = f"b{i}"
        arms[f"jcw-{tag}"] = {"arm": "jcw", "budget": b, "search": jcw}
        arms[f"npas-{tag}"] = {"arm": "npas", "budget": b, "search": steps.run(
            f"search-npas-{tag}", lambda b=b, tag=tag: search_step(
                args, work, f"search-npas-{tag}", "npas", NPAS_SCHEMES, b, profile))}  # fmt: skip
    for s in args.single_schemes.split(","):
        arms[f"{s}-b0"] = {"arm": "single", "budget": budgets[0], "search": steps.run(
            f"search-single-{s}", lambda s=s: reachable(args, profile, s, budgets[0]) or search_step(
                args, work, f"search-single-{s}", "npas", s, budgets[0], profile))}  # fmt: skip
    for name, arm in arms.items():
        arm["pick"] = steps.run(
            f"pick-{name}", lambda a=arm, n=name: pick_step(args, a["search"]["dir"], a["budget"], n)
        )
    tight = {n: a for n, a in arms.items() if n.endswith("-b0")}
    joint = steps.run("joint-estimate", lambda: joint_estimate_step(args, tight))
    singles = {n: a for n, a in tight.items() if a["arm"] == "single" and n in joint["errors"]}
    best_single = min(singles, key=lambda n: joint["errors"][n]) if singles else None
    retrained: dict[str, dict[str, Any]] = {}
    for name, arm in arms.items():
        if not arm["pick"]["found"] or (arm["arm"] == "single" and name != best_single):
            continue
        method = {"jcw": "masked", "npas": None}.get(arm["arm"], retrained.get("npas-b0", {}).get("method", "masked"))
        retrained[name] = steps.run(f"retrain-{name}", lambda n=name, a=arm, m=method: retrain_step(
            args, work / "retrain", n, a["pick"]["plan"], m, a["budget"]))  # fmt: skip
    final = steps.run(
        "final-measure", lambda: final_measure_step(args, {n: arms[n]["pick"]["plan"] for n in retrained})
    )
    return assemble(args, prof, val, dense, budgets, fractions, arms, joint, best_single, retrained, final)


def assemble(args, prof, val, dense, budgets, fractions, arms, joint, best_single, retrained, final) -> dict[str, Any]:
    rows = []
    for name, r in retrained.items():
        arm = arms[name]
        pick = arm["pick"]["pick"]
        rows.append({
            "name": name, "arm": arm["arm"], "budget_ms": arm["budget"], "predicted_ms": pick["predicted_ms"],
            "measured_before_retraining_ms": pick["measured_ms"], "engine_ms": final["engine_ms"][name],
            "met": final["engine_ms"][name] <= arm["budget"], "test_acc": r["test_acc"], "method": r["method"],
            "schemes": pick["schemes"], "estimated_error": pick["estimated_error"],
            "joint_estimated_error": joint["errors"].get(name), "phase3": r.get("phase3"),
        })  # fmt: skip
    searches = {n: a["search"] for n, a in arms.items()}
    runs = {"jcw": arms["jcw-b0"]["search"]} | {n: s for n, s in searches.items() if "jcw" not in n and s.get("dir")}
    cost = {
        name: {"calls": s["calls"], "supernet_epochs_equiv": epochs_equivalent(s["calls"]), **s["cost"],
               "wall_s": s["wall_s"]}
        for name, s in runs.items()
    }  # fmt: skip
    return {
        "date": dt.date.today().isoformat(), "cpu": cpu_model(), "isa": host_isa().name, "threads": args.threads,
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "settings": vars(args),
        "profile": prof, "validation": val["stats"], "dense": {"engine_ms": final["engine_ms"]["dense"],
        "test_acc": dense["test_acc"], "engine_ms_first": dense["engine_ms"]}, "budgets_ms": budgets,
        "budget_fractions": fractions, "rows": rows, "joint_estimate": joint["errors"], "best_single": best_single,
        "unpicked": {n: a["pick"].get("note") for n, a in arms.items() if not a["pick"]["found"]}, "cost": cost,
        "retrain_wall_s": {n: r["wall_s"] for n, r in retrained.items()},
        "unreachable": {n: a["search"] for n, a in arms.items() if "unreachable" in a["search"]},
    }  # fmt: skip


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"NPAS vs JCW, ResNet20 / Fashion-MNIST — {r['date']}, {r['cpu']} ({r['isa']}), {r['threads']} thread; "
        f"dense parent {r['dense']['engine_ms']:.3f} ms, {100 * r['dense']['test_acc']:.2f}%.",
        "",
        "| model | budget ms | predicted ms | measured ms | met | test acc | retraining | schemes (sparse layers) |",
        "|---|---:|---:|---:|---|---:|---|---|",
    ]
    for row in sorted(r["rows"], key=lambda x: (x["budget_ms"], x["arm"])):
        lines.append(
            f"| {row['name']} | {row['budget_ms']:.3f} | {row['predicted_ms']:.3f} | {row['engine_ms']:.3f} | "
            f"{'yes' if row['met'] else 'NO'} | {100 * row['test_acc']:.2f}% | {row['method']} | {row['schemes']} |"
        )
    lines += ["", "Joint super-net estimate at the tighter budget (one call, comparable): " + ", ".join(
        f"{n} {100 * e:.2f}%" for n, e in sorted(r["joint_estimate"].items(), key=lambda kv: kv[1]))]  # fmt: skip
    unreachable = {n: s["unreachable"] for n, s in r.get("unreachable", {}).items()}
    if unreachable:
        lines.append("Not searched (the budget is below the space's fastest model): " + "; ".join(
            f"{n}: {v}" for n, v in unreachable.items()))  # fmt: skip
    if r["unpicked"]:
        lines.append("No pick: " + "; ".join(f"{n}: {v}" for n, v in r["unpicked"].items()))
    v = r["validation"]
    lines += ["", f"Profile (every scheme, {r['profile'].get('tables', '?')} tables, "
              f"{(r['profile'].get('seconds') or 0):.0f} s): r = {v['pearson_r']:.4f}, MAPE {v['mape_pct']:.2f}%, "
              f"{v['within_10_pct']:.0f}% within ±10%.", "",
              "| search | estimator calls | super-net epochs (full-data equiv.) | train s | BN s | eval s "
              "| algorithm s | wall s |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for name, c in r["cost"].items():
        lines.append(
            f"| {name} | {c['calls']} | {c['supernet_epochs_equiv']:.2f} | {c.get('supernet_train_s', 0):.0f} | "
            f"{c.get('bn_recalib_s', 0):.0f} | {c.get('eval_s', 0):.0f} | {c['evolution'] + c['predictor']:.1f} | "
            f"{c['wall_s']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
