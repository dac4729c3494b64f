"""Plans and physical pruning: equivalence with zeroed channels, round trips, masks under training, bad input."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
from hypothesis import given, settings
from hypothesis import strategies as st
from test_graph import ChunkConcat, Corners, FlattenHead, SqueezeExcite, TinyInception

from latprune.errors import PlanError
from latprune.graph import build_graph
from latprune.models import create_model, list_models
from latprune.prune import (
    LayerPlan,
    ModelSpec,
    PruningPlan,
    apply_plan,
    bake_masks,
    build_pruned,
    count_params,
    dense_plan,
    group_importance,
    load_pruned,
    plan_from_arch,
    save_pruned,
    select_channels,
    uniform_plan,
    weight_masks,
)
from latprune.space import SearchSpace

from patterns import PATTERN_MODELS

SIZE = 32


def _randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BN statistics, so a wrongly sliced BatchNorm changes the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _zero_removed(model: nn.Module, plan: PruningPlan, hw: int, in_channels: int) -> nn.Module:
    """Zero every consumer's input slice of a removed channel: the dense model then computes the pruned one."""
    zeroed = copy.deepcopy(model)
    graph = build_graph(zeroed, hw, in_channels)
    modules = dict(zeroed.named_modules())
    with torch.no_grad():
        for g in graph.groups:
            removed = set(range(g.channels)) - set(plan.group(g.name).keep)
            for m in g.members:
                module = modules[m.module]
                if m.dim == "in" and isinstance(module, (nn.Conv2d, nn.Linear)):
                    for loc, root in zip(m.local, m.root, strict=True):
                        if root in removed:
                            module.weight[:, loc] = 0
    return zeroed


def _random_plan(model: nn.Module, hw: int, in_channels: int, seed: int, scheme: str = "group4") -> PruningPlan:
    space = SearchSpace.from_model(model, hw, in_channels, scheme=scheme)
    arch = space.sample(np.random.default_rng(seed), 1)[0]
    return plan_from_arch(model, space, arch)


@pytest.mark.parametrize("name", list_models())
def test_pruned_equals_zeroed_on_zoo(name):
    model = _randomise_bn(create_model(name, num_classes=10, input_size=SIZE, width_mult=0.25), 0)
    plan = _random_plan(model, SIZE, 3, seed=1)
    assert any(len(g.keep) < g.channels for g in plan.groups)
    pruned = apply_plan(copy.deepcopy(model), plan, masks=False).eval()
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = _zero_removed(model, plan, SIZE, 3)(x)
        got = pruned(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert count_params(pruned) < count_params(model)


@pytest.fixture(scope="module")
def mbv2_parent():
    model = _randomise_bn(create_model("mobilenet_v2", num_classes=10, input_size=16, width_mult=0.35), 9)
    return model, SearchSpace.from_model(model, 16, 3)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), importance=st.sampled_from(["l1", "l2", "bn"]))
def test_random_archs_prune_exactly(mbv2_parent, seed, importance):
    """Any architecture of the space, any importance: the shrunk model computes the zeroed one."""
    model, space = mbv2_parent
    x = space.sample_x(np.random.default_rng(seed), 1)
    plan = plan_from_arch(model, space, space.decode(x[0]), importance=importance)
    pruned = apply_plan(copy.deepcopy(model), plan, masks=False).eval()
    inp = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        torch.testing.assert_close(pruned(inp), _zero_removed(model, plan, 16, 3)(inp), rtol=1e-4, atol=1e-5)
    _, c_out, _ = space.layer_dims(x)
    modules = dict(pruned.named_modules())
    assert [modules[ly.name].weight.shape[0] for ly in space.layers] == c_out[0].tolist()


GRAPH_MODELS = {f.__name__: f for f in (TinyInception, FlattenHead, Corners, SqueezeExcite, ChunkConcat)}


