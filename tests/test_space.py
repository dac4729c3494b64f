"""The search space: bounds, integer encoding, restriction, vectorised layer dimensions, serialisation."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from latprune.errors import PlanError
from latprune.models import create_model
from latprune.space import (
    SPARSITY_CHOICES,
    WIDTH_CHOICES,
    Arch,
    SearchSpace,
    SpaceBounds,
    kept_channels,
)


@pytest.fixture(scope="module")
def space() -> SearchSpace:
    return SearchSpace.from_model(create_model("resnet20", num_classes=10, width_mult=0.5), 32, 3)


@pytest.fixture(scope="module")
def mbv2() -> SearchSpace:
    return SearchSpace.from_model(create_model("mobilenet_v2", num_classes=10, width_mult=0.25), 32, 3)


def test_choices_are_jcw_candidates():
    assert WIDTH_CHOICES == SPARSITY_CHOICES == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@given(st.floats(0.0, 1.0), st.integers(1, 600), st.sampled_from([1, 4]))
def test_kept_channels_rounding(width, channels, multiple):
    k = kept_channels(width, channels, multiple)
    assert 1 <= k <= channels
    assert k == channels or k % multiple == 0
    if width >= 1.0:
        assert k == channels


def test_bounds_follow_layer_roles(space):
    g = space.n_groups
    widths = dict(zip([gr.name for gr in space.groups], space.xl[:g], strict=True))
    assert widths["conv1.out"] == WIDTH_CHOICES.index(0.7)  # residual-coupled stage
    assert widths["layers.0.0.conv1.out"] == WIDTH_CHOICES.index(0.5)
    assert widths["layers.1.0.conv1.out"] == WIDTH_CHOICES.index(0.6)  # output of a strided conv
    caps = space.xu[g:]
    assert caps[0] == caps[-1] == SPARSITY_CHOICES.index(0.5)  # first conv and classifier
    assert caps[1] == SPARSITY_CHOICES.index(0.7)
    assert caps[space.layer_index("layers.1.0.conv1")] == SPARSITY_CHOICES.index(0.6)  # strided
    assert (space.xu[:g] == 10).all()


def test_depthwise_not_sparse(mbv2):
    for i, ly in enumerate(mbv2.layers):
        if ly.kind == "depthwise":
            assert not ly.sparse and ly.scheme == "dense"
            assert mbv2.xu[mbv2.n_groups + i] == 0
    rng = np.random.default_rng(0)
    for arch in mbv2.sample(rng, 5):
        assert all(s == 0.0 for s, ly in zip(arch.sparsities, mbv2.layers, strict=True) if ly.kind == "depthwise")


def test_encode_decode_round_trip(space):
    rng = np.random.default_rng(1)
    X = space.sample_x(rng, 50)
    assert ((space.xl <= X) & (space.xu >= X)).all()
    for x in X:
        np.testing.assert_array_equal(space.encode(space.decode(x)), x)
    dense = space.encode(space.dense_arch())
    assert (dense[: space.n_groups] == 10).all() and (dense[space.n_groups :] == 0).all()


def test_sample_is_seeded(space):
    a = space.sample(np.random.default_rng(7), 3)
    b = space.sample(np.random.default_rng(7), 3)
    assert a == b


def test_layer_dims_matches_scalar_rounding(mbv2):
    rng = np.random.default_rng(2)
    X = mbv2.sample_x(rng, 64)
    c_in, c_out, sp = mbv2.layer_dims(X)
    assert c_in.shape == c_out.shape == sp.shape == (64, len(mbv2.layers))
    for n in range(0, 64, 9):
        arch = mbv2.decode(X[n])
        kept = [kept_channels(w, g.channels, g.multiple) for w, g in zip(arch.widths, mbv2.groups, strict=True)]
        for i, ly in enumerate(mbv2.layers):
            assert c_out[n, i] == (ly.c_out if ly.out_group is None else kept[ly.out_group])
            assert c_in[n, i] == (ly.c_in if ly.in_group is None else kept[ly.in_group])
            assert sp[n, i] == arch.sparsities[i]
            if ly.kind == "depthwise":
                assert c_in[n, i] == c_out[n, i]
    dense_in, dense_out, dense_sp = mbv2.layer_dims(mbv2.encode(mbv2.dense_arch()))
    assert dense_out[0].tolist() == [ly.c_out for ly in mbv2.layers]
    assert dense_in[0].tolist() == [ly.c_in for ly in mbv2.layers]
    assert (dense_sp == 0).all()


def test_restrict_modes(space):
    g = space.n_groups
    w = space.restrict("weight-only")
    assert (w.xl[:g] == w.xu[:g]).all() and (w.xl[:g] == 10).all()
    assert (w.xu[g:] == space.xu[g:]).all()
    c = space.restrict("channel-only")
    assert (c.xl[g:] == 0).all() and (c.xu[g:] == 0).all()
    assert (space.restrict("joint").xu == space.xu).all()
    with pytest.raises(PlanError, match="sideways"):
        space.restrict("sideways")


def test_fix_layer_and_group(space):
    fixed = space.fix("conv1", 0.0).fix("layers.0.0.conv1.out", 0.8)
    li = space.n_groups + space.layer_index("conv1")
    gi = space.group_index("layers.0.0.conv1.out")
    assert fixed.xl[li] == fixed.xu[li] == 0 and not fixed.layers[space.layer_index("conv1")].sparse
    assert fixed.xl[gi] == fixed.xu[gi] == WIDTH_CHOICES.index(0.8)
    with pytest.raises(PlanError, match="nowhere"):
        space.fix("nowhere", 0.5)
    with pytest.raises(PlanError, match=r"0\.55"):
        space.fix("conv1", 0.55)


def test_encode_rejects_out_of_bounds(space):
    arch = space.dense_arch()
    too_sparse = Arch(arch.widths, (0.9, *arch.sparsities[1:]))
    with pytest.raises(PlanError, match=r"sparsity of layer 'conv1' is 0\.9"):
        space.check(too_sparse)
    assert space.encode(too_sparse)[space.n_groups] == 9  # encode only needs the grid
    with pytest.raises(PlanError, match=r"width of group 'conv1\.out' 0\.55"):
        space.encode(Arch((0.55, *arch.widths[1:]), arch.sparsities))
    with pytest.raises(PlanError, match="another model"):
        space.encode(Arch(arch.widths[:-1], arch.sparsities))


def test_json_round_trip(mbv2):
    again = SearchSpace.from_dict(json.loads(json.dumps(mbv2.to_dict())))
    assert again.groups == mbv2.groups and again.layers == mbv2.layers
    np.testing.assert_array_equal(again.xl, mbv2.xl)
    np.testing.assert_array_equal(again.xu, mbv2.xu)
    arch = mbv2.sample(np.random.default_rng(3), 1)[0]
    assert Arch.from_dict(json.loads(json.dumps(arch.to_dict()))) == arch


@pytest.mark.parametrize("scheme", ["group4", "pattern", "block_punched", "block_fc", "unstructured", "nm24", "dense"])
def test_scheme_assignment(scheme):
    s = SearchSpace.from_model(create_model("resnet20", num_classes=10, width_mult=0.25), 32, 3, scheme=scheme)
    npas = {"conv3x3": "pattern" if scheme == "pattern" else "block_punched", "conv1x1": "block_punched"}
    for ly in s.layers:
        if scheme == "dense":
            assert not ly.sparse
        elif scheme in ("pattern", "block_punched", "block_fc"):  # NPAS mixes: pattern 3x3, punched, block FC
            want = "block_fc" if ly.kind == "linear" else npas["conv3x3" if ly.kernel == (3, 3) else "conv1x1"]
            assert ly.scheme == want, ly.name
        else:
            assert ly.scheme == scheme


def test_custom_bounds_and_bad_scheme():
    model = create_model("resnet20", num_classes=10, width_mult=0.25)
    s = SearchSpace.from_model(model, 32, 3, bounds=SpaceBounds(min_width=0.3, min_width_residual=0.3))
    assert s.xl[s.group_index("layers.0.0.conv1.out")] == 3
    with pytest.raises(PlanError, match="'diagonal'"):
        SearchSpace.from_model(model, 32, 3, scheme="diagonal")


def test_layer_dims_is_fast_enough_for_the_predictor(mbv2):
    X = mbv2.sample_x(np.random.default_rng(4), 10_000)
    start = time.perf_counter()
    c_in, _, _ = mbv2.layer_dims(X)
    elapsed = time.perf_counter() - start
    assert c_in.shape == (10_000, len(mbv2.layers))
    assert elapsed < 1.0  # the predictor needs >= 10k archs/s; this is ~20x that on a quiet CPU
