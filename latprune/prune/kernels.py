"""NPAS's filter-size choice made physical: a depthwise conv's square kernel cropped to its centre or grown with a
zero ring, its padding kept "same" (k // 2) so the output size does not change."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from latprune.errors import PlanError
from latprune.graph import LayerInfo


def check_resizable(name: str, info: LayerInfo, kernel: int) -> None:
    """One sentence unless layer ``name`` is a depthwise conv with a square odd kernel and "same" padding, and
    ``kernel`` is a positive odd size (what the search space offers, see ``_space_layers.kernel_choices``)."""
    k, p = info.kernel, tuple(info.padding)
    if info.kind != "depthwise" or k[0] != k[1] or k[0] % 2 == 0 or p != (k[0] // 2,) * 2:
        raise PlanError(
            f"Layer '{name}' gets kernel size {kernel}, but only a depthwise conv with a square odd kernel and "
            "padding k // 2 can change its size; drop the layer's kernel from the plan."
        )
    if kernel < 1 or kernel % 2 == 0:
        raise PlanError(f"Layer '{name}' gets kernel size {kernel}; use a positive odd size such as 3 or 5.")


@torch.no_grad()
def resize_kernel(conv: nn.Conv2d, kernel: int) -> nn.Conv2d:
    """Give ``conv`` a ``kernel`` x ``kernel`` weight in place: the centre of a larger one (once-for-all's sharing,
    without its transformation matrices) or the old one inside a zero ring (the same function at first)."""
    k = conv.kernel_size[0]
    if kernel == k:
        return conv
    w = conv.weight.detach()  # (C, 1, k, k)
    if kernel < k:
        a = (k - kernel) // 2
        new = w[:, :, a : a + kernel, a : a + kernel].clone()  # (C, 1, kernel, kernel)
    else:
        a = (kernel - k) // 2
        new = F.pad(w, (a, a, a, a))  # (C, 1, kernel, kernel), zeros around the old taps
    conv.weight = nn.Parameter(new.contiguous(), requires_grad=conv.weight.requires_grad)
    conv.kernel_size = (kernel, kernel)
    conv.padding = (kernel // 2, kernel // 2)
    return conv
