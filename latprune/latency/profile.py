"""Latency profiles: per-signature grid tables plus the additive term, saved as JSON with a device fingerprint."""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from latprune._busy import LoadCheck, busy_warning
from latprune._io import atomic_write_json, read_json
from latprune.engine.fingerprint import DeviceFingerprint, current_fingerprint
from latprune.errors import LatpruneError, ProfileError
from latprune.models import ModelSpec

PROFILE_FORMAT = "latprune-latency-profile"
#: Version 2: tables hold kernel time without the layer runner's call overhead, and the offset is never negative.
PROFILE_VERSION = 2


def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return (int(v[0]), int(v[1])) if len(v) == 2 else (int(v[0]), int(v[0]))
    return (int(v), int(v))


@dataclass(frozen=True)
class LayerSignature:
    """What a layer's latency depends on apart from its pruned widths and sparsity.

    Layers with equal signatures (e.g. the repeated blocks of a ResNet stage) share one table; the thread
    count is the same for a whole profile, so it lives on the profile instead.
    """

    kind: str  # "conv", "depthwise" or "linear"
    c_in: int  # unpruned input channels
    c_out: int  # unpruned output channels
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    scheme: str

    @property
    def key(self) -> str:
        k, s, p, hw = self.kernel, self.stride, self.padding, self.in_hw
        return (
            f"{self.kind}:{self.c_in}->{self.c_out}:k{k[0]}x{k[1]}:s{s[0]}x{s[1]}:p{p[0]}x{p[1]}:g{self.groups}"
            f":hw{hw[0]}x{hw[1]}:{self.scheme}"
        )

    @classmethod
    def of_layer(cls, layer: Any, scheme: str | None = None) -> LayerSignature:
        """The signature of a search-space ``LayerSpec`` (any object with its fields) under ``scheme`` (default: the
        layer's own); a layer with a choice of schemes has one signature, and one table, per scheme."""
        hw = _pair(layer.in_hw) if layer.in_hw is not None else (1, 1)
        return cls(
            kind=str(layer.kind),
            c_in=int(layer.c_in),
            c_out=int(layer.c_out),
            kernel=_pair(layer.kernel),
            stride=_pair(layer.stride),
            padding=_pair(layer.padding),
            groups=int(layer.groups),
            in_hw=hw,
            scheme=str(scheme or layer.scheme),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "c_in": self.c_in,
            "c_out": self.c_out,
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "padding": list(self.padding),
            "groups": self.groups,
            "in_hw": list(self.in_hw),
            "scheme": self.scheme,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerSignature:
        return cls(
            kind=str(d["kind"]),
            c_in=int(d["c_in"]),
            c_out=int(d["c_out"]),
            kernel=_pair(d["kernel"]),
            stride=_pair(d["stride"]),
            padding=_pair(d["padding"]),
            groups=int(d["groups"]),
            in_hw=_pair(d["in_hw"]),
            scheme=str(d["scheme"]),
        )


@dataclass(frozen=True)
class GridSpec:
    """The grid of one signature: the channel counts and sparsities measured.

    ``tied`` marks depthwise layers, whose input channels always equal their output channels: the
    input axis then has one entry and the output-channel value is used for both.
    """

    cin: tuple[int, ...]
    cout: tuple[int, ...]
    sparsity: tuple[float, ...]
    tied: bool = False

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.cin), len(self.cout), len(self.sparsity))

    def points(self) -> list[tuple[int, int, float]]:
        """Every (c_in, c_out, sparsity) to measure, in table order (c_in slowest, sparsity fastest)."""
        return [(ci, co, s) for ci in self.cin for co in self.cout for s in self.sparsity]

    def to_json(self) -> dict[str, Any]:
        return {"cin": list(self.cin), "cout": list(self.cout), "sparsity": list(self.sparsity), "tied": self.tied}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GridSpec:
        return cls(
            cin=tuple(int(c) for c in d["cin"]),
            cout=tuple(int(c) for c in d["cout"]),
            sparsity=tuple(float(s) for s in d["sparsity"]),
            tied=bool(d["tied"]),
        )

    def validate(self) -> None:
        for name, axis in (("cin", self.cin), ("cout", self.cout), ("sparsity", self.sparsity)):
            if not axis or any(b <= a for a, b in itertools.pairwise(axis)):
                raise ValueError(f"grid axis {name} must be non-empty and strictly increasing, got {list(axis)}")
        if self.tied and len(self.cin) != 1:
            raise ValueError("a tied (depthwise) grid has exactly one input-channel entry")