@pytest.mark.parametrize("name", [*GRAPH_MODELS, *PATTERN_MODELS])
def test_pruned_equals_zeroed_on_every_coupling(name):
    """Concat, flatten, grouped convs and every timm pattern (split, chunk, slices, SE gates, channels-last
    LayerNorm and Linear, BN subclasses): removing every other channel of each prunable group computes what the
    dense model computes with those channels zeroed, to 1e-5; and the removal does change the output."""
    factory = GRAPH_MODELS.get(name) or PATTERN_MODELS[name]
    model = _randomise_bn(factory(), 3)
    with torch.no_grad():  # positive biases: no ReLU is dead for every input, so removing a channel shows
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.add_(0.5)
    hw = 16
    graph = build_graph(model, hw, 3)
    plan = PruningPlan(
        None,
        (hw, hw),
        3,
        tuple(
            type(p)(p.name, p.channels, p.keep if graph.groups[i].fixed else p.keep[::2])
            for i, p in enumerate(dense_plan(model, hw, 3).groups)
        ),
        dense_plan(model, hw, 3).layers,
    )
    assert any(len(g.keep) < g.channels for g in plan.groups)
    pruned = apply_plan(copy.deepcopy(model), plan).eval()
    x = torch.randn(3, 3, hw, hw, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        got, dense = pruned(x), model(x)
        torch.testing.assert_close(got, _zero_removed(model, plan, hw, 3)(x), rtol=1e-5, atol=1e-5)
    assert (got - dense).abs().max() > 1e-3


@pytest.mark.parametrize("scheme", ["group4", "pattern", "block_punched", "unstructured", "nm24"])
def test_pruned_shapes_match_space_layer_dims(scheme):
    model = create_model("mobilenet_v2", num_classes=10, input_size=SIZE, width_mult=0.35)
    space = SearchSpace.from_model(model, SIZE, 3, scheme=scheme)
    x = space.sample_x(np.random.default_rng(5), 1)
    plan = plan_from_arch(model, space, space.decode(x[0]))
    pruned = apply_plan(copy.deepcopy(model), plan)
    c_in, c_out, sparsity = space.layer_dims(x)
    modules = dict(pruned.named_modules())
    for i, ly in enumerate(space.layers):
        module = modules[ly.name]
        w = module.weight  # masked effective weight
        assert w.shape[0] == c_out[0, i], ly.name
        fan_in = w.shape[1] * (module.groups if isinstance(module, nn.Conv2d) else 1)
        assert fan_in == c_in[0, i], ly.name
        actual = float((w == 0).float().mean())
        assert abs(actual - sparsity[0, i]) <= 0.5 / max(1, w.shape[0] // 4) + 0.05, ly.name  # one unit of rounding


@pytest.mark.parametrize("name", list_models())
def test_plan_json_and_state_dict_round_trip(name, tmp_path):
    spec = ModelSpec(name, 10, 3, SIZE, 0.25)
    model = _randomise_bn(spec.build(), 5)
    plan = uniform_plan(model, SIZE, 3, 0.6, 0.7, "group4", model_spec=spec)
    again = PruningPlan.load(plan.save(tmp_path / "plan.json"))
    assert again == plan
    pruned = apply_plan(copy.deepcopy(model), plan).eval()
    path = save_pruned(tmp_path / "pruned.pt", pruned, plan)
    loaded, loaded_plan = load_pruned(path)
    loaded.eval()
    assert loaded_plan == plan
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), pruned(x))
    assert weight_masks(loaded).keys() == weight_masks(pruned).keys()
    for k, m in weight_masks(pruned).items():
        assert torch.equal(weight_masks(loaded)[k], m)


def test_baked_state_dict_loads_and_keeps_masks():
    spec = ModelSpec("resnet20", 10, 3, SIZE, 0.5)
    model = _randomise_bn(spec.build(), 6)
    plan = uniform_plan(model, SIZE, 3, 0.8, 0.5, "block_punched", model_spec=spec)
    pruned = apply_plan(copy.deepcopy(model), plan).eval()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.no_grad():
        before = pruned(x)
    baked = bake_masks(pruned)
    assert not any(parametrize.is_parametrized(m) for m in baked.modules())
    with torch.no_grad():
        torch.testing.assert_close(baked(x), before)
    rebuilt = build_pruned(plan, baked.state_dict()).eval()
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), before)
    assert weight_masks(rebuilt)  # zeros came back as masks, so fine-tuning keeps them


