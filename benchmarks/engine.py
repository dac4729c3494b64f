"""End-to-end benchmark: the engine vs ONNX Runtime and PyTorch on the models of issue 12, for one compile target ISA.

Dense MobileNetV1, MobileNetV2 and ResNet18 at 224 and ResNet20 at 28, MobileNetV1 with 90% group-of-4 sparsity in
its 1x1 convs and ResNet18 with 80% in its 3x3 convs (never the stem or depthwise convs), 1 and 2 threads, batch 1,
random weights with calibrated BatchNorm. ``--isa`` compiles the engine for that ISA (avx512, avx2, generic: any
this CPU runs; default its best), so an AVX-512 machine measures the AVX2 path too; ONNX Runtime and PyTorch pick
their own kernels. Every row records the CPU and the ISA. Every runtime is timed in this one process, the three
interleaved in 10 rounds of >= 5 runs after warm-up, each keeping its fastest round's median (and min; at 1 thread
also the median CPU time of the calling thread, which preemption on a busy machine does not inflate).
``engine_ops_ms`` is the sum of the per-op medians of the engine's own profile (CPU time at 1 thread). Also
measures the compile time of MobileNetV2 from scratch (empty cache) and on a cache hit. Writes
benchmarks/results/engine_<isa>.json and .md (engine_<isa>_quick.* with --quick).

    .venv/bin/python benchmarks/engine.py [--isa avx2]           # everything (~4 min on a quiet 2-core machine)
    .venv/bin/python benchmarks/engine.py --isa avx2 --quick     # 1 thread, fewer runs
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from latprune._io import atomic_write_json, atomic_write_text
from latprune._version import __version__
from latprune.bench import calibrate_batchnorm, sparsify_model
from latprune.bench.runtimes import DEFAULT_BASELINES, get_runtime, time_runtimes
from latprune.engine import compile
from latprune.engine.build import compiler_version
from latprune.engine.isa import cpu_model, host_isa, using_isa
from latprune.models import ModelSpec, model_info

RESULTS = Path(__file__).parent / "results"
#: Targets of issue 12 (1 thread, each ISA): dense within 1.1x of ORT, MobileNetV1 90% >= 3x ORT on AVX2 (3.5x on
#: AVX-512), ResNet18 80% >= 2.5x ORT.
TARGETS = {"dense_vs_ort": 1.1, "mobilenet_v1_90_speedup": 3.0, "resnet18_80_speedup": 2.5, "compile_s": 20, "hit_s": 1}
#: (model, input size, group4 sparsity) of every row.
CASES = (
    ("mobilenet_v1", 224, 0.0),
    ("mobilenet_v1", 224, 0.9),
    ("mobilenet_v2", 224, 0.0),
    ("resnet18", 224, 0.0),
    ("resnet18", 224, 0.8),
    ("resnet20", 28, 0.0),
)


@dataclass(frozen=True)
class EngineBenchConfig:
    """What to measure."""

    cases: tuple[tuple[str, int, float], ...] = CASES
    threads: tuple[int, ...] = (1, 2)
    runs: int = 50
    warmup: int = 10
    seed: int = 0
    baselines: tuple[str, ...] = DEFAULT_BASELINES  # runtimes timed on the dense model beside every engine row


def base_model(name: str, size: int, cfg: EngineBenchConfig) -> torch.nn.Module:
    return ModelSpec(name, model_info(name).default_num_classes, 3, size).build(seed=cfg.seed).eval()


def measure_model(name: str, size: int, sparsities: list[float], cfg: EngineBenchConfig, bar: tqdm) -> list[dict]:
    """Every (sparsity, threads) row of one model; the dense baselines are timed beside every row."""
    gen = torch.Generator().manual_seed(cfg.seed)
    dense = calibrate_batchnorm(base_model(name, size, cfg), torch.randn(4, 3, size, size, generator=gen))
    x = torch.randn(1, 3, size, size, generator=gen)
    xa = x.numpy()
    baselines = {t: {name: get_runtime(name).prepare(dense, x, t) for name in cfg.baselines} for t in cfg.threads}
    rows = []
    for sparsity in sparsities:
        model = copy.deepcopy(dense)
        n_sparse = sparsify_model(model, "group4", sparsity)
        calibrate_batchnorm(model, torch.randn(4, 3, size, size, generator=gen))
        for threads in cfg.threads:
            cm = compile(model, x, threads=threads)
            with torch.inference_mode():
                ref = model(x).numpy()
            err = float(np.abs(cm(xa) - ref).max() / np.abs(ref).max())
            # The dense baselines are timed again beside every engine row, interleaved with it (see
            # measure_interleaved: this VM's speed flips every few seconds, and sequential medians caught it).
            runtimes = ("engine", *cfg.baselines)
            prepared = {"engine": lambda c=cm: c(xa), **baselines[threads]}
            timed = time_runtimes(dense, x, threads, runtimes, warmup=cfg.warmup, runs=cfg.runs, prepared=prepared)
            eng = timed["engine"]
            prof = cm.profile(repeats=cfg.runs // 2)
            ops_ms = 1e3 * sum(t for _, t in prof)
            by_kernel: dict[str, float] = {}  # where the time goes: kernel (or op kind) -> ms
            for desc, t in prof:
                kind = desc.rsplit(": ", 1)[-1].split(" v")[0]
                by_kernel[kind] = by_kernel.get(kind, 0.0) + 1e3 * t
            one = threads == 1  # CPU time of the calling thread is a latency only when it does all the work
            row = {
                "model": name, "input_size": size, "sparsity": sparsity, "threads": threads, "sparse_convs": n_sparse,
                "isa": cm.spec.isa, "cpu": cpu_model(),
                "engine_ops_ms": ops_ms, "engine_ops_by_kernel_ms": by_kernel, "max_rel_error": err,
            }  # fmt: skip
            for rt in runtimes:  # <runtime>_ms, _min_ms, _cpu_ms, and the engine's speed-ups over each baseline
                t = timed[rt]
                row |= {f"{rt}_ms": t.median_ms, f"{rt}_min_ms": t.min_ms, f"{rt}_cpu_ms": t.cpu_ms if one else None}
                if rt != "engine":
                    row |= {
                        f"speedup_vs_{rt}": t.median_ms / eng.median_ms,
                        f"speedup_vs_{rt}_min": t.min_ms / eng.min_ms,
                        f"speedup_vs_{rt}_cpu": t.cpu_ms / eng.cpu_ms if one else None,
                    }
            rows.append(row)
            ort = row.get("onnxruntime_ms")
            bar.set_postfix_str(f"{name} {sparsity:.0%} t{threads}: {eng.median_ms:.2f} ms vs ORT {ort or 0:.2f}")
            bar.update()
    return rows


def compile_times(cfg: EngineBenchConfig) -> dict[str, float]:
    """MobileNetV2 compile time with an empty build cache, then again (a cache hit)."""
    model = base_model("mobilenet_v2", 224, cfg)
    x = torch.zeros(1, 3, 224, 224)
    old = os.environ.get("LATPRUNE_CACHE")
    with tempfile.TemporaryDirectory(prefix="latprune-bench-cache-") as tmp:
        os.environ["LATPRUNE_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            compile(model, x)
            scratch = time.perf_counter() - t0
            t0 = time.perf_counter()
            compile(model, x)
            hit = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("LATPRUNE_CACHE", None)
            else:
                os.environ["LATPRUNE_CACHE"] = old
    return {"mobilenet_v2_scratch_s": scratch, "mobilenet_v2_cache_hit_s": hit}


def _cpu_cells(r: dict) -> str:
    if r["engine_cpu_ms"] is None:
        return "- | - |"
    return f"{r['engine_cpu_ms']:.2f} / {r['onnxruntime_cpu_ms']:.2f} | {r['speedup_vs_onnxruntime_cpu']:.2f}x |"


def markdown(rows: list[dict], comp: dict[str, float], device: dict[str, str]) -> str:
    lines = [
        f"End-to-end latency at batch 1 on {device['cpu']}, engine compiled for **{device['isa']}** "
        f"({device['date']}), fastest of 10 interleaved rounds' medians "
        "(ms; `ops` = sum of per-op medians of the engine's profile, CPU time at 1 thread; CPU = median CPU time "
        "of the calling thread, which preemption on a busy machine does not inflate, 1-thread rows only).",
        "",
        "| model | input | group4 sparsity | threads | ISA | engine | engine ops | ONNX Runtime | PyTorch | vs ORT "
        "| vs PyTorch | CPU ms engine / ORT | vs ORT (CPU) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input_size']} | {r['sparsity']:.0%} | {r['threads']} | {r['isa']} | "
            f"{r['engine_ms']:.2f} | "
            f"{r['engine_ops_ms']:.2f} | "
            f"{r['onnxruntime_ms']:.2f} | {r['torch_ms']:.2f} | {r['speedup_vs_onnxruntime']:.2f}x | "
            f"{r['speedup_vs_torch']:.2f}x | " + _cpu_cells(r)
        )
    lines += [
        "",
        f"Compile MobileNetV2: {comp['mobilenet_v2_scratch_s']:.1f} s from scratch "
        f"(target <= {TARGETS['compile_s']} s), "
        f"{comp['mobilenet_v2_cache_hit_s']:.2f} s on a cache hit (target <= {TARGETS['hit_s']} s).",
        "",
    ]
    return "\n".join(lines)


def run(cfg: EngineBenchConfig) -> list[dict]:
    """Every row of ``cfg``, model by model (one dense baseline per model)."""
    models: dict[tuple[str, int], list[float]] = {}
    for name, size, sparsity in cfg.cases:
        models.setdefault((name, size), []).append(sparsity)
    rows: list[dict] = []
    with tqdm(total=len(cfg.cases) * len(cfg.threads), desc="engine benchmark") as bar:
        for (name, size), sparsities in models.items():
            rows += measure_model(name, size, sparsities, cfg, bar)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 thread, 20 runs (a smoke test of every case).")
    parser.add_argument("--runs", type=int, default=50, help="Timed runs per measurement (median reported).")
    parser.add_argument(
        "--isa", help="Compile the engine for this ISA (avx512, avx2, generic; default: the CPU's best one)."
    )
    args = parser.parse_args()
    cfg = EngineBenchConfig(runs=args.runs)
    if args.quick:
        cfg = EngineBenchConfig(threads=(1,), runs=20)
    with using_isa(args.isa):
        device = {
            "cpu": cpu_model(), "isa": host_isa().name, "compiler": compiler_version(), "machine": platform.node(),
            "date": dt.date.today().isoformat(),
        }  # fmt: skip
        rows = run(cfg)
        comp = compile_times(cfg)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"engine_{device['isa']}{'_quick' if args.quick else ''}"
    atomic_write_json(
        RESULTS / f"{stem}.json",
        {"latprune_version": __version__, "device": device, "config": cfg.__dict__, "targets": TARGETS,
         "rows": rows, "compile": comp},
    )  # fmt: skip
    table = markdown(rows, comp, device)
    atomic_write_text(RESULTS / f"{stem}.md", table)
    print(table)
    print(f"wrote {RESULTS / f'{stem}.json'} and {RESULTS / f'{stem}.md'}")


if __name__ == "__main__":
    main()
