"""Host instruction-set detection: which SIMD width the generated C targets."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from latprune.errors import EngineError


@dataclass(frozen=True)
class TileShape:
    """Register-tile shapes of the dense and group-of-4 kernels on one ISA, derived from its lane and register counts.

    The C kernels read them as #defines (``Isa.c_defines``) and the Python packers lay weights out for them, so
    both sides follow these numbers and nothing else.
    """

    dense_mr: int  # output channels per weight panel = rows of a pixel-major accumulator tile (LP_DENSE_MR)
    dense_nv: int  # vectors of pixels per pixel-major tile, the widest variant (LP_DENSE_NV)
    cm_channels: int  # output channels per panel of the channel-major tiles, in the lanes (LP_CM)
    cm_pixels: int  # most pixels per channel-major tile, one broadcast each (LP_CM_NP)
    g4_widths: tuple[int, int, int]  # vectors per group4 tile of width variants 0, 1, 2 (LP_G4_NV0..2)
    g4_max_nv: int  # widest group4 tile: a row's remainder vectors widen its last tile up to this (LP_G4_MAXNV)
    bp_nv: int  # vectors per block-punched tile of its widest variants (LP_NPAS_BP_NV; the others use 2 and 1)

    @property
    def pk_columns_vectors(self) -> int:
        """Vectors of pixels per packed 1x1 input panel (the widest pixel-major tile)."""
        return self.dense_nv


def tile_shape(lanes: int, registers: int) -> TileShape:
    """The accumulator tiles that fit ``registers`` vector registers of ``lanes`` floats.

    Pixel-major tile: 3 vectors of pixels (3 loads per weight step) and as many rows as keep every accumulator, the
    3 input vectors and one weight broadcast in registers: 8 rows (28 of 32 registers) or 4 (16 of 16). A tile that
    does not fit spills accumulators to the stack on every step: 8 x 3 on AVX2's 16 registers ran at half the
    FMA rate of 4 x 3 (ENGINE_NOTES.md). Channel-major tile: 2 vectors of output channels and up to 12 pixels,
    likewise bounded by the registers (6 pixels with 16 registers). Group-of-4 sparse tile: 4 rows x nv vectors, nv
    accumulators per row + nv inputs + 1 broadcast: up to 5 vectors with 32 registers (widths 4, 3, 2), 3 with 16
    (widths 3, 2, 1): the 4 x 4 tile on AVX2's 16 registers spilled and ran 1.4x slower than 4 x 3 (ResNet18 3x3
    layers at 80 %, ENGINE_NOTES.md). The NPAS block-punched tile (4 rows x V, the same register budget): 4 or 3.
    """
    nv = 3
    mr = 8 if 8 * nv + nv + 1 <= registers else 4
    cm_nv = 2
    cm_pixels = min(12, (registers - cm_nv - 1) // cm_nv)
    g4_max = min(5, (registers - 1) // (4 + 1))
    g4_wide = min(4, g4_max)
    return TileShape(
        dense_mr=mr,
        dense_nv=nv,
        cm_channels=cm_nv * lanes,
        cm_pixels=cm_pixels,
        g4_widths=(g4_wide, g4_wide - 1, g4_wide - 2),
        g4_max_nv=g4_max,
        bp_nv=min(4, g4_max),
    )


@dataclass(frozen=True)
class KernelCosts:
    """The cost model with which detect.choose_kernel picks a layer's kernel without measuring, on one ISA: a sparse
    kernel's time relative to the dense kernel is ``sparse_overhead + effective_density / efficiency``.

    Fitted per ISA by benchmarks/engine_costs.py (default variants, 1 thread, MobileNetV1 1x1 and ResNet18 3x3
    shapes at 50 / 80 / 90 % sparsity): the ratios differ between ISAs because the sparse kernels' tiles do (16
    registers hold narrower tiles than 32) and so does how close each kernel gets to the dense kernel's FMA rate.
    """

    efficiency: Mapping[str, float]  # conv layers: kernel name -> useful-MAC rate relative to the dense kernel
    fc_efficiency: Mapping[str, float]  # the same on linear layers (batch-1 matrix-vector products)
    sparse_overhead: float  # fixed cost of a sparse conv kernel, as a fraction of the dense layer's time
    source: str  # where the numbers were measured


def _costs(efficiency: dict[str, float], fc: dict[str, float], overhead: float, source: str) -> KernelCosts:
    return KernelCosts(MappingProxyType(efficiency), MappingProxyType(fc), overhead, source)


_AVX512_COSTS = _costs(
    {
        "group4_conv": 1.06,
        "npas_block_punched": 0.98,
        "npas_pattern3x3": 0.44,
        "npas_pattern3x3_cols": 0.87,
        "npas_unstructured": 0.45,
        "npas_nm24": 0.44,
    },
    {"npas_block_fc": 0.35, "group4_conv": 0.14, "npas_unstructured": 0.06, "npas_nm24": 0.08},
    0.071,
    "AMD EPYC (Zen 4), 2026-12-04",
)
#: Per ISA (benchmarks/engine_costs.py -> benchmarks/results/engine_costs.md). The line is rough: group4 and
#: block-punched sit within ~0.1-0.3 of it, the load-bound unstructured kernels are off by up to 0.85 (AVX-512) / 1.24
#: (AVX2) of the dense time on dense weights, where they never win anyway. NEON is not measured (no device):
#: AVX-512's numbers, the ISA with the same 32-register tile shapes.
KERNEL_COSTS: dict[str, KernelCosts] = {
    "avx512": _AVX512_COSTS,
    "avx2": _costs(
        {
            "group4_conv": 0.90,
            "npas_block_punched": 0.87,
            "npas_pattern3x3": 0.47,
            "npas_pattern3x3_cols": 0.78,
            "npas_unstructured": 0.48,
            "npas_nm24": 0.47,
        },
        {"npas_block_fc": 0.52, "group4_conv": 0.17, "npas_unstructured": 0.12, "npas_nm24": 0.12},
        0.141,
        "AMD EPYC (Zen 4), 2026-12-04",
    ),
    # Scalar-ish code: every kernel is far from the FMA peak, so the load-bound sparse kernels lose little.
    "generic": _costs(
        {
            "group4_conv": 1.00,
            "npas_block_punched": 0.90,
            "npas_pattern3x3": 0.94,
            "npas_pattern3x3_cols": 1.00,
            "npas_unstructured": 0.91,
            "npas_nm24": 0.98,
        },
        {"npas_block_fc": 0.65, "group4_conv": 0.27, "npas_unstructured": 0.22, "npas_nm24": 0.22},
        0.052,
        "AMD EPYC (Zen 4), 2026-12-04",
    ),
    "neon": _costs(
        dict(_AVX512_COSTS.efficiency),
        dict(_AVX512_COSTS.fc_efficiency),
        _AVX512_COSTS.sparse_overhead,
        "not measured: AVX-512's numbers",
    ),
}


@dataclass(frozen=True)
class Isa:
    """A code-generation target: name, float lanes per vector register, compiler flags and register count."""

    name: str  # "avx512", "avx2", "neon" or "generic"
    lanes: int  # float32 lanes of one vector register
    cflags: tuple[str, ...]
    registers: int  # architectural vector registers (bounds the accumulator tile)

    @property
    def tiles(self) -> TileShape:
        """The dense and sparse kernels' tile shapes on this ISA."""
        return tile_shape(self.lanes, self.registers)

    @property
    def costs(self) -> KernelCosts:
        """The kernel-choice cost model measured for this ISA."""
        return KERNEL_COSTS[self.name]

    def c_defines(self) -> str:
        """The lines that open every generated C source for this ISA (before lp_common.h): lane count and tiles."""
        t = self.tiles
        facts = {
            "LP_LANES": self.lanes,
            "LP_REGISTERS": self.registers,
            "LP_DENSE_MR": t.dense_mr,
            "LP_DENSE_NV": t.dense_nv,
            "LP_CM": t.cm_channels,
            "LP_CM_NP": t.cm_pixels,
            "LP_G4_NV0": t.g4_widths[0],
            "LP_G4_NV1": t.g4_widths[1],
            "LP_G4_NV2": t.g4_widths[2],
            "LP_G4_MAXNV": t.g4_max_nv,
            "LP_NPAS_BP_NV": t.bp_nv,
        }
        return "".join(f"#define {k} {v}\n" for k, v in facts.items())


