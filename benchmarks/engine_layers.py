"""Per-layer benchmark: MobileNetV1's 13 pointwise convs at 224, group-of-4 sparse engine vs ONNX Runtime dense.

For every layer, sparsity (0/50/70/80/90/95% group-of-4) and thread count, prints and records the engine's median
time, its useful GFLOP/s (2 * dense MACs * density / time) and its speed-up over ONNX Runtime running the dense
layer (a one-conv ONNX model, all graph optimisations, same threads). ``--isa`` compiles the engine for that ISA
(default: the CPU's best); every row records the CPU and the ISA. Writes benchmarks/results/engine_layers_<isa>.json
and .md. Run:  .venv/bin/python benchmarks/engine_layers.py [--quick] [--isa avx2]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from latprune._io import atomic_write_json, atomic_write_text
from latprune._version import __version__
from latprune.engine.autotune import TuneConfig, tune_layer
from latprune.engine.build import compiler_version
from latprune.engine.isa import cpu_model, host_isa, using_isa
from latprune.engine.kernels import ConvMeta, get_kernel
from latprune.engine.kernels.group4 import group4_density
from latprune.engine.layer import BoundLayer, aligned_copy, aligned_empty, bind_layer
from latprune.engine.reference import ACT_RELU

#: (c_in, c_out, spatial size) of MobileNetV1's 13 pointwise convolutions at 224x224 input.
MOBILENET_V1_POINTWISE = (
    (32, 64, 112), (64, 128, 56), (128, 128, 56), (128, 256, 28), (256, 256, 28), (256, 512, 14),
    (512, 512, 14), (512, 512, 14), (512, 512, 14), (512, 512, 14), (512, 512, 14), (512, 1024, 7), (1024, 1024, 7),
)  # fmt: skip
SPARSITIES = (0.0, 0.5, 0.7, 0.8, 0.9, 0.95)
RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: sparsities, thread counts, and the number of timed runs per measurement."""

    sparsities: tuple[float, ...] = SPARSITIES
    threads: tuple[int, ...] = (1, 2)
    repeats: int = 50
    warmup: int = 10
    seed: int = 0


