"""Autotune: time each (kernel, variant) candidate of a layer and remember the fastest, per device fingerprint."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latprune._io import atomic_write_json
from latprune.engine.build import cache_dir
from latprune.engine.fingerprint import current_fingerprint
from latprune.engine.kernels import ConvMeta, KernelSpec, get_kernel
from latprune.engine.layer import time_layer
from latprune.errors import EngineError

_LOCK = threading.Lock()


@dataclass(frozen=True)
class TuneConfig:
    """How hard to measure: warm-up calls and timed samples per candidate (each sample lasts >= ~1 ms)."""

    warmup: int = 2
    repeats: int = 7


@dataclass(frozen=True)
class TuneResult:
    """The fastest candidate of one layer, and every candidate's median seconds (for reports)."""

    kernel: str
    variant: int
    seconds: float
    timings: tuple[tuple[str, int, float], ...]  # (kernel, variant, median seconds)


def device_fingerprint() -> dict[str, Any]:
    """What a tuning choice depends on: the same device fingerprint latency profiles carry (CPU, ISA, compiler,
    flags, version and a hash of the engine code, so editing a kernel invalidates its old variant choices)."""
    return current_fingerprint().to_json()


def tune_cache_path() -> Path:
    """The JSON file of tuning choices for this device (its name carries a hash of the fingerprint)."""
    digest = hashlib.sha256(json.dumps(device_fingerprint(), sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / f"autotune_{digest}.json"


def layer_key(kernel: str, meta: ConvMeta, weight: np.ndarray, nthreads: int) -> str:
    """Cache key of one tuning question. Sparse kernels' best tile depends on how many weights survive, so the
    fraction of nonzero weights (to 2 decimals) is part of the key; the exact values are not."""
    density = float(np.count_nonzero(weight)) / max(1, weight.size)
    shape = (meta.c_in, meta.c_out, meta.h, meta.w, meta.kh, meta.kw, meta.stride_h, meta.stride_w)
    shape += (meta.pad_h, meta.pad_w, meta.groups, int(meta.is_linear))
    return f"{kernel}|{'x'.join(map(str, shape))}|t{nthreads}|d{density:.2f}"


def _load_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return {}  # a missing or damaged cache only costs a re-measurement
    if not isinstance(data, dict) or data.get("fingerprint") != device_fingerprint():
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def _store(path: Path, key: str, result: TuneResult) -> None:
    with _LOCK:  # read-modify-write; across processes the last writer wins, which only loses a cache entry
        entries = _load_cache(path)
        entries[key] = {"kernel": result.kernel, "variant": result.variant, "seconds": result.seconds}
        atomic_write_json(path, {"fingerprint": device_fingerprint(), "entries": entries})


def tune_layer(
    candidates: Sequence[KernelSpec | str],
    weight: np.ndarray,
    meta: ConvMeta,
    nthreads: int = 1,
    config: TuneConfig = TuneConfig(),
) -> TuneResult:
    """Time every variant of every candidate kernel on this layer (batch 1, random input); return the fastest."""
    specs = [get_kernel(c) if isinstance(c, str) else c for c in candidates]
    specs = [s for s in specs if s.supports(meta)]
    if not specs:
        raise EngineError(f"No candidate kernel supports layer {meta}; pass kernels from kernels_for(scheme, meta).")
    timings = []
    for spec in specs:
        for variant in spec.variants_for(meta):
            t = time_layer(spec, weight, None, meta, 0, variant, nthreads, config.warmup, config.repeats)
            timings.append((spec.name, variant, t))
    kernel, variant, seconds = min(timings, key=lambda row: row[2])
    return TuneResult(kernel, variant, seconds, tuple(timings))


def best_variant(
    kernel: KernelSpec | str,
    meta: ConvMeta,
    weight: np.ndarray,
    nthreads: int = 1,
    config: TuneConfig = TuneConfig(),
    use_cache: bool = True,
) -> int:
    """The fastest variant index of ``kernel`` on this layer, measured once per device and remembered."""
    spec = get_kernel(kernel) if isinstance(kernel, str) else kernel
    if len(spec.variants) == 1:
        return 0
    weight = np.asarray(weight, dtype=np.float32)
    key = layer_key(spec.name, meta, weight, nthreads)
    path = tune_cache_path()
    if use_cache:
        hit = _load_cache(path).get(key)
        if isinstance(hit, dict) and isinstance(hit.get("variant"), int) and 0 <= hit["variant"] < len(spec.variants):
            return hit["variant"]
    result = tune_layer([spec], weight, meta, nthreads, config)
    if use_cache:
        _store(path, key, result)
    return result.variant


__all__ = [
    "TuneConfig",
    "TuneResult",
    "best_variant",
    "device_fingerprint",
    "layer_key",
    "tune_cache_path",
    "tune_layer",
]
