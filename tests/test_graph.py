"""Coupled channel groups: every zoo model, concatenation, and the depthwise / grouped-conv corner cases."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from latprune.errors import ModelError
from latprune.graph import build_graph, is_depthwise
from latprune.models import create_model, list_models


class TinyInception(nn.Module):
    """Two branches concatenated, then a 1x1 conv reading both: the concat consumer spans two groups."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.b1 = nn.Conv2d(8, 4, 1)
        self.b2 = nn.Conv2d(8, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(10)
        self.mix = nn.Conv2d(10, 12, 1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn(torch.cat([self.b1(x), self.b2(x)], dim=1)))
        x = self.mix(x).mean((2, 3))  # (N, 12)
        return self.fc(x)


class Corners(nn.Module):
    """A 1-output-channel conv (not depthwise) and a grouped conv with c_in != c_out (not depthwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.grouped = nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.b = nn.Conv2d(16, 8, 1)
        self.one = nn.Conv2d(8, 1, 1)
        self.fc = nn.Linear(1, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(torch.relu(self.grouped(torch.relu(self.a(x)))))
        return self.fc(self.one(x).mean((2, 3)))  # (N, 1) -> (N, 3)


class FlattenHead(nn.Module):
    """A VGG-style head: flatten a 2x2 map into a linear layer, so one channel feeds 4 features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc1 = nn.Linear(24, 7)
        self.fc2 = nn.Linear(7, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.flatten(self.pool(self.conv(x)), 1))))  # (N, 6*2*2)


class SqueezeExcite(nn.Module):
    """A squeeze-excite gate (x * sigmoid(conv(pool(x)))) and a grouped conv with a channel multiplier."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.fc1 = nn.Conv2d(16, 4, 1)
        self.fc2 = nn.Conv2d(4, 16, 1)
        self.mult = nn.Conv2d(16, 32, 3, padding=1, groups=16)  # groups == c_in but c_out = 2 c_in: not depthwise
        self.head = nn.Linear(32, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))  # (N, 16, 1, 1)
        return self.head(self.mult(x * gate).mean((2, 3)))


class ChunkConcat(nn.Module):
    """A ShuffleNet-style chunk + concatenate, which torch-pruning 1.6.1 maps wrongly: the group must stay whole."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.conv(x).chunk(2, dim=1)
        return self.fc(torch.cat([x1, self.branch(x2)], 1).mean((2, 3)))


@pytest.mark.parametrize("name", list_models())
def test_zoo_groups_are_consistent(name):
    model = create_model(name, num_classes=10, input_size=32, width_mult=0.25)
    graph = build_graph(model, 32, 3)
    modules = dict(model.named_modules())
    first, last = graph.layers[0], graph.layers[-1]
    assert first.in_fixed == 3 and first.in_parts == ()  # image channels never prunable
    assert last.kind == "linear" and last.out_group is None  # classifier outputs never prunable
    for info in graph.layers:
        covered = sum(graph.groups[g].channels * r for g, r in info.in_parts) + info.in_fixed
        assert covered == info.c_in, info.name
        if info.out_group is not None:
            assert graph.groups[info.out_group].channels == info.c_out
        if info.kind == "depthwise":
            assert info.in_parts == ((info.out_group, 1),)  # depthwise ties input to output
    for group in graph.groups:
        for m in group.members:
            module = modules[m.module]
            size = module.weight.shape[0] if m.dim == "out" else module.weight.shape[1]
            assert len(m.local) == group.channels and max(m.local) < size


def test_resnet_residual_stage_is_one_group():
    graph = build_graph(create_model("resnet20", num_classes=10, width_mult=0.25), 32, 3)
    stage0 = graph.groups[graph.layer("conv1").out_group]
    outs = {m.module for m in stage0.members if m.dim == "out"}
    assert {"conv1", "layers.0.0.conv2", "layers.0.1.conv2", "layers.0.2.conv2"} <= outs
    assert stage0.residual
    inner = graph.groups[graph.layer("layers.0.0.conv1").out_group]
    assert not inner.residual


def test_mobilenet_depthwise_joins_expansion_group():
    graph = build_graph(create_model("mobilenet_v2", num_classes=10, width_mult=0.25), 32, 3)
    dw = graph.layer("features.2.conv.1.0")
    assert dw.kind == "depthwise"
    assert dw.out_group == graph.layer("features.2.conv.0.0").out_group


def test_concatenation_spans_two_groups():
    graph = build_graph(TinyInception(), 16, 3)
    mix = graph.layer("mix")
    g1, g2 = graph.layer("b1").out_group, graph.layer("b2").out_group
    assert mix.in_parts == ((g1, 1), (g2, 1)) and mix.in_fixed == 0
    bn_members = [m for m in graph.groups[g2].members if m.module == "bn"]
    assert bn_members[0].local == tuple(range(4, 10))  # b2's channels sit after b1's in the BatchNorm


def test_corner_cases_one_output_channel_and_grouped_conv():
    graph = build_graph(Corners(), 8, 3)
    assert graph.layer("one").kind == "conv" and not is_depthwise(Corners().one)
    assert graph.layer("grouped").kind == "conv"
    for name in ("a", "grouped"):
        assert graph.groups[graph.layer(name).out_group].fixed  # a grouped conv's channels are not pruned
    assert not graph.groups[graph.layer("b").out_group].fixed


def test_flatten_repeats_channels():
    graph = build_graph(FlattenHead(), 8, 3)
    fc1 = graph.layer("fc1")
    assert fc1.in_parts == ((graph.layer("conv").out_group, 4),)


def test_wrong_input_is_one_sentence():
    with pytest.raises(ModelError, match="1x32x32"):
        build_graph(create_model("resnet20", num_classes=10), 32, 1)


def test_squeeze_excite_gate_joins_its_group():
    graph = build_graph(SqueezeExcite(), 8, 3)
    gated = graph.groups[graph.layer("conv").out_group]
    assert graph.layer("fc2").out_group == graph.layer("conv").out_group  # x * gate ties their channels
    assert gated.fixed  # it feeds the channel-multiplier grouped conv
    assert graph.layer("mult").kind == "conv"
    assert not graph.groups[graph.layer("fc1").out_group].fixed


def test_chunk_concat_is_kept_whole():
    graph = build_graph(ChunkConcat(), 8, 3)
    assert graph.groups[graph.layer("conv").out_group].fixed
    assert graph.layer("branch").in_fixed == 4