@dataclass(frozen=True, eq=False)
class LatencyTable:
    """Measured latency (ms) of one signature over its grid: ``ms[i, j, k]`` at (cin[i], cout[j], sparsity[k])."""

    signature: LayerSignature
    grid: GridSpec
    ms: np.ndarray  # (len cin, len cout, len sparsity) float64

    def __post_init__(self) -> None:
        if self.ms.shape != self.grid.shape:
            raise ValueError(f"table {self.signature.key} has shape {self.ms.shape}, its grid needs {self.grid.shape}")
        if not np.all(np.isfinite(self.ms)) or np.any(self.ms < 0):
            raise ValueError(f"table {self.signature.key} holds a negative or non-finite latency")

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.signature.key,
            "signature": self.signature.to_json(),
            "grid": self.grid.to_json(),
            "ms": np.round(self.ms, 6).tolist(),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LatencyTable:
        grid = GridSpec.from_json(d["grid"])
        grid.validate()
        return cls(LayerSignature.from_json(d["signature"]), grid, np.asarray(d["ms"], dtype=np.float64))


@dataclass(frozen=True)
class CalibrationPoint:
    """One whole model measured end to end, against the sum of its interpolated layer latencies and the size of
    its packed weights (MB, see ``TrilinearPredictor.weight_mb``)."""

    name: str
    layer_sum_ms: float
    measured_ms: float
    weight_mb: float = 0.0


#: Physical range of the additive term's scale (whole-model time per unit of summed layer time).
_SCALE = (0.5, 2.0)


