"""Dense engine kernels (conv, depthwise, linear) against the torch reference over random shapes (hypothesis)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latprune.engine.isa import ISAS
from latprune.engine.kernels import ConvMeta, get_kernel, kernels_for, list_kernels
from latprune.engine.kernels.dense import is_direct, pack_dense_conv, uses_channel_major
from latprune.engine.layer import run_layer
from latprune.engine.reference import conv_reference

SETTINGS = settings(max_examples=40, deadline=None, derandomize=True)


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    """The contract's fp32 bound: |a - b| <= 1e-5 * max|ref| + 1e-6."""
    assert got.shape == ref.shape
    assert np.all(np.isfinite(got))
    tol = 1e-5 * float(np.abs(ref).max(initial=0.0)) + 1e-6
    assert float(np.abs(got - ref).max(initial=0.0)) <= tol


def random_layer(rng: np.random.Generator, meta: ConvMeta, sparsity: float, residual: bool):
    w = rng.standard_normal((meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw), dtype=np.float32)
    w[rng.random(w.shape) < sparsity] = 0.0
    b = rng.standard_normal(meta.c_out, dtype=np.float32)
    x = rng.standard_normal((meta.c_in, meta.h, meta.w), dtype=np.float32)
    r = rng.standard_normal((meta.c_out, meta.h_out, meta.w_out), dtype=np.float32) if residual else None
    return w, b, x, r


