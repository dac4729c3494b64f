"""NPAS phase 1's stand-ins for mobile-unfriendly operations, as a registry of rewrite rules on a built model:
each finds its sites and rewrites one site in place. ``ModelSpec(replacements=...)`` applies rules after building, so
a replaced model is rebuilt the same way everywhere (checkpoints, plans, profiles).

Which rules pay is measured, not assumed (``latprune.replace``): on a CPU with fast exponentials SiLU may cost no
more than hardswish, and NPAS's list (swish → hardswish, sigmoid → hard sigmoid in SE gates, SE kept or removed,
5x5 depthwise → 3x3) comes from a phone's compiler, not this engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from latprune.errors import ModelError

#: Class names of squeeze-and-excitation blocks (torchvision's, timm's and latprune's): the "se-remove" sites.
SE_CLASS_NAMES = ("SqueezeExcitation", "SqueezeExcite", "SEModule", "SELayer", "SqueezeExcitationBlock")


@dataclass(frozen=True)
class Replacement:
    """One rule: ``find(model)`` lists its sites (module paths), ``apply(model, site)`` rewrites one in place."""

    name: str
    description: str
    find: Callable[[nn.Module], list[str]]
    apply: Callable[[nn.Module, str], None]


_RULES: dict[str, Replacement] = {}


def register_replacement(name: str, *, description: str, find: Callable[[nn.Module], list[str]]):
    """Register ``apply(model, site)`` as rule ``name``, with ``find`` listing its sites in a model."""

    def deco(apply: Callable[[nn.Module, str], None]) -> Callable[[nn.Module, str], None]:
        if name in _RULES:
            raise ValueError(f"replacement '{name}' is already registered")
        _RULES[name] = Replacement(name, description, find, apply)
        return apply

    return deco


def list_replacements() -> list[str]:
    """Names of every registered rule, in registration order (the order they are tried and applied in)."""
    return list(_RULES)


def get_replacement(name: str) -> Replacement:
    try:
        return _RULES[name]
    except KeyError:
        raise ModelError(f"Unknown replacement '{name}'; choose one of {', '.join(_RULES)}.") from None


def apply_replacements(model: nn.Module, names: tuple[str, ...] | list[str]) -> nn.Module:
    """Apply rules ``names`` at every one of their sites, in registry order; returns ``model`` (changed in place)."""
    for name in sorted(names, key=lambda n: list_replacements().index(get_replacement(n).name)):
        rule = get_replacement(name)
        for site in rule.find(model):
            rule.apply(model, site)
    return model


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, child, module)


def _of_type(kind: type[nn.Module]) -> Callable[[nn.Module], list[str]]:
    return lambda model: [name for name, m in model.named_modules() if type(m) is kind]


def _se_blocks(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if name and type(m).__name__ in SE_CLASS_NAMES]


def _se_gates(model: nn.Module) -> list[str]:
    """Sigmoids inside squeeze-and-excitation blocks (a sigmoid elsewhere, e.g. an output, is not a gate)."""
    blocks = tuple(f"{b}." for b in _se_blocks(model))
    return [name for name, m in model.named_modules() if type(m) is nn.Sigmoid and name.startswith(blocks)]


def _large_depthwise(model: nn.Module) -> list[str]:
    """Depthwise convs with a square odd kernel over 3 and "same" padding: their kernel can shrink to 3."""
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.Conv2d) or m.groups == 1 or m.groups != m.in_channels:
            continue
        k = m.kernel_size[0]
        if m.kernel_size[1] == k and k > 3 and k % 2 and tuple(m.padding) == (k // 2, k // 2):
            out.append(name)
    return out


@register_replacement(
    "silu-hardswish", description="SiLU / swish → hardswish (Howard et al.'s piecewise-linear swish)",
    find=_of_type(nn.SiLU),
)  # fmt: skip
def _silu_to_hardswish(model: nn.Module, site: str) -> None:
    _set(model, site, nn.Hardswish())


@register_replacement(
    "sigmoid-hardsigmoid", description="sigmoid → hard sigmoid in squeeze-and-excitation gates (as MobileNetV3)",
    find=_se_gates,
)  # fmt: skip
def _sigmoid_to_hardsigmoid(model: nn.Module, site: str) -> None:
    _set(model, site, nn.Hardsigmoid())


@register_replacement(
    "se-remove", description="squeeze-and-excitation blocks removed (the block's input passes unscaled)",
    find=_se_blocks,
)  # fmt: skip
def _remove_se(model: nn.Module, site: str) -> None:
    _set(model, site, nn.Identity())


@register_replacement(
    "dw5-dw3", description="depthwise 5x5 (or larger) → 3x3, keeping the kernel's centre", find=_large_depthwise
)
def _shrink_depthwise(model: nn.Module, site: str) -> None:
    from latprune.prune.kernels import resize_kernel  # prune imports models: import at call time

    resize_kernel(model.get_submodule(site), 3)


__all__ = ["SE_CLASS_NAMES", "Replacement", "apply_replacements", "get_replacement", "list_replacements"]