@dataclass(frozen=True)
class AdditiveTerm:
    """Whole-model latency = ``offset_ms + scale * sum(layer latencies) + ms_per_mb * weight MB``.

    ``offset_ms`` holds what the per-layer tables do not cover (the per-call overhead of the compiled model,
    pooling, the input copy), so it is never negative. ``ms_per_mb`` is the cost of streaming a layer's packed
    weights from a far cache level: a layer timed alone, in a loop, finds its weights hot in L1/L2, while inside
    the network the other layers' weights have evicted them (ResNet20's dense weights are 1 MB, MobileNetV2's
    14 MB). That cost grows with the weights, not with the arithmetic, so a pure scale could not carry it: the
    models with the most weight per FLOP were under-predicted and the fit paid with a negative offset.
    ``scale`` keeps what is proportional to the layer time itself. All three are fitted to whole-model
    measurements taken while profiling (the dense model, the smallest one and random pruned ones), never to
    the models later used for validation.
    """

    offset_ms: float
    scale: float
    points: tuple[CalibrationPoint, ...] = field(default=())
    ms_per_mb: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "offset_ms": round(self.offset_ms, 6),
            "scale": round(self.scale, 6),
            "ms_per_mb": round(self.ms_per_mb, 6),
            "points": [
                {
                    "name": p.name,
                    "layer_sum_ms": round(p.layer_sum_ms, 6),
                    "measured_ms": round(p.measured_ms, 6),
                    "weight_mb": round(p.weight_mb, 6),
                }
                for p in self.points
            ],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AdditiveTerm:
        pts = tuple(
            CalibrationPoint(str(p["name"]), float(p["layer_sum_ms"]), float(p["measured_ms"]), float(p["weight_mb"]))
            for p in d["points"]
        )
        term = cls(float(d["offset_ms"]), float(d["scale"]), pts, float(d["ms_per_mb"]))
        if not all(math.isfinite(v) for v in (term.offset_ms, term.scale, term.ms_per_mb)) or term.scale <= 0:
            raise ValueError("additive term must have a finite offset and weight cost and a positive scale")
        if term.offset_ms < 0 or term.ms_per_mb < 0:
            raise ValueError("additive term has a negative offset or weight cost")
        return term

    @classmethod
    def fit(cls, points: Sequence[CalibrationPoint], fit_scale: bool = True) -> AdditiveTerm:
        """Robust fit of measured = offset + scale * layer_sum + ms_per_mb * weight_mb, every term non-negative.

        It minimises the soft-L1 loss of the RELATIVE residuals (the targets are relative errors, and a 0.2 ms
        model matters as much as a 6 ms one): quadratic within ~3%, linear beyond, so a timing that landed in a
        burst of load pulls the line far less than under least squares. No term can go negative: the tables no
        longer hold the layer runner's call overhead (see ``measure.call_overhead_ms``) and the weight traffic
        has its own term, so what is left outside the layers is real work; the old unconstrained two-term fit
        traded a negative offset (-0.25 ms on ResNet20) against a scale of 1.2 instead. The weight term needs
        at least 4 models with different weight sizes; with one point, or ``fit_scale=False``, only the offset
        is fitted at scale 1 (unless it would have to be negative: then the offset is 0 and the scale the ratio).

        The scale is bounded to [0.5, 2]: inside a network a layer is at most a little slower than alone, and a
        scale near 0 (whole-model timings drowned in noise) would make every architecture look equally fast to
        the search. A fit that ends on a bound, or a one-point ratio outside it, means the tables disagree with
        the whole models (measured under different load, or a broken engine build): a warning says to re-profile.
        """
        from scipy.optimize import least_squares

        if not points:
            raise ValueError("the additive term needs at least one whole-model measurement")
        s = np.array([p.layer_sum_ms for p in points])
        m = np.array([p.measured_ms for p in points])
        mb = np.array([p.weight_mb for p in points])
        ms_per_mb = 0.0
        if fit_scale and len(points) >= 2 and np.ptp(s) > 1e-9 * max(float(s.max()), 1e-9):
            use_mb = len(points) >= 4 and np.ptp(mb) > 1e-9 * max(float(mb.max()), 1e-9)
            cols = [np.ones_like(s), s, mb] if use_mb else [np.ones_like(s), s]
            features = np.stack(cols, 1)  # (P, 2 or 3)
            lo, hi = [0.0, _SCALE[0], 0.0][: len(cols)], [np.inf, _SCALE[1], np.inf][: len(cols)]
            ratio = float(np.median(m / np.maximum(s, 1e-12)))
            x0 = [1e-6, min(max(ratio, _SCALE[0] + 1e-6), _SCALE[1] - 1e-6), 1e-6][: len(cols)]
            fit = least_squares(lambda p: (features @ p - m) / m, x0=x0, bounds=(lo, hi), loss="soft_l1", f_scale=0.03)
            offset, scale = float(fit.x[0]), float(fit.x[1])
            ms_per_mb = float(fit.x[2]) if use_mb else 0.0
        else:
            offset = float(np.median(m - s))
            scale = 1.0
            if offset < 0:
                offset, scale = 0.0, float(np.median(m / np.maximum(s, 1e-12)))
        if not _SCALE[0] * 1.001 < scale < _SCALE[1] * 0.999:
            warnings.warn(
                f"The per-layer latency tables disagree with the whole-model measurements (fitted scale "
                f"{scale:.2f}); re-profile on a quieter machine or with more --repeats.",
                stacklevel=2,
            )
        return cls(max(offset, 0.0), scale, tuple(points), max(ms_per_mb, 0.0))


