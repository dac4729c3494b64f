"""Helpers shared by several test modules (tests/ is on pytest's path, see pyproject.toml)."""

from __future__ import annotations

import torch
import torch.nn as nn


def randomize_bn(model: nn.Module, gen: torch.Generator) -> nn.Module:
    """Non-trivial BN statistics, so folding or loading errors show up (fresh BN is the identity)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
    return model.eval()


class WeightMask(nn.Module):
    """A fixed weight mask, attached as pruning attaches one (a parametrization holding a buffer)."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask
