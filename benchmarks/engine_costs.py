"""Fit the kernel-choice cost model (``KernelCosts`` in latprune/engine/isa.py) for each ISA by measuring it.

detect.choose_kernel estimates a sparse kernel's time relative to the dense kernel as
``overhead + effective_density / efficiency``. This script times every sparse kernel of the table, with weights
masked by its own scheme's mask generator at 0 / 50 / 80 / 90 % sparsity, against the dense kernel on MobileNetV1 1x1
and ResNet18 3x3 layer shapes (stride 1 and 2) and one linear layer, for each ``--isa`` (default: every ISA this
CPU runs except generic). Each kernel runs its default variant (what a compile without autotune runs), 1 thread,
and a layer's kernels are timed interleaved in rounds, each keeping its fastest round's median CPU time of the
calling thread (others' jobs on a shared machine inflate wall time, not CPU time). One least-squares fit per ISA:
a shared overhead over the conv points and one efficiency per kernel; linear layers' efficiencies with that
overhead. Prints the ``KernelCosts`` to put in isa.py and writes benchmarks/results/engine_costs.json and .md. Run:

    .venv/bin/python benchmarks/engine_costs.py [--isa avx2 avx512] [--rounds 3]
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

from latprune._io import atomic_write_json, atomic_write_text
from latprune.engine.build import compiler_version
from latprune.engine.detect import default_variant, dense_kernel, effective_density
from latprune.engine.isa import ISAS, cpu_model, runnable_isas
from latprune.engine.kernels import ConvMeta, get_kernel, list_kernels
from latprune.engine.kernels.npas import is_fc_layer
from latprune.engine.layer import aligned_copy, aligned_empty, bind_layer
from latprune.errors import PlanError
from latprune.prune import make_mask

RESULTS = Path(__file__).parent / "results"

LAYERS = {
    "MBv1 1x1 128→128 @56": ConvMeta(128, 128, 56, 56),
    "MBv1 1x1 256→256 @28": ConvMeta(256, 256, 28, 28),
    "MBv1 1x1 512→512 @14": ConvMeta(512, 512, 14, 14),
    "MBv1 1x1 1024→1024 @7": ConvMeta(1024, 1024, 7, 7),
    "R18 3x3 64→64 @56": ConvMeta(64, 64, 56, 56, 3, 3, 1, 1, 1, 1),
    "R18 3x3 128→128 @28": ConvMeta(128, 128, 28, 28, 3, 3, 1, 1, 1, 1),
    "R18 3x3 s2 128→256 @28": ConvMeta(128, 256, 28, 28, 3, 3, 2, 2, 1, 1),
    "R18 3x3 256→256 @14": ConvMeta(256, 256, 14, 14, 3, 3, 1, 1, 1, 1),
    "R18 3x3 512→512 @7": ConvMeta(512, 512, 7, 7, 3, 3, 1, 1, 1, 1),
    "FC 1024→1000": ConvMeta(1024, 1000, 1, 1, is_linear=True),
}
#: 0 %: the sparse kernel on a dense weight anchors the line at density 1 (a kernel faster per useful MAC than the
#: dense one must still lose to it where there is nothing to skip).
SPARSITIES = (0.0, 0.5, 0.8, 0.9)


def cpu_best_of_rounds(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """CPU seconds of the calling thread per call of each function: per round the median of 5 timed batches of
    ~2 ms, the functions interleaved, the fastest round kept."""
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            t0 = time.thread_time()
            fn()
            inner = max(1, min(200, int(2e-3 / max(time.thread_time() - t0, 1e-6))))
            samples = []
            for _ in range(5):
                t0 = time.thread_time()
                for _ in range(inner):
                    fn()
                samples.append((time.thread_time() - t0) / inner)
            best[name] = min(best[name], statistics.median(samples))
    return best


def measure_layer(name: str, meta: ConvMeta, isa: str, rounds: int, rng: np.random.Generator) -> list[dict]:
    """Points (kernel, sparsity, effective density, time / dense time) of one layer on one ISA."""
    shape = (meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)
    dense_w = rng.standard_normal(shape).astype(np.float32)
    x = aligned_copy(rng.standard_normal((meta.c_in, meta.h, meta.w), dtype=np.float32))
    out = aligned_empty((meta.c_out, meta.h_out, meta.w_out))
    fns: dict[str, Callable[[], object]] = {}
    dense_spec = dense_kernel(meta)
    dense = bind_layer(
        dense_spec, dense_w, None, meta, act=1, variant=default_variant(dense_spec, meta, 1, ISAS[isa]), isa=isa
    )
    fns["dense"] = lambda: dense.call(x, out)
    points = {}
    torch_w = torch.from_numpy(dense_w.reshape(meta.c_out, meta.c_in) if meta.is_linear else dense_w)
    for kernel in list_kernels():
        spec = get_kernel(kernel)
        if spec.scheme == "dense" or not spec.supports(meta):
            continue
        for sparsity in SPARSITIES:
            try:
                mask = make_mask(spec.scheme, torch_w, sparsity, layer=name).numpy()
            except PlanError:  # the scheme does not apply to this layer (pattern on a 1x1 conv)
                break
            w = dense_w * mask.reshape(shape)
            key = f"{kernel}@{sparsity}"
            if any(p["kernel"] == kernel and p["density"] == float(mask.mean()) for p in points.values()):
                continue  # a scheme with a fixed density (nm24): one point is enough
            variant = default_variant(spec, meta, 1, ISAS[isa])
            layer = bind_layer(spec, w, None, meta, act=1, variant=variant, isa=isa)
            fns[key] = lambda layer=layer: layer.call(x, out)
            points[key] = {"kernel": kernel, "sparsity": sparsity, "density": float(mask.mean()),
                           "effective_density": effective_density(spec, w, meta)}  # fmt: skip
    t = cpu_best_of_rounds(fns, rounds)
    rows = []
    for key, p in points.items():
        rows.append({"layer": name, "isa": isa, "fc": is_fc_layer(meta), "dense_us": 1e6 * t["dense"],
                     "us": 1e6 * t[key], "ratio": t[key] / t["dense"], **p})  # fmt: skip
    return rows


def fit(rows: list[dict]) -> dict:
    """Least squares of ratio = overhead + effective_density / efficiency: the overhead shared by the conv points,
    one efficiency per kernel; linear-layer efficiencies with that overhead (through it, one slope each)."""
    conv = [r for r in rows if not r["fc"]]
    kernels = sorted({r["kernel"] for r in conv})
    a = np.zeros((len(conv), 1 + len(kernels)))  # (points, overhead + one slope per kernel)
    for i, r in enumerate(conv):
        a[i, 0] = 1.0
        a[i, 1 + kernels.index(r["kernel"])] = r["effective_density"]
    y = np.array([r["ratio"] for r in conv])
    coef = np.linalg.lstsq(a, y, rcond=None)[0]
    overhead = float(coef[0])
    efficiency = {k: float(1.0 / coef[1 + i]) for i, k in enumerate(kernels)}
    fc_eff = {}
    for k in sorted({r["kernel"] for r in rows if r["fc"]}):
        pts = [r for r in rows if r["fc"] and r["kernel"] == k]
        d = np.array([p["effective_density"] for p in pts])
        fc_eff[k] = float(d @ d / (d @ (np.array([p["ratio"] for p in pts]) - overhead)))
    for r in rows:
        eff = (fc_eff if r["fc"] else efficiency)[r["kernel"]]
        r["fitted_ratio"] = overhead + r["effective_density"] / eff
    worst = max(abs(r["fitted_ratio"] - r["ratio"]) for r in conv)
    return {"sparse_overhead": overhead, "efficiency": efficiency, "fc_efficiency": fc_eff, "worst_residual": worst}


def markdown(results: dict, meta: dict) -> str:
    lines = [
        f"Kernel-choice cost model per ISA ({meta['cpu']}, {meta['date']}, 1 thread, default variants, CPU time; "
        "`benchmarks/engine_costs.py`): time / dense time = overhead + effective density / efficiency.",
        "",
        "| ISA | overhead | worst residual | " + " | ".join(meta["kernels"]) + " |",
        "|---|---:|---:|" + "---:|" * len(meta["kernels"]),
    ]
    for isa, r in results.items():
        f = r["fit"]
        cells = [
            " / ".join(f"{d[k]:.2f}" if k in d else "–" for d in (f["efficiency"], f["fc_efficiency"]))  # conv / linear
            for k in meta["kernels"]
        ]
        lines.append(f"| {isa} | {f['sparse_overhead']:.3f} | {f['worst_residual']:.2f} | " + " | ".join(cells) + " |")
    lines += ["", "Efficiencies: conv layers / linear layers."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = [i for i in runnable_isas() if i != "generic"]
    parser.add_argument("--isa", nargs="+", default=default, help="ISAs to fit (default: the CPU's, not generic).")
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds per layer (fastest kept).")
    parser.add_argument("--out", type=Path, default=RESULTS, help="Directory for engine_costs.json and .md.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for isa in args.isa:
        rng = np.random.default_rng(0)
        rows = []
        for name, meta in LAYERS.items():
            rows += measure_layer(name, meta, isa, args.rounds, rng)
            print(isa, name, {r["kernel"] + f"@{r['sparsity']}": round(r["ratio"], 2) for r in rows[-12:]
                              if r["layer"] == name}, flush=True)  # fmt: skip
        results[isa] = {"fit": fit(rows), "points": rows}
        f = results[isa]["fit"]
        print(f"{isa}: KernelCosts(sparse_overhead={f['sparse_overhead']:.3f}, efficiency="
              f"{ {k: round(v, 2) for k, v in f['efficiency'].items()} }, fc_efficiency="
              f"{ {k: round(v, 2) for k, v in f['fc_efficiency'].items()} }) worst residual "
              f"{f['worst_residual']:.2f}", flush=True)  # fmt: skip
    kernels = sorted({k for r in results.values() for k in (*r["fit"]["efficiency"], *r["fit"]["fc_efficiency"])})
    meta = {"cpu": cpu_model(), "compiler": compiler_version(), "date": dt.date.today().isoformat(), "threads": 1,
            "kernels": kernels}  # fmt: skip
    atomic_write_json(args.out / "engine_costs.json", {"meta": meta, "results": results})
    report = markdown(results, meta)
    atomic_write_text(args.out / "engine_costs.md", report)
    print(report)
    print(f"wrote {args.out / 'engine_costs.json'} and {args.out / 'engine_costs.md'}")


if __name__ == "__main__":
    main()
