"""Benchmark: JCW's search ablations — Fig. 7 (population latency under uniform vs standard selection), Table 3
(joint vs weight-only vs channel-only vs sequential at matched budgets) and the search's cost split.

Two sources of latency and accuracy:

    # SYNTHETIC (seconds): a toy joint channel + weight problem with known latency and true error, and a noisy
    # error estimate; proves the algorithms, says nothing about real models.
    .venv/bin/python benchmarks/search_ablation.py --synthetic

    # REAL: the ResNet20 / Fashion-MNIST parent, a device profile, and the super-net estimator (hours).
    .venv/bin/python benchmarks/search_ablation.py --checkpoint runs/baseline/resnet20-fashion-mnist \
        --profile runs/profile-resnet20.json [--preset quick] [--fig7-generations 50] [--finetune-epochs 3]

Writes benchmarks/results/search_ablation_{synthetic,real}.json and PNGs beside it, and prints the tables.
In the real mode, Table 3 first reports predicted latency and *super-net estimated* error of the best candidate
under each budget; with --finetune-epochs E each of those is then fine-tuned (masked) for E epochs and reported
with its test accuracy and its latency measured with the engine, beside the dense parent's.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from latprune._io import atomic_write_json
from latprune.cli._search import add_supernet_arguments, supernet_from_args
from latprune.errors import LatpruneError
from latprune.report import plot_latency_histograms, plot_search
from latprune.search import MODES, SearchConfig, run_search, search_cost
from latprune.search.synthetic import SyntheticProblem

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BUDGET_FRACTIONS = (0.4, 0.6)


def _histogram(latency: np.ndarray, edges: np.ndarray) -> list[int]:
    return np.histogram(latency, bins=edges)[0].tolist()


def fig7(
    make_inputs: Any,
    base: SearchConfig,
    generations: int,
    seeds: tuple[int, ...],
    out: Path,
    results: Path,
    label: str,
    literal: bool,
) -> dict:
    """Population latency after ``generations`` steps: standard vs uniform selection (N = 4, the official setting)
    and, with ``literal``, uniform with N = population size (the literal reading of eq. 9)."""
    variants = {
        "standard NSGA-II": dataclasses.replace(base, selection="standard"),
        "uniform, N=4": dataclasses.replace(base, selection="uniform", latency_targets=4),
    }
    if literal:
        variants[f"uniform, N={base.population}"] = dataclasses.replace(
            base, selection="uniform", latency_targets=base.population
        )
    pooled: dict[str, list[float]] = {k: [] for k in variants}
    for name, cfg in variants.items():
        for seed in seeds:
            run_dir = out / f"fig7-{name.replace(' ', '').replace(',', '-')}-s{seed}"
            shutil.rmtree(run_dir, ignore_errors=True)
            space, predictor, estimator = make_inputs(seed)
            cfg_s = dataclasses.replace(cfg, generations=generations, seed=seed)
            result = run_search(space, predictor, estimator, cfg_s, run_dir, progress=False)
            pooled[name].extend(c.latency_ms for c in result.population)
    lat = {k: np.asarray(v) for k, v in pooled.items()}
    every = np.concatenate(list(lat.values()))
    edges = np.linspace(every.min(), every.max(), 11)
    png = plot_latency_histograms(
        lat, results / f"fig7_{label}.png",
        title=f"{label.upper()}: population latency after {generations} generations ({len(seeds)} seeds pooled)",
    )  # fmt: skip
    rows = {
        k: {
            "min_ms": float(v.min()), "median_ms": float(np.median(v)), "max_ms": float(v.max()),
            "std_ms": float(v.std()), "histogram": _histogram(v, edges),
        }
        for k, v in lat.items()
    }  # fmt: skip
    print(f"\nFig. 7 ({label}): population latency after {generations} generations, {len(seeds)} seeds pooled")
    head = f"{'selection':<22} {'min':>7} {'median':>7} {'max':>7} {'std':>6}"
    print(f"{head}  histogram ({edges[0]:.2f}..{edges[-1]:.2f} ms)")
    for k, r in rows.items():
        stats = f"{r['min_ms']:>7.3f} {r['median_ms']:>7.3f} {r['max_ms']:>7.3f} {r['std_ms']:>6.3f}"
        print(f"{k:<22} {stats}  {r['histogram']}")
    return {"generations": generations, "seeds": list(seeds), "bin_edges_ms": edges.tolist(), "rows": rows,
            "png": str(png)}  # fmt: skip


def table3(make_inputs: Any, base: SearchConfig, dense_ms: float, true_error: Any, out: Path, label: str) -> dict:
    """Every mode with the same budget; the best candidate under each budget (fraction of the dense latency)."""
    budgets = [f * dense_ms for f in BUDGET_FRACTIONS]
    rows: dict[str, Any] = {}
    for mode in MODES:
        run_dir = out / f"table3-{mode}"
        shutil.rmtree(run_dir, ignore_errors=True)
        space, predictor, estimator = make_inputs(base.seed)
        t0 = time.perf_counter()
        result = run_search(space, predictor, estimator, dataclasses.replace(base, mode=mode), run_dir, progress=True)
        wall = time.perf_counter() - t0
        plot_search(run_dir, result=result, title=f"{label}: {mode}")
        rows[mode] = {"wall_s": wall, "front_size": len(result.front), "budgets": [], "cost": search_cost(run_dir)}
        for frac, budget in zip(BUDGET_FRACTIONS, budgets, strict=True):
            fits = [c for c in result.population if c.latency_ms <= budget]
            best = min(fits, key=lambda c: c.error) if fits else None
            entry: dict[str, Any] = {"fraction": frac, "budget_ms": budget, "found": best is not None}
            if best is not None:
                entry |= {"latency_ms": best.latency_ms, "estimated_error": best.error, "x": list(best.x)}
                if true_error is not None:
                    entry["true_error"] = float(true_error(np.asarray([best.x]))[0])
            rows[mode]["budgets"].append(entry)
    err_key = "true_error" if true_error is not None else "estimated_error"
    print(f"\nTable 3 ({label}): best candidate per mode under budgets, {err_key.replace('_', ' ')}")
    print(f"{'mode':<14}" + "".join(f" {f'{int(100 * f)}% dense':>22}" for f in BUDGET_FRACTIONS))
    for mode, r in rows.items():
        cells = [
            f"{b['latency_ms']:.3f} ms {100 * b[err_key]:6.2f}%" if b["found"] else "none under budget"
            for b in r["budgets"]
        ]
        print(f"{mode:<14}" + "".join(f" {c:>22}" for c in cells))
    print("\nSearch cost (wall seconds summed over generations)")
    for mode, r in rows.items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in r["cost"].items())
        print(f"{mode:<14} total {r['wall_s']:.1f}: {parts}")
    return {"dense_ms": dense_ms, "error_column": err_key, "rows": rows}


def synthetic(args: argparse.Namespace) -> dict:
    problem = SyntheticProblem(n_groups=6, n_layers=12, seed=0, noise=args.noise)
    out = Path(args.work) / "synthetic"

    def make_inputs(seed: int) -> tuple:
        p = dataclasses.replace(problem, seed=seed)
        return p.space(), p.predictor(), p.estimator()

    space = problem.space()
    dense_ms = float(problem.latency_ms(_dense_x(space)[None])[0])
    base = SearchConfig(population=args.population or 32, generations=args.generations or 30, seed=0)
    return {
        "source": "SYNTHETIC: toy latency/error functions, not a real model",
        "noise_std": args.noise,
        "fig7": fig7(
            make_inputs,
            base,
            args.fig7_generations,
            tuple(range(args.seeds)),
            out,
            Path(args.results),
            "synthetic",
            True,
        ),
        "table3": table3(make_inputs, base, dense_ms, problem.true_error, out, "synthetic"),
    }


def real(args: argparse.Namespace) -> dict:
    from latprune.pipeline import SearchJob, search_inputs

    out = Path(args.work) / "real"
    job = SearchJob(
        Path(args.checkpoint), Path(args.profile), out / "probe", args.preset, data=args.data,
        force_profile=args.force_profile,
    )  # fmt: skip
    supernet = supernet_from_args(job.supernet_config(), args)
    base = job.search_config().override(population=args.population, generations=args.generations)
    job = dataclasses.replace(job, search=base, supernet=supernet)
    inputs = search_inputs(job)
    space, predictor, meta = inputs.space, inputs.predictor, inputs.meta
    dense_ms = float(predictor.predict(_dense_x(space)[None])[0])

    def make_inputs(seed: int) -> tuple:
        seeded = search_inputs(dataclasses.replace(job, search=dataclasses.replace(base, seed=seed)))
        return seeded.space, seeded.predictor, seeded.estimator

    report = {"source": "REAL: super-net estimated error, profile-predicted latency", "meta": meta}
    if args.only in ("all", "table3"):
        report["table3"] = table3(make_inputs, base, dense_ms, None, out, "real")
        if args.finetune_epochs > 0:
            report["table3"]["finetuned"] = finetune_and_measure(job, report["table3"], args, out)
    if args.only in ("all", "fig7") and args.fig7_generations:
        report["fig7"] = fig7(
            make_inputs, base, args.fig7_generations, (base.seed,), out, Path(args.results), "real", False
        )
    return report


def finetune_and_measure(job: Any, t3: dict, args: argparse.Namespace, out: Path) -> dict:
    """JCW Table 3's second half: fine-tune each mode's best candidate per budget (masked, so zeros stay zeros),
    then report its test accuracy and its latency measured with the engine, beside the dense parent's."""
    import copy

    import torch

    from latprune.data import DataConfig, class_subset, load_splits, make_loader
    from latprune.latency.jobs import ModelJob, TimingConfig
    from latprune.latency.measure import build_model, time_model
    from latprune.latency.profile import load_profile
    from latprune.prune import apply_plan, model_spec_from_checkpoint, plan_from_arch
    from latprune.space import SearchSpace
    from latprune.train import TrainConfig, evaluate, load_model_from_checkpoint, train_model

    parent, ckpt = load_model_from_checkpoint(job.checkpoint)
    profile = load_profile(job.profile, force=job.force_profile)
    kw = ckpt["model_kwargs"]
    space = SearchSpace.from_model(parent, kw["input_size"], kw["in_channels"], scheme=profile.scheme)
    splits = load_splits(DataConfig(**ckpt["data"]))
    train = splits.train
    if args.finetune_per_class:
        train = train.subset(class_subset(train.labels, None, args.finetune_per_class, 0))
    test = make_loader(splits.test, splits.info, 1000, train=False)
    timing = TimingConfig(model_warmup=5, model_repeats=args.latency_repeats)

    def engine_ms(job: ModelJob) -> float:
        model, schemes = build_model(profile.model, job, space.scheme)
        return time_model(model, schemes, profile.model, profile.threads, timing)

    dense = {"test_acc": evaluate(parent, test)[1], "engine_ms": engine_ms(ModelJob("dense", None, None))}
    rows: dict[str, list[dict]] = {}
    for mode, row in t3["rows"].items():
        rows[mode] = []
        for b in row["budgets"]:
            if not b["found"]:
                rows[mode].append({"fraction": b["fraction"], "found": False})
                continue
            arch = space.decode(np.asarray(b["x"]))
            plan = plan_from_arch(parent, space, arch, model_spec=model_spec_from_checkpoint(ckpt))
            model = apply_plan(copy.deepcopy(parent), plan)
            cfg = TrainConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, seed=0)
            loader = make_loader(train, splits.info, cfg.batch_size, train=True, seed=cfg.seed)
            folder = out / f"finetune-{mode}-{int(100 * b['fraction'])}"
            train_model(model, loader, cfg, folder, meta={"x": b["x"]}, resume=True, show_progress=True)
            with torch.no_grad():
                acc = evaluate(model, test)[1]
            rows[mode].append(
                {
                    "fraction": b["fraction"], "found": True, "predicted_ms": b["latency_ms"],
                    "engine_ms": engine_ms(ModelJob(mode, arch.widths, arch.sparsities)), "test_acc": acc,
                }
            )  # fmt: skip
    print(f"\nTable 3 (real, fine-tuned {args.finetune_epochs} epochs): engine latency and test accuracy")
    print(f"dense parent: {dense['engine_ms']:.3f} ms, {100 * dense['test_acc']:.2f}%")
    for mode, cells in rows.items():
        text = [
            f"{c['engine_ms']:.3f} ms {100 * c['test_acc']:6.2f}%" if c["found"] else "none under budget" for c in cells
        ]
        print(f"{mode:<14}" + "".join(f" {t:>22}" for t in text))
    return {"epochs": args.finetune_epochs, "per_class": args.finetune_per_class, "dense": dense, "rows": rows}


