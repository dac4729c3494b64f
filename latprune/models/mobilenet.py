"""MobileNetV1 (Howard et al., 2017) and MobileNetV2 (Sandler et al., 2018), with a width multiplier."""

from __future__ import annotations

import torch
import torch.nn as nn

from latprune.models import register_model
from latprune.models.resnet import SMALL_INPUT


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a scaled channel count as the reference MobileNet code does (never below 90% of ``value``)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * value else new


def conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → ReLU6, the MobileNet building unit."""
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU6(inplace=True),
    )


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetV1(nn.Module):
    """Depthwise-separable stack: 3x3 depthwise + 1x1 pointwise, 13 times."""

    # (output channels, stride) of each depthwise-separable block at width 1.0
    BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)) + ((512, 1),) * 5 + ((1024, 2), (1024, 1))

    def __init__(self, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> None:
        super().__init__()
        small = input_size <= SMALL_INPUT
        ch = make_divisible(32 * width_mult)
        layers = [conv_bn_act(in_channels, ch, 3, 1 if small else 2)]
        for i, (out, stride) in enumerate(self.BLOCKS):
            out_ch = make_divisible(out * width_mult)
            s = 1 if (small and i == 1) else stride
            layers.append(nn.Sequential(conv_bn_act(ch, ch, 3, s, groups=ch), conv_bn_act(ch, out_ch, 1, 1)))
            ch = out_ch
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(ch, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # (N, C) -> (N, classes)


class InvertedResidual(nn.Module):
    """1x1 expand → 3x3 depthwise → 1x1 linear project, with a residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.use_res = stride == 1 and in_ch == out_ch
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn_act(in_ch, hidden, 1, 1))
        layers += [
            conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, out_ch, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """Inverted residual stack of the MobileNetV2 paper, Table 2."""

    # (expansion t, output channels c, repeats n, first stride s)
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> None:
        super().__init__()
        small = input_size <= SMALL_INPUT
        ch = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [conv_bn_act(in_channels, ch, 3, 1 if small else 2)]
        for i, (t, c, n, s) in enumerate(self.SETTINGS):
            out_ch = make_divisible(c * width_mult)
            for j in range(n):
                stride = s if j == 0 and not (small and i == 1) else 1
                layers.append(InvertedResidual(ch, out_ch, stride, t))
                ch = out_ch
        layers.append(conv_bn_act(ch, last, 1, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))  # (N, C) -> (N, classes)


@register_model(
    "mobilenet_v1",
    default_input_size=224,
    default_num_classes=1000,
    description="MobileNetV1, 4.23M params at width 1.0",
)
def mobilenet_v1(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> nn.Module:
    return MobileNetV1(num_classes, in_channels, input_size, width_mult)


@register_model(
    "mobilenet_v2",
    default_input_size=224,
    default_num_classes=1000,
    description="MobileNetV2, 3.50M params at width 1.0",
)
def mobilenet_v2(*, num_classes: int, in_channels: int, input_size: int, width_mult: float) -> nn.Module:
    return MobileNetV2(num_classes, in_channels, input_size, width_mult)
