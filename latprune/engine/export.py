"""Export a compiled network as a stand-alone C project (generated source, kernels, weights, main.c, Makefile)."""

from __future__ import annotations

import platform
import shutil
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from latprune._io import atomic_write_bytes, atomic_write_json, atomic_write_text, locks_output
from latprune._version import __version__
from latprune.engine.build import CSRC_DIR
from latprune.engine.capture import capture
from latprune.engine.codegen import c_comment_text, lower
from latprune.engine.isa import ISAS, Isa, host_isa
from latprune.engine.runtime import choose_kernels, layer_choices
from latprune.errors import EngineError

#: Export targets: the ISA the generated code is written for and the cross compiler to suggest.
TARGETS: dict[str, tuple[str, str]] = {
    "aarch64": ("neon", "aarch64-linux-gnu-gcc"),
    "x86_64": ("avx2", "cc"),
    "x86_64-avx512": ("avx512", "cc"),
    "host": ("", "cc"),
}

_MAIN_C = r"""/* Stand-alone runner for the generated model.c, written by latprune.engine.export (latprune {version}).
 * Usage: ./model [weights.bin [input.bin [output.bin [runs [threads]]]]]
 * input.bin: raw float32 NCHW, {n_in} floats per image (default: a fixed test pattern, batch 1);
 * output.bin: raw float32, {n_out} floats per image. Prints the first outputs and the time per run. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void lp_forward(const float *input, float *output, float *arena, const char *blob, int batch, int nthreads);
int lp_input_floats(void);
int lp_output_floats(void);
int lp_arena_floats(void);

static void *read_file(const char *path, size_t *size) {{
    FILE *f = fopen(path, "rb");
    if (!f) {{ fprintf(stderr, "cannot open %s\n", path); exit(2); }}
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = aligned_alloc(64, ((size_t)n + 63) / 64 * 64 + 64);
    if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {{ fprintf(stderr, "cannot read %s\n", path); exit(2); }}
    fclose(f);
    *size = (size_t)n;
    return buf;
}}

int main(int argc, char **argv) {{
    size_t blob_size = 0, in_size = 0;
    const char *blob = read_file(argc > 1 ? argv[1] : "weights.bin", &blob_size);
    int n_in = lp_input_floats(), n_out = lp_output_floats(), batch = 1;
    float *input;
    if (argc > 2) {{
        input = read_file(argv[2], &in_size);
        batch = (int)(in_size / sizeof(float) / (size_t)n_in);
        if (batch < 1 || in_size != (size_t)batch * n_in * sizeof(float)) {{
            fprintf(stderr, "%s: expected a multiple of %d floats\n", argv[2], n_in);
            return 2;
        }}
    }} else {{
        input = aligned_alloc(64, ((size_t)n_in * sizeof(float) + 63) / 64 * 64);
        for (int i = 0; i < n_in; ++i) input[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    }}
    int runs = argc > 4 ? atoi(argv[4]) : 1, threads = argc > 5 ? atoi(argv[5]) : 1;
    float *output = aligned_alloc(64, ((size_t)batch * n_out * sizeof(float) + 63) / 64 * 64);
    float *arena = aligned_alloc(64, ((size_t)lp_arena_floats() * sizeof(float) + 127) / 64 * 64);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int r = 0; r < (runs > 0 ? runs : 1); ++r) lp_forward(input, output, arena, blob, batch, threads);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double ms = ((t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6) / (runs > 0 ? runs : 1);
    printf("batch %d, %.3f ms per run; output[0..4]:", batch, ms);
    for (int i = 0; i < n_out && i < 5; ++i) printf(" %g", output[i]);
    printf("\n");
    if (argc > 3) {{
        FILE *f = fopen(argv[3], "wb");
        if (!f || fwrite(output, sizeof(float), (size_t)batch * n_out, f) != (size_t)batch * n_out) return 2;
        fclose(f);
    }}
    return 0;
}}
"""

