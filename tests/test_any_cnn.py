"""Any CNN: every zoo model and every timm pattern couples its channels correctly, prunes, compiles and matches
torch, dense and after ``uniform_plan(width=0.75, sparsity=0.8, scheme="group4")``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn

from latprune.engine import compile
from latprune.engine.kernels import get_kernel
from latprune.graph import build_graph
from latprune.models import create_model, list_models
from latprune.prune import apply_plan, bake_masks, uniform_plan

from helpers import randomize_bn
from patterns import PATTERN_MODELS


def assert_close(out: torch.Tensor, ref: torch.Tensor, rel: float = 1e-4) -> None:
    err = (out - ref).abs().max().item()
    assert err <= rel * ref.abs().max().item(), f"max abs error {err} against {ref.abs().max().item()}"


def _pruned(model: nn.Module, size: int) -> tuple[nn.Module, dict[str, str]]:
    plan = uniform_plan(model, size, 3, width=0.75, sparsity=0.8, scheme="group4")
    assert any(len(g.keep) < g.channels for g in plan.groups)
    return bake_masks(apply_plan(copy.deepcopy(model), plan)).eval(), plan.layer_schemes()


@pytest.mark.parametrize("name", list(PATTERN_MODELS))
def test_pattern_model_compiles_dense_and_pruned_and_matches_torch(name: str) -> None:
    gen = torch.Generator().manual_seed(0)
    model = randomize_bn(PATTERN_MODELS[name](), gen)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    pruned, schemes = _pruned(model, 16)
    with torch.no_grad():
        dense_ref, pruned_ref = model(x), pruned(x)
    assert_close(compile(model, x[:1])(x), dense_ref)
    cm = compile(pruned, x[:1], schemes=schemes)
    assert_close(cm(x), pruned_ref)
    assert any(get_kernel(layer.kernel).scheme == "group4" for layer in cm.spec.layers)


@pytest.mark.parametrize("name", list_models())
def test_zoo_model_compiles_dense_and_pruned_and_matches_torch(name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    model = randomize_bn(create_model(name, num_classes=10, input_size=32, width_mult=0.25), gen)
    pruned, schemes = _pruned(model, 32)
    x = torch.randn(2, 3, 32, 32, generator=gen)
    with torch.no_grad():
        dense_ref, pruned_ref = model(x), pruned(x)
    assert_close(compile(model, x[:1])(x), dense_ref)
    assert_close(compile(pruned, x[:1], schemes=schemes)(x), pruned_ref)


def _group_of(graph, layer: str):
    return graph.groups[graph.layer(layer).out_group]


def test_chunk_after_concat_and_bn_couples_the_halves_position_by_position() -> None:
    """The issue's crossed case: cat(a, b) -> BN -> chunk(2) -> c1, c2 reads a's channels in c1, b's in c2, and
    a and b must keep the same channels so the chunk still splits between them."""
    graph = build_graph(PATTERN_MODELS["CatBNChunk"](), 16, 3)
    group = _group_of(graph, "a")
    assert graph.layer("b").out_group == graph.layer("a").out_group and not group.fixed
    members = {(m.module, m.dim): (m.local, m.root) for m in group.members}
    assert members[("bn", "out")] == (tuple(range(12)), (*range(6), *range(6)))
    assert members[("c1", "in")] == members[("c2", "in")] == (tuple(range(6)), tuple(range(6)))


@pytest.mark.parametrize(
    ("name", "layer", "reason"),
    [
        ("MixNetLike", "expand.0", "split into sizes written in the model's code"),
        ("GhostLike", "ghost3.primary_conv.0", "channel slice whose bounds are written"),
        ("ConvNeXtLike", "stem.0", "LayerNorm 'stem.1' normalises over the channels"),
        ("RegNetLike", "a.0", "grouped conv"),
    ],
)
def test_couplings_that_cannot_follow_a_pruned_width_keep_their_group_whole(name, layer, reason) -> None:
    graph = build_graph(PATTERN_MODELS[name](), 16, 3)
    group = _group_of(graph, layer)
    assert group.fixed and reason in group.reason


def test_prunable_couplings_of_the_patterns() -> None:
    eff = build_graph(PATTERN_MODELS["EfficientLike"](), 16, 3)
    assert all(not g.fixed for g in eff.groups)  # BN subclass, SE gates, traced Linear: all prunable
    assert eff.layer("se.conv_expand").out_group == eff.layer("conv_stem").out_group  # the gate ties them
    dense = build_graph(PATTERN_MODELS["DenseLike"](), 16, 3)
    assert len(dense.layer("transition.2").in_parts) == 3 and not any(g.fixed for g in dense.groups)
    mix = build_graph(PATTERN_MODELS["MixNetLike"](), 16, 3)
    assert not _group_of(mix, "stem.0").fixed and _group_of(mix, "stem.0").residual
    convnext = build_graph(PATTERN_MODELS["ConvNeXtLike"](), 16, 3)
    fc1 = convnext.layer("blocks.0.fc1")
    assert not convnext.groups[fc1.out_group].fixed and fc1.in_hw == (4, 4)  # a Linear over a 4x4 map


class Untraceable(nn.Module):
    """Data-dependent control flow: fx cannot trace it, so torch-pruning's graph is the fallback."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 1)
        self.other = nn.Conv2d(3, 6, 1)
        self.fc = nn.Linear(14, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:  # fx cannot trace a branch on a value
            x = x * 1.0
        x1, x2 = self.conv(x).chunk(2, dim=1)
        return self.fc(torch.cat([x1, self.branch(x2), torch.relu(self.other(x))], 1).mean((2, 3)))


def test_untraceable_models_fall_back_to_torch_pruning_and_keep_split_groups_whole() -> None:
    graph = build_graph(Untraceable(), 8, 3)
    assert _group_of(graph, "conv").fixed and "chunk" in _group_of(graph, "conv").reason
    assert all(g.fixed for g in graph.groups)  # nothing after the chunk is trusted either
