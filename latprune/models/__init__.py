"""The model zoo: plain PyTorch CNN definitions behind a decorator registry (``register_model``)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from latprune._limits import check_memory
from latprune.errors import ModelError

ModelBuilder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about a model: its builder and the defaults it was published with."""

    name: str
    builder: ModelBuilder
    default_input_size: int
    default_num_classes: int
    description: str


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str, *, default_input_size: int, default_num_classes: int, description: str
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register a builder ``f(num_classes, in_channels, input_size, width_mult) -> nn.Module`` under ``name``."""

    def deco(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = ModelInfo(name, builder, default_input_size, default_num_classes, description)
        return builder

    return deco


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_REGISTRY)


def model_info(name: str) -> ModelInfo:
    """The registry entry for ``name``, or one sentence listing the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ModelError(f"Unknown model '{name}'; choose one of: {', '.join(list_models())}.") from None


def create_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    input_size: int | None = None,
    width_mult: float = 1.0,
) -> nn.Module:
    """Build a zoo model for ``input_size`` x ``input_size`` images with ``in_channels`` channels.

    Small inputs (≤ 64 px, e.g. CIFAR or Fashion-MNIST) keep more resolution in the stem, the usual
    adaptation of ImageNet models; the layer list, and so the parameter count, stays the published one
    except for ResNet18/34, whose 7x7 stem becomes a 3x3.
    """
    info = model_info(name)
    if num_classes < 1 or in_channels < 1:
        raise ModelError(f"Model '{name}' needs num_classes ≥ 1 and in_channels ≥ 1, got {num_classes}, {in_channels}.")
    if not 0 < width_mult < math.inf:  # NaN too
        raise ModelError(f"Model '{name}' needs a positive, finite width multiplier, got {width_mult}.")
    size = info.default_input_size if input_size is None else input_size
    if size < 8:
        raise ModelError(f"Model '{name}' needs an input of at least 8x8 pixels, got {size}.")
    check_memory(4.0 * in_channels * size * size, f"One {in_channels}x{size}x{size} input", "use a smaller input size")
    try:
        return info.builder(num_classes=num_classes, in_channels=in_channels, input_size=size, width_mult=width_mult)
    except (MemoryError, RuntimeError) as exc:  # torch's allocator says "can't allocate memory"
        if not isinstance(exc, MemoryError) and "allocat" not in str(exc):
            raise
        raise ModelError(
            f"Model '{name}' at width multiplier {width_mult} does not fit in this machine's memory; use a smaller one."
        ) from None


@dataclass(frozen=True)
class ModelSpec:
    """How to rebuild a zoo model; checkpoints store it as "model" (the name) and "model_kwargs" (the rest)."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    width_mult: float = 1.0

    def kwargs(self) -> dict[str, Any]:
        """The checkpoint's "model_kwargs" dict."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "name"}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelSpec:
        return cls(
            str(d["name"]),
            int(d["num_classes"]),
            int(d["in_channels"]),
            int(d["input_size"]),
            float(d.get("width_mult", 1.0)),
        )

    def describe(self) -> str:
        """Short human form, e.g. "resnet20 (10 classes, 1x28x28 input, width 0.5)"."""
        size = f"{self.in_channels}x{self.input_size}x{self.input_size}"
        return f"{self.name} ({self.num_classes} classes, {size} input, width {self.width_mult:g})"

    def build(self, seed: int | None = None) -> nn.Module:
        """Create the model; with ``seed`` its initial weights are reproducible without touching global RNG state."""
        if seed is None:
            return create_model(self.name, **self.kwargs())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return create_model(self.name, **self.kwargs())


# Importing the definitions registers them.
from latprune.models import mbconv as _mbconv  # noqa: E402, F401
from latprune.models import mobilenet as _mobilenet  # noqa: E402, F401
from latprune.models import resnet as _resnet  # noqa: E402, F401

__all__ = ["ModelInfo", "ModelSpec", "create_model", "list_models", "model_info", "register_model"]