ISAS: dict[str, Isa] = {
    "avx512": Isa("avx512", 16, ("-mavx512f", "-mavx512vl", "-mavx2", "-mfma"), 32),
    "avx2": Isa("avx2", 8, ("-mavx2", "-mfma"), 16),
    "neon": Isa("neon", 4, (), 32),  # aarch64 always has NEON; -march is left to the cross toolchain
    "generic": Isa("generic", 4, (), 16),
}


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


@functools.cache
def native_isa() -> Isa:
    """The best ISA the host CPU supports, whatever ``LATPRUNE_ISA`` says."""
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return ISAS["neon"]
    flags = _cpu_flags()
    if {"avx512f", "avx512vl"} <= flags:
        return ISAS["avx512"]
    if {"avx2", "fma"} <= flags:
        return ISAS["avx2"]
    return ISAS["generic"]


#: The ISAs a host of each native ISA can execute, widest first (an AVX-512 host also runs AVX2 and generic code).
RUNNABLE: dict[str, tuple[str, ...]] = {
    "avx512": ("avx512", "avx2", "generic"),
    "avx2": ("avx2", "generic"),
    "neon": ("neon", "generic"),
    "generic": ("generic",),
}


def runnable_isas() -> list[str]:
    """ISAs whose code this host can execute: its own and the narrower ones, so one machine tests them all."""
    return list(RUNNABLE[native_isa().name])