def group4_weight(rng: np.random.Generator, c_out: int, c_in: int, sparsity: float) -> np.ndarray:
    """A random (c_out, c_in, 1, 1) weight with group-of-4 zeros: 4 adjacent rows drop the same inputs."""
    w = rng.standard_normal((c_out, c_in, 1, 1), dtype=np.float32)
    keep = rng.random((c_out // 4, c_in, 1, 1)) >= sparsity
    return w * np.repeat(keep, 4, axis=0)


def timed_seconds(call, warmup: int, repeats: int) -> tuple[float, float]:
    """(median, min) wall time of ``call()`` over ``repeats`` runs after ``warmup`` runs; the min shows what a
    quiet machine would give when other processes preempt the run."""
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples), min(samples)


def ort_conv_session(weight: np.ndarray, bias: np.ndarray, threads: int, stride: int = 1, pad: int = 0):
    """An ONNX Runtime session for one dense Conv + Relu, all graph optimisations, ``threads`` intra-op threads."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    c_in = weight.shape[1]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["y0"], strides=[stride, stride], pads=[pad] * 4),
            helper.make_node("Relu", ["y0"], ["y"]),
        ],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]), onnx.__version__


def raw_call(layer: BoundLayer, x: np.ndarray, out: np.ndarray) -> Callable[[], None]:
    """``layer.call(x, out)`` with every pointer converted once: BoundLayer.call converts ~8 arrays per call, ~8 µs
    of Python that the compiled model (C calling C) never pays, and 5-20% of a 40-180 µs layer."""
    args = (
        x.ctypes.data, out.ctypes.data, layer.bias.ctypes.data, None, layer.scratch.ctypes.data,
        ctypes.byref(layer.shape), layer.act, layer.variant, layer.nthreads, *[a.ctypes.data for a in layer.packed],
    )  # fmt: skip
    fn = layer.fn
    return lambda: fn(*args)


def engine_seconds(kernel: str, weight, bias, meta: ConvMeta, threads: int, cfg: BenchConfig, x):
    """Autotune the kernel's variant on this layer, then ((median, min) seconds, variant) of the chosen variant."""
    variant = tune_layer([kernel], weight, meta, threads, TuneConfig(warmup=2, repeats=5)).variant
    layer = bind_layer(kernel, weight, bias, meta, ACT_RELU, variant=variant, nthreads=threads)
    out = aligned_empty((meta.c_out, meta.h_out, meta.w_out))
    return timed_seconds(raw_call(layer, x, out), cfg.warmup, cfg.repeats), variant


def ort_seconds(cfg: BenchConfig, rng: np.random.Generator) -> dict[tuple[int, int], tuple[float, float]]:
    """ONNX Runtime dense time of every (threads, layer), measured before the engine so that ORT's spinning
    thread pool never competes with the engine's threads."""
    times = {}
    for threads in cfg.threads:
        for i, (c_in, c_out, hw) in enumerate(MOBILENET_V1_POINTWISE):
            w = rng.standard_normal((c_out, c_in, 1, 1), dtype=np.float32)
            sess, _ = ort_conv_session(w, rng.standard_normal(c_out, dtype=np.float32), threads)
            feed = {"x": rng.standard_normal((1, c_in, hw, hw), dtype=np.float32)}
            times[(threads, i)] = timed_seconds(lambda s=sess, f=feed: s.run(None, f), cfg.warmup, cfg.repeats)
            del sess
    return times


def run(cfg: BenchConfig) -> list[dict]:
    """Measure every (threads, sparsity, layer) and return one record per measurement."""
    rng = np.random.default_rng(cfg.seed)
    ort = ort_seconds(cfg, rng)
    rows = []
    dense: dict[tuple[int, int], tuple[float, float]] = {}
    jobs = [(t, s, i) for t in cfg.threads for s in cfg.sparsities for i in range(len(MOBILENET_V1_POINTWISE))]
    for threads, sparsity, i in tqdm(jobs, desc="engine layers", unit="layer"):
        c_in, c_out, hw = MOBILENET_V1_POINTWISE[i]
        meta = ConvMeta(c_in, c_out, hw, hw)
        w = group4_weight(rng, c_out, c_in, sparsity)
        b = rng.standard_normal(c_out, dtype=np.float32)
        x = aligned_copy(rng.standard_normal((c_in, hw, hw), dtype=np.float32))
        if (threads, i) not in dense:  # the engine's dense kernel on the same layer, for the dense comparison
            dense[(threads, i)] = engine_seconds("dense_conv", w, b, meta, threads, cfg, x)[0]
        (t, t_min), variant = engine_seconds("group4_conv", w, b, meta, threads, cfg, x)
        density = group4_density(w, meta)
        ort_t, ort_min = ort[(threads, i)]
        rows.append(
            {
                "isa": host_isa().name, "cpu": cpu_model(),
                "layer": i + 1, "c_in": c_in, "c_out": c_out, "hw": hw, "threads": threads, "sparsity": sparsity,
                "density": density, "variant": get_kernel("group4_conv").variants[variant], "engine_us": t * 1e6,
                "engine_min_us": t_min * 1e6, "engine_dense_us": dense[(threads, i)][0] * 1e6,
                "engine_dense_min_us": dense[(threads, i)][1] * 1e6, "ort_dense_us": ort_t * 1e6,
                "ort_dense_min_us": ort_min * 1e6, "useful_gflops": 2 * meta.dense_macs * density / t / 1e9,
                "speedup_vs_ort": ort_t / t, "speedup_vs_ort_min": ort_min / t_min,
            }
        )  # fmt: skip
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Totals over the 13 layers per (threads, sparsity): time, useful GFLOP/s and speed-up over ORT dense."""
    out = []
    for key in sorted({(r["threads"], r["sparsity"]) for r in rows}):
        sel = [r for r in rows if (r["threads"], r["sparsity"]) == key]
        t = sum(r["engine_us"] for r in sel)
        ort = sum(r["ort_dense_us"] for r in sel)
        dense = sum(r["engine_dense_us"] for r in sel)
        t_min = sum(r["engine_min_us"] for r in sel)
        ort_min = sum(r["ort_dense_min_us"] for r in sel)
        flops = sum(r["useful_gflops"] * r["engine_us"] * 1e3 for r in sel)  # useful FLOP
        out.append(
            {"threads": key[0], "sparsity": key[1], "engine_us": t, "ort_dense_us": ort,
             "engine_dense_us": dense, "useful_gflops": flops / (t * 1e3), "speedup_vs_ort": ort / t,
             "engine_dense_vs_ort": dense / ort, "engine_min_us": t_min, "ort_dense_min_us": ort_min,
             "speedup_vs_ort_min": ort_min / t_min}
        )  # fmt: skip
    return out


def markdown(rows: list[dict], summary: list[dict]) -> str:
    lines = [
        "# Engine per-layer benchmark: MobileNetV1 pointwise convs at 224, group-of-4 sparse vs ORT dense",
        "",
        f"CPU: {cpu_model()} ({host_isa().name}); compiler: {compiler_version()}; latprune {__version__}; "
        "median of runs after warm-up, batch 1, the kernel called through ctypes with its pointers converted once "
        "(ORT through its Python session.run); load average at the end of the run: "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} (above the core count, other processes preempt the "
        "runs: compare the min columns of the JSON, and distrust 2-thread numbers).",
        "",
        "## Totals over the 13 layers",
        "",
        "group4 = the engine's group-of-4 sparse kernel (autotuned variant); engine dense = its dense kernel "
        "(dense_conv) on the same dense layer; ORT = ONNX Runtime on the dense layer.",
        "",
        "| threads | sparsity | group4 µs | ORT dense µs | useful GFLOP/s | speed-up vs ORT | (of the mins) "
        "| engine dense µs | engine dense / ORT |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['threads']} | {s['sparsity']:.0%} | {s['engine_us']:.0f} | {s['ort_dense_us']:.0f} | "
            f"{s['useful_gflops']:.1f} | {s['speedup_vs_ort']:.2f}x | {s['speedup_vs_ort_min']:.2f}x | "
            f"{s['engine_dense_us']:.0f} | {s['engine_dense_vs_ort']:.2f}x |"
        )
    header = (
        "| threads | sparsity | layer | c_in→c_out @ hw | variant | group4 µs | ORT µs | useful GFLOP/s | speed-up "
        "| engine dense µs |"
    )
    lines += ["", "## Per layer", "", header, "|---:|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['threads']} | {r['sparsity']:.0%} | {r['layer']} | {r['c_in']}→{r['c_out']} @ {r['hw']} | "
            f"{r['variant']} | {r['engine_us']:.1f} | {r['ort_dense_us']:.1f} | {r['useful_gflops']:.1f} | "
            f"{r['speedup_vs_ort']:.2f}x | {r['engine_dense_us']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Only 90%% sparsity, 1 thread, 15 runs (a smoke test).")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="Thread counts to measure.")
    parser.add_argument("--repeats", type=int, default=50, help="Timed runs per measurement; the median is kept.")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Directory for engine_layers_<isa>.json and .md.")
    parser.add_argument("--isa", help="Compile the engine for this ISA (avx512, avx2, generic; default: the CPU's).")
    args = parser.parse_args()
    cfg = BenchConfig(threads=tuple(args.threads), repeats=args.repeats)
    if args.quick:
        cfg = BenchConfig(sparsities=(0.9,), threads=(1,), repeats=15, warmup=3)
    with using_isa(args.isa) as isa:
        rows = run(cfg)
        summary = summarise(rows)
        meta = {
            "cpu": cpu_model(), "isa": isa.name, "compiler": compiler_version(), "latprune": __version__,
            "python": platform.python_version(), "config": cfg.__dict__,
        }  # fmt: skip
        report = markdown(rows, summary)
    json_path = atomic_write_json(
        args.out / f"engine_layers_{isa.name}.json", {"meta": meta, "summary": summary, "layers": rows}
    )
    md_path = atomic_write_text(args.out / f"engine_layers_{isa.name}.md", report)
    print(report.split("## Per layer")[0])
    print(f"Wrote {json_path} and {md_path}")


if __name__ == "__main__":
    main()