_MAKEFILE = """# Written by latprune.engine.export (latprune {version}) for target {target} ({isa}).
# Native: make        Cross: make CC={cross}        No OpenMP: make OPENMP=
CC ?= {cross}
OPENMP ?= -fopenmp
CFLAGS ?= -O3 -std=gnu11 -ffp-contract=fast -fno-math-errno {isa_flags}

model: main.c model.c csrc/*.c csrc/*.h
\t$(CC) $(CFLAGS) $(OPENMP) -Icsrc -o $@ main.c model.c -lm

clean:
\trm -f model
"""

_README = """# {name}, compiled by latprune {version} for {target}

Generated C ({isa}, LP_LANES={lanes}) for a {c}x{h}x{w} input and {n_out} outputs per image.

Build ./model with {cross_note}, then run it once on a test pattern (main.c explains the input and output files):

    make CC={cross}
    ./model weights.bin

Files: model.c (generated network), csrc/ (the engine's kernels), weights.bin (weights and packed sparse
arrays, read at run time), model.json (shapes and the kernel chosen for each layer).
"""


def target_isa(target: str) -> Isa:
    """The ISA the export writes code for ("host" is this machine's best)."""
    if target not in TARGETS:
        raise EngineError(f"Unknown export target {target!r}; choose one of: {', '.join(TARGETS)}.")
    name = TARGETS[target][0]
    return host_isa() if not name else ISAS[name]


@locks_output("out_dir", flag="--c")
def export_c(
    model: nn.Module,
    example_input: torch.Tensor,
    out_dir: str | Path,
    target: str = "host",
    schemes: Mapping[str, str] | None = None,
) -> Path:
    """Write a stand-alone C project for ``model`` into ``out_dir`` and return the folder.

    The kernels are chosen exactly as ``compile`` chooses them (no autotuning: timings on this machine say
    nothing about the target), and the code is generated with the target's vector width.
    """
    isa = target_isa(target)
    graph = capture(model, example_input)
    choose_kernels(graph, schemes, 1, autotune=False, isa=isa)
    lowered = lower(graph, isa)
    out = Path(out_dir)
    cross = TARGETS[target][1]
    if target == "host" and platform.machine().lower() in ("aarch64", "arm64"):
        cross = "cc"
    fields = {
        "version": __version__,
        "target": target,
        "isa": isa.name,
        "lanes": isa.lanes,
        "cross": cross,
        "isa_flags": " ".join(isa.cflags),
        "name": c_comment_text(graph.name),  # the README's title: one line, no markup from the class name
        "n_in": lowered.input_floats,
        "n_out": lowered.output_floats,
        "c": graph.input.c,
        "h": graph.input.h,
        "w": graph.input.w,
        "cross_note": "a cross compiler" if cross != "cc" else "the native compiler",
    }
    atomic_write_text(out / "model.c", lowered.source)
    atomic_write_bytes(out / "weights.bin", lowered.blob.tobytes())
    atomic_write_text(out / "main.c", _MAIN_C.format(**fields))
    atomic_write_text(out / "Makefile", _MAKEFILE.format(**fields))
    atomic_write_text(out / "README.md", _README.format(**fields))
    (out / "csrc").mkdir(parents=True, exist_ok=True)
    for src in sorted(CSRC_DIR.glob("*.[ch]")):
        shutil.copyfile(src, out / "csrc" / src.name)
    out_shape = (graph.output.c,) if graph.output.flat else (graph.output.c, graph.output.h, graph.output.w)
    meta = {
        "model": graph.name,
        "target": target,
        "isa": isa.name,
        "input_shape": [graph.input.c, graph.input.h, graph.input.w],
        "output_shape": list(out_shape),
        "arena_floats": lowered.arena_floats,
        "layers": [asdict(layer) for layer in layer_choices(graph)],
        "latprune_version": __version__,
    }
    atomic_write_json(out / "model.json", meta)
    return out


__all__ = ["TARGETS", "export_c", "target_isa"]
