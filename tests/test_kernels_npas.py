"""NPAS-style kernels (block-punched, pattern 3x3, unstructured / nm24, block-sparse linear) vs the torch reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latprune.engine.isa import host_isa
from latprune.engine.kernels import ConvMeta, get_kernel, kernels_for, list_kernels
from latprune.engine.kernels.npas import (
    CONV_VARIANTS,
    UNPACKERS,
    column_chunk,
    pack_block_fc,
    pack_block_punched,
    pack_pattern,
    pack_pattern_columns,
)
from latprune.engine.layer import bind_layer, run_layer
from latprune.engine.reference import conv_reference
from latprune.errors import EngineError
from latprune.schemes import FULL_PATTERN, PATTERNS_3x3, kernel_patterns

from helpers import structured_mask

NPAS_KERNELS = (
    "npas_block_punched",
    "npas_pattern3x3",
    "npas_pattern3x3_cols",
    "npas_unstructured",
    "npas_nm24",
    "npas_block_fc",
)
CONV_KERNELS = ("npas_block_punched", "npas_pattern3x3", "npas_pattern3x3_cols", "npas_unstructured", "npas_nm24")


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    """The engine contract's fp32 tolerance: |a - b| <= 1e-5 * max|ref| + 1e-6."""
    assert got.shape == ref.shape
    tol = 1e-5 * float(np.abs(ref).max(initial=0.0)) + 1e-6
    assert float(np.abs(got - ref).max(initial=0.0)) <= tol


# ------------------------------------------------------------------ masks from the scheme registry


def masked_weight(rng, kernel: str, meta: ConvMeta, sparsity: float, structured: bool) -> np.ndarray:
    shape = (meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)
    w = rng.standard_normal(shape).astype(np.float32)
    if not structured:
        return w * (rng.random(shape) >= sparsity)
    return w * structured_mask(rng, get_kernel(kernel).scheme, shape, sparsity)


# ------------------------------------------------------------------ table


def test_every_npas_kernel_is_registered_for_its_scheme():
    assert set(NPAS_KERNELS) <= set(list_kernels())
    conv3 = ConvMeta(8, 8, 6, 6, 3, 3, 1, 1, 1, 1)
    fc = ConvMeta(16, 8, 1, 1, is_linear=True)
    assert get_kernel("npas_block_punched") in kernels_for("block_punched", conv3)
    assert get_kernel("npas_pattern3x3") in kernels_for("pattern", conv3)
    assert get_kernel("npas_pattern3x3_cols") in kernels_for("pattern", conv3)
    assert get_kernel("npas_unstructured") in kernels_for("unstructured", conv3)
    assert get_kernel("npas_nm24") in kernels_for("nm24", conv3)
    assert get_kernel("npas_block_fc") in kernels_for("block_fc", fc)
    assert get_kernel("npas_block_fc") not in kernels_for("block_fc", conv3)
    assert get_kernel("npas_pattern3x3") not in kernels_for("pattern", ConvMeta(8, 8, 6, 6))  # 1x1: no patterns
    depthwise = ConvMeta(8, 8, 6, 6, 3, 3, 1, 1, 1, 1, groups=8)
    assert not kernels_for("block_punched", depthwise) and not kernels_for("pattern", depthwise)


def test_patterns_follow_the_shared_definition():
    """8 four-entry patterns, each with the centre, connected, all distinct."""
    assert len(set(PATTERNS_3x3)) == 8
    for p in PATTERNS_3x3:
        assert len(p) == 4 and 4 in p
        neighbours = {1, 3, 5, 7} & set(p)
        corners = set(p) - {4} - neighbours
        if corners:  # centre + 2 adjacent neighbours + the corner between them
            (corner,) = corners
            r, c = divmod(corner, 3)
            assert neighbours == {r * 3 + 1, 3 + c}
        else:  # centre + 3 of its 4 neighbours
            assert len(neighbours) == 3


# ------------------------------------------------------------------ packed formats


