"""A/B of engine kernel sources: each layer's kernel built from this checkout's csrc and from another copy, interleaved.

How the engine's "before -> after" figures are measured: put the other version's kernel sources in a folder (e.g.
``mkdir /tmp/old && git show main:latprune/engine/csrc/lp_dense.c > /tmp/old/lp_dense.c``; files missing there come
from this checkout), and the same kernel, packed the same way, runs from both builds in one process, alternating in
9 rounds of 5 medians, each keeping its fastest round. A machine whose speed drifts moves both sides alike. The
copy is put first on the include path, so it must use this checkout's packing (ISA tile shapes, array order).
Prints new/old per layer and checks the outputs agree. 1 thread unless --threads. Run:

    .venv/bin/python benchmarks/engine_ab.py /tmp/old --isa avx2 --layers "R20 3x3 16→16 @28" "MBv1 1x1 512→512 @14"
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from engine_isa_layers import LAYERS, best_of_rounds

from latprune.engine.activations import get_activation
from latprune.engine.build import build_shared_library, load_library
from latprune.engine.detect import dense_kernel
from latprune.engine.isa import cpu_model, host_isa, using_isa
from latprune.engine.layer import ConvShape, aligned_copy, aligned_empty, bind_layer, kernel_source


def function_from(folder: Path, spec, n_packed: int):
    """``spec``'s C function built with ``folder`` first on the include path (its sources replace this checkout's)."""
    old = os.environ.get("LATPRUNE_CFLAGS")
    os.environ["LATPRUNE_CFLAGS"] = f"{old or ''} -I{folder}".strip()
    try:
        lib = load_library(build_shared_library(kernel_source(spec.source, host_isa()), host_isa()))
    finally:
        if old is None:
            os.environ.pop("LATPRUNE_CFLAGS", None)
        else:
            os.environ["LATPRUNE_CFLAGS"] = old
    fn = getattr(lib, spec.c_function)
    p = ctypes.c_void_p
    fn.argtypes = [p, p, p, p, p, ctypes.POINTER(ConvShape), ctypes.c_int, ctypes.c_int, ctypes.c_int] + [p] * n_packed
    fn.restype = None
    fn._keep = lib  # the library stays loaded as long as the function
    return fn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="Folder with the other version's kernel sources (lp_*.c / .h).")
    parser.add_argument("--isa", help="ISA to build both for (default: the CPU's best).")
    parser.add_argument("--layers", nargs="+", default=list(LAYERS), help="Layer names of engine_isa_layers.py.")
    parser.add_argument("--threads", type=int, default=1, help="Threads per kernel call.")
    parser.add_argument("--rounds", type=int, default=9, help="Interleaved rounds (fastest kept).")
    parser.add_argument("--act", default="relu", help="Fused activation (latprune.engine.list_activations()).")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    with using_isa(args.isa) as isa:
        print(f"{cpu_model()}, {isa.name}, {args.threads} thread(s), {dt.date.today().isoformat()}: new = this "
              f"checkout, old = {args.old}")  # fmt: skip
        for name in args.layers:
            meta = LAYERS[name]
            spec = dense_kernel(meta)
            w = rng.standard_normal((meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw), dtype=np.float32)
            x = aligned_copy(rng.standard_normal((meta.c_in, meta.h, meta.w), dtype=np.float32))
            layer = bind_layer(spec, w, None, meta, act=get_activation(args.act).code, nthreads=args.threads)
            outs = {k: aligned_empty((meta.c_out, meta.h_out, meta.w_out)) for k in ("new", "old")}
            fns = {"new": layer.fn, "old": function_from(args.old, spec, len(layer.packed))}

            def call(which: str, layer=layer, fns=fns, outs=outs, x=x) -> None:
                layer.fn = fns[which]
                layer.call(x, outs[which])

            t = best_of_rounds({k: (lambda k=k: call(k)) for k in fns}, args.rounds)
            same = np.allclose(outs["new"], outs["old"], rtol=1e-4, atol=1e-4)
            print(f"{name:28s} new {t['new'] * 1e6:9.1f} us  old {t['old'] * 1e6:9.1f} us  "
                  f"new/old {t['new'] / t['old']:.3f}  outputs agree: {same}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
