"""Channel importance summed over a coupled group, and selection of the channels to keep."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

from latprune.errors import PlanError
from latprune.graph import ChannelGroup

Criterion = Literal["l1", "l2", "bn"]
CRITERIA: tuple[str, ...] = ("l1", "l2", "bn")


def group_importance(model: nn.Module, group: ChannelGroup, criterion: Criterion = "l1") -> torch.Tensor:
    """Importance of each of the group's channels, shape (channels,).

    "l1"/"l2": the norm of every filter that writes the channel (conv, depthwise or linear output rows),
    summed over the group, so a residual stage ranks channels by all the layers that feed it. "bn": the
    summed |gamma| of the group's BatchNorms (network slimming); groups without BatchNorm fall back to l1.
    """
    if criterion not in CRITERIA:
        raise PlanError(f"Unknown channel importance '{criterion}'; choose one of: {', '.join(CRITERIA)}.")
    modules = dict(model.named_modules())
    score = torch.zeros(group.channels, dtype=torch.float64)
    found = False
    for member in group.members:
        module = modules[member.module]
        if member.dim != "out":
            continue
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if criterion == "bn":
            if not is_bn or module.weight is None:
                continue
            per_local = module.weight.detach().abs().double().cpu()
        else:
            if is_bn or not isinstance(module, (nn.Conv2d, nn.Linear)):
                continue
            w = module.weight.detach().double().cpu().reshape(module.weight.shape[0], -1)  # (out, fan_in)
            per_local = w.abs().sum(1) if criterion == "l1" else w.pow(2).sum(1).sqrt()
        local = torch.as_tensor(member.local)
        root = torch.as_tensor(member.root)
        score.index_add_(0, root, per_local[local])
        found = True
    if not found and criterion == "bn":
        return group_importance(model, group, "l1")
    return score


def select_channels(importance: torch.Tensor, keep: int, group: str = "<group>") -> tuple[int, ...]:
    """Indices of the ``keep`` most important channels, sorted ascending so the channel order is stable.

    Ties go to the lower index, so the same weights always give the same selection.
    """
    n = importance.numel()
    if not 1 <= keep <= n:
        raise PlanError(f"Group '{group}' would keep {keep} of {n} channels; keep at least 1 and at most {n}.")
    order = torch.sort(-importance.double(), stable=True).indices[:keep]
    return tuple(sorted(int(i) for i in order))


__all__ = ["CRITERIA", "Criterion", "group_importance", "select_channels"]