@dataclass(frozen=True, eq=False)
class LatencyProfile:
    """A device's latency tables for one model's search space, and what they were measured with."""

    fingerprint: DeviceFingerprint
    threads: int
    model: ModelSpec
    scheme: str  # the search space's scheme(s), "group4" or "group4,pattern" (SearchSpace.from_model(..., scheme=))
    tables: tuple[LatencyTable, ...]
    additive: AdditiveTerm
    grid_n: int  # channel grid divisions (JCW's N)
    grid_m: int  # sparsity grid divisions (JCW's M)
    build_seconds: float
    statistic: str = "median"  # how repeated timings were reduced ("median" or "min"); validation uses the same
    layer_overhead_ms: float = 0.0  # the layer runner's call overhead, measured and taken out of every table point
    load: LoadCheck = field(default_factory=LoadCheck)  # whether the machine looked busy while it was measured

    def table_for(self, signature: LayerSignature) -> LatencyTable | None:
        for t in self.tables:
            if t.signature == signature:
                return t
        return None

    @property
    def n_points(self) -> int:
        return int(sum(t.ms.size for t in self.tables))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PROFILE_FORMAT,
            "format_version": PROFILE_VERSION,
            "fingerprint": self.fingerprint.to_json(),
            "threads": self.threads,
            "model": self.model.to_dict(),
            "scheme": self.scheme,
            "grid": {"n_channels": self.grid_n, "n_sparsity": self.grid_m},
            "build_seconds": round(self.build_seconds, 3),
            "statistic": self.statistic,
            "layer_overhead_ms": round(self.layer_overhead_ms, 6),
            "load": self.load.to_json(),
            "additive": self.additive.to_json(),
            "tables": [t.to_json() for t in self.tables],
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LatencyProfile:
        if not isinstance(d, dict) or d.get("format") != PROFILE_FORMAT:
            raise ValueError("it is not a latprune latency profile")
        if d.get("format_version") != PROFILE_VERSION:
            raise ValueError(f"profile format version {d.get('format_version')} is not {PROFILE_VERSION}")
        threads = int(d["threads"])
        if threads < 1:
            raise ValueError("threads must be at least 1")
        return cls(
            fingerprint=DeviceFingerprint.from_json(d["fingerprint"]),
            threads=threads,
            model=ModelSpec.from_dict(d["model"]),
            scheme=str(d["scheme"]),
            tables=tuple(LatencyTable.from_json(t) for t in d["tables"]),
            additive=AdditiveTerm.from_json(d["additive"]),
            grid_n=int(d["grid"]["n_channels"]),
            grid_m=int(d["grid"]["n_sparsity"]),
            build_seconds=float(d["build_seconds"]),
            statistic=str(d["statistic"]),
            layer_overhead_ms=float(d["layer_overhead_ms"]),
            load=LoadCheck.from_json(d.get("load")),
        )


def save_profile(profile: LatencyProfile, path: str | Path) -> Path:
    """Write ``profile`` as JSON, atomically (a kill mid-write leaves the old file or none)."""
    return atomic_write_json(path, profile.to_json())


def load_profile(path: str | Path, *, force: bool = False, threads: int | None = None) -> LatencyProfile:
    """Load a profile and refuse it if it was measured on another device or engine build, or (given ``threads``)
    with another thread count than the caller will run (unless ``force``).

    Latency tables from another CPU, compiler or kernel version, or timed with 1 thread for a model that will
    run on 2, would make the search optimise for the wrong machine without any visible error, so the default
    is to refuse; ``force`` downgrades that to a warning (useful to predict for a remote device from the host).
    A profile measured on a busy machine (its ``load`` record) is used, with a warning each time it is loaded.
    """
    try:
        data = read_json(path, what="latency profile")
    except ProfileError:
        raise
    except LatpruneError as exc:
        raise ProfileError(str(exc)) from None
    if isinstance(data, dict) and data.get("format") == PROFILE_FORMAT and data.get("format_version") == 1:
        model = data.get("model", {}).get("name", "NAME") if isinstance(data.get("model"), dict) else "NAME"
        raise ProfileError(
            f"The latency profile '{path}' is in the old format 1, whose tables include the layer runner's call "
            f"overhead; re-profile with `latprune profile --model {model} --out {Path(path).name}`."
        )
    try:
        profile = LatencyProfile.from_json(data)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ProfileError(
            f"The latency profile '{path}' is corrupt or incomplete ({what}); rebuild it with `latprune profile`."
        ) from None
    if threads is not None and threads != profile.threads:
        msg = (
            f"The latency profile '{path}' was measured with {profile.threads} thread(s), but this run uses "
            f"{threads}; pass --threads {profile.threads}, or profile again with --threads {threads}."
        )
        if not force:
            raise ProfileError(msg)
        warnings.warn(msg, stacklevel=2)
    here = current_fingerprint()
    diff = profile.fingerprint.differences(here)
    if diff:
        msg = (
            f"The latency profile '{path}' was measured on another device or engine build ({'; '.join(diff[:3])}); "
            "re-profile on this machine, or pass --force (force=True) to use it anyway."
        )
        if not force:
            raise ProfileError(msg)
        warnings.warn(msg, stacklevel=2)
    busy = busy_warning(profile.load, f"The latency profile '{path}'")
    if busy:
        warnings.warn(busy, stacklevel=2)
    return profile
