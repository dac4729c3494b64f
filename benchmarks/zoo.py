"""Every zoo model at its default size, 1 thread: the engine dense and at 80% group4 sparsity vs ONNX Runtime dense.

Per model: random weights with calibrated BatchNorm; the 80% model zeroes the weights of the convs
``sparsify_model`` picks (the 1x1 convs of the MobileNets/EfficientNet, squeeze-excite convs included; the kxk
convs of the ResNets; never the stem or depthwise convs), and ``sparse FLOPs`` is their share of the dense
model's multiply-adds. The engine dense, the engine sparse and ONNX Runtime dense are timed in one process,
interleaved in 10 rounds of >= 5 runs after warm-up, each keeping its fastest round's median; at 1 thread also
the median CPU time of the calling thread, which preemption on a busy machine does not inflate. Compile time is
the dense model's, once with an empty build cache (kernels included) and once with the kernels already built
(the model's own C only). Writes benchmarks/results/zoo.json and zoo.md (zoo_<isa>.* with --isa).

    .venv/bin/python benchmarks/zoo.py                          # every zoo model (~6 min on a quiet 2-core machine)
    .venv/bin/python benchmarks/zoo.py --isa avx2               # the engine's AVX2 code (on an AVX-512 CPU too)
    .venv/bin/python benchmarks/zoo.py --models mobilenet_v3_small --runs 20    # one model, a smoke test
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from latprune._io import atomic_write_json, atomic_write_text
from latprune._version import __version__
from latprune.bench import calibrate_batchnorm, measure_interleaved, onnxruntime_session, sparsify_model
from latprune.engine import compile
from latprune.engine.build import compiler_version
from latprune.engine.isa import cpu_model, host_isa, using_isa
from latprune.models import create_model, list_models, model_info

RESULTS = Path(__file__).parent / "results"
#: Issue 13's targets: dense within 1.2x of ORT; 80% faster than ORT dense where most FLOPs are in sparse convs.
TARGETS = {"dense_vs_ort": 1.2, "sparse_beats_ort_when_sparse_flops_over": 0.5}


@dataclass(frozen=True)
class ZooBenchConfig:
    """What to measure."""

    models: tuple[str, ...] = tuple(list_models())
    sparsity: float = 0.8
    runs: int = 50
    warmup: int = 10
    seed: int = 0


def conv_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-adds of every conv and linear layer on input ``x`` (by module name)."""
    macs: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):

            def hook(mod: nn.Module, _inp: tuple, out: torch.Tensor, name: str = name) -> None:
                per_out = mod.weight[0].numel()  # (c_in / groups) * kh * kw, or in_features
                macs[name] = int(out.numel() // out.shape[0]) * per_out

            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return macs


def compile_seconds(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(seconds from an empty build cache, seconds with the kernels already built) of compiling ``model``."""
    old = os.environ.get("LATPRUNE_CACHE")
    with tempfile.TemporaryDirectory(prefix="latprune-zoo-cache-") as tmp:
        os.environ["LATPRUNE_CACHE"] = tmp
        try:
            t0 = time.perf_counter()
            compile(model, x)
            scratch = time.perf_counter() - t0
            for f in Path(tmp, "engine").glob("lp_*.so"):  # keep the kernel objects, drop the model library
                f.unlink()
            t0 = time.perf_counter()
            compile(model, x)
            model_only = time.perf_counter() - t0
        finally:
            if old is None:
                os.environ.pop("LATPRUNE_CACHE", None)
            else:
                os.environ["LATPRUNE_CACHE"] = old
    return scratch, model_only


def measure_model(name: str, cfg: ZooBenchConfig) -> dict:
    size = model_info(name).default_input_size
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        dense = create_model(name, input_size=size).eval()
    dense = calibrate_batchnorm(dense, torch.randn(4, 3, size, size, generator=gen))
    x = torch.randn(1, 3, size, size, generator=gen)
    xa = x.numpy()
    sparse = copy.deepcopy(dense)
    n_sparse = sparsify_model(sparse, "group4", cfg.sparsity)
    calibrate_batchnorm(sparse, torch.randn(4, 3, size, size, generator=gen))
    macs = conv_macs(dense, x)
    sparse_macs = sum(macs[n] for n, m in sparse.named_modules() if n in macs and bool((m.weight == 0).any()))
    scratch, model_only = compile_seconds(dense, x)
    cms = {"dense": compile(dense, x), "sparse": compile(sparse, x)}
    errors = {}
    with torch.inference_mode():
        for key, model in (("dense", dense), ("sparse", sparse)):
            ref = model(x).numpy()
            errors[key] = float(np.abs(cms[key](xa) - ref).max() / np.abs(ref).max())
    session = onnxruntime_session(dense, x, 1)
    torch.set_num_threads(1)
    timed = measure_interleaved(
        {
            "dense": lambda: cms["dense"](xa),
            "sparse": lambda: cms["sparse"](xa),
            "ort": lambda: session.run(None, {"x": xa}),
        },
        cfg.warmup,
        cfg.runs,
    )
    d, s, o = timed["dense"], timed["sparse"], timed["ort"]
    return {
        "model": name, "input_size": size, "sparse_convs": n_sparse,
        "macs_m": sum(macs.values()) / 1e6, "sparse_flops_share": sparse_macs / sum(macs.values()),
        "engine_dense_ms": d.median_ms, "engine_sparse_ms": s.median_ms, "onnxruntime_ms": o.median_ms,
        "engine_dense_cpu_ms": d.cpu_ms, "engine_sparse_cpu_ms": s.cpu_ms, "onnxruntime_cpu_ms": o.cpu_ms,
        "dense_vs_ort": d.median_ms / o.median_ms, "dense_vs_ort_cpu": d.cpu_ms / o.cpu_ms,
        "sparse_speedup_vs_ort": o.median_ms / s.median_ms, "sparse_speedup_vs_ort_cpu": o.cpu_ms / s.cpu_ms,
        "compile_scratch_s": scratch, "compile_model_s": model_only,
        "max_rel_error_dense": errors["dense"], "max_rel_error_sparse": errors["sparse"],
        "busy": sorted({why for t in (d, s, o) if (why := t.load.reason())}),  # latprune._busy's warnings
        "cpu_wall_ratio_min": min(t.load.cpu_ratio for t in (d, s, o) if t.load.cpu_ratio is not None),
    }  # fmt: skip


def markdown(rows: list[dict], device: dict[str, str], date: str) -> str:
    lines = [
        f"Every zoo model at its default input size, batch 1, 1 thread, on {device['cpu']} ({device['isa']}, "
        f"{device['compiler']}), {date}. ms = fastest of 10 interleaved rounds' medians; CPU = median CPU time of "
        "the calling thread. `dense / ORT` > 1 means the engine is slower than ONNX Runtime; `80% vs ORT` is ONNX "
        "Runtime dense over the engine at 80% group4 sparsity; `sparse FLOPs` is the share of multiply-adds in the "
        "sparsified convs.",
        "",
        "| model | input | MMACs | engine dense | ORT | dense / ORT (CPU) | engine 80% | 80% vs ORT (CPU) "
        "| sparse FLOPs | compile s (scratch / model) | max rel err |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['input_size']} | {r['macs_m']:.0f} | {r['engine_dense_ms']:.2f} | "
            f"{r['onnxruntime_ms']:.2f} | {r['dense_vs_ort']:.2f}x ({r['dense_vs_ort_cpu']:.2f}x) | "
            f"{r['engine_sparse_ms']:.2f} | "
            f"{r['sparse_speedup_vs_ort']:.2f}x ({r['sparse_speedup_vs_ort_cpu']:.2f}x) | "
            f"{r['sparse_flops_share']:.0%} | {r['compile_scratch_s']:.1f} / {r['compile_model_s']:.1f} | "
            f"{max(r['max_rel_error_dense'], r['max_rel_error_sparse']):.1e} |"
        )
    busy = [r for r in rows if r["busy"]]
    if busy:
        low = min(r["cpu_wall_ratio_min"] for r in busy)
        lines += [
            "",
            f"The machine was busy while timing {len(busy)} of the {len(rows)} models (latprune._busy: in some "
            f"rounds the timed thread ran as little as {low:.0%} of the wall time), so the milliseconds are "
            "inflated; the CPU-time ratios in brackets are the ones to compare.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(list_models()), choices=list_models())
    parser.add_argument("--runs", type=int, default=50, help="Timed runs per runtime (median of the best round).")
    parser.add_argument(
        "--isa", help="Compile the engine for this ISA (avx512, avx2, generic; default: the CPU's best): zoo_<isa>.*"
    )
    args = parser.parse_args()
    cfg = ZooBenchConfig(models=tuple(args.models), runs=args.runs)
    with using_isa(args.isa):
        isa = host_isa().name
        device = {"cpu": cpu_model(), "isa": isa, "compiler": compiler_version(), "machine": platform.node()}
        date = time.strftime("%Y-%m-%d")
        rows = [measure_model(name, cfg) for name in tqdm(cfg.models, desc="zoo benchmark")]
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = (f"_{args.isa}" if args.isa else "") + ("" if cfg.models == tuple(list_models()) else "_partial")
    atomic_write_json(
        RESULTS / f"zoo{suffix}.json",
        {"latprune_version": __version__, "device": device, "date": date, "config": cfg.__dict__,
         "targets": TARGETS, "rows": rows},
    )  # fmt: skip
    table = markdown(rows, device, date)
    atomic_write_text(RESULTS / f"zoo{suffix}.md", table)
    print(table)
    print(f"wrote {RESULTS / f'zoo{suffix}.json'} and {RESULTS / f'zoo{suffix}.md'}")


if __name__ == "__main__":
    main()
