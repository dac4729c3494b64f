"""One model whose layers mix group4, block-punched, pattern and unstructured weight sparsity, through every stage:
the space and its encoding, the pruning plan (JSON round trip), apply_plan, the latency predictor (one table per
layer signature and scheme), the super-net's masks, and the engine."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

from latprune.engine import compile
from latprune.engine.detect import fits_scheme
from latprune.engine.fingerprint import current_fingerprint
from latprune.engine.kernels import ConvMeta
from latprune.errors import PlanError
from latprune.latency.grid import GridConfig, plan_grids
from latprune.latency.predictor import TrilinearPredictor
from latprune.latency.profile import AdditiveTerm, LatencyProfile, LatencyTable
from latprune.models import ModelSpec, create_model
from latprune.prune import PruningPlan, apply_plan, bake_masks, plan_from_arch, weight_masks
from latprune.space import Arch, SearchSpace
from latprune.supernet import MaskedSupernet, SpaceAdapter

from helpers import randomize_bn

MIX = ("group4", "block_punched", "pattern", "unstructured")
SIZE = 16
#: A per-scheme factor on the fake tables, so the prediction depends on each layer's choice.
COST = {"group4": 1.0, "block_punched": 1.5, "pattern": 2.0, "unstructured": 3.0, "block_fc": 4.0, "dense": 5.0}


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)  # model init only
    return randomize_bn(create_model("resnet20", num_classes=10, in_channels=1, input_size=SIZE), torch.Generator())


@pytest.fixture(scope="module")
def space(model) -> SearchSpace:
    return SearchSpace.from_model(model, SIZE, 1, scheme=",".join(MIX))


def mixed_arch(space: SearchSpace) -> Arch:
    """Layer i takes MIX[i % 4] where it can (pattern needs 3x3; the classifier chooses among linear schemes)."""
    schemes = []
    for i, ly in enumerate(space.layers):
        want = MIX[i % len(MIX)]
        schemes.append(want if want in ly.options else ly.options[-1])
    sparsities = tuple(0.7 if ly.sparse else 0.0 for ly in space.layers)
    return Arch((0.8,) * space.n_groups, sparsities, tuple(schemes))


def cost(scheme: str, ci: np.ndarray, co: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Affine in each variable, so trilinear interpolation reproduces it exactly."""
    return COST[scheme] * (0.01 + 0.001 * ci + 0.002 * co + 0.0001 * ci * co * (1 - sp))


def test_the_space_offers_each_layer_the_schemes_that_apply(space):
    convs3 = [ly for ly in space.layers if ly.kind == "conv" and ly.kernel == (3, 3)]
    assert convs3 and all(ly.options == MIX for ly in convs3)
    fc = space.layers[-1]
    assert fc.kind == "linear" and fc.options == ("group4", "block_fc", "unstructured")  # fallbacks, deduplicated
    assert space.n_var == space.n_groups + len(space.layers) + space.n_choices and space.n_choices == len(space.layers)
    arch = mixed_arch(space)
    assert set(MIX) <= set(arch.schemes)
    assert space.decode(space.encode(arch)) == arch
    x = space.encode(arch)
    x[space.n_groups + len(space.layers) :] = 0  # every layer back to its default
    assert set(space.decode(x).schemes) == {"group4"}
    with pytest.raises(PlanError, match="takes group4 or"):
        space.encode(dataclasses.replace(arch, schemes=("nm24",) * len(space.layers)))
    one = SearchSpace.from_model(create_model("resnet20", num_classes=10, in_channels=1, input_size=SIZE), SIZE, 1)
    assert one.n_choices == 0 and one.n_var == one.n_groups + len(one.layers)  # JCW's encoding is unchanged


