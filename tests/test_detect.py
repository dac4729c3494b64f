"""Scheme detection from the zeros, declared-scheme validation, and the kernel choice (which must run correctly)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latprune.engine import isa as isa_module
from latprune.engine.detect import (
    choose_kernel,
    default_variant,
    dense_kernel,
    detect_scheme,
    effective_density,
    estimated_cost,
    fits_scheme,
    scheme_applies,
    scheme_mask,
)
from latprune.engine.isa import ISAS, host_isa, using_isa
from latprune.engine.kernels import ConvMeta, get_kernel, list_kernels
from latprune.engine.layer import run_layer
from latprune.engine.reference import conv_reference
from latprune.errors import EngineError
from latprune.schemes import SchemeParams, list_schemes

from helpers import structured_mask

CONV1 = ConvMeta(32, 32, 8, 8)
CONV3 = ConvMeta(32, 32, 8, 8, 3, 3, 1, 1, 1, 1)
FC = ConvMeta(64, 40, 1, 1, is_linear=True)
DEPTHWISE = ConvMeta(16, 16, 8, 8, 3, 3, 1, 1, 1, 1, groups=16)


# ------------------------------------------------------------------ masks from the scheme registry (pruning's own)


def group4_mask(rng, shape, sparsity):
    return structured_mask(rng, "group4", shape, sparsity)


def block_punched_mask(rng, shape, sparsity, bo=4, bi=4):
    return structured_mask(rng, "block_punched", shape, sparsity, SchemeParams(block_out=bo, block_in=bi))


def pattern_mask(rng, shape, sparsity):
    return structured_mask(rng, "pattern", shape, sparsity)


def block_fc_mask(rng, shape, sparsity):
    return structured_mask(rng, "block_fc", shape, sparsity)


def nm24_mask(rng, shape):
    return structured_mask(rng, "nm24", shape, 0.5)


def unstructured_mask(rng, shape, sparsity):
    return rng.random(shape) >= sparsity  # random zeros: no structure, not even by magnitude


def weight(rng, meta, mask=None):
    w = rng.standard_normal((meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)).astype(np.float32)
    return w if mask is None else w * mask


def shape_of(meta):
    return (meta.c_out, meta.c_in // meta.groups, meta.kh, meta.kw)


# ------------------------------------------------------------------ detection


@settings(max_examples=25, deadline=None, derandomize=True)
@given(sparsity=st.floats(0.3, 0.95), seed=st.integers(0, 2**16))
def test_detects_each_structure(sparsity, seed):
    rng = np.random.default_rng(seed)
    s3, s1, sf = shape_of(CONV3), shape_of(CONV1), shape_of(FC)
    assert detect_scheme(weight(rng, CONV3, pattern_mask(rng, s3, sparsity)), CONV3) == "pattern"
    assert detect_scheme(weight(rng, CONV3, block_punched_mask(rng, s3, sparsity)), CONV3) == "block_punched"
    assert detect_scheme(weight(rng, CONV1, block_punched_mask(rng, s1, sparsity)), CONV1) == "block_punched"
    assert detect_scheme(weight(rng, CONV3, group4_mask(rng, s3, sparsity)), CONV3) == "group4"
    assert detect_scheme(weight(rng, CONV1, group4_mask(rng, s1, sparsity)), CONV1) == "group4"
    assert detect_scheme(weight(rng, FC, block_fc_mask(rng, sf, sparsity)), FC) == "block_fc"
    assert detect_scheme(weight(rng, CONV3, nm24_mask(rng, s3)), CONV3) == "nm24"
    # (Above ~90 % random zeros satisfy the 2:4 limit by chance: that is a correct nm24 detection.)
    assert detect_scheme(weight(rng, CONV3, unstructured_mask(rng, s3, min(sparsity, 0.6))), CONV3) == "unstructured"


def test_dense_and_larger_blocks():
    rng = np.random.default_rng(0)
    assert detect_scheme(weight(rng, CONV3), CONV3) == "dense"
    # 8x8 block-punched blocks are also 4x4 block-punched; an odd channel count pads the last block.
    meta = ConvMeta(30, 22, 6, 6, 3, 3, 1, 1, 1, 1)
    w = weight(rng, meta, block_punched_mask(rng, shape_of(meta), 0.7, bo=8, bi=8))
    assert detect_scheme(w, meta) == "block_punched"
    assert fits_scheme(w, meta, "group4") and not fits_scheme(w, meta, "pattern")


def test_a_chance_zero_inside_a_kept_block_still_fits():
    rng = np.random.default_rng(1)
    w = weight(rng, CONV3, group4_mask(rng, shape_of(CONV3), 0.7))
    kept = np.argwhere(w != 0)
    w[tuple(kept[0])] = 0.0  # one trained weight that happens to be exactly zero
    assert fits_scheme(w, CONV3, "group4")
    assert not fits_scheme(weight(rng, CONV3, unstructured_mask(rng, shape_of(CONV3), 0.7)), CONV3, "group4")


def test_scheme_mask_covers_the_nonzeros_with_the_structure():
    rng = np.random.default_rng(2)
    w = weight(rng, CONV3, unstructured_mask(rng, shape_of(CONV3), 0.8))
    for scheme in ("group4", "block_punched", "pattern", "unstructured"):
        mask = scheme_mask(w, CONV3, scheme)
        assert mask.shape == w.shape and mask[w != 0].all()
        filled = np.where(mask, 1.0 + rng.random(w.shape), 0.0).astype(np.float32)  # nonzero wherever kept
        assert fits_scheme(filled, CONV3, scheme)
    group = scheme_mask(w, CONV3, "group4").reshape(8, 4, -1)  # (groups, 4 rows, positions)
    assert (group == group[:, :1]).all()


def test_schemes_apply_only_where_defined():
    assert scheme_applies("pattern", CONV3) and not scheme_applies("pattern", CONV1)
    assert scheme_applies("block_fc", FC) and not scheme_applies("block_fc", CONV3)
    assert not scheme_applies("block_punched", FC)
    assert all(not scheme_applies(s, DEPTHWISE) for s in list_schemes() if s not in ("dense", "unstructured"))


# ------------------------------------------------------------------ the kernel choice


def _check_runs(spec, variant, w, meta, rng):
    x = rng.standard_normal((meta.c_in, meta.h, meta.w)).astype(np.float32)
    b = rng.standard_normal(meta.c_out).astype(np.float32)
    got = run_layer(spec, w, b, x, meta, act=1, variant=variant)
    ref = conv_reference(w, b, x, meta, 1)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max() + 1e-6


def test_dense_weights_get_the_dense_kernel():
    rng = np.random.default_rng(3)
    for meta in (CONV1, CONV3, FC, DEPTHWISE):
        spec, variant = choose_kernel(weight(rng, meta), meta)
        assert spec.scheme == "dense" and spec == dense_kernel(meta)
        _check_runs(spec, variant, weight(rng, meta), meta, rng)
    assert "depthwise" in dense_kernel(DEPTHWISE).name and "linear" in dense_kernel(FC).name


@pytest.mark.parametrize(
    ("meta", "make_mask", "declared", "expected_scheme"),
    [
        (CONV3, block_punched_mask, "block_punched", ("block_punched", "group4")),  # both run it exactly
        (CONV3, pattern_mask, "pattern", ("pattern",)),
        (CONV3, pattern_mask, None, ("pattern",)),
        (CONV1, group4_mask, "group4", ("group4",)),
        (CONV3, unstructured_mask, None, ("unstructured",)),
        (FC, block_fc_mask, "block_fc", ("block_fc",)),
        (FC, block_fc_mask, "group4", ("block_fc",)),
        (FC, block_fc_mask, None, ("block_fc",)),
    ],
)
def test_very_sparse_structured_weights_get_their_sparse_kernel(meta, make_mask, declared, expected_scheme):
    rng = np.random.default_rng(4)
    w = weight(rng, meta, make_mask(rng, shape_of(meta), 0.95))
    spec, variant = choose_kernel(w, meta, declared_scheme=declared)
    assert spec.scheme in expected_scheme
    assert 0 <= variant < len(spec.variants)
    _check_runs(spec, variant, w, meta, rng)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    scheme=st.sampled_from(("group4", "block_punched", "pattern", "unstructured", "nm24")),
    sparsity=st.floats(0.0, 0.99),
    seed=st.integers(0, 2**16),
)
def test_the_chosen_kernel_is_never_slower_on_paper_and_always_correct(scheme, sparsity, seed):
    """Whatever the zeros, the choice runs correctly and is dense whenever dense is estimated cheapest."""
    rng = np.random.default_rng(seed)
    meta = CONV3
    masks = {
        "group4": lambda: group4_mask(rng, shape_of(meta), sparsity),
        "block_punched": lambda: block_punched_mask(rng, shape_of(meta), sparsity),
        "pattern": lambda: pattern_mask(rng, shape_of(meta), sparsity),
        "unstructured": lambda: unstructured_mask(rng, shape_of(meta), sparsity),
        "nm24": lambda: nm24_mask(rng, shape_of(meta)),
    }
    w = weight(rng, meta, masks[scheme]())
    spec, variant = choose_kernel(w, meta)
    if np.count_nonzero(w) == w.size:
        assert spec.scheme == "dense"
    _check_runs(spec, variant, w, meta, rng)


def test_declared_scheme_violated_by_the_zeros_is_an_error():
    rng = np.random.default_rng(5)
    w = weight(rng, CONV3, unstructured_mask(rng, shape_of(CONV3), 0.8))
    for scheme in ("group4", "block_punched", "pattern", "nm24"):
        with pytest.raises(EngineError, match=f"declared '{scheme}'"):
            choose_kernel(w, CONV3, declared_scheme=scheme)
    with pytest.raises(EngineError, match="block_fc"):
        choose_kernel(weight(rng, FC, unstructured_mask(rng, shape_of(FC), 0.8)), FC, declared_scheme="block_fc")
    with pytest.raises(EngineError, match="Unknown sparsity scheme 'blocky'"):
        choose_kernel(w, CONV3, declared_scheme="blocky")
    with pytest.raises(EngineError, match="shape"):
        choose_kernel(np.zeros((3, 3, 3, 3), np.float32), CONV3)


def test_declared_dense_or_unstructured_accepts_any_zeros():
    rng = np.random.default_rng(6)
    w = weight(rng, CONV3, unstructured_mask(rng, shape_of(CONV3), 0.97))
    assert choose_kernel(w, CONV3, declared_scheme="dense")[0].scheme == "dense"
    assert choose_kernel(w, CONV3, declared_scheme="unstructured")[0].scheme in ("unstructured", "dense")
    # A scheme not defined for the layer is ignored: depthwise runs dense, a 1x1 conv is chosen from its zeros.
    assert choose_kernel(weight(rng, DEPTHWISE), DEPTHWISE, declared_scheme="group4")[0].scheme == "dense"
    w1 = weight(rng, CONV1, group4_mask(rng, shape_of(CONV1), 0.9))
    assert choose_kernel(w1, CONV1, declared_scheme="pattern")[0].scheme != "pattern"


def test_effective_density_matches_the_packed_work():
    rng = np.random.default_rng(7)
    meta = ConvMeta(10, 14, 6, 6, 3, 3, 1, 1, 1, 1)  # channel counts that are not multiples of 4
    w = weight(rng, meta, unstructured_mask(rng, shape_of(meta), 0.8))
    bp = get_kernel("npas_block_punched")
    assert effective_density(bp, w, meta) == bp.pack(w, meta, host_isa())["ptr"][-1] * 16 / w.size
    pat = get_kernel("npas_pattern3x3")
    values = int(pat.pack(w, meta, host_isa())["voff"][-1])
    assert effective_density(pat, w, meta) == values / w.size
    assert effective_density(get_kernel("npas_unstructured"), w, meta) == np.count_nonzero(w) / w.size
    assert effective_density(dense_kernel(meta), w, meta) == 1.0


def test_default_variant_fits_the_image():
    big = ConvMeta(16, 16, 56, 56, 3, 3, 1, 1, 1, 1)
    tiny = ConvMeta(16, 16, 2, 2)
    spec = get_kernel("npas_unstructured")
    assert default_variant(spec, big) == 0  # widest tile on a large image
    assert default_variant(spec, tiny) == 2  # 4 pixels: the narrowest tile wastes least
    assert default_variant(dense_kernel(big), big) == 0
    # The target's vector width decides, not the host's: 14 x 16 grid columns (224) fill 4-vector tiles exactly
    # with NEON's 4 lanes (tile 16), while 16 lanes make a 64-column tile waste 32 and a 32-column one fits.
    row = ConvMeta(8, 8, 14, 14, 3, 3, 1, 1, 1, 1)
    assert default_variant(spec, row, isa=ISAS["neon"]) == 0
    assert default_variant(spec, row, isa=ISAS["avx512"]) == 1


def test_block_punched_default_variant_uses_the_isas_widest_tile():
    """24 output pixels: one AVX2 block-punched tile of 3 vectors (8 lanes) fits exactly; AVX-512's widest (4 x 16)
    wastes 40 of 64 columns, so its 2-vector tile wins."""
    meta = ConvMeta(16, 16, 4, 6)
    spec = get_kernel("npas_block_punched")
    assert ISAS["avx2"].tiles.bp_nv * ISAS["avx2"].lanes == 24
    assert default_variant(spec, meta, isa=ISAS["avx2"]) == 0
    assert default_variant(spec, meta, isa=ISAS["avx512"]) == 1


# ------------------------------------------------------------------ the per-ISA cost model


@pytest.mark.parametrize("name", list(ISAS))
def test_every_isa_has_a_cost_for_every_sparse_kernel(name):
    """A kernel added to the table without being measured on an ISA (benchmarks/engine_costs.py) fails here."""
    costs = ISAS[name].costs
    for kernel in list_kernels():
        spec = get_kernel(kernel)
        if spec.scheme == "dense":
            continue
        assert kernel in costs.efficiency or kernel in costs.fc_efficiency, (name, kernel)
    assert all(0 < e <= 2 for e in (*costs.efficiency.values(), *costs.fc_efficiency.values()))
    assert 0 <= costs.sparse_overhead < 0.5 and costs.source


def test_estimated_cost_uses_the_target_isas_constants():
    rng = np.random.default_rng(7)
    w = weight(rng, CONV3, group4_mask(rng, shape_of(CONV3), 0.8))
    spec = get_kernel("group4_conv")
    density = effective_density(spec, w, CONV3)
    for name in ("avx2", "avx512"):
        c = ISAS[name].costs
        expected = c.sparse_overhead + density / c.efficiency["group4_conv"]
        assert estimated_cost(spec, w, CONV3, ISAS[name]) == pytest.approx(expected)
    assert estimated_cost(spec, w, CONV3, ISAS["avx2"]) != estimated_cost(spec, w, CONV3, ISAS["avx512"])


def test_the_choice_follows_the_target_isas_cost_model(monkeypatch):
    """The same weight runs sparse for a target whose group4 kernel is fast and dense for one where it is (made) slow,
    whether the target is passed or is the host's (LATPRUNE_ISA / --isa through using_isa)."""
    rng = np.random.default_rng(8)
    w = weight(rng, CONV1, group4_mask(rng, shape_of(CONV1), 0.6))
    slow = isa_module.KernelCosts({"group4_conv": 0.2}, {}, 0.1, "test")
    monkeypatch.setitem(isa_module.KERNEL_COSTS, "avx2", slow)
    monkeypatch.setitem(isa_module.KERNEL_COSTS, "generic", slow)
    assert choose_kernel(w, CONV1, "group4", isa=ISAS["avx512"])[0].name == "group4_conv"
    assert choose_kernel(w, CONV1, "group4", isa=ISAS["avx2"])[0].scheme == "dense"
    with using_isa("generic"):
        assert choose_kernel(w, CONV1, "group4")[0].scheme == "dense"


def test_dense_1x1_variant_follows_the_isas_tiles():
    """8-row tiles (32 registers) read projections in place (variant 3), packing pays for expansions, for the fused
    column tail of 7x7 maps, and always with AVX2's 4-row tiles."""
    dense = get_kernel("dense_conv")
    projection, expansion = ConvMeta(144, 24, 56, 56), ConvMeta(24, 144, 56, 56)
    assert default_variant(dense, projection, isa=ISAS["avx512"]) == 3
    assert dense.variants[3] == "w3_cols"
    assert default_variant(dense, ConvMeta(512, 512, 14, 14), isa=ISAS["neon"]) == 3
    assert default_variant(dense, expansion, isa=ISAS["avx512"]) == 0
    assert default_variant(dense, ConvMeta(1024, 1024, 7, 7), isa=ISAS["avx512"]) == 0  # 49 = 48 + fused column
    assert default_variant(dense, projection, isa=ISAS["avx2"]) == 0
    assert default_variant(dense, ConvMeta(64, 32, 28, 28, 3, 3, 1, 1, 1, 1), isa=ISAS["avx512"]) == 0