def host_isa() -> Isa:
    """The ISA the engine compiles for: ``$LATPRUNE_ISA`` when set (``avx512``, ``avx2``, ``generic``), else the
    best one the CPU supports. The override lets an AVX-512 machine test and benchmark the narrower paths."""
    name = os.environ.get("LATPRUNE_ISA", "").strip().lower()
    if not name:
        return native_isa()
    return resolve_isa(name, "LATPRUNE_ISA")


def resolve_isa(name: str, source: str = "--isa") -> Isa:
    """The runnable ISA called ``name``; one sentence naming ``source`` when it is unknown or not runnable here."""
    if name not in ISAS:
        raise EngineError(f"{source}={name!r} is not an ISA latprune knows; use one of {', '.join(ISAS)}.")
    if name not in RUNNABLE[native_isa().name]:
        raise EngineError(
            f"{source}={name!r} cannot run on this {native_isa().name} CPU; use one of {', '.join(runnable_isas())}."
        )
    return ISAS[name]


@contextlib.contextmanager
def using_isa(name: str | None, source: str = "--isa") -> Iterator[Isa]:
    """Within the block the engine compiles, tunes and fingerprints for ``name`` (None: leave the target as it is),
    by setting ``$LATPRUNE_ISA``, which everything that asks ``host_isa()`` reads; restored on exit. An unknown or
    unrunnable name fails before the block with one sentence naming ``source``."""
    if not name:
        yield host_isa()
        return
    isa = resolve_isa(name.strip().lower(), source)
    old = os.environ.get("LATPRUNE_ISA")
    os.environ["LATPRUNE_ISA"] = isa.name
    try:
        yield isa
    finally:
        if old is None:
            os.environ.pop("LATPRUNE_ISA", None)
        else:
            os.environ["LATPRUNE_ISA"] = old


@functools.cache
def cpu_model() -> str:
    """The CPU's marketing name (part of the device fingerprint of latency profiles)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
