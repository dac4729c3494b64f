"""The ``Scheme`` record and its registry: what a weight-sparsity scheme means to pruning, the space and the engine."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from latprune.errors import PlanError

#: The layer kinds of the channel graph (latprune.graph.LayerKind): schemes say which of them they can prune.
LAYER_KINDS: tuple[str, ...] = ("conv", "depthwise", "linear")


@dataclass(frozen=True)
class SchemeParams:
    """Block sizes of the block schemes (NPAS's defaults); other schemes ignore them."""

    block_out: int = 4  # block_punched: filters per block
    block_in: int = 4  # block_punched: input channels per block
    block_rows: int = 4  # block_fc: output features per block

    def __post_init__(self) -> None:
        for field in ("block_out", "block_in", "block_rows"):
            if getattr(self, field) < 1:
                raise PlanError(f"The scheme parameter {field}={getattr(self, field)} must be at least 1.")


@dataclass(frozen=True)
class SchemeLayer:
    """What a scheme needs to know about a layer to say whether it applies.

    ``fc`` marks a matrix-vector product: a linear layer, and to the engine also a 1x1 conv on a 1x1 image
    (the search space and the mask generators only see the layer kind, so for them it is the linear layers).
    """

    kind: str  # one of LAYER_KINDS
    kernel: tuple[int, int] = (1, 1)
    fc: bool = False

    @classmethod
    def of_weight(cls, weight: torch.Tensor) -> SchemeLayer | None:
        """The layer a weight tensor belongs to: (out, in) is linear, (out, in/g, kh, kw) a conv; None otherwise."""
        if weight.dim() == 2:
            return cls("linear", (1, 1), fc=True)
        if weight.dim() == 4:
            return cls("conv", (int(weight.shape[2]), int(weight.shape[3])))
        return None


MaskFn = Callable[[torch.Tensor, float, SchemeParams, str], torch.Tensor]
#: (c_out, c_in/groups, kh, kw) bool nonzeros -> bool array of the same shape.
CoverFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Scheme:
    """One weight-sparsity scheme, as every part of latprune sees it.

    Pruning calls ``make`` (a magnitude mask with the structure) and ``unit`` (the most weights removed together,
    the tolerance on the reached sparsity). The engine calls ``cover`` (the smallest mask with the structure that
    keeps every nonzero, to recognise the structure in a weight), ``limit`` (for a structure defined by a cap
    instead of a covering, such as 2:4), and ``work`` (multiply-adds the packed format does, padding included).
    ``kinds``, ``kernel_sizes`` and ``fc_only`` say where the scheme applies; elsewhere a layer takes
    ``fallback``'s scheme for its kind (dense where none is named). ``channel_multiple`` is what kept channel counts
    of the layer's groups are rounded to; ``kernel_formats`` names the schemes whose engine kernels run this
    structure with no wasted work, in the engine's order of preference (block-punched 4x4 zeros are group4 zeros);
    ``specificity`` orders detection (a more specific structure is checked first).
    """

    name: str
    make: MaskFn
    unit: Callable[[torch.Tensor, SchemeParams], int]
    cover: CoverFn
    work: Callable[[np.ndarray], int]
    description: str
    kinds: frozenset[str] = frozenset(("conv", "linear"))
    kernel_sizes: tuple[tuple[int, int], ...] = ()  # () = any kernel size
    fc_only: bool = False
    fallback: tuple[tuple[str, str], ...] = ()  # (layer kind, scheme) pairs
    channel_multiple: int = 1
    kernel_formats: tuple[str, ...] = ()  # () = (name,)
    min_sparsity: float = 0.0  # a non-zero sparsity below this has no structure (2:4 zeroes half the weights)
    limit: Callable[[np.ndarray], bool] | None = None
    specificity: int = 0
    prunes: bool = True  # False only for dense: its layers take no weight sparsity
    label: str = ""  # the name people know it by in messages ("2:4"); "" = name

    @property
    def title(self) -> str:
        return self.label or self.name

    def applies(self, layer: SchemeLayer) -> bool:
        """Whether the scheme is defined on ``layer`` (its kind, kernel size, and matrix-vector shape)."""
        if layer.kind not in self.kinds or (self.fc_only and not layer.fc):
            return False
        return not self.kernel_sizes or tuple(layer.kernel) in self.kernel_sizes

    @property
    def formats(self) -> tuple[str, ...]:
        """The schemes whose engine kernels run this scheme's structure exactly (its own first by default)."""
        return self.kernel_formats or (self.name,)


_SCHEMES: dict[str, Scheme] = {}


def register_scheme(
    name: str,
    *,
    unit: Callable[[torch.Tensor, SchemeParams], int],
    cover: CoverFn,
    work: Callable[[np.ndarray], int],
    description: str,
    kinds: tuple[str, ...] = ("conv", "linear"),
    kernel_sizes: tuple[tuple[int, int], ...] = (),
    fc_only: bool = False,
    fallback: tuple[tuple[str, str], ...] = (),
    channel_multiple: int = 1,
    kernel_formats: tuple[str, ...] = (),
    min_sparsity: float = 0.0,
    limit: Callable[[np.ndarray], bool] | None = None,
    specificity: int = 0,
    prunes: bool = True,
    label: str = "",
) -> Callable[[MaskFn], MaskFn]:
    """Register ``make(weight, sparsity, params, layer) -> bool mask`` as scheme ``name`` (see :class:`Scheme`)."""
    unknown = sorted(set(kinds) - set(LAYER_KINDS))
    if unknown:
        raise ValueError(f"scheme '{name}': unknown layer kind(s) {unknown}")

    def deco(fn: MaskFn) -> MaskFn:
        if name in _SCHEMES:
            raise ValueError(f"scheme '{name}' is already registered")
        _SCHEMES[name] = Scheme(
            name, fn, unit, cover, work, description, frozenset(kinds), kernel_sizes, fc_only, fallback,
            channel_multiple, kernel_formats, min_sparsity, limit, specificity, prunes, label,
        )  # fmt: skip
        return fn

    return deco


def list_schemes() -> list[str]:
    """Names of every registered scheme, in registration order (the order the engine tries their kernels in)."""
    return list(_SCHEMES)


def get_scheme(name: str) -> Scheme:
    try:
        return _SCHEMES[name]
    except KeyError:
        raise PlanError(f"Unknown sparsity scheme '{name}'; choose one of: {', '.join(_SCHEMES)}.") from None


def layer_scheme(name: str, layer: SchemeLayer) -> str:
    """The scheme a layer uses when ``name`` is asked for: ``name`` where it applies, else its fallback for the
    layer's kind where that applies, else dense (NPAS mixes schemes the same way: pattern needs 3x3 kernels, so
    other convs take block-punched and linear layers block-based FC)."""
    scheme = get_scheme(name)
    if scheme.applies(layer):
        return name
    fallback = dict(scheme.fallback).get(layer.kind, "dense")
    return fallback if get_scheme(fallback).applies(layer) else "dense"


def detection_order() -> tuple[str, ...]:
    """The pruning schemes, most specific structure first: the order in which the engine recognises them."""
    pruning = [s for s in _SCHEMES.values() if s.prunes]
    return tuple(s.name for s in sorted(pruning, key=lambda s: -s.specificity))


def make_mask(
    scheme: str,
    weight: torch.Tensor,
    sparsity: float,
    params: SchemeParams = SchemeParams(),
    layer: str = "<layer>",
) -> torch.Tensor:
    """Boolean keep-mask of ``weight`` (conv (c_out, c_in/g, kh, kw) or linear (out, in)) at ``sparsity``.

    Masks are chosen by magnitude (group or block L2 norm) and hit ``sparsity`` within one unit of the
    scheme (a group, block or kernel); raises PlanError naming ``layer`` for a bad value or a layer the
    scheme cannot handle.
    """
    spec = get_scheme(scheme)
    if not 0.0 <= sparsity < 1.0:
        raise PlanError(f"Layer '{layer}' has sparsity {sparsity}; use a value in [0, 1).")
    view = SchemeLayer.of_weight(weight)
    if view is None or not spec.applies(view):
        shape = "x".join(str(s) for s in weight.shape)
        raise PlanError(
            f"Layer '{layer}' (weight {shape}) cannot use the '{scheme}' scheme; {spec.description}, "
            "so pick another scheme for it."
        )
    if sparsity == 0.0:
        return torch.ones_like(weight, dtype=torch.bool)
    if sparsity < spec.min_sparsity - 1e-9:
        raise PlanError(
            f"Layer '{layer}' asks {scheme} for sparsity {sparsity}; {spec.title} needs at least {spec.min_sparsity} "
            "(or 0.0)."
        )
    with torch.no_grad():  # masks are small index work: compute on the CPU, return on the weight's device
        return spec.make(weight.detach().float().cpu(), sparsity, params, layer).to(weight.device)


def mask_sparsity(mask: torch.Tensor) -> float:
    """Fraction of zeros in a keep-mask."""
    return 1.0 - float(mask.float().mean())
