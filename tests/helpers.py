"""Helpers shared by several test modules (tests/ is on pytest's path, see pyproject.toml)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from latprune.schemes import SchemeParams, get_scheme, make_mask


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


def structured_mask(
    rng: np.random.Generator,
    scheme: str,
    shape: tuple[int, ...],
    sparsity: float,
    params: SchemeParams | None = None,
) -> np.ndarray:
    """A bool mask of ``shape`` as pruning makes it with ``scheme`` (by magnitude, on a random weight).

    Tests of the engine use it, so the structures they run are the registry's own, never a copy. A 1x1 weight
    of a matrix-vector scheme (block_fc) is masked as the linear weight it is; the sparsity is kept inside what the
    scheme accepts (at least its minimum, below 1).
    """
    w = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    spec = get_scheme(scheme)
    if spec.fc_only and w.dim() == 4:
        w = w.reshape(shape[0], shape[1])  # (out, in, 1, 1) -> (out, in)
    if spec.prunes:
        sparsity = min(max(sparsity, spec.min_sparsity), 0.99)
    return make_mask(scheme, w, sparsity, params or SchemeParams()).reshape(shape).numpy()
