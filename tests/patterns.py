"""Tiny test models with the layer patterns of timm's architectures (timm itself is not installable here).

Each class reproduces the code shape that matters to fx capture and to channel coupling, not the paper's
widths: a BatchNorm subclass fx traces into (timm's BatchNormAct2d), a Linear subclass fx traces into,
squeeze-excite gates, MixedConv2d's split, Ghost modules' cat-then-slice, Inception's concat, DenseNet's
growing concat, ConvNeXt's channels-last LayerNorm / Linear / layer scale, ``chunk(2)`` after cat + BN, and a
RegNet-style grouped conv. ``PATTERN_MODELS`` lists them for tests parametrised over every one.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class BatchNormAct2d(nn.BatchNorm2d):
    """timm's BatchNormAct2d: BN then an activation in one module whose forward fx traces into."""

    def __init__(self, num_features: int, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__(num_features)
        self.drop = nn.Identity()
        self.act = act()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        factor = 0.0 if self.momentum is None else self.momentum
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        x = F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            self.weight,
            self.bias,
            bn_training,
            factor,
            self.eps,
        )
        return self.act(self.drop(x))


class TracedLinear(nn.Linear):
    """timm's Linear: fx traces into it and records F.linear on the module's own parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            return F.linear(x, self.weight.to(x.dtype), self.bias)
        return F.linear(x, self.weight, self.bias)


class SqueezeExcite(nn.Module):
    """timm's SqueezeExcite: mean -> conv -> act -> conv -> gate -> x * gate."""

    def __init__(self, channels: int, reduced: int, gate: type[nn.Module] = nn.Sigmoid) -> None:
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = nn.ReLU()
        self.conv_expand = nn.Conv2d(reduced, channels, 1)
        self.gate = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_se = x.mean((2, 3), keepdim=True)  # (N, C, 1, 1)
        x_se = self.conv_expand(self.act1(self.conv_reduce(x_se)))
        return x * self.gate(x_se)


class EfficientLike(nn.Module):
    """timm's EfficientNet / MobileNetV3 code shape: BatchNormAct2d, SE blocks with sigmoid and hard-sigmoid
    gates, SiLU and hardswish, a residual, and a TracedLinear head."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(8, nn.SiLU)
        self.dw = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False)
        self.bn2 = BatchNormAct2d(8, nn.SiLU)
        self.se = SqueezeExcite(8, 4)
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.bn3 = BatchNormAct2d(8, nn.Identity)
        self.expand = nn.Conv2d(8, 16, 1, bias=False)
        self.bn4 = BatchNormAct2d(16, nn.Hardswish)
        self.dw2 = nn.Conv2d(16, 16, 5, 2, 2, groups=16, bias=False)
        self.bn5 = BatchNormAct2d(16, nn.Hardswish)
        self.se2 = SqueezeExcite(16, 8, nn.Hardsigmoid)
        self.project = nn.Conv2d(16, 12, 1, bias=False)
        self.bn6 = BatchNormAct2d(12, nn.Identity)
        self.classifier = TracedLinear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv_stem(x))
        x = x + self.bn3(self.pw(self.se(self.bn2(self.dw(x)))))
        x = self.bn6(self.project(self.se2(self.bn5(self.dw2(self.bn4(self.expand(x)))))))
        return self.classifier(x.mean((2, 3)))


class MixedConv2d(nn.ModuleDict):
    """timm's MixedConv2d: split the channels by ``splits``, a conv of its own kernel size per part, concat."""

    def __init__(self, channels: int, splits: list[int], kernels: list[int]) -> None:
        super().__init__()
        self.splits = splits
        for i, (c, k) in enumerate(zip(splits, kernels, strict=True)):
            self.add_module(str(i), nn.Conv2d(c, c, k, 1, k // 2, groups=c, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_split = torch.split(x, self.splits, 1)
        return torch.cat([c(x_split[i]) for i, c in enumerate(self.values())], 1)


class MixNetLike(nn.Module):
    """A MixNet block: expand, MixedConv2d depthwise (3x3 and 5x5 parts), project."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), BatchNormAct2d(16))
        self.expand = nn.Sequential(nn.Conv2d(16, 24, 1, bias=False), BatchNormAct2d(24, nn.SiLU))
        self.mix = MixedConv2d(24, [16, 8], [3, 5])
        self.bn = BatchNormAct2d(24, nn.SiLU)
        self.project = nn.Sequential(nn.Conv2d(24, 16, 1, bias=False), BatchNormAct2d(16, nn.Identity))
        self.head = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.bn(self.mix(self.expand(x))))
        return self.head(x.mean((2, 3)))


class GhostModule(nn.Module):
    """GhostNet's module: a primary conv, a cheap depthwise conv of its output, concat, keep the first ``out``."""

    def __init__(self, c_in: int, out: int, relu: bool = True) -> None:
        super().__init__()
        self.out = out
        init = -(-out // 2)
        act = nn.ReLU() if relu else nn.Identity()
        self.primary_conv = nn.Sequential(nn.Conv2d(c_in, init, 1, bias=False), nn.BatchNorm2d(init), act)
        act = nn.ReLU() if relu else nn.Identity()
        self.cheap_operation = nn.Sequential(
            nn.Conv2d(init, init, 3, 1, 1, groups=init, bias=False), nn.BatchNorm2d(init), act
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.primary_conv(x)
        x2 = self.cheap_operation(x1)
        return torch.cat([x1, x2], dim=1)[:, : self.out]


class GhostLike(nn.Module):
    """Three Ghost modules: even widths (the slice keeps everything) and an odd one (the slice drops one)."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.ghost1 = GhostModule(16, 32)
        self.ghost2 = GhostModule(32, 16, relu=False)
        self.ghost3 = GhostModule(16, 11)
        self.head = nn.Linear(11, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.ghost2(self.ghost1(x))
        return self.head(self.ghost3(x).mean((2, 3)))


class InceptionLike(nn.Module):
    """An Inception block: 1x1, 1x1->3x3, 3x3 max pool->1x1 branches concatenated, then a concat of the
    block's input, a conv of the first concat and a channel slice of the block's input."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.b1 = nn.Sequential(nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU())
        self.b2 = nn.Sequential(
            nn.Conv2d(8, 4, 1, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 6, 3, 1, 1), nn.ReLU()
        )
        self.b3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(8, 4, 1), nn.ReLU())
        self.mix = nn.Conv2d(14, 8, 1)
        self.head = nn.Linear(22, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = torch.cat([self.b1(x), self.b2(x), self.b3(x)], 1)
        z = torch.cat([x, self.mix(y), x[:, :6]], 1)  # the stem's output again, a conv, a channel slice
        return self.head(torch.flatten(F.adaptive_avg_pool2d(z, 1), 1))


class DenseLike(nn.Module):
    """A DenseNet block: every layer reads the concat of all earlier outputs (BN -> ReLU -> conv)."""

    def __init__(self, num_classes: int = 5, growth: int = 16, layers: int = 2) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.norms = nn.ModuleList(nn.BatchNorm2d(16 + i * growth) for i in range(layers))
        self.convs = nn.ModuleList(nn.Conv2d(16 + i * growth, growth, 3, 1, 1, bias=False) for i in range(layers))
        c = 16 + layers * growth
        self.transition = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, 8, 1), nn.AvgPool2d(2))
        self.head = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [self.stem(x)]
        for norm, conv in zip(self.norms, self.convs, strict=True):
            features.append(conv(F.relu(norm(torch.cat(features, 1)))))
        return self.head(self.transition(torch.cat(features, 1)).mean((2, 3)))


class LayerNorm2d(nn.LayerNorm):
    """timm's LayerNorm2d: a LayerNorm over the channels of an NCHW map, via two permutes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """timm's ConvNeXt block (conv_mlp=False): depthwise 7x7, channels-last LayerNorm and MLP with GELU,
    layer scale by a parameter, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv_dw = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)  # (N, H, W, C)
        x = self.fc2(self.act(self.fc1(self.norm(x)))).permute(0, 3, 1, 2)  # (N, C, H, W)
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
        return x + shortcut


class ConvNeXtLike(nn.Module):
    """A ConvNeXt stem (4x4 patchify conv + LayerNorm2d), two blocks, a downsample and the head's LayerNorm."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8, eps=1e-6))
        self.blocks = nn.Sequential(ConvNeXtBlock(8), ConvNeXtBlock(8))
        self.down = nn.Sequential(LayerNorm2d(8, eps=1e-6), nn.Conv2d(8, 12, 2, 2))
        self.norm = nn.LayerNorm(12)
        self.head = TracedLinear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.blocks(self.stem(x)))
        return self.head(self.norm(x.mean((2, 3))))


class CatBNChunk(nn.Module):
    """The issue's crossed-coupling case: two convs concatenated, BatchNorm, ``chunk(2)`` into two convs."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU())
        self.a = nn.Conv2d(8, 6, 1)
        self.b = nn.Conv2d(8, 6, 3, 1, 1)
        self.bn = nn.BatchNorm2d(12)
        self.c1 = nn.Conv2d(6, 5, 1)
        self.c2 = nn.Conv2d(6, 7, 3, 1, 1)
        self.head = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y1, y2 = F.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1))).chunk(2, 1)
        return self.head(torch.cat([self.c1(y1), self.c2(y2)], 1).mean((2, 3)))


class RegNetLike(nn.Module):
    """A RegNetY block: 1x1, grouped 3x3 (group width 4), SE, 1x1, residual projection."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.a = nn.Sequential(nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, 1, 1, groups=4, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.se = SqueezeExcite(16, 4)
        self.c = nn.Sequential(nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.proj = nn.Sequential(nn.Conv2d(8, 12, 1, bias=False), nn.BatchNorm2d(12))
        self.head = nn.Linear(12, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = F.relu(self.c(self.se(self.b(self.a(x)))) + self.proj(x))
        return self.head(x.mean((2, 3)))


#: Every pattern model, for tests parametrised over all of them (16x16 inputs, 3 channels, 5 classes).
PATTERN_MODELS: dict[str, type[nn.Module]] = {
    cls.__name__: cls
    for cls in (EfficientLike, MixNetLike, GhostLike, InceptionLike, DenseLike, ConvNeXtLike, CatBNChunk, RegNetLike)
}
