"""Every kernel of the table, every variant, on every ISA: in-process for the ISAs this host runs (with canaries
around the output and scratch), and cross-compiled for NEON and run under qemu (correctness only)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from latprune.engine.crosscheck import KernelCase, run_cases
from latprune.engine.isa import ISAS, host_isa
from latprune.engine.kernels import ConvMeta, get_kernel, list_kernels
from latprune.engine.layer import aligned_copy, bind_layer
from latprune.engine.reference import conv_reference

# Shapes that reach every code path's edges: 49 pixels (48 + 1 fused column), 50 (a 2-column tail), fewer than a
# vector (the grid), k x k pixel-major, grid-packed (K >= 512) and channel-major tiles, stride 2, a 7x7 stem, groups,
# depthwise rows shorter than a vector and odd widths, linear layers with tails.
SHAPES = (
    ConvMeta(16, 12, 7, 7),
    ConvMeta(20, 9, 5, 10),
    ConvMeta(8, 10, 3, 3),
    ConvMeta(6, 10, 9, 11, 3, 3, 1, 1, 1, 1),
    ConvMeta(12, 20, 7, 7, 3, 3, 1, 1, 1, 1),
    ConvMeta(8, 12, 13, 11, 3, 3, 2, 2, 1, 1),
    ConvMeta(64, 12, 20, 20, 3, 3, 1, 1, 1, 1),
    ConvMeta(3, 8, 20, 20, 7, 7, 2, 2, 3, 3),
    ConvMeta(6, 10, 12, 56, 3, 3, 1, 1, 1, 1),  # output rows of whole vectors: row tiles (lp_dense_conv)
    ConvMeta(3, 10, 18, 64, 3, 3, 2, 2, 1, 1),  # 32-wide output rows: row tiles with 16 lanes too
    ConvMeta(8, 8, 12, 12, 3, 3, 1, 1, 1, 1, groups=2),
    ConvMeta(5, 5, 9, 23, 3, 3, 1, 1, 1, 1, groups=5),
    ConvMeta(4, 4, 14, 13, 3, 3, 2, 2, 1, 1, groups=4),
    ConvMeta(3, 3, 3, 5, 3, 3, 1, 1, 1, 1, groups=3),
    ConvMeta(4, 4, 10, 10, 5, 5, 1, 1, 2, 2, groups=4),
    ConvMeta(40, 10, 1, 1, is_linear=True),
    ConvMeta(300, 21, 1, 1, is_linear=True),
)


def table_cases(seed: int = 0) -> list[KernelCase]:
    """One case per (kernel of the table, shape it supports, variant worth timing there), with varied activation,
    residual and thread count; weights have half their entries zero (every packer is exact for any zeros)."""
    rng = np.random.default_rng(seed)
    cases = []
    for name in list_kernels():
        spec = get_kernel(name)
        metas = [m for m in SHAPES if spec.supports(m)]
        assert metas, f"no test shape for kernel {name}: add one to SHAPES"
        for meta in metas:
            w = rng.standard_normal((meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw), dtype=np.float32)
            w[rng.random(w.shape) < 0.5] = 0.0
            b = rng.standard_normal(meta.c_out, dtype=np.float32)
            x = rng.standard_normal((meta.c_in, meta.h, meta.w), dtype=np.float32)
            r = rng.standard_normal((meta.c_out, meta.h_out, meta.w_out), dtype=np.float32)
            for variant in spec.variants_for(meta):
                i = len(cases)
                res = r if i % 2 else None
                cases.append(KernelCase(name, meta, w, b, x, res, act=i % 4, variant=variant, nthreads=1 + i % 2))
    return cases


def assert_close(got: np.ndarray, case: KernelCase) -> None:
    ref = conv_reference(case.weight, case.bias, case.x, case.meta, case.act, case.residual)
    ref = ref.reshape(got.shape)
    tol = 1e-5 * float(np.abs(ref).max(initial=0.0)) + 1e-6
    err = float(np.abs(got - ref).max(initial=0.0))
    assert np.all(np.isfinite(got)) and err <= tol, f"{case.kernel} v{case.variant} on {case.meta}: error {err}"


def test_the_cases_cover_every_kernel_and_variant():
    cases = table_cases()
    for name in list_kernels():
        spec = get_kernel(name)
        seen = {c.variant for c in cases if c.kernel == name}
        wanted = set().union(*(set(spec.variants_for(m)) for m in SHAPES if spec.supports(m)))
        assert seen == wanted, name


def test_every_kernel_stays_inside_its_buffers(isa):
    """Output at an unaligned address between canaries, scratch followed by canaries and prefilled with NaNs (stale
    scratch must not leak into results), the input left untouched: a kernel writing outside its buffers would
    corrupt the compiled model's arena."""
    for case in table_cases(seed=1):
        m = case.meta
        layer = bind_layer(case.kernel, case.weight, case.bias, m, case.act, case.variant, case.nthreads, isa)
        n = layer.scratch.size
        layer.scratch = np.full(n + 256, np.nan, dtype=np.float32)
        layer.scratch[n:] = 7.0
        x = aligned_copy(case.x)
        size = m.c_out * m.h_out * m.w_out
        buf = np.full(size + 65, 9.0, dtype=np.float32)
        out = buf[1 : 1 + size].reshape(m.c_out, m.h_out, m.w_out)  # 4 bytes past a 64-byte boundary at best
        layer.call(x, out, None if case.residual is None else aligned_copy(case.residual))
        assert (layer.scratch[n:] == 7.0).all(), f"{case.kernel} v{case.variant} wrote past its scratch on {m}"
        assert buf[0] == 9.0 and (buf[1 + size :] == 9.0).all(), f"{case.kernel} v{case.variant} wrote outside {m}"
        np.testing.assert_array_equal(x, case.x)
        assert_close(out, case)


def test_the_cross_check_program_matches_on_this_host(tmp_path):
    """The stand-alone program the aarch64 check runs, built natively for this host's ISA: the harness itself (on
    the dense kernels, one source file, to keep the compile short)."""
    cases = [c for c in table_cases(seed=2) if c.variant == 0 and get_kernel(c.kernel).source == "lp_dense.c"]
    for case, got in zip(cases, run_cases(cases, host_isa(), ["cc"], [], tmp_path), strict=True):
        assert_close(got, case)


def test_every_kernel_on_aarch64_under_qemu(tmp_path):
    """NEON (4 lanes, 32 registers): every kernel and variant of the table cross-compiled with Debian's
    gcc-aarch64-linux-gnu and run under qemu-aarch64 (`make test` installs both where it can)."""
    if not (shutil.which("aarch64-linux-gnu-gcc") and shutil.which("qemu-aarch64")):
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-aarch64 (apt-get install gcc-aarch64-linux-gnu qemu-user)")
    cases = table_cases(seed=3)
    runner = ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]
    outputs = run_cases(cases, ISAS["neon"], ["aarch64-linux-gnu-gcc"], runner, tmp_path)
    for case, got in zip(cases, outputs, strict=True):
        assert_close(got, case)
