"""Per-layer benchmark across ISAs: the engine's dense kernels built for every ISA this CPU runs, and ONNX Runtime.

Representative layers of MobileNetV1 (1x1, depthwise, stem), ResNet18 (3x3 at 56/14/7, stride 2, 7x7 stem) and
ResNet20 at 28 (3x3 at 28/14/7). For each layer: the kernel the compiler picks (dense_conv, dense_depthwise or
dense_linear; default variant) built for each runnable ISA (``runnable_isas``: avx512, avx2 and generic on an AVX-512
machine), and ONNX Runtime on a one-layer model (conv + ReLU, all graph optimisations). All runtimes of a layer are
timed interleaved in one process, 9 rounds of 5 medians, each keeping its fastest round, 1 thread; ORT's time
includes its ~5-10 us per-run overhead, so small layers flatter the engine less than ``ort_per_layer_us`` does (the
per-layer difference between stacks of 1 and 7 identical layers, measured for the ResNet20 shapes). Every row
records the CPU and the ISA. Writes benchmarks/results/engine_isa_layers.json and .md. Run:

    .venv/bin/python benchmarks/engine_isa_layers.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from latprune._io import atomic_write_json, atomic_write_text
from latprune.bench import onnxruntime_session
from latprune.engine.build import compiler_version
from latprune.engine.detect import dense_kernel
from latprune.engine.isa import cpu_model, runnable_isas
from latprune.engine.kernels import ConvMeta
from latprune.engine.layer import aligned_copy, aligned_empty, bind_layer

RESULTS = Path(__file__).parent / "results"

#: name -> layer (dense convs, depthwise convs, one linear layer).
LAYERS = {
    "MBv1 stem 3x3 s2 3→32 @224": ConvMeta(3, 32, 224, 224, 3, 3, 2, 2, 1, 1),
    "MBv1 1x1 32→64 @112": ConvMeta(32, 64, 112, 112),
    "MBv1 1x1 512→512 @14": ConvMeta(512, 512, 14, 14),
    "MBv1 1x1 1024→1024 @7": ConvMeta(1024, 1024, 7, 7),
    "MBv1 dw 3x3 32 @112": ConvMeta(32, 32, 112, 112, 3, 3, 1, 1, 1, 1, groups=32),
    "MBv1 dw 3x3 s2 64 @112": ConvMeta(64, 64, 112, 112, 3, 3, 2, 2, 1, 1, groups=64),
    "MBv1 dw 3x3 512 @14": ConvMeta(512, 512, 14, 14, 3, 3, 1, 1, 1, 1, groups=512),
    "R18 stem 7x7 s2 3→64 @224": ConvMeta(3, 64, 224, 224, 7, 7, 2, 2, 3, 3),
    "R18 3x3 64→64 @56": ConvMeta(64, 64, 56, 56, 3, 3, 1, 1, 1, 1),
    "R18 3x3 s2 64→128 @56": ConvMeta(64, 128, 56, 56, 3, 3, 2, 2, 1, 1),
    "R18 3x3 256→256 @14": ConvMeta(256, 256, 14, 14, 3, 3, 1, 1, 1, 1),
    "R18 3x3 512→512 @7": ConvMeta(512, 512, 7, 7, 3, 3, 1, 1, 1, 1),
    "R20 3x3 16→16 @28": ConvMeta(16, 16, 28, 28, 3, 3, 1, 1, 1, 1),
    "R20 3x3 32→32 @14": ConvMeta(32, 32, 14, 14, 3, 3, 1, 1, 1, 1),
    "R20 3x3 64→64 @7": ConvMeta(64, 64, 7, 7, 3, 3, 1, 1, 1, 1),
    "FC 1024→1000": ConvMeta(1024, 1000, 1, 1, is_linear=True),
}
#: Layers whose ORT time is also measured as a stack of 7 (the per-layer cost without ORT's per-run overhead).
STACKED = ("R20 3x3 16→16 @28", "R20 3x3 32→32 @14", "R20 3x3 64→64 @7")


def best_of_rounds(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """Seconds per call of each function: per round the median of 5 timed batches, fastest round kept."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            t0 = time.perf_counter()
            fn()
            inner = max(1, min(200, int(2e-3 / max(time.perf_counter() - t0, 1e-7))))
            samples = []
            for _ in range(5):
                t0 = time.perf_counter()
                for _ in range(inner):
                    fn()
                samples.append((time.perf_counter() - t0) / inner)
            best[name] = min(best[name], statistics.median(samples))
    return best


def torch_layer(meta: ConvMeta, weight: np.ndarray, bias: np.ndarray, depth: int = 1) -> nn.Module:
    """The layer (+ ReLU) as a torch module, ``depth`` times in a row, for ONNX Runtime."""
    if meta.is_linear:
        lin = nn.Linear(meta.c_in, meta.c_out)
        lin.weight.data = torch.from_numpy(weight.reshape(meta.c_out, meta.c_in))
        lin.bias.data = torch.from_numpy(bias)
        return nn.Sequential(lin, nn.ReLU()).eval()
    layers: list[nn.Module] = []
    for _ in range(depth):
        conv = nn.Conv2d(meta.c_in, meta.c_out, (meta.kh, meta.kw), (meta.stride_h, meta.stride_w),
                         (meta.pad_h, meta.pad_w), groups=meta.groups)  # fmt: skip
        conv.weight.data = torch.from_numpy(weight)
        conv.bias.data = torch.from_numpy(bias)
        layers += [conv, nn.ReLU()]
    return nn.Sequential(*layers).eval()


def measure(name: str, meta: ConvMeta, isas: list[str], rounds: int, rng: np.random.Generator) -> dict:
    """One row: the engine per ISA and ORT on this layer (and ORT's per-layer cost in a stack, where listed)."""
    weight = rng.standard_normal((meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw), dtype=np.float32)
    weight *= np.float32(1.0 / np.sqrt(weight[0].size))
    bias = rng.standard_normal(meta.c_out, dtype=np.float32)
    shape = (meta.c_in,) if meta.is_linear else (meta.c_in, meta.h, meta.w)
    x = aligned_copy(rng.standard_normal(shape, dtype=np.float32).reshape(meta.c_in, meta.h, meta.w))
    out = aligned_empty((meta.c_out, meta.h_out, meta.w_out))
    spec = dense_kernel(meta)
    fns: dict[str, Callable[[], object]] = {}
    for isa in isas:
        layer = bind_layer(spec, weight, bias, meta, act=1, isa=isa)
        fns[isa] = lambda layer=layer: layer.call(x, out)
    xt = torch.from_numpy(np.array(x).reshape(1, *shape))
    stack = 7 if name in STACKED else 1
    for depth in sorted({1, stack}):
        sess = onnxruntime_session(torch_layer(meta, weight, bias, depth), xt, 1)
        feed = {"x": xt.numpy()}
        fns[f"ort{depth}"] = lambda s=sess, f=feed: s.run(None, f)
    t = best_of_rounds(fns, rounds)
    row = {"layer": name, "cpu": cpu_model(), "kernel": spec.name, "gflop": 2 * meta.dense_macs / 1e9}
    row.update({f"{isa}_us": 1e6 * t[isa] for isa in isas})
    row["ort_us"] = 1e6 * t["ort1"]
    row["ort_per_layer_us"] = 1e6 * (t[f"ort{stack}"] - t["ort1"]) / (stack - 1) if stack > 1 else None
    return row


def markdown(rows: list[dict], isas: list[str], meta: dict) -> str:
    lines = [
        f"Per layer, 1 thread, engine kernel per ISA vs ONNX Runtime ({meta['cpu']}, {meta['date']}, "
        "`benchmarks/engine_isa_layers.py`): µs, and useful GFLOP/s in parentheses; ORT includes its per-run "
        "overhead, `ORT/layer` is its per-layer cost in a stack of 7 (ResNet20 shapes).",
        "",
        "| layer | kernel | " + " | ".join(isas) + " | ORT | ORT/layer |",
        "|---|---|" + "---:|" * (len(isas) + 2),
    ]
    for r in rows:
        cells = [f"{r[f'{i}_us']:.1f} ({r['gflop'] / r[f'{i}_us'] * 1e6:.0f})" for i in isas]
        per = f"{r['ort_per_layer_us']:.1f}" if r["ort_per_layer_us"] is not None else "–"
        lines.append(f"| {r['layer']} | {r['kernel']} | " + " | ".join(cells) + f" | {r['ort_us']:.1f} | {per} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9, help="Interleaved rounds per layer (fastest kept).")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Directory for engine_isa_layers.json and .md.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    isas = runnable_isas()
    rng = np.random.default_rng(0)
    rows = []
    for name, meta in LAYERS.items():
        rows.append(measure(name, meta, isas, args.rounds, rng))
        print(name, {k: round(v, 1) for k, v in rows[-1].items() if k.endswith("_us") and v is not None}, flush=True)
    meta = {"cpu": cpu_model(), "isas": isas, "compiler": compiler_version(), "date": dt.date.today().isoformat()}
    atomic_write_json(args.out / "engine_isa_layers.json", {"meta": meta, "rows": rows})
    report = markdown(rows, isas, meta)
    atomic_write_text(args.out / "engine_isa_layers.md", report)
    print(report)
    print(f"wrote {args.out / 'engine_isa_layers.json'} and {args.out / 'engine_isa_layers.md'}")


if __name__ == "__main__":
    main()
