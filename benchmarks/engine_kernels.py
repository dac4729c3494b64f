"""Per-kernel benchmark: every kernel of the engine's table on representative layers, at 80% sparsity, vs dense.

Each sparse kernel gets weights masked by the pruning package's mask generator for its own scheme (so the
structure is what `latprune prune` produces), and every variant is timed; the table keeps the fastest. Reads
the kernel table, so a newly registered kernel is benchmarked the moment it exists. 1 thread, batch 1. ``--isa``
builds the kernels for that ISA (default: the CPU's best); every row records the CPU and the ISA.
Writes benchmarks/results/engine_kernels_<isa>.json and .md (or --out DIR). Run:
    .venv/bin/python benchmarks/engine_kernels.py [--sparsity 0.8] [--repeats 30] [--isa avx2] [--out DIR]
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

import numpy as np
import torch

from latprune._io import atomic_write_json, atomic_write_text
from latprune.engine.build import compiler_version
from latprune.engine.isa import cpu_model, host_isa, using_isa
from latprune.engine.kernels import ConvMeta, get_kernel, list_kernels
from latprune.engine.layer import time_layer
from latprune.errors import PlanError
from latprune.prune import make_mask

RESULTS = Path(__file__).parent / "results"

LAYERS = {
    "MBv1 1x1 512→512 @14": ConvMeta(512, 512, 14, 14),
    "MBv1 1x1 128→128 @56": ConvMeta(128, 128, 56, 56),
    "R18 3x3 64→64 @56": ConvMeta(64, 64, 56, 56, 3, 3, 1, 1, 1, 1),
    "R18 3x3 256→256 @14": ConvMeta(256, 256, 14, 14, 3, 3, 1, 1, 1, 1),
    "R18 3x3 s2 128→256 @28": ConvMeta(128, 256, 28, 28, 3, 3, 2, 2, 1, 1),
    "R20 3x3 64→64 @7": ConvMeta(64, 64, 7, 7, 3, 3, 1, 1, 1, 1),
    "FC 1024→1000": ConvMeta(1024, 1000, 1, 1, is_linear=True),
}


def _best_time(kernel: str, weight: np.ndarray, meta: ConvMeta, repeats: int) -> float:
    """Fastest variant's median time (s); the min over 3 medians damps interference from other processes."""
    spec = get_kernel(kernel)
    return min(
        min(time_layer(kernel, weight, None, meta, variant=v, warmup=3, repeats=repeats) for _ in range(3))
        for v in spec.variants_for(meta)
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sparsity", type=float, default=0.8, help="Weight sparsity of every sparse kernel's mask.")
    p.add_argument("--repeats", type=int, default=30, help="Timed calls per measurement (median).")
    p.add_argument("--out", type=Path, default=RESULTS, help="Directory for engine_kernels_<isa>.json and .md.")
    p.add_argument("--isa", help="Build the kernels for this ISA (avx512, avx2, generic; default: the CPU's best).")
    args = p.parse_args()
    with using_isa(args.isa):
        measure(args)


def measure(args: argparse.Namespace) -> None:
    """Time every kernel on every layer for the current target ISA and write the tables."""
    rng = np.random.default_rng(0)
    kernels = [k for k in list_kernels() if get_kernel(k).scheme != "dense"]
    rows = []
    for name, meta in LAYERS.items():
        shape = (meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)
        dense_w = rng.standard_normal(shape).astype(np.float32)
        dense_kernel = "dense_linear" if meta.is_linear else "dense_conv"
        t_dense = _best_time(dense_kernel, dense_w, meta, args.repeats)
        row = {"layer": name, "isa": host_isa().name, "cpu": cpu_model(), "dense_us": 1e6 * t_dense, "kernels": {}}
        for k in kernels:
            spec = get_kernel(k)
            weight = torch.from_numpy(dense_w.reshape(meta.c_out, meta.c_in) if meta.is_linear else dense_w)
            if not spec.supports(meta):
                continue
            try:
                mask = make_mask(spec.scheme, weight, args.sparsity, layer=name).numpy()
            except PlanError:  # the scheme does not apply to this layer (e.g. pattern on a 1x1 conv)
                continue
            w = dense_w * mask.reshape(shape)
            t = _best_time(k, w, meta, args.repeats)
            row["kernels"][k] = {"us": 1e6 * t, "speedup_vs_dense": t_dense / t}
        rows.append(row)
        print(name, {k: f"{v['us']:.0f}us ({v['speedup_vs_dense']:.1f}x)" for k, v in row["kernels"].items()})
    meta_info = {
        "date": dt.date.today().isoformat(),
        "cpu": cpu_model(),
        "isa": host_isa().name,
        "compiler": compiler_version(),
        "threads": 1,
        "sparsity": args.sparsity,
    }
    stem = f"engine_kernels_{meta_info['isa']}"
    atomic_write_json(args.out / f"{stem}.json", {**meta_info, "rows": rows})
    names = sorted({k for r in rows for k in r["kernels"]})
    lines = [
        f"Per-kernel time at {args.sparsity:.0%} sparsity vs the dense kernel, 1 thread, batch 1, fastest variant "
        f"({meta_info['cpu']}, {meta_info['isa']}, {meta_info['date']}; `benchmarks/engine_kernels.py`).",
        "",
        "| layer | dense µs | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]
    for r in rows:
        cells = [
            f"{r['kernels'][k]['us']:.0f} ({r['kernels'][k]['speedup_vs_dense']:.1f}x)" if k in r["kernels"] else "–"
            for k in names
        ]
        lines.append(f"| {r['layer']} | {r['dense_us']:.0f} | " + " | ".join(cells) + " |")
    atomic_write_text(args.out / f"{stem}.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
