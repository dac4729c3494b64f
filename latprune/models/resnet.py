"""ResNets: ImageNet-style ResNet18/34 (He et al., 2016) and CIFAR-style ResNet20/56.

The CIFAR ResNets use 1x1-convolution projection shortcuts where the shape changes ("option B"),
not the zero-padding shortcut ("option A"): padded channels cannot be pruned or fused consistently,
and option B adds only 2.7k parameters (ResNet20: 0.272M, ResNet56: 0.856M vs 0.853M published).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from latprune.models import register_model

SMALL_INPUT = 64  # at or below this many pixels, ImageNet models keep resolution in the stem


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projection when stride or width changes)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def _w(channels: int, width_mult: float) -> int:
    return max(1, round(channels * width_mult))


class ResNet(nn.Module):
    """ResNet with basic blocks; ``stages`` lists (blocks, channels, stride) per stage."""

    def __init__(
        self,
        stages: list[tuple[int, int, int]],
        stem_channels: int,
        imagenet_stem: bool,
        num_classes: int,
        in_channels: int,
    ) -> None:
        super().__init__()
        if imagenet_stem:
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 7, 2, 3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, 2, 1)
        else:
            self.conv1 = nn.Conv2d(in_channels, stem_channels, 3, 1, 1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = nn.BatchNorm2d(stem_channels)
        self.relu = nn.ReLU(inplace=True)
        layers = []
        in_planes = stem_channels
        for blocks, planes, stride in stages:
            stage = [BasicBlock(in_planes, planes, stride)]
            stage += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
            layers.append(nn.Sequential(*stage))
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layers(x)
        x = torch.flatten(self.avgpool(x), 1)  # (N, C)
        return self.fc(x)


def _imagenet_resnet(blocks: list[int], num_classes: int, in_channels: int, input_size: int, width_mult: float):
    widths = [_w(c, width_mult) for c in (64, 128, 256, 512)]
    stages = [(n, c, 1 if i == 0 else 2) for i, (n, c) in enumerate(zip(blocks, widths, strict=True))]
    return ResNet(stages, widths[0], input_size > SMALL_INPUT, num_classes, in_channels)


def _cifar_resnet(depth: int, num_classes: int, in_channels: int, width_mult: float):
    n = (depth - 2) // 6
    widths = [_w(c, width_mult) for c in (16, 32, 64)]
    stages = [(n, c, 1 if i == 0 else 2) for i, c in enumerate(widths)]
    return ResNet(stages, widths[0], False, num_classes, in_channels)


@register_model(
    "resnet18", default_input_size=224, default_num_classes=1000, description="ImageNet ResNet18, 11.69M params"
)
def resnet18(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> nn.Module:
    return _imagenet_resnet([2, 2, 2, 2], num_classes, in_channels, input_size, width_mult)


@register_model(
    "resnet34", default_input_size=224, default_num_classes=1000, description="ImageNet ResNet34, 21.80M params"
)
def resnet34(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> nn.Module:
    return _imagenet_resnet([3, 4, 6, 3], num_classes, in_channels, input_size, width_mult)


@register_model("resnet20", default_input_size=32, default_num_classes=10, description="CIFAR ResNet20, 0.27M params")
def resnet20(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> nn.Module:
    return _cifar_resnet(20, num_classes, in_channels, width_mult)


@register_model("resnet56", default_input_size=32, default_num_classes=10, description="CIFAR ResNet56, 0.85M params")
def resnet56(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> nn.Module:
    return _cifar_resnet(56, num_classes, in_channels, width_mult)
