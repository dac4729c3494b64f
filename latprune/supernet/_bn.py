"""BatchNorm recalibration: recompute a candidate's running statistics on a fixed set of images."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn

_BN = nn.modules.batchnorm._BatchNorm


def batchnorms(model: nn.Module) -> list[_BN]:
    """Every BatchNorm module of ``model`` that tracks running statistics."""
    return [m for m in model.modules() if isinstance(m, _BN) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int
) -> None:
    """Reset every BN's statistics and re-estimate them as the exact average over ``images``.

    Shared weights serve many sub-networks whose channels see different inputs, so the running statistics
    accumulated while training the super-net belong to no candidate in particular (JCW §3.1, "BN statistics
    are recalculated with 1,280 images"). With ``momentum=None`` PyTorch keeps a cumulative average, so the
    result does not depend on batch order. Only the BN layers switch to train mode; the model ends in eval
    mode. ``forward`` runs the candidate (its masks already active) on a batch of normalised images.
    """
    bns = batchnorms(model)
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    try:
        for start in range(0, images.shape[0], batch_size):
            forward(images[start : start + batch_size])
    finally:
        for m, momentum in zip(bns, momenta, strict=True):
            m.momentum = momentum
        model.eval()
