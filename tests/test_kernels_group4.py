"""Group-of-4 sparse kernel against the torch reference (hypothesis), and its packed format."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latprune.engine.isa import host_isa
from latprune.engine.kernels import ConvMeta, get_kernel, kernels_for
from latprune.engine.kernels.dense import grid_offsets
from latprune.engine.kernels.group4 import (
    VARIANTS,
    group4_density,
    group4_scratch_floats,
    pack_group4,
    padded_stride,
    tunable_variants,
)
from latprune.engine.layer import run_layer
from latprune.engine.reference import conv_reference

SETTINGS = settings(max_examples=50, deadline=None, derandomize=True)


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    """The contract's fp32 bound: |a - b| <= 1e-5 * max|ref| + 1e-6."""
    assert got.shape == ref.shape
    assert np.all(np.isfinite(got))
    assert float(np.abs(got - ref).max()) <= 1e-5 * float(np.abs(ref).max()) + 1e-6


def group4_weight(rng: np.random.Generator, meta: ConvMeta, sparsity: float) -> np.ndarray:
    """A weight whose zeros have group-of-4 structure: 4 adjacent output channels drop the same positions."""
    w = rng.standard_normal((meta.c_out, meta.c_in, meta.kh, meta.kw), dtype=np.float32)
    groups = -(-meta.c_out // 4)
    keep = rng.random((groups, meta.c_in, meta.kh, meta.kw)) >= sparsity
    return w * np.repeat(keep, 4, axis=0)[: meta.c_out]


@st.composite
def layers(draw):
    kh, kw = draw(st.sampled_from([(1, 1), (1, 1), (3, 3), (1, 3), (5, 5), (2, 3)]))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, kh // 2 + 1)), draw(st.integers(0, kw // 2 + 1))
    h = draw(st.integers(max(1, kh - 2 * ph), 24))
    w = draw(st.integers(max(1, kw - 2 * pw), 24))
    return ConvMeta(draw(st.integers(1, 40)), draw(st.integers(1, 30)), h, w, kh, kw, sh, sw, ph, pw)


@SETTINGS
@given(
    meta=layers(),
    sparsity=st.sampled_from([0.0, 0.5, 0.8, 0.95, 1.0]),
    act=st.integers(0, 3),
    residual=st.booleans(),
    variant=st.integers(0, len(get_kernel("group4_conv").variants) - 1),
    nthreads=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_group4_matches_reference(isa, meta, sparsity, act, residual, variant, nthreads, seed):
    rng = np.random.default_rng(seed)
    w = group4_weight(rng, meta, sparsity)
    b = rng.standard_normal(meta.c_out, dtype=np.float32)
    x = rng.standard_normal((meta.c_in, meta.h, meta.w), dtype=np.float32)
    r = rng.standard_normal((meta.c_out, meta.h_out, meta.w_out), dtype=np.float32) if residual else None
    got = run_layer("group4_conv", w, b, x, meta, act, r, variant=variant, nthreads=nthreads, isa=isa)
    assert_close(got, conv_reference(w, b, x, meta, act, r))


@pytest.mark.parametrize(
    "meta",
    [
        ConvMeta(64, 128, 56, 56),  # 1x1 direct, many full tiles
        ConvMeta(512, 1024, 7, 7),  # 49 pixels: overlapping last tile; padded copy 64 floats a channel
        ConvMeta(40, 18, 14, 14),  # padded copy 208 floats (13 vectors: a 5-wide last tile), a 2-row last group
        ConvMeta(24, 12, 28, 28),  # 49 aligned vectors read in place: the last tile widened to 5, 4 or 3 vectors
        ConvMeta(128, 128, 28, 28, 3, 3, 1, 1, 1, 1),  # ResNet 3x3
        ConvMeta(64, 128, 56, 56, 3, 3, 2, 2, 1, 1),  # stride 2
        ConvMeta(64, 128, 56, 56, stride_h=2, stride_w=2),  # 1x1 stride-2 projection
        ConvMeta(512, 1000, 1, 1, is_linear=True),  # linear
    ],
    ids=str,
)
def test_group4_on_model_shapes(isa, meta):
    rng = np.random.default_rng(3)
    w = group4_weight(rng, meta, 0.8)
    b = rng.standard_normal(meta.c_out, dtype=np.float32)
    x = rng.standard_normal((2, meta.c_in, meta.h, meta.w), dtype=np.float32)
    r = rng.standard_normal((2, meta.c_out, meta.h_out, meta.w_out), dtype=np.float32)
    for variant in range(len(get_kernel("group4_conv").variants)):
        got = run_layer("group4_conv", w, b, x, meta, 1, r, variant=variant, nthreads=1 + variant % 2, isa=isa)
        assert_close(got, conv_reference(w, b, x, meta, 1, r))


def test_unstructured_zeros_still_pack_correctly():
    """Zeros without group structure are stored inside the union, so the result stays exact."""
    rng = np.random.default_rng(4)
    meta = ConvMeta(16, 10, 6, 6, 3, 3, 1, 1, 1, 1)
    w = rng.standard_normal((10, 16, 3, 3), dtype=np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    b = rng.standard_normal(10, dtype=np.float32)
    x = rng.standard_normal((16, 6, 6), dtype=np.float32)
    assert_close(run_layer("group4_conv", w, b, x, meta), conv_reference(w, b, x, meta))


def test_pack_format_is_csr_over_groups_of_four():
    meta = ConvMeta(3, 6, 5, 5, 3, 3, pad_h=1, pad_w=1)
    w = np.zeros((6, 3, 3, 3), dtype=np.float32)
    w[0, 1, 2, 0] = 1.0  # group 0 uses (1, 2, 0) ...
    w[3, 1, 2, 0] = 2.0  # ... shared by channel 3
    w[2, 0, 0, 1] = 3.0  # and (0, 0, 1)
    w[5, 2, 1, 1] = 4.0  # group 1 (channels 4, 5 + 2 padding rows) uses (2, 1, 1)
    packed = pack_group4(w, meta, host_isa())
    np.testing.assert_array_equal(packed["group_ptr"], [0, 2, 3])
    vals = packed["values"].reshape(-1, 4)  # (nnz, 4)
    np.testing.assert_array_equal(vals, [[0, 0, 3, 0], [1, 0, 0, 2], [0, 4, 0, 0]])
    expect = grid_offsets(meta, np.array([0, 1, 2]), np.array([0, 2, 1]), np.array([1, 0, 1]))
    np.testing.assert_array_equal(packed["offsets"], expect)
    assert group4_density(w, meta) == pytest.approx(3 / (2 * 27))


@pytest.mark.parametrize(
    ("meta", "stride"),
    [
        (ConvMeta(8, 4, 14, 14), 208),
        (ConvMeta(8, 4, 7, 7), 64),
        (ConvMeta(8, 4, 28, 28), 0),  # 784 floats: whole cache lines already
        (ConvMeta(8, 4, 3, 3), 0),  # < 16 pixels: the grid copy instead
        (ConvMeta(8, 4, 7, 7, 3, 3, pad_h=1, pad_w=1), 0),
    ],
    ids=str,
)
def test_padded_copy_only_where_channels_are_not_whole_cache_lines(meta, stride):
    rng = np.random.default_rng(6)
    w = group4_weight(rng, meta, 0.5)
    packed = pack_group4(w, meta, host_isa())
    assert padded_stride(meta) == stride
    if stride:
        # 1x1: position k is input channel k, at k * stride in the copy
        k = packed["offsets"] // (meta.h * meta.w)
        np.testing.assert_array_equal(packed["pad_offsets"], k * stride)
        assert group4_scratch_floats(meta) >= meta.c_in * stride
        assert len(tunable_variants(meta)) == len(VARIANTS)
    else:
        assert packed["pad_offsets"].size == 0
        assert [VARIANTS[i] for i in tunable_variants(meta)] == [v for v in VARIANTS if not v.endswith("_pad")]


def test_variant_names_follow_the_c_decoding():
    """lp_group4_conv reads width = the ISA's g4_widths[i % 3], order = i // 3 % 3, pad = i // 9."""
    assert len(VARIANTS) == 18 == len(set(VARIANTS))
    assert VARIANTS[0] == "wide" and VARIANTS[4] == "mid_pf" and VARIANTS[8] == "narrow_cols"
    assert VARIANTS[9] == "wide_pad"


def test_group4_kernel_is_listed_for_its_scheme():
    assert [k.name for k in kernels_for("group4", ConvMeta(8, 8, 4, 4))] == ["group4_conv"]
    assert not kernels_for("group4", ConvMeta(8, 8, 4, 4, 3, 3, groups=8))


@pytest.mark.parametrize(
    "meta",
    [ConvMeta(24, 12, 7, 7), ConvMeta(8, 8, 5, 3), ConvMeta(16, 9, 14, 14, 3, 3, 2, 2, 1, 1), ConvMeta(33, 7, 9, 11)],
    ids=str,
)
def test_every_lane_count_tiles_correctly(isa, meta):
    """The same C source built for 16, 8 and 4 lanes (every ISA the host runs): tails, column tails and grid slack
    differ per width."""
    rng = np.random.default_rng(5)
    w = group4_weight(rng, meta, 0.6)
    b = rng.standard_normal(meta.c_out, dtype=np.float32)
    x = rng.standard_normal((meta.c_in, meta.h, meta.w), dtype=np.float32)
    r = rng.standard_normal((meta.c_out, meta.h_out, meta.w_out), dtype=np.float32)
    for kernel, weight in (("group4_conv", w), ("dense_conv", w)):
        for variant in range(len(get_kernel(kernel).variants)):
            got = run_layer(kernel, weight, b, x, meta, 2, r, variant=variant, isa=isa)
            assert_close(got, conv_reference(weight, b, x, meta, 2, r))
    dw = ConvMeta(meta.c_in, meta.c_in, meta.h, meta.w, 3, 3, meta.stride_h, meta.stride_w, 1, 1, groups=meta.c_in)
    wd = rng.standard_normal((meta.c_in, 1, 3, 3), dtype=np.float32)
    assert_close(run_layer("dense_depthwise", wd, None, x, dw, 1, isa=isa), conv_reference(wd, None, x, dw, 1))