def test_training_keeps_the_zeros():
    model = create_model("resnet20", num_classes=10, input_size=SIZE, width_mult=0.25)
    plan = uniform_plan(model, SIZE, 3, 1.0, 0.6, "group4")
    pruned = apply_plan(model, plan).train()
    opt = torch.optim.SGD(pruned.parameters(), lr=0.5)
    x, y = torch.randn(4, 3, SIZE, SIZE), torch.randint(0, 10, (4,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(pruned(x), y).backward()
        opt.step()
    modules = dict(pruned.named_modules())
    for name, mask in weight_masks(pruned).items():
        assert (modules[name].weight[~mask] == 0).all()
        assert (modules[name].weight[mask] != 0).float().mean() > 0.99


def test_uniform_plan_respects_role_bounds():
    model = create_model("resnet20", num_classes=10, input_size=SIZE, width_mult=1.0)
    plan = uniform_plan(model, SIZE, 3, 0.5, 0.8, "group4")
    assert plan.layer("conv1").sparsity == 0.5 and plan.layer("fc").sparsity == 0.5  # first / last
    assert plan.layer("layers.1.0.conv1").sparsity == 0.6  # strided
    assert plan.layer("layers.0.0.conv2").sparsity == 0.8
    assert len(plan.group("conv1.out").keep) == 12  # residual stage keeps >= 0.7 of 16, rounded to 4
    assert len(plan.group("layers.0.0.conv1.out").keep) == 8
    assert plan.kept_out_channels("fc") is None


def test_channel_selection_keeps_strongest():
    model = create_model("resnet20", num_classes=10, width_mult=0.5)
    graph = build_graph(model, SIZE, 3)
    group = graph.groups[graph.layer("layers.0.0.conv1").out_group]
    with torch.no_grad():
        model.layers[0][0].conv1.weight.mul_(0.01)
        model.layers[0][0].conv1.weight[[1, 5]] *= 1000
        model.layers[0][0].bn1.weight.fill_(0.1)
        model.layers[0][0].bn1.weight[[2, 6]] = 5.0
    assert select_channels(group_importance(model, group, "l1"), 2) == (1, 5)
    assert select_channels(group_importance(model, group, "l2"), 2) == (1, 5)
    assert select_channels(group_importance(model, group, "bn"), 2) == (2, 6)
    assert select_channels(torch.zeros(6), 3) == (0, 1, 2)  # ties: lowest indices, sorted


def test_bad_inputs_give_one_sentence(tmp_path):
    spec = ModelSpec("resnet20", 10, 3, SIZE, 0.25)
    model = spec.build()
    with pytest.raises(PlanError, match=r"width 0\.0 leaves no channel"):
        uniform_plan(model, SIZE, 3, 0.0, 0.5)
    with pytest.raises(PlanError, match=r"sparsity 1\.0"):
        uniform_plan(model, SIZE, 3, 0.5, 1.0)
    with pytest.raises(PlanError, match=r"'layers\.0\.0\.conv1\.out' would keep 0"):
        select_channels(torch.ones(4), 0, "layers.0.0.conv1.out")
    plan = uniform_plan(model, SIZE, 3, 0.75, 0.5, model_spec=spec)
    d = plan.to_dict()
    d["layers"][1]["sparsity"] = 1.2
    with pytest.raises(PlanError, match=r"Layer 'layers.0.0.conv1' has sparsity 1\.2"):
        PruningPlan.from_dict(d)
    d = plan.to_dict()
    d["groups"][0]["keep"] = []
    with pytest.raises(PlanError, match=r"'conv1\.out' keeps no channel"):
        PruningPlan.from_dict(d)
    # the scheme cannot handle the layer: pattern on the 1x1 projection shortcut
    layers = tuple(
        LayerPlan(ly.name, "pattern", 0.6, ly.params, ly.out_group, ly.in_groups)
        if ly.name == "layers.1.0.downsample.0"
        else ly
        for ly in plan.layers
    )
    bad = PruningPlan(plan.model, plan.input_size, plan.in_channels, plan.groups, layers)
    with pytest.raises(PlanError, match=r"'layers\.1\.0\.downsample\.0'.*pattern"):
        apply_plan(spec.build(), bad)
    # a plan that does not fit the model (made for width 0.25, applied to width 0.5)
    with pytest.raises(PlanError, match="does not fit the model"):
        apply_plan(create_model("resnet20", num_classes=10, width_mult=0.5), plan)
    mbv2 = create_model("mobilenet_v2", num_classes=10, width_mult=0.25)
    mplan = uniform_plan(mbv2, SIZE, 3, 1.0, 0.5)
    layers = tuple(
        LayerPlan(ly.name, "unstructured", 0.5, ly.params, ly.out_group, ly.in_groups)
        if ly.name == "features.1.conv.0.0"
        else ly
        for ly in mplan.layers
    )
    with pytest.raises(PlanError, match=r"'features\.1\.conv\.0\.0' is depthwise"):
        apply_plan(mbv2, PruningPlan(None, mplan.input_size, 3, mplan.groups, layers))
    with pytest.raises(PlanError, match="already has a mask"):
        apply_plan(apply_plan(spec.build(), plan), plan)
    (tmp_path / "old.json").write_text(json.dumps({**plan.to_dict(), "version": 99}))
    with pytest.raises(PlanError, match="version 99"):
        PruningPlan.load(tmp_path / "old.json")


def test_baking_a_copy_leaves_the_masked_original_working():
    from latprune.models import ModelSpec
    from latprune.prune import apply_plan, bake_masks, uniform_plan, weight_masks

    spec = ModelSpec("resnet20", 10, 1, 12, 0.25)
    model = spec.build(seed=0).eval()
    apply_plan(model, uniform_plan(model, 12, 1, 0.75, 0.5, model_spec=spec))
    x = torch.randn(2, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    before = model(x)
    baked = bake_masks(copy.deepcopy(model))
    assert not weight_masks(baked) and weight_masks(model)
    assert torch.equal(model(x), before) and torch.allclose(baked(x), before, atol=1e-6)
    assert all(
        type(m).__name__ in ("Conv2d", "Linear") for m in baked.modules() if hasattr(m, "weight") and m.weight.dim() > 1
    )