@st.composite
def conv_layers(draw, kernel_sizes=(1, 3, 5)):
    """Random conv shapes: square kernels mostly, sometimes 1xk / kx1, independent strides and paddings, groups."""
    kh = draw(st.sampled_from(kernel_sizes))
    kw = draw(st.sampled_from((kh, kh, kh, 1, 3)))
    groups = draw(st.sampled_from((1, 1, 2, 3)))
    cpg = draw(st.integers(1, 9))
    opg = draw(st.integers(1, 9))
    h = draw(st.integers(kh, 11))
    w = draw(st.integers(kw, 11))
    stride_h, stride_w = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    pad_h, pad_w = draw(st.integers(0, kh // 2 + 1)), draw(st.integers(0, kw // 2 + 1))
    return ConvMeta(groups * cpg, groups * opg, h, w, kh, kw, stride_h, stride_w, pad_h, pad_w, groups)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(meta=conv_layers(), sparsity=st.floats(0.0, 1.0), structured=st.booleans(), seed=st.integers(0, 2**16))
def test_unpack_inverts_pack(meta, sparsity, structured, seed):
    """Every packer is exact for any weight: unpack(pack(W)) == W, structured zeros or not."""
    rng = np.random.default_rng(seed)
    for name in ("npas_block_punched", "npas_pattern3x3", "npas_pattern3x3_cols", "npas_unstructured"):
        spec = get_kernel(name)
        if not spec.supports(meta):
            continue
        w = masked_weight(rng, name, meta, sparsity, structured)
        packed = spec.pack(w, meta, host_isa())
        assert all(a.dtype in (np.float32, np.int32) for a in packed.values())
        np.testing.assert_array_equal(UNPACKERS[name](packed, meta), w)


def test_block_punched_pack_stores_one_entry_per_kept_block_position():
    rng = np.random.default_rng(1)
    meta = ConvMeta(8, 12, 6, 6, 3, 3, 1, 1, 1, 1)
    mask = structured_mask(rng, "block_punched", (12, 8, 3, 3), 0.6)
    w = rng.standard_normal(mask.shape).astype(np.float32) * mask
    packed = pack_block_punched(w, meta, host_isa())
    kept_blocks = int(mask[::4, ::4].sum())  # one (block, position) per 4x4 block corner
    assert packed["ptr"][-1] == kept_blocks
    assert packed["val"].size == max(1, kept_blocks * 16)
    assert np.count_nonzero(packed["val"]) == np.count_nonzero(w)  # no explicit zeros: the structure is exact
    np.testing.assert_array_equal(packed["rows"].reshape(-1, 2), [[0, 4], [4, 4], [8, 4]])


def test_pattern_pack_groups_kernels_by_pattern_and_keeps_odd_kernels_full():
    meta = ConvMeta(3, 2, 5, 5, 3, 3, 1, 1, 1, 1)
    w = np.zeros((2, 3, 9), dtype=np.float32)
    w[0, 0, list(PATTERNS_3x3[5])] = 1.0
    w[0, 1, list(PATTERNS_3x3[2])] = 2.0
    w[0, 2, [0, 8]] = 3.0  # two opposite corners: no pattern covers them -> full kernel
    w[1, 1, [4]] = 4.0  # centre only: covered by the first pattern
    w = w.reshape(2, 3, 3, 3)
    np.testing.assert_array_equal(kernel_patterns(w), [[5, 2, FULL_PATTERN], [-1, 0, -1]])
    packed = pack_pattern(w, meta, host_isa())
    off = packed["off"]
    # Output channel 0: pattern 2 (ci 1), pattern 5 (ci 0), full (ci 2); channel 1: pattern 0 (ci 1).
    assert list(packed["ci"]) == [1, 0, 2, 1]
    assert off[2] == 0 and off[3] == 1 and off[5] == 1 and off[6] == 2 and off[8] == 2 and off[9] == 3
    assert off[9 + 0] == 3 and off[9 + 1] == 4 and off[18] == 4
    assert list(packed["voff"]) == [0, 17, 21]  # 4 + 4 + 9 values, then 4
    np.testing.assert_array_equal(UNPACKERS["npas_pattern3x3"](packed, meta), w)


def test_pattern_column_pack_groups_filters_by_input_column():
    """Each (chunk of filters, input channel, pattern) column lists every filter keeping that kernel."""
    meta = ConvMeta(3, 40, 5, 5, 3, 3, 1, 1, 1, 1)
    w = np.zeros((40, 3, 9), dtype=np.float32)
    for co in (1, 7, 33):  # filters 1, 7 and 33 keep pattern 6 of input channel 2
        w[co, 2, list(PATTERNS_3x3[6])] = co
    w[5, 0, [0, 8]] = 2.0  # not a pattern: kept full
    w = w.reshape(40, 3, 3, 3)
    packed = pack_pattern_columns(w, meta, host_isa())
    qc = int(packed["qc"][0])
    assert qc == column_chunk(40) == 20
    # Chunk 0 (filters 0..19): column (channel 0, full) with filter 5, column (channel 2, pattern 6) with 1 and 7.
    np.testing.assert_array_equal(packed["qptr"], [0, 2, 3])
    np.testing.assert_array_equal(packed["col"], [0 * 9 + 8, 2 * 9 + 6, 2 * 9 + 6])
    np.testing.assert_array_equal(packed["eptr"], [0, 1, 3, 4])
    np.testing.assert_array_equal(packed["co"], [5, 1, 7, 33])
    np.testing.assert_array_equal(packed["voff"], [0, 9, 17])
    np.testing.assert_array_equal(UNPACKERS["npas_pattern3x3_cols"](packed, meta), w)


def test_block_fc_pack_shares_columns_per_four_rows():
    rng = np.random.default_rng(2)
    meta = ConvMeta(10, 6, 1, 1, is_linear=True)
    mask = structured_mask(rng, "block_fc", (6, 10, 1, 1), 0.5)
    w = rng.standard_normal(mask.shape).astype(np.float32) * mask
    packed = pack_block_fc(w, meta, host_isa())
    np.testing.assert_array_equal(np.diff(packed["ptr"]), [mask[0].sum(), mask[4].sum()])
    np.testing.assert_array_equal(packed["cols"][: packed["ptr"][1]], np.nonzero(mask[0, :, 0, 0])[0])
    np.testing.assert_array_equal(UNPACKERS["npas_block_fc"](packed, meta), w)


def test_pack_rejects_a_weight_of_the_wrong_shape():
    meta = ConvMeta(4, 4, 5, 5, 3, 3)
    with pytest.raises(EngineError, match=r"npas_pattern3x3.*shape"):
        pack_pattern(np.zeros((4, 4, 1, 1), np.float32), meta, host_isa())


# ------------------------------------------------------------------ kernels against the reference


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    meta=conv_layers(),
    kernel=st.sampled_from(CONV_KERNELS),
    sparsity=st.floats(0.0, 1.0),
    structured=st.booleans(),
    act=st.integers(0, 3),
    residual=st.booleans(),
    variant=st.integers(0, len(CONV_VARIANTS) - 1),
    nthreads=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_conv_kernels_match_reference(isa, meta, kernel, sparsity, structured, act, residual, variant, nthreads, seed):
    spec = get_kernel(kernel)
    if not spec.supports(meta):
        meta = ConvMeta(meta.c_in, meta.c_out, max(meta.h, 3), max(meta.w, 3), 3, 3, meta.stride_h, meta.stride_w, 1, 1)
    rng = np.random.default_rng(seed)
    w = masked_weight(rng, kernel, meta, sparsity, structured)
    b = rng.standard_normal(meta.c_out).astype(np.float32)
    x = rng.standard_normal((meta.c_in, meta.h, meta.w)).astype(np.float32)
    res = rng.standard_normal((meta.c_out, meta.h_out, meta.w_out)).astype(np.float32) if residual else None
    variant %= len(spec.variants)
    got = run_layer(kernel, w, b, x, meta, act=act, residual=res, variant=variant, nthreads=nthreads, isa=isa)
    assert_close(got, conv_reference(w, b, x, meta, act, res))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    c_in=st.integers(1, 300),
    c_out=st.integers(1, 21),
    sparsity=st.floats(0.0, 1.0),
    structured=st.booleans(),
    act=st.integers(0, 3),
    residual=st.booleans(),
    nthreads=st.integers(1, 2),
    seed=st.integers(0, 2**16),
)
def test_block_fc_matches_reference(isa, c_in, c_out, sparsity, structured, act, residual, nthreads, seed):
    meta = ConvMeta(c_in, c_out, 1, 1, is_linear=True)
    rng = np.random.default_rng(seed)
    w = masked_weight(rng, "npas_block_fc", meta, sparsity, structured)
    b = rng.standard_normal(c_out).astype(np.float32)
    x = rng.standard_normal((2, c_in)).astype(np.float32)  # a batch of 2 feature vectors
    res = rng.standard_normal((2, c_out)).astype(np.float32) if residual else None
    got = run_layer("npas_block_fc", w, b, x, meta, act=act, residual=res, nthreads=nthreads, isa=isa)
    assert_close(got, conv_reference(w, b, x, meta, act, res))


# Real layer shapes at reduced resolution: MobileNetV1 pointwise, ResNet18 3x3 (stride 1 and 2), ResNet 7x7 stem.
MODEL_SHAPES = (
    ConvMeta(64, 128, 12, 12),
    ConvMeta(32, 64, 9, 9, 3, 3, 1, 1, 1, 1),
    ConvMeta(32, 48, 10, 10, 3, 3, 2, 2, 1, 1),
    ConvMeta(3, 16, 20, 20, 7, 7, 2, 2, 3, 3),
)


@pytest.mark.parametrize(
    "kernel", ("npas_block_punched", "npas_pattern3x3", "npas_pattern3x3_cols", "npas_unstructured")
)
@pytest.mark.parametrize("meta", MODEL_SHAPES, ids=lambda m: f"{m.c_in}x{m.c_out}k{m.kh}s{m.stride_h}")
def test_model_shapes_at_80_percent(isa, kernel, meta):
    spec = get_kernel(kernel)
    if not spec.supports(meta):
        pytest.skip(f"{kernel} does not handle {meta.kh}x{meta.kw} kernels")
    rng = np.random.default_rng(3)
    w = masked_weight(rng, kernel, meta, 0.8, structured=True)
    b = rng.standard_normal(meta.c_out).astype(np.float32)
    x = rng.standard_normal((2, meta.c_in, meta.h, meta.w)).astype(np.float32)  # batch of 2
    for variant in {0, len(spec.variants) - 2}:
        got = run_layer(kernel, w, b, x, meta, act=1, variant=variant, isa=isa)
        assert_close(got, conv_reference(w, b, x, meta, 1))


def test_all_zero_and_dense_weights(isa):
    """Edge cases of the formats: nothing kept (only bias survives), and everything kept."""
    meta = ConvMeta(5, 6, 7, 7, 3, 3, 1, 1, 1, 1)
    rng = np.random.default_rng(4)
    b = rng.standard_normal(6).astype(np.float32)
    x = rng.standard_normal((5, 7, 7)).astype(np.float32)
    for w in (np.zeros((6, 5, 3, 3), np.float32), rng.standard_normal((6, 5, 3, 3)).astype(np.float32)):
        for kernel in ("npas_block_punched", "npas_pattern3x3", "npas_pattern3x3_cols", "npas_unstructured"):
            assert_close(run_layer(kernel, w, b, x, meta, act=2, isa=isa), conv_reference(w, b, x, meta, 2))


@pytest.mark.parametrize("kernel", (*CONV_KERNELS[:-1], "npas_block_fc"))
@pytest.mark.parametrize("variant", range(6))
def test_kernels_stay_inside_their_buffers(isa, kernel, variant):
    """Writes past ``scratch_floats`` or past the output would corrupt the compiled model's arena: canaries."""
    spec = get_kernel(kernel)
    if variant >= len(spec.variants):
        pytest.skip("no such variant")
    rng = np.random.default_rng(5)
    metas = (ConvMeta(13, 9, 1, 1, is_linear=True),) if kernel == "npas_block_fc" else MODEL_SHAPES[:3]
    metas += (ConvMeta(8, 6, 3, 3, 3, 3, 1, 1, 1, 1), ConvMeta(16, 8, 2, 3), ConvMeta(24, 5, 5, 4, 3, 3, 2, 2, 0, 0))
    for meta in metas:
        if not spec.supports(meta):
            continue
        w = masked_weight(rng, kernel, meta, 0.5, structured=True)
        layer = bind_layer(spec, w, None, meta, act=1, variant=variant, isa=isa)
        n = layer.scratch.size
        layer.scratch = np.full(n + 256, np.nan, dtype=np.float32)  # stale NaNs must not leak into the result
        layer.scratch[n:] = 7.0
        x = rng.standard_normal((meta.c_in, meta.h, meta.w)).astype(np.float32)
        size = meta.c_out * meta.h_out * meta.w_out
        out = np.full(size + 64, 9.0, dtype=np.float32)
        layer.call(x, out[:size].reshape(meta.c_out, meta.h_out, meta.w_out))
        assert (layer.scratch[n:] == 7.0).all() and (out[size:] == 9.0).all()
        assert_close(out[:size].reshape(meta.c_out, meta.h_out, meta.w_out), conv_reference(w, None, x, meta, 1))
