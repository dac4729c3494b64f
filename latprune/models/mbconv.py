"""MobileNetV3 (Howard et al., 2019) and EfficientNet-B0 (Tan & Le, 2019): inverted residual (MBConv) networks
with squeeze-excite gates and hardswish / SiLU, with the layer lists and widths of torchvision's definitions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from latprune.models import register_model
from latprune.models.mobilenet import _init, make_divisible
from latprune.models.resnet import SMALL_INPUT


def conv_norm_act(
    in_ch: int, out_ch: int, kernel: int, stride: int, act: type[nn.Module] | None, groups: int = 1, eps: float = 1e-5
) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → activation (none for the linear projection)."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch, eps=eps),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class SqueezeExcitation(nn.Module):
    """Global average pool → 1x1 conv → ReLU/SiLU → 1x1 conv → sigmoid-like gate → channel-wise scale."""

    def __init__(self, channels: int, squeeze: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = act()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.gate(self.fc2(self.act(self.fc1(self.avgpool(x)))))  # (N, C, 1, 1)
        return x * scale


@dataclass(frozen=True)
class Block:
    """One inverted residual: input/expanded/output channels, kernel, stride, SE squeeze width (0: no SE)."""

    c_in: int
    expanded: int
    c_out: int
    kernel: int
    stride: int
    squeeze: int
    act: type[nn.Module]
    gate: type[nn.Module] = nn.Hardsigmoid
    se_act: type[nn.Module] = nn.ReLU


class InvertedResidual(nn.Module):
    """[1x1 expand →] kxk depthwise [→ SE] → 1x1 linear project, with a residual when shapes match."""

    def __init__(self, b: Block, eps: float) -> None:
        super().__init__()
        self.use_res = b.stride == 1 and b.c_in == b.c_out
        layers: list[nn.Module] = []
        if b.expanded != b.c_in:
            layers.append(conv_norm_act(b.c_in, b.expanded, 1, 1, b.act, eps=eps))
        layers.append(conv_norm_act(b.expanded, b.expanded, b.kernel, b.stride, b.act, groups=b.expanded, eps=eps))
        if b.squeeze:
            layers.append(SqueezeExcitation(b.expanded, b.squeeze, b.se_act, b.gate))
        layers.append(conv_norm_act(b.expanded, b.c_out, 1, 1, None, eps=eps))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x) if self.use_res else self.block(x)


# MobileNetV3 bottlenecks: (input, kernel, expanded, output, SE, hardswish, stride) at width 1.0 (paper Tables 1-2).
V3_LARGE = (
    (16, 3, 16, 16, False, False, 1), (16, 3, 64, 24, False, False, 2), (24, 3, 72, 24, False, False, 1),
    (24, 5, 72, 40, True, False, 2), (40, 5, 120, 40, True, False, 1), (40, 5, 120, 40, True, False, 1),
    (40, 3, 240, 80, False, True, 2), (80, 3, 200, 80, False, True, 1), (80, 3, 184, 80, False, True, 1),
    (80, 3, 184, 80, False, True, 1), (80, 3, 480, 112, True, True, 1), (112, 3, 672, 112, True, True, 1),
    (112, 5, 672, 160, True, True, 2), (160, 5, 960, 160, True, True, 1), (160, 5, 960, 160, True, True, 1),
)  # fmt: skip
V3_SMALL = (
    (16, 3, 16, 16, True, False, 2), (16, 3, 72, 24, False, False, 2), (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2), (40, 5, 240, 40, True, True, 1), (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1), (48, 5, 144, 48, True, True, 1), (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1), (96, 5, 576, 96, True, True, 1),
)  # fmt: skip


def _strides(strides: list[int], small: bool) -> list[int]:
    """Small inputs (≤ 64 px) keep resolution: the first strided block runs at stride 1, as the stem does."""
    if small and 2 in strides:
        strides[strides.index(2)] = 1
    return strides


class MobileNetV3(nn.Module):
    """MobileNetV3: hardswish stem, bottlenecks with hard-sigmoid SE gates, 1x1 head conv, two-layer classifier."""

    def __init__(self, setting: tuple, last: int, num_classes: int, in_channels: int, input_size: int, width: float):
        super().__init__()
        small = input_size <= SMALL_INPUT
        ch = lambda c: make_divisible(c * width)  # noqa: E731 - torchvision's adjust_channels
        stem = ch(setting[0][0])
        layers: list[nn.Module] = [conv_norm_act(in_channels, stem, 3, 1 if small else 2, nn.Hardswish, eps=1e-3)]
        strides = _strides([s[6] for s in setting], small)
        for (c_in, k, exp, c_out, se, hs, _), stride in zip(setting, strides, strict=True):
            act = nn.Hardswish if hs else nn.ReLU
            squeeze = make_divisible(ch(exp) // 4) if se else 0
            layers.append(InvertedResidual(Block(ch(c_in), ch(exp), ch(c_out), k, stride, squeeze, act), 1e-3))
        head = 6 * ch(setting[-1][3])
        layers.append(conv_norm_act(ch(setting[-1][3]), head, 1, 1, nn.Hardswish, eps=1e-3))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(head, ch(last)), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(ch(last), num_classes)
        )
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # (N, C) -> (N, classes)


# EfficientNet-B0 stages: (expansion, kernel, stride, input, output, repeats).
B0 = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
      (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))  # fmt: skip


class EfficientNet(nn.Module):
    """EfficientNet-B0: SiLU throughout, MBConv blocks with sigmoid SE gates squeezing to input/4 channels."""

    def __init__(self, num_classes: int, in_channels: int, input_size: int, width: float) -> None:
        super().__init__()
        small = input_size <= SMALL_INPUT
        ch = lambda c: make_divisible(c * width)  # noqa: E731
        layers: list[nn.Module] = [conv_norm_act(in_channels, ch(32), 3, 1 if small else 2, nn.SiLU)]
        strides = _strides([s[2] for s in B0], small)
        for (t, k, _, c_in, c_out, n), stride in zip(B0, strides, strict=True):
            for j in range(n):
                cin = ch(c_in) if j == 0 else ch(c_out)
                b = Block(cin, make_divisible(cin * t), ch(c_out), k, stride if j == 0 else 1, max(1, cin // 4),
                          nn.SiLU, nn.Sigmoid, nn.SiLU)  # fmt: skip
                layers.append(InvertedResidual(b, 1e-5))
        head = 4 * ch(320)
        layers.append(conv_norm_act(ch(320), head, 1, 1, nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # (N, C) -> (N, classes)


@register_model(
    "mobilenet_v3_large",
    default_input_size=224,
    default_num_classes=1000,
    description="MobileNetV3-Large, 5.48M params at width 1.0 (SE, hardswish)",
)
def mobilenet_v3_large(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> nn.Module:
    return MobileNetV3(V3_LARGE, 1280, num_classes, in_channels, input_size, width_mult)


@register_model(
    "mobilenet_v3_small",
    default_input_size=224,
    default_num_classes=1000,
    description="MobileNetV3-Small, 2.54M params at width 1.0 (SE, hardswish)",
)
def mobilenet_v3_small(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> nn.Module:
    return MobileNetV3(V3_SMALL, 1024, num_classes, in_channels, input_size, width_mult)


@register_model(
    "efficientnet_b0",
    default_input_size=224,
    default_num_classes=1000,
    description="EfficientNet-B0, 5.29M params at width 1.0 (SE, SiLU)",
)
def efficientnet_b0(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> nn.Module:
    return EfficientNet(num_classes, in_channels, input_size, width_mult)
