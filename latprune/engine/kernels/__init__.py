"""The kernel table: every engine kernel is one ``KernelSpec`` here, read by dispatch, tests and benchmarks.

A kernel is a C function in ``latprune/engine/csrc/<source>`` with the signature

    void <c_function>(const float *in, float *out, const float *bias, const float *residual,
                      float *scratch, const lp_conv_shape *s, int act, int variant, int nthreads,
                      <one pointer per packed array, in the order ``pack`` returns them>);

computing one image in NCHW: ``out = act(conv(in, W) + bias[co] + residual)`` (``residual`` may be NULL,
``bias`` is never NULL). ``pack(weight, meta, isa)`` turns the (BN-folded, masked) dense weight into the kernel's
packed format for the target ``isa``: an ordered dict of float32 / int32 numpy arrays. The ISA's tile shapes
(``Isa.tiles``, e.g. the rows of a dense weight panel) reach the C code as the #defines that open every generated
source (``Isa.c_defines``), so packer and kernel read the same numbers. ``scratch_floats`` says how much scratch
the call needs (e.g. a padded copy of the input, sized for the widest ISA); the compiler gives it from the arena.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from latprune.engine.isa import Isa
from latprune.errors import EngineError
from latprune.schemes import list_schemes


@dataclass(frozen=True)
class ConvMeta:
    """Static facts about one convolution or linear layer, enough to choose, pack and call a kernel."""

    c_in: int
    c_out: int
    h: int
    w: int
    kh: int = 1
    kw: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad_h: int = 0
    pad_w: int = 0
    groups: int = 1
    is_linear: bool = False

    @property
    def h_out(self) -> int:
        return (self.h + 2 * self.pad_h - self.kh) // self.stride_h + 1

    @property
    def w_out(self) -> int:
        return (self.w + 2 * self.pad_w - self.kw) // self.stride_w + 1

    @property
    def is_depthwise(self) -> bool:
        """Depthwise: one input channel per group and as many groups as channels (c_in == c_out == groups > 1)."""
        return self.groups > 1 and self.groups == self.c_in == self.c_out

    @property
    def dense_macs(self) -> int:
        """Multiply-accumulates of the dense layer (for useful-GFLOP/s = 2 * dense_macs * density / time)."""
        return self.c_out * self.h_out * self.w_out * (self.c_in // self.groups) * self.kh * self.kw


#: (weight, meta, target ISA) -> packed arrays in the order the C function takes them.
PackFn = Callable[[np.ndarray, ConvMeta, Isa], dict[str, np.ndarray]]


@dataclass(frozen=True)
class KernelSpec:
    """One kernel: where its C code is, which layers and schemes it handles, and how to pack its weights."""

    name: str
    c_function: str
    source: str  # file name in latprune/engine/csrc/
    scheme: str  # the latprune.schemes entry whose packed format this kernel runs
    supports: Callable[[ConvMeta], bool]
    pack: PackFn
    scratch_floats: Callable[[ConvMeta], int]
    variants: tuple[str, ...] = ("default",)  # autotune picks the fastest index per layer
    description: str = ""
    #: The variant indices worth timing on a layer (others compute the same way there); None: all of them.
    tunable_variants: Callable[[ConvMeta], tuple[int, ...]] | None = None

    def variants_for(self, meta: ConvMeta) -> tuple[int, ...]:
        """Variant indices autotune times on ``meta``."""
        if self.tunable_variants is None:
            return tuple(range(len(self.variants)))
        return self.tunable_variants(meta)


_TABLE: dict[str, KernelSpec] = {}


def register_kernel(spec: KernelSpec) -> KernelSpec:
    """Add ``spec`` to the kernel table (names are unique)."""
    if spec.scheme not in list_schemes():
        raise ValueError(f"kernel {spec.name}: unknown scheme {spec.scheme!r}")
    if spec.name in _TABLE:
        raise ValueError(f"kernel {spec.name} is already registered")
    _TABLE[spec.name] = spec
    return spec


def list_kernels() -> list[str]:
    """Names of every registered kernel."""
    _load_all()
    return sorted(_TABLE)


def get_kernel(name: str) -> KernelSpec:
    """The kernel called ``name``."""
    _load_all()
    try:
        return _TABLE[name]
    except KeyError:
        raise EngineError(f"Unknown engine kernel '{name}'; choose one of: {', '.join(sorted(_TABLE))}.") from None


def kernels_for(scheme: str, meta: ConvMeta) -> list[KernelSpec]:
    """Every kernel that can run ``meta`` with weights of ``scheme`` structure."""
    _load_all()
    return [k for k in _TABLE.values() if k.scheme == scheme and k.supports(meta)]


def _load_all() -> None:
    """Import every kernel module of this package, in name order (importing registers its kernels), so a new kernel
    family is one module here and one C source in csrc/; a module that fails to import is an error, not a gap."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


__all__ = ["ConvMeta", "KernelSpec", "get_kernel", "kernels_for", "list_kernels", "register_kernel"]