def test_plan_apply_and_engine(model, space):
    arch = mixed_arch(space)
    plan = plan_from_arch(model, space, arch)
    assert [ly.scheme for ly in plan.layers] == list(arch.schemes)
    assert PruningPlan.from_dict(plan.to_dict()) == plan
    pruned = apply_plan(copy.deepcopy(model), plan).eval()
    modules = dict(pruned.named_modules())
    for ly in plan.layers:  # the engine sees in each mask exactly the structure the plan names
        if ly.sparsity == 0.0:
            continue
        m = modules[ly.name]
        w = m.weight.detach().numpy()
        if isinstance(m, nn.Linear):
            meta = ConvMeta(m.in_features, m.out_features, 1, 1, is_linear=True)
            w = w[:, :, None, None]
        else:
            meta = ConvMeta(m.in_channels, m.out_channels, 8, 8, *m.kernel_size, *m.stride, *m.padding, m.groups)
        assert fits_scheme(w, meta, ly.scheme), ly.name
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    baked = bake_masks(copy.deepcopy(pruned)).eval()
    engine = compile(baked, x[:1], schemes=plan.layer_schemes())  # a declared scheme the zeros lack is an error
    assert {plan.layer(name).scheme for name in plan.layer_schemes()} >= set(MIX)
    with torch.no_grad():
        ref = baked(x).numpy()
    np.testing.assert_allclose(engine(x.numpy()), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_predictor_reads_one_table_per_layer_and_scheme(space):
    tables = []
    for sig, grid in plan_grids(space, GridConfig(n_channels=4, trim_to_space=False), np.random.default_rng(0)):
        ci, co, sp = np.meshgrid(grid.cin, grid.cout, grid.sparsity, indexing="ij")  # (I, J, K) each
        tables.append(LatencyTable(sig, grid, cost(sig.scheme, co if grid.tied else ci, co, sp)))
    assert {t.signature.scheme for t in tables} == {*MIX, "block_fc"}
    profile = LatencyProfile(
        current_fingerprint(), 1, ModelSpec("resnet20", 10, 1, SIZE), ",".join(MIX), tuple(tables),
        AdditiveTerm(0.0, 1.0), 4, 10, 1.0,
    )  # fmt: skip
    predictor = TrilinearPredictor(profile, space)
    arch = mixed_arch(space)
    x = space.encode(arch)[None]
    c_in, c_out, sparsity = space.layer_dims(x)
    want = sum(float(cost(scheme, c_in[0, j], c_out[0, j], sparsity[0, j])) for j, scheme in enumerate(arch.schemes))
    np.testing.assert_allclose(predictor.predict(x), [want], rtol=1e-9)
    # Choosing another scheme for one layer moves the prediction by exactly that layer's difference.
    j = next(i for i, s in enumerate(arch.schemes) if s == "pattern")
    other = list(arch.schemes)
    other[j] = "unstructured"
    y = space.encode(dataclasses.replace(arch, schemes=tuple(other)))[None]
    delta = float(
        cost("unstructured", c_in[0, j], c_out[0, j], sparsity[0, j])
        - cost("pattern", c_in[0, j], c_out[0, j], sparsity[0, j])
    )
    np.testing.assert_allclose(predictor.predict(y) - predictor.predict(x), [delta], rtol=1e-9)


def test_supernet_masks_follow_each_layers_scheme(model, space):
    arch = mixed_arch(space)
    x = space.encode(arch)
    adapter = SpaceAdapter(space, model)
    (cand,) = adapter.candidates(x[None])
    layers = zip(space.layers, arch.schemes, arch.sparsities, strict=True)
    assert cand.schemes == {ly.name: s for ly, s, p in layers if p > 0}
    net = MaskedSupernet(model, adapter.graph)
    masks = net.weight_masks(cand)
    pruned = apply_plan(copy.deepcopy(model), plan_from_arch(model, space, arch))
    for name, mask in weight_masks(pruned).items():  # the plan's masks are the super-net's on the kept channels
        rows = net.kept_indices(name, "out", cand)
        cols = net.kept_indices(name, "in", cand)
        assert torch.equal(masks[f"{name}.weight"][rows][:, cols].bool(), mask), name
