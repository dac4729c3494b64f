"""The engine's activations: one table that capture, the C epilogues, the torch backend and the tests all read.

Each entry's ``code`` is its ``LP_ACT_*`` number in csrc/lp_common.h; every kernel fuses any of them into its
epilogue (``lp_act`` / ``lp_vact``), so an activation registered here without its C case would compute the
identity: tests/test_engine_ops.py runs every entry through every kernel against ``torch_fn``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from latprune.errors import EngineError


@dataclass(frozen=True)
class Activation:
    """An element-wise activation the engine computes: its C code and its torch definition."""

    name: str
    code: int
    torch_fn: Callable[[torch.Tensor], torch.Tensor]
    description: str


_TABLE: dict[str, Activation] = {}
_BY_CODE: dict[int, Activation] = {}


def register_activation(name: str, code: int, description: str) -> Callable[[Callable], Callable]:
    """Register ``fn`` (the torch definition) as activation ``name`` with C code ``code``."""

    def deco(fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
        if name in _TABLE or code in _BY_CODE:
            raise ValueError(f"activation {name} / code {code} is already registered")
        act = Activation(name, code, fn, description)
        _TABLE[name], _BY_CODE[code] = act, act
        return fn

    return deco


def list_activations() -> list[str]:
    """Names of every activation, in code order (``none`` first)."""
    return [a.name for a in sorted(_TABLE.values(), key=lambda a: a.code)]


def get_activation(name_or_code: str | int) -> Activation:
    """The activation called ``name_or_code`` or numbered so."""
    act = _BY_CODE.get(name_or_code) if isinstance(name_or_code, int) else _TABLE.get(name_or_code)
    if act is None:
        raise EngineError(
            f"Unknown activation {name_or_code!r}; choose one of {', '.join(list_activations())} "
            f"(codes 0..{len(_TABLE) - 1})."
        )
    return act


def apply_act(x: torch.Tensor, code: int) -> torch.Tensor:
    """Activation number ``code`` applied with torch (the reference the C epilogues are tested against)."""
    return get_activation(code).torch_fn(x)


@register_activation("none", 0, "identity")
def _none(x: torch.Tensor) -> torch.Tensor:
    return x


@register_activation("relu", 1, "max(x, 0)")
def _relu(x: torch.Tensor) -> torch.Tensor:
    return F.relu(x)


@register_activation("relu6", 2, "min(max(x, 0), 6)")
def _relu6(x: torch.Tensor) -> torch.Tensor:
    return F.relu6(x)


@register_activation("hardswish", 3, "x relu6(x + 3) / 6 (MobileNetV3)")
def _hardswish(x: torch.Tensor) -> torch.Tensor:
    return F.hardswish(x)


@register_activation("sigmoid", 4, "1 / (1 + exp(-x)) (squeeze-excite gates)")
def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


@register_activation("silu", 5, "x sigmoid(x), a.k.a. swish (EfficientNet)")
def _silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x)


@register_activation("hardsigmoid", 6, "relu6(x + 3) / 6 (MobileNetV3's squeeze-excite gates)")
def _hardsigmoid(x: torch.Tensor) -> torch.Tensor:
    return F.hardsigmoid(x)


@register_activation("gelu", 7, "x Phi(x), the exact (erf) form (ConvNeXt)")
def _gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


@register_activation("gelu_tanh", 8, "GELU's tanh approximation (approximate='tanh')")
def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


@register_activation("tanh", 9, "tanh(x)")
def _tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


ACT_NONE, ACT_RELU, ACT_RELU6, ACT_HARDSWISH = 0, 1, 2, 3
ACT_SIGMOID, ACT_SILU, ACT_HARDSIGMOID, ACT_GELU, ACT_GELU_TANH, ACT_TANH = 4, 5, 6, 7, 8, 9

__all__ = [
    "ACT_GELU",
    "ACT_GELU_TANH",
    "ACT_HARDSIGMOID",
    "ACT_HARDSWISH",
    "ACT_NONE",
    "ACT_RELU",
    "ACT_RELU6",
    "ACT_SIGMOID",
    "ACT_SILU",
    "ACT_TANH",
    "Activation",
    "apply_act",
    "get_activation",
    "list_activations",
    "register_activation",
]
