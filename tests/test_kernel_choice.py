"""NPAS's filter-size choice: depthwise kernel sizes in the space, the plan, apply_plan (crop or zero ring), the
latency predictor (a table per size) and the super-net (one shared weight, a candidate uses its centre)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from latprune.engine.fingerprint import current_fingerprint
from latprune.errors import PlanError
from latprune.latency.grid import GridConfig, plan_grids
from latprune.latency.predictor import TrilinearPredictor
from latprune.latency.profile import AdditiveTerm, LatencyProfile, LatencyTable, LayerSignature
from latprune.models import ModelSpec, create_model
from latprune.prune import PruningPlan, apply_plan, plan_from_arch
from latprune.prune.kernels import resize_kernel
from latprune.space import Arch, SearchSpace
from latprune.supernet import MaskedSupernet, SpaceAdapter
from latprune.supernet._space import expand_kernels

from helpers import randomize_bn

SIZE = 32
SIZES = (3, 5, 7)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)  # model init only
    net = create_model("mobilenet_v2", num_classes=10, in_channels=3, input_size=SIZE, width_mult=0.25)
    return randomize_bn(net, torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def space(model) -> SearchSpace:
    return SearchSpace.from_model(model, SIZE, 3, scheme="group4,unstructured", kernel_sizes=SIZES)


def _arch(space: SearchSpace, kernel: int) -> Arch:
    """Every other depthwise layer at ``kernel``, the rest at their own size; widths 0.8, a little sparsity."""
    dw = [li for li, ly in enumerate(space.layers) if ly.kernel_choices]
    kernels = [int(ly.kernel[0]) for ly in space.layers]
    for li in dw[::2]:
        kernels[li] = kernel
    sparsities = tuple(0.3 if ly.sparse else 0.0 for ly in space.layers)
    return Arch((0.8,) * space.n_groups, sparsities, (), tuple(kernels))


def test_depthwise_layers_choose_kernel_sizes_after_the_scheme_variables(space) -> None:
    dw = [ly for ly in space.layers if ly.kind == "depthwise"]
    assert dw and all(ly.kernel_choices == SIZES and ly.own_kernel_index == 0 for ly in dw)
    assert all(not ly.kernel_choices for ly in space.layers if ly.kind != "depthwise")
    assert space.n_kernel_choices == len(dw) and space.n_var == space.n_groups + len(space.layers) + (
        space.n_choices + len(dw)
    )
    assert not space.categorical[-len(dw) :].any() and space.categorical[-len(dw) - 1]  # sizes are ordered
    assert space.xu[-len(dw) :].tolist() == [2] * len(dw)
    arch = _arch(space, 7)
    assert space.decode(space.encode(arch)).kernels == arch.kernels
    assert Arch.from_dict(arch.to_dict()) == arch and "kernels" not in space.dense_arch().to_dict()
    x = space.encode(space.dense_arch())
    assert space.layer_kernels(x[None])[0].tolist() == [int(ly.kernel[0]) for ly in space.layers]
    channel = space.restrict("channel-only")  # a channel-only search keeps the parent's kernels
    assert (channel.xl[-len(dw) :] == channel.xu[-len(dw) :]).all() and channel.xu[-1] == 0
    assert SearchSpace.from_dict(space.to_dict()).kernel_sizes == SIZES
    with pytest.raises(PlanError, match="takes kernel sizes"):
        space.encode(_arch(space, 9))


def test_a_grown_kernel_computes_the_parent_and_a_cropped_one_its_centre(model, space) -> None:
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    plan = plan_from_arch(model, space, _arch(space, 5))
    assert PruningPlan.from_dict(plan.to_dict()) == plan
    grown = [ly for ly in plan.layers if ly.kernel is not None]
    assert grown and all(ly.kernel == 5 for ly in grown)
    assert "kernel" not in plan_from_arch(model, space, space.dense_arch()).to_dict()["layers"][1]
    dense_sparsity = (0.0,) * len(space.layers)
    arch = _arch(space, 5)
    with_ring = plan_from_arch(model, space, Arch(arch.widths, dense_sparsity, (), arch.kernels))
    without = plan_from_arch(model, space, Arch(arch.widths, dense_sparsity))
    a = apply_plan(copy.deepcopy(model), with_ring).eval()
    b = apply_plan(copy.deepcopy(model), without).eval()
    conv = dict(a.named_modules())[grown[0].name]
    assert conv.kernel_size == (5, 5) and conv.padding == (2, 2) and conv.weight.shape[-1] == 5
    torch.testing.assert_close(a(x), b(x))  # a zero ring around the parent's taps: the same function
    # Cropping: a 5x5 depthwise conv cut to 3x3 equals the 5x5 one with its outer ring zeroed.
    conv5 = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    ringless = copy.deepcopy(conv5)
    with torch.no_grad():
        mask = torch.zeros_like(ringless.weight)
        mask[:, :, 1:4, 1:4] = 1
        ringless.weight.mul_(mask)
    y = torch.randn(1, 4, 9, 9)
    torch.testing.assert_close(resize_kernel(copy.deepcopy(conv5), 3)(y), ringless(y))
    layers = [{**ly, "kernel": 5} for ly in plan.to_dict()["layers"]]  # a 1x1 conv cannot take a 5x5 kernel
    with pytest.raises(PlanError, match="only a depthwise conv"):
        apply_plan(copy.deepcopy(model), PruningPlan.from_dict(plan.to_dict() | {"layers": layers}))


def test_the_predictor_reads_one_table_per_kernel_size(space) -> None:
    tables = []
    for sig, grid in plan_grids(space, GridConfig(n_channels=2, n_sparsity=2), np.random.default_rng(0)):
        ci, co, sp = np.meshgrid(grid.cin, grid.cout, grid.sparsity, indexing="ij")  # (I, J, K) each
        area = sig.kernel[0] * sig.kernel[1]
        tables.append(LatencyTable(sig, grid, (1e-4 * area * (co if grid.tied else ci * co / 8) * (1 - sp) + 1e-3)))
    sizes = {t.signature.kernel for t in tables if t.signature.kind == "depthwise"}
    assert sizes == {(3, 3), (5, 5), (7, 7)}
    assert all(
        t.signature.padding == (t.signature.kernel[0] // 2,) * 2 for t in tables if t.signature.kind == "depthwise"
    )
    spec = ModelSpec("mobilenet_v2", 10, 3, SIZE, 0.25)
    profile = LatencyProfile(current_fingerprint(), 1, spec, space.scheme, tuple(tables), AdditiveTerm(0, 1), 2, 2, 0)
    pred = TrilinearPredictor(profile, space)
    ms = pred.predict(np.stack([space.encode(_arch(space, k)) for k in SIZES]))
    assert ms[0] < ms[1] < ms[2]
    dw = next(li for li, ly in enumerate(space.layers) if ly.kernel_choices)
    layer = space.layers[dw]
    assert LayerSignature.of_layer(layer, "dense", 5).kernel == (5, 5) and LayerSignature.of_layer(layer).kernel == (
        3,
        3,
    )
    assert (
        pred.weight_mb(space.encode(_arch(space, 7))[None])[0] > pred.weight_mb(space.encode(_arch(space, 3))[None])[0]
    )


def test_the_supernet_shares_the_largest_kernel_and_a_candidate_uses_its_centre(model, space) -> None:
    shared = expand_kernels(copy.deepcopy(model), space).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(shared(x), model.eval()(x))  # grown with zero rings: still the parent
    with torch.no_grad():  # give the rings weights, as super-net training would
        for m in shared.modules():
            if isinstance(m, nn.Conv2d) and m.kernel_size == (7, 7):
                m.weight.add_(0.05 * torch.randn(m.weight.shape, generator=torch.Generator().manual_seed(4)))
    adapter = SpaceAdapter(space, shared)
    arch = _arch(space, 5)  # every other depthwise layer at 5, the rest at 3: none at the shared 7
    cand = adapter.candidates(space.encode(Arch(arch.widths, (0.0,) * len(space.layers), (), arch.kernels))[None])[0]
    assert set(cand.kernels.values()) == {3, 5}
    sn = MaskedSupernet(shared, adapter.graph)
    masks = sn.weight_masks(cand)
    assert all(masks[f"{n}.weight"][:, :, 0, 0].abs().sum() == 0 for n in cand.kernels)  # the 7x7 ring is off
    with sn.active(sn.channel_masks(cand)):
        masked = sn.forward(x, masks)
    physical = copy.deepcopy(shared)  # the centre k x k of every shared 7x7 weight, as real k x k convs
    modules = dict(physical.named_modules())
    for name, k in cand.kernels.items():
        resize_kernel(modules[name], k)
    crop = MaskedSupernet(physical, adapter.graph)
    with crop.active(crop.channel_masks(cand)):
        torch.testing.assert_close(physical(x), masked, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sn.extract(cand, masks)(x), masked, rtol=1e-4, atol=1e-5)