def _dense_x(space: Any) -> np.ndarray:
    """Encoding of the unpruned model: widest widths, zero sparsity."""
    joint = space.restrict("joint")
    widths = space.restrict("weight-only")
    return np.where(np.asarray(widths.xl) == np.asarray(widths.xu), np.asarray(joint.xu), 0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--synthetic", action="store_true", help="Use the synthetic problem (labelled as such).")
    p.add_argument("--checkpoint", help="Parent checkpoint for the real mode.")
    p.add_argument("--profile", help="Latency profile for the real mode.")
    p.add_argument("--data", default=None, help="Dataset (defaults to the checkpoint's).")
    p.add_argument("--preset", default="quick", help="Search preset for the real mode.")
    p.add_argument("--population", type=int, default=None, help="Population size override.")
    p.add_argument("--generations", type=int, default=None, help="Generations for Table 3 runs.")
    p.add_argument("--fig7-generations", type=int, default=50, help="Generations before the Fig. 7 histogram.")
    p.add_argument("--seeds", type=int, default=5, help="Synthetic Fig. 7: seeds pooled per selection.")
    p.add_argument("--noise", type=float, default=0.05, help="Synthetic: std of the error estimate's noise.")
    p.add_argument(
        "--finetune-epochs",
        type=int,
        default=0,
        help="Real Table 3: fine-tune each best candidate "
        "this many epochs, then measure test accuracy and engine latency (0: skip).",
    )
    p.add_argument("--finetune-per-class", type=int, default=None, help="Fine-tuning images per class (all).")
    p.add_argument("--finetune-lr", type=float, default=0.01, help="Fine-tuning peak learning rate.")
    p.add_argument("--latency-repeats", type=int, default=30, help="Engine runs per model (median kept).")
    p.add_argument("--only", default="all", choices=["all", "table3", "fig7"], help="Real mode: run one part.")
    p.add_argument("--results", default=str(RESULTS), help="Folder for the JSON and PNG results.")
    p.add_argument("--force-profile", action="store_true", help="Real mode: use a profile from another device.")
    add_supernet_arguments(p.add_argument_group("real mode: super-net settings replacing the preset's"))
    p.add_argument("--work", default=str(ROOT / "runs" / "search_ablation"), help="Where the search runs go.")
    args = p.parse_args(argv)
    if not args.synthetic and not (args.checkpoint and args.profile):
        p.error("pass --synthetic, or --checkpoint and --profile for the real benchmark")
    try:
        report = synthetic(args) if args.synthetic else real(args)
    except LatpruneError as exc:
        print(f"search_ablation: error: {exc}", file=sys.stderr)
        return 2
    report["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    report["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    path = Path(args.results) / f"search_ablation_{'synthetic' if args.synthetic else 'real'}.json"
    atomic_write_json(path, report)
    print(f"\nWrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