@st.composite
def conv_layers(draw, depthwise: bool = False):
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2 + 1)), draw(st.integers(0, kw // 2 + 1))
    h = draw(st.integers(max(1, kh - 2 * ph), 20))
    w = draw(st.integers(max(1, kw - 2 * pw), 20))
    if depthwise:
        c = draw(st.integers(2, 24))
        return ConvMeta(c, c, h, w, kh, kw, sh, sw, ph, pw, groups=c)
    c_in = groups * draw(st.integers(1, 12))
    c_out = groups * draw(st.integers(1, 20))
    return ConvMeta(c_in, c_out, h, w, kh, kw, sh, sw, ph, pw, groups=groups)


common = dict(
    sparsity=st.sampled_from([0.0, 0.5, 0.9]),
    act=st.integers(0, 3),
    residual=st.booleans(),
    nthreads=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)


@SETTINGS
@given(meta=conv_layers(), variant=st.integers(0, 2), **common)
def test_dense_conv_matches_reference(isa, meta, variant, sparsity, act, residual, nthreads, seed):
    w, b, x, r = random_layer(np.random.default_rng(seed), meta, sparsity, residual)
    got = run_layer("dense_conv", w, b, x, meta, act, r, variant=variant, nthreads=nthreads, isa=isa)
    assert_close(got, conv_reference(w, b, x, meta, act, r))


@SETTINGS
@given(meta=conv_layers(depthwise=True), variant=st.integers(0, 3), **common)
def test_depthwise_matches_reference(isa, meta, variant, sparsity, act, residual, nthreads, seed):
    w, b, x, r = random_layer(np.random.default_rng(seed), meta, sparsity, residual)
    got = run_layer("dense_depthwise", w, b, x, meta, act, r, variant=variant, nthreads=nthreads, isa=isa)
    assert_close(got, conv_reference(w, b, x, meta, act, r))


@SETTINGS
@given(c_in=st.integers(1, 300), c_out=st.integers(1, 40), **common)
def test_linear_matches_reference(isa, c_in, c_out, sparsity, act, residual, nthreads, seed):
    meta = ConvMeta(c_in, c_out, 1, 1, is_linear=True)
    w, b, x, r = random_layer(np.random.default_rng(seed), meta, sparsity, residual)
    got = run_layer("dense_linear", w, b, x.reshape(c_in), meta, act, None if r is None else r.reshape(c_out),
                    nthreads=nthreads, isa=isa)  # fmt: skip
    ref = conv_reference(w, b, x.reshape(c_in), meta, act, None if r is None else r.reshape(c_out))
    assert got.shape == (c_out,)
    assert_close(got, ref)


# Published layer shapes (1x1 direct path with its overlapping last tile, stride-2 3x3, 7x7 stem, tiny images).
SHAPES = [
    ConvMeta(64, 128, 56, 56),
    ConvMeta(512, 512, 7, 7),
    ConvMeta(32, 64, 4, 4),
    ConvMeta(64, 128, 28, 28, 3, 3, 2, 2, 1, 1),
    ConvMeta(3, 64, 32, 32, 7, 7, 2, 2, 3, 3),
    ConvMeta(256, 512, 14, 14, stride_h=2, stride_w=2),
    ConvMeta(64, 70, 7, 7, 3, 3, 1, 1, 1, 1),  # channel-major tiles: 49 pixels, a partial channel panel
    ConvMeta(16, 33, 2, 26, 3, 3, 1, 1, 1, 1),  # channel-major, 2 x 26 output: 3 segments per row
    ConvMeta(300, 20, 14, 14),  # packed 1x1: two K blocks, a 4-column remainder tile
    ConvMeta(520, 12, 9, 9),  # packed 1x1: three K blocks, a 33-column remainder tile
    ConvMeta(260, 9, 5, 10),  # packed 1x1: a 2-column tail
    ConvMeta(200, 13, 7, 7),  # packed 1x1: the 49th column fused into the full tile, a partial weight panel
    ConvMeta(140, 10, 14, 14),  # packed 1x1: two K blocks, a 4-column remainder tile
    ConvMeta(64, 20, 9, 11, 3, 3, 1, 1, 1, 1),  # grid-packed 3x3 (4-row tiles): K = 576, a partial panel and tile
    ConvMeta(130, 6, 6, 17, 3, 3, 2, 2, 1, 1),  # grid-packed stride 2: ten K blocks
]


@pytest.mark.parametrize("meta", SHAPES, ids=str)
def test_dense_conv_on_model_shapes(isa, meta):
    w, b, x, r = random_layer(np.random.default_rng(1), meta, 0.0, True)
    for variant in range(len(get_kernel("dense_conv").variants)):
        got = run_layer("dense_conv", w, b, x, meta, 1, r, variant=variant, isa=isa)
        assert_close(got, conv_reference(w, b, x, meta, 1, r))


@pytest.mark.parametrize("nthreads", [1, 2])
def test_grid_packed_tiles_share_column_tiles_between_threads(isa, nthreads):
    """Enough 48-column tiles (20 x 22 grid columns) for two threads to take the grid-packed path (4-row tiles)."""
    meta = ConvMeta(64, 12, 20, 20, 3, 3, 1, 1, 1, 1)
    w, b, x, r = random_layer(np.random.default_rng(6), meta, 0.0, True)
    got = run_layer("dense_conv", w, b, x, meta, 1, r, variant=0, nthreads=nthreads, isa=isa)
    assert_close(got, conv_reference(w, b, x, meta, 1, r))


@pytest.mark.parametrize("meta", [ConvMeta(200, 70, 7, 7), ConvMeta(64, 40, 10, 13), ConvMeta(20, 9, 5, 10)], ids=str)
def test_packed_1x1_splits_weight_panels_when_column_tiles_are_few(isa, meta):
    """Two threads and fewer than two 48-column tiles each: the threads share the weight panels of each tile."""
    w, b, x, r = random_layer(np.random.default_rng(7), meta, 0.0, True)
    got = run_layer("dense_conv", w, b, x, meta, 2, r, variant=0, nthreads=2, isa=isa)
    assert_close(got, conv_reference(w, b, x, meta, 2, r))


@pytest.mark.parametrize("nthreads", [1, 2])
def test_channel_major_tiles_blocked_over_taps(isa, nthreads):
    """More than 256 taps and several 32-channel panels: partial sums carried across tap blocks, per thread."""
    meta = ConvMeta(40, 130, 7, 7, 3, 3, 1, 1, 1, 1)  # K = 360: two tap blocks; 5 panels, the last one partial
    w, b, x, r = random_layer(np.random.default_rng(5), meta, 0.0, True)
    for variant in range(len(get_kernel("dense_conv").variants)):
        got = run_layer("dense_conv", w, b, x, meta, 1, r, variant=variant, nthreads=nthreads, isa=isa)
        assert_close(got, conv_reference(w, b, x, meta, 1, r))


# 3x3 pad-1 depthwise (the masked in-place path of variant 0): odd/even sizes, maps narrower than a vector, one row,
# rows of exactly one vector and long runs of interior chunks (their loads are shared between neighbouring chunks).
DW3_SHAPES = [
    ConvMeta(c, c, h, w, 3, 3, s, s, 1, 1, groups=c)
    for c, h, w in [
        *[(5, 7, 7), (3, 14, 14), (2, 9, 23), (3, 1, 1), (2, 2, 3), (2, 40, 37), (2, 1, 18), (2, 113, 17)],
        *[(2, 16, 16), (2, 3, 32), (3, 56, 56), (2, 5, 100)],
    ]
    for s in (1, 2)
]


@pytest.mark.parametrize("meta", DW3_SHAPES, ids=str)
def test_depthwise_3x3_on_model_shapes(isa, meta):
    for residual in (False, True):
        w, b, x, r = random_layer(np.random.default_rng(3), meta, 0.0, residual)
        for variant in range(len(get_kernel("dense_depthwise").variants)):
            got = run_layer("dense_depthwise", w, b, x, meta, 2, r, variant=variant, isa=isa)
            assert_close(got, conv_reference(w, b, x, meta, 2, r))


@pytest.mark.parametrize("name", [k for k in list_kernels() if get_kernel(k).scheme == "dense"])
def test_every_dense_kernel_in_the_table_is_correct(isa, name):
    spec = get_kernel(name)
    candidates = [ConvMeta(8, 8, 9, 9, 3, 3, 1, 1, 1, 1, groups=8), ConvMeta(16, 24, 6, 6), ConvMeta(40, 10, 1, 1)]
    metas = [m for m in candidates if spec.supports(m)] + [ConvMeta(40, 10, 1, 1, is_linear=True)]
    metas = [m for m in metas if spec.supports(m)]
    assert metas, f"no test shape for {name}"
    for meta in metas:
        w, b, x, r = random_layer(np.random.default_rng(2), meta, 0.3, True)
        assert_close(run_layer(spec, w, b, x, meta, 2, r, isa=isa), conv_reference(w, b, x, meta, 2, r))


def test_dense_kernels_cover_every_layer_kind():
    assert "dense_conv" in [k.name for k in kernels_for("dense", ConvMeta(3, 5, 8, 8, 3, 3, groups=1))]
    assert "dense_depthwise" in [k.name for k in kernels_for("dense", ConvMeta(8, 8, 8, 8, 3, 3, groups=8))]
    assert "dense_linear" in [k.name for k in kernels_for("dense", ConvMeta(8, 4, 1, 1, is_linear=True))]


@pytest.mark.parametrize("target", list(ISAS))
def test_dense_pack_layout_is_k_major_panels(target):
    meta = ConvMeta(3, 10, 9, 9, 3, 3, pad_h=1, pad_w=1)  # 81 output pixels: pixel-major tiles
    w = np.arange(10 * 3 * 9, dtype=np.float32).reshape(10, 3, 3, 3)
    packed = pack_dense_conv(w, meta, ISAS[target])
    k, mr = 27, ISAS[target].tiles.dense_mr
    panels_n = -(-10 // mr)
    assert packed["w"].shape == (panels_n * k * mr,)
    panels = packed["w"].reshape(panels_n, k, mr)  # (panels, K, MR)
    np.testing.assert_array_equal(panels[0, :, 3], w[3].ravel())
    np.testing.assert_array_equal(panels[9 // mr, :, 9 % mr], w[9].ravel())
    assert not panels[-1, :, 10 % mr or mr :].any()  # padding rows are zero
    assert packed["off"].shape == (k,) and not is_direct(meta)
    assert is_direct(ConvMeta(3, 10, 4, 4)) and not is_direct(ConvMeta(3, 10, 3, 3))
    assert not uses_channel_major(meta)


@pytest.mark.parametrize("target", list(ISAS))
def test_small_kxk_outputs_pack_channel_major_panels(target):
    meta = ConvMeta(2, 40, 7, 7, 3, 3, pad_h=1, pad_w=1)  # 49 output pixels
    assert uses_channel_major(meta) and not uses_channel_major(ConvMeta(2, 40, 7, 7))
    w = np.arange(40 * 18, dtype=np.float32).reshape(40, 2, 3, 3)
    cm = ISAS[target].tiles.cm_channels
    n = -(-40 // cm)
    panels = pack_dense_conv(w, meta, ISAS[target])["w"].reshape(n, 18, cm)  # (panels, K, CM)
    np.testing.assert_array_equal(panels[0, :, 5], w[5].ravel())
    np.testing.assert_array_equal(panels[39 // cm, :, 39 % cm], w[39].ravel())
    assert not panels[-1, :, 40 % cm or cm :].any()  # channels past 40 are padding
