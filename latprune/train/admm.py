"""ADMM weight pruning (Zhang et al., 2018) as a training hook: the penalty, the projection, and the dual update.

ADMM splits "minimise the loss subject to W lying in the scheme's sparse set S" into the loss plus
``ρ/2 ‖W − Z + U‖²`` minimised by SGD over W, a projection ``Z = Π_S(W + U)`` and a dual step
``U += W − Z``. As ρ grows, W is pulled onto S, so the final hard prune (masks by magnitude from W)
removes little that still matters, and the masked retraining starts close to where it ends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn

from latprune.errors import PlanError
from latprune.prune.plan import LayerPlan
from latprune.schemes import make_mask
from latprune.train.loop import TrainHook, unwrap


def project(weight: torch.Tensor, layer: LayerPlan) -> torch.Tensor:
    """Π_S(weight): the weight with everything outside ``layer``'s scheme mask at its sparsity set to zero.

    Keeping the largest-magnitude units (weights, groups, blocks, kernel patterns) is the Euclidean projection
    onto the scheme's set for equal-size units, which is what every scheme's mask generator chooses.
    """
    return weight * make_mask(layer.scheme, weight, layer.sparsity, layer.params, layer.name)


class ADMMHook(TrainHook):
    """ADMM towards every sparse layer of a plan: Z and U per layer, updated once per epoch, ρ growing to a cap.

    The model is the channel-shrunk parent without masks (``apply_plan(model, plan, masks=False)``), so the
    constraint is the weight scheme at the plan's sparsity on the kept channels. Z starts as Π(W) and U at 0
    before the first epoch. After each epoch: ``Z = Π(W + U)``, ``U += W − Z``, then ``ρ ← min(ρ·factor, max)``
    with U rescaled by ρ_old/ρ_new, because U is the scaled dual λ/ρ (Boyd et al., 2011, §3.4.1).
    """

    def __init__(
        self, layers: Sequence[LayerPlan], rho_init: float = 1e-3, rho_factor: float = 1.5, rho_max: float = 1.0
    ) -> None:
        if not (rho_init > 0 and rho_factor >= 1 and rho_max >= rho_init):
            raise PlanError(
                f"ADMM's rho settings (init {rho_init}, factor {rho_factor}, max {rho_max}) are invalid; "
                "use init > 0, factor >= 1 and max >= init."
            )
        self.layers = tuple(ly for ly in layers if ly.sparsity > 0)
        if not self.layers:
            raise PlanError("The plan has no sparse layer, so ADMM has nothing to prune; use --method masked.")
        self.rho_init, self.rho_factor, self.rho_max = float(rho_init), float(rho_factor), float(rho_max)
        self.rho = self.rho_init
        self.z: dict[str, torch.Tensor] = {}
        self.u: dict[str, torch.Tensor] = {}

    def _weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The current (masked, if parametrized) weight of every target layer, by name."""
        modules = dict(unwrap(model).named_modules())
        missing = [ly.name for ly in self.layers if ly.name not in modules]
        if missing:
            raise PlanError(f"The model has no layer '{missing[0]}' that the ADMM targets name; use the plan's model.")
        return {ly.name: modules[ly.name].weight for ly in self.layers}

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        if self.z:  # already initialised, or restored from a checkpoint
            return
        with torch.no_grad():
            for ly, (name, w) in zip(self.layers, self._weights(model).items(), strict=True):
                self.z[name] = project(w.detach(), ly)
                self.u[name] = torch.zeros_like(w)

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``ρ/2 Σ ‖W − Z + U‖²`` over the target layers (differentiable in W)."""
        total = None
        for name, w in self._weights(model).items():
            term = (w - self.z[name].to(w) + self.u[name].to(w)).pow(2).sum()
            total = term if total is None else total + term
        assert total is not None  # at least one layer, checked in __init__
        return 0.5 * self.rho * total

    def loss(
        self, model: nn.Module, images: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, loss: torch.Tensor
    ) -> torch.Tensor:
        return loss + self.penalty(model)

    @torch.no_grad()
    def after_epoch(self, model: nn.Module, epoch: int) -> dict[str, float]:
        """The Z and U updates and the ρ step; reports ρ used this epoch and the relative residual ‖W − Z‖/‖W‖."""
        gap, norm = 0.0, 0.0
        for ly, (name, w) in zip(self.layers, self._weights(model).items(), strict=True):
            w = w.detach()
            z = project(w + self.u[name].to(w), ly)
            self.u[name] = self.u[name].to(w) + w - z
            self.z[name] = z
            gap += float((w - z).double().pow(2).sum())
            norm += float(w.double().pow(2).sum())
        used = self.rho
        new = min(self.rho * self.rho_factor, self.rho_max)
        for name in self.u:
            self.u[name] = self.u[name] * (used / new)
        self.rho = new
        return {"admm_rho": used, "admm_residual": math.sqrt(gap / max(norm, 1e-30))}

    def residual(self, model: nn.Module) -> float:
        """Relative distance of the weights from their projection, ``‖W − Π(W)‖ / ‖W‖`` over all target layers."""
        gap, norm = 0.0, 0.0
        with torch.no_grad():
            for ly, w in zip(self.layers, self._weights(model).values(), strict=True):
                gap += float((w - project(w, ly)).double().pow(2).sum())
                norm += float(w.double().pow(2).sum())
        return math.sqrt(gap / max(norm, 1e-30))

    def state_dict(self) -> dict[str, Any]:
        return {"rho": self.rho, "z": dict(self.z), "u": dict(self.u)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rho = float(state["rho"])
        self.z, self.u = dict(state["z"]), dict(state["u"])


__all__ = ["ADMMHook", "project"]
