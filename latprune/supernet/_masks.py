"""Sub-networks (Subnet) as masks on the full model: zeroed channels on every group member, weights by multiply."""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.func import functional_call

from latprune.errors import ModelError, PlanError
from latprune.graph import ChannelGraph, is_depthwise
from latprune.prune import SchemeParams, make_mask

# Modules whose output has the group's channels on dim 1, so zeroing them there equals removing them.
_MASKABLE = (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


@dataclass(frozen=True)
class Subnet:
    """A sub-network of the super-net: kept channel indices per group and a weight sparsity per layer.

    ``keep`` maps a group name to its sorted kept channel indices, so the k-th kept channel is the k-th
    channel of the physically pruned model and the group-of-4 structure (adjacent output channels) is
    the same in both. Groups not in ``keep`` stay whole. ``schemes`` names each sparse layer's scheme.
    """

    keep: Mapping[str, torch.Tensor]
    sparsity: Mapping[str, float]
    schemes: Mapping[str, str]


@dataclass(frozen=True)
class _Slot:
    """The part of one module axis that carries a group's channels: ``local[i]`` holds group channel ``root[i]``."""

    group: str
    local: torch.Tensor
    root: torch.Tensor


class MaskedSupernet:
    """Runs any candidate on the full shared model, so one set of weights serves every candidate.

    Channel masks are forward hooks that zero the removed channels at the output of every conv, linear and
    BatchNorm the group's channels pass through. Zeroing after BN matters: BN maps a zero input channel to
    its shift ``beta - gamma * mean / std``, not to zero. Since each consumer then sees zeros in the removed
    input channels, the candidate computes exactly what the physically pruned model computes (in train and
    eval mode, BN being per channel). Weight masks are a functional multiply ``W * M`` through
    ``torch.func.functional_call``, so gradients reach only the kept weights and the model's parameters and
    state_dict keep their plain names.
    """

    def __init__(self, model: nn.Module, graph: ChannelGraph) -> None:
        self.model = model
        self.graph = graph
        self.groups = {g.name: g for g in graph.groups}
        self._modules = dict(model.named_modules())
        self._active_depth = 0  # > 0 while mask hooks are registered
        self._slots: dict[tuple[str, str], list[_Slot]] = {}
        for group in graph.groups:
            for m in group.members:
                if m.module not in self._modules:
                    raise ModelError(f"Layer '{m.module}' of channel group '{group.name}' is not in the model.")
                slot = _Slot(
                    group.name, torch.tensor(m.local, dtype=torch.long), torch.tensor(m.root, dtype=torch.long)
                )
                self._slots.setdefault((m.module, m.dim), []).append(slot)

    def channel_masks(self, candidate: Subnet) -> dict[str, torch.Tensor]:
        """Per module whose output carries a pruned group, a 0/1 float vector over its output channels."""
        masks: dict[str, torch.Tensor] = {}
        for (module, dim), slots in self._slots.items():
            if dim != "out" or not isinstance(self._modules[module], _MASKABLE):
                continue
            if not any(s.group in candidate.keep for s in slots):
                continue
            masks[module] = self._kept_axis(module, "out", candidate).float()
        return masks

    def _axis_size(self, module: str, dim: str) -> int:
        m = self._modules[module]
        if isinstance(m, nn.Linear):
            return m.out_features if dim == "out" else m.in_features
        if isinstance(m, nn.Conv2d):
            return m.out_channels if dim == "out" else m.in_channels
        return int(m.num_features)

    def _kept_axis(self, module: str, dim: str, candidate: Subnet) -> torch.Tensor:
        """Boolean vector over the module's ``dim`` axis: False where a removed group channel sits."""
        keep_axis = torch.ones(self._axis_size(module, dim), dtype=torch.bool)
        for slot in self._slots.get((module, dim), ()):
            kept = candidate.keep.get(slot.group)
            if kept is None:
                continue
            kept_root = torch.zeros(self.groups[slot.group].channels, dtype=torch.bool)
            kept_root[kept] = True
            keep_axis[slot.local] = kept_root[slot.root]
        return keep_axis

    def kept_indices(self, module: str, dim: str, candidate: Subnet) -> torch.Tensor:
        """Sorted indices of the module's ``dim`` axis ("out" or "in") the candidate keeps."""
        return torch.nonzero(self._kept_axis(module, dim, candidate)).flatten()

    def weight_masks(self, candidate: Subnet) -> dict[str, torch.Tensor]:
        """Per sparse layer's ``<path>.weight``, the 0/1 mask of its scheme at the candidate's sparsity.

        The scheme sees the kept sub-tensor only (what the physically pruned layer holds), ranked by the
        current shared weights; the result is scattered back to the full shape (zeros elsewhere).
        """
        masks: dict[str, torch.Tensor] = {}
        for name, sparsity in candidate.sparsity.items():
            if sparsity <= 0.0:
                continue
            module = self._modules.get(name)
            if not isinstance(module, (nn.Conv2d, nn.Linear)):
                raise PlanError(f"Layer '{name}' has a weight sparsity but is not a Conv2d/Linear of the model.")
            if isinstance(module, nn.Conv2d) and module.groups > 1:
                raise PlanError(
                    f"Layer '{name}' is a grouped or depthwise conv, which gets no weight sparsity; set it to 0."
                )
            weight = module.weight.detach()
            rows = self.kept_indices(name, "out", candidate).to(weight.device)
            cols = self.kept_indices(name, "in", candidate).to(weight.device)
            sub = weight[rows][:, cols]  # (c_out_kept, c_in_kept[, kh, kw])
            mask = torch.zeros_like(weight)
            scheme = candidate.schemes.get(name)
            if scheme is None:
                raise PlanError(f"Layer '{name}' has a weight sparsity but the candidate names no scheme for it.")
            # The same generator apply_plan uses on the physically pruned layer, so both keep the same weights.
            sub_mask = make_mask(scheme, sub, sparsity, SchemeParams(), name).to(weight.dtype)
            mask[rows.view(-1, 1), cols.view(1, -1)] = sub_mask
            masks[f"{name}.weight"] = mask
        return masks

    @torch.no_grad()
    def extract(self, candidate: Subnet, weight_masks: Mapping[str, torch.Tensor]) -> nn.Module:
        """A physically smaller copy of the model computing exactly the candidate (masks baked into its weights).

        Scoring only needs forward passes, and a thin candidate runs faster as a small dense model than as
        the full masked one; the masked path stays the reference (tests compare the two).
        """
        if self._active_depth:
            raise RuntimeError("extract() inside active() would copy the mask hooks; call it outside.")
        small = copy.deepcopy(self.model)
        for name, m in small.named_modules():
            if not isinstance(m, _MASKABLE) or not any((name, d) in self._slots for d in ("out", "in")):
                continue
            if isinstance(m, nn.Conv2d) and m.groups > 1 and not is_depthwise(m):
                continue  # a grouped conv's channel groups are fixed by the graph: nothing to slice
            rows = self.kept_indices(name, "out", candidate).to(_device_of(m))
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                _slice_bn(m, rows)
                continue
            weight = m.weight.detach()
            if f"{name}.weight" in weight_masks:
                weight = weight * weight_masks[f"{name}.weight"]
            depthwise = is_depthwise(m)
            cols = rows if depthwise else self.kept_indices(name, "in", candidate).to(weight.device)
            m.weight = nn.Parameter(weight[rows] if depthwise else weight[rows][:, cols])  # (out_kept, in_kept, ...)
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.detach()[rows])
            if isinstance(m, nn.Linear):
                m.out_features, m.in_features = len(rows), len(cols)
            else:
                m.out_channels, m.in_channels = len(rows), len(cols)
                if depthwise:
                    m.groups = len(rows)
        return small

    @contextmanager
    def active(self, channel_masks: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """Within the block, every forward of ``self.model`` zeroes the removed channels."""
        handles = [self._modules[site].register_forward_hook(_mask_hook(m)) for site, m in channel_masks.items()]
        self._active_depth += 1
        try:
            yield
        finally:
            self._active_depth -= 1
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor, weight_masks: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Forward of the full model with ``W * M`` for every masked weight (call inside :meth:`active`)."""
        if not weight_masks:
            return self.model(x)
        params = dict(self.model.named_parameters())
        masked = {key: params[key] * m for key, m in weight_masks.items()}
        return functional_call(self.model, masked, (x,), strict=False)


def _device_of(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _slice_bn(bn: nn.modules.batchnorm._BatchNorm, rows: torch.Tensor) -> None:
    """Keep only ``rows`` of a BatchNorm's affine parameters and running statistics."""
    if bn.weight is not None:
        bn.weight = nn.Parameter(bn.weight.detach()[rows])
        bn.bias = nn.Parameter(bn.bias.detach()[rows])
    if bn.running_mean is not None:
        bn.running_mean = bn.running_mean[rows]
        bn.running_var = bn.running_var[rows]
    bn.num_features = len(rows)


def _mask_hook(mask: torch.Tensor):
    cache: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        key = (output.device, output.dtype)
        if key not in cache:
            cache[key] = mask.to(output.device, output.dtype)
        if isinstance(module, nn.Linear):  # features are a Linear's last dim, (N, F) or channels-last (N, H, W, F)
            shape = (1,) * (output.dim() - 1) + (-1,)
        else:
            shape = (1, -1) + (1,) * (output.dim() - 2)  # broadcast over (N, C, *spatial)
        return output * cache[key].view(shape)

    return hook
