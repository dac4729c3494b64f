"""Gradual magnitude pruning (Zhu & Gupta, 2017) as a training hook: masks tighten on a cubic schedule."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from latprune.errors import PlanError
from latprune.prune.apply import WeightMask
from latprune.prune.plan import LayerPlan
from latprune.schemes import get_scheme, make_mask
from latprune.train.loop import TrainHook, unwrap


def gmp_fraction(step: int, start_step: int, end_step: int) -> float:
    """Fraction of the final sparsity reached after ``step`` optimiser steps: ``1 − (1 − (t − t0)/(t1 − t0))³``.

    0 before ``start_step``, 1 from ``end_step`` on. The cube prunes fast while many weights are redundant
    and slowly near the end, when each removal costs more accuracy.
    """
    if step < start_step:
        return 0.0
    if step >= end_step:
        return 1.0
    return 1.0 - (1.0 - (step - start_step) / (end_step - start_step)) ** 3


def gmp_sparsity(final: float, step: int, start_step: int, end_step: int) -> float:
    """Zhu & Gupta's ``s_t = s_f (1 − (1 − (t − t0)/(n Δt))³)`` with ``n Δt = end_step − start_step``."""
    return final * gmp_fraction(step, start_step, end_step)


def _mask_module(module: nn.Module) -> WeightMask | None:
    if parametrize.is_parametrized(module, "weight"):
        for p in module.parametrizations["weight"]:
            if isinstance(p, WeightMask):
                return p
    return None


def attach_dense_masks(model: nn.Module, layers: Sequence[LayerPlan]) -> nn.Module:
    """An all-ones ``WeightMask`` on every sparse layer of ``layers``, for :class:`GMPHook` to tighten in place."""
    modules = dict(model.named_modules())
    for ly in layers:
        if ly.sparsity > 0:
            weight = modules[ly.name].weight
            parametrize.register_parametrization(
                modules[ly.name], "weight", WeightMask(torch.ones_like(weight, dtype=torch.bool))
            )
    return model


class GMPHook(TrainHook):
    """Every ``frequency`` steps between ``start_step`` and ``end_step``, reset each sparse layer's mask buffer.

    The new mask is the layer's scheme mask at its current target sparsity, computed from the masked weight.
    Pruned entries are exactly zero there and rank lowest, so a unit once pruned stays pruned (Zhu & Gupta's
    rule), and the mask always has the scheme's exact structure, which intersecting old and new masks would
    break for the pattern scheme. At ``end_step`` (at the latest the run's last step) the mask is the scheme
    mask at the plan's sparsity itself; with ``epochs`` given, also after the last epoch at the latest, in case the
    loader yielded fewer steps than planned (a distributed shard). A layer stays dense until its target reaches
    its scheme's minimum sparsity (2:4's 0.5). The masks live in the model's state dict, so a resumed run
    continues from them.
    """

    def __init__(
        self,
        layers: Sequence[LayerPlan],
        start_step: int,
        end_step: int,
        frequency: int = 100,
        epochs: int | None = None,
    ) -> None:
        if not 0 <= start_step <= end_step:
            raise PlanError(f"GMP's steps {start_step}..{end_step} are not ordered; start before the end.")
        if frequency < 1:
            raise PlanError(f"GMP's update frequency {frequency} must be at least 1 step.")
        self.layers = tuple(ly for ly in layers if ly.sparsity > 0)
        if not self.layers:
            raise PlanError("The plan has no sparse layer, so GMP has nothing to prune; use --method masked.")
        self.start_step, self.end_step, self.frequency, self.epochs = start_step, end_step, frequency, epochs
        self.fraction = 0.0  # fraction of the final sparsity the masks hold now

    def update_masks(self, model: nn.Module, fraction: float) -> None:
        """Set every target layer's mask to its scheme's mask at ``fraction`` of the plan's sparsity."""
        modules = dict(unwrap(model).named_modules())
        with torch.no_grad():
            for ly in self.layers:
                module = modules.get(ly.name)
                mask = None if module is None else _mask_module(module)
                if mask is None:
                    raise PlanError(f"Layer '{ly.name}' carries no weight mask for GMP; call attach_dense_masks first.")
                sparsity = ly.sparsity if fraction >= 1.0 else ly.sparsity * fraction
                if sparsity < get_scheme(ly.scheme).min_sparsity:
                    sparsity = 0.0  # e.g. 2:4 has no structure below 0.5: the layer stays dense until it reaches it
                mask.mask.copy_(make_mask(ly.scheme, module.weight.detach(), sparsity, ly.params, ly.name))
        self.fraction = fraction

    def after_step(self, model: nn.Module, step: int) -> None:
        done = step + 1  # optimiser steps taken so far
        if done < self.start_step or self.fraction >= 1.0:
            return
        if done >= self.end_step:
            self.update_masks(model, 1.0)
        elif (done - self.start_step) % self.frequency == 0:
            self.update_masks(model, gmp_fraction(done, self.start_step, self.end_step))

    def after_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        if self.epochs is not None and epoch + 1 >= self.epochs and self.fraction < 1.0:
            self.update_masks(model, 1.0)
        return {"gmp_fraction": self.fraction}

    def state_dict(self) -> dict[str, Any]:
        return {"fraction": self.fraction}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fraction = float(state["fraction"])


__all__ = ["GMPHook", "attach_dense_masks", "gmp_fraction", "gmp_sparsity"]
