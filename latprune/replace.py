"""NPAS phase 1, measured: time every stand-in rule of ``latprune.models.replace`` on the engine against the
original model, keep the rules that make it faster by at least ``min_gain``, and write the decision as a plan.

NPAS replaces "mobile-unfriendly" operations before it searches; which operations are unfriendly depends on the
compiler, so each rule is timed here with every one of its sites replaced, interleaved with the original in one
session (fastest round's median each) beside all rules together; when not every rule pays, the kept ones are timed
together against the original once more.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from latprune._io import atomic_write_json, read_json
from latprune.errors import ModelError
from latprune.models import ModelSpec
from latprune.models.replace import apply_replacements, get_replacement, list_replacements

REPLACE_FORMAT = "latprune.replace/1"


@dataclass(frozen=True)
class ReplaceConfig:
    """How to decide: engine threads, timed runs per model, the least gain that pays, and the rules to try."""

    threads: int = 1
    runs: int = 200
    min_gain: float = 0.02  # a share of the original latency: under 2% the difference is within timing noise here
    rules: tuple[str, ...] = ()  # () tries every registered rule

    def __post_init__(self) -> None:
        if self.threads < 1 or self.runs < 10:
            raise ModelError(f"Replacement timing needs threads >= 1 and runs >= 10, got {self.threads}, {self.runs}.")
        if not 0.0 <= self.min_gain < 1.0:
            raise ModelError(f"The least gain {self.min_gain} must be a share in [0, 1), e.g. 0.02 for 2%.")
        for name in self.rules:
            get_replacement(name)


@dataclass(frozen=True)
class RuleResult:
    """One rule measured: its sites, the model's latency with all of them replaced, and whether it was kept."""

    name: str
    description: str
    sites: tuple[str, ...]
    ms: float | None  # None: the model has no site for this rule
    gain: float  # (original - replaced) / original; negative when the stand-in is slower
    applied: bool


@dataclass(frozen=True)
class ReplacePlan:
    """The decision of phase 1 for one model on one CPU: what was measured, and the replaced ``spec``."""

    model: ModelSpec
    cpu: str
    threads: int
    original_ms: float
    rules: tuple[RuleResult, ...]
    combined_ms: float | None
    min_gain: float
    combined_gain: float | None = None  # of the kept rules together, against the original timed beside them
    combined_original_ms: float | None = None  # that original (a second session when not every rule was kept)

    @property
    def applied(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.rules if r.applied)

    @property
    def spec(self) -> ModelSpec:
        """The model with every kept rule applied (what phase 2 searches)."""
        return dataclasses.replace(self.model, replacements=tuple(self.model.replacements) + self.applied)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPLACE_FORMAT,
            "model": self.model.to_dict(),
            "cpu": self.cpu,
            "threads": self.threads,
            "original_ms": self.original_ms,
            "combined_ms": self.combined_ms,
            "combined_gain": self.combined_gain,
            "combined_original_ms": self.combined_original_ms,
            "min_gain": self.min_gain,
            "rules": [dataclasses.asdict(r) | {"sites": list(r.sites)} for r in self.rules],
            "applied": list(self.applied),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ReplacePlan:
        if not isinstance(d, dict) or d.get("format") != REPLACE_FORMAT:
            raise ModelError("It is not a latprune replacement plan; write one with `latprune replace`.")
        rules = tuple(RuleResult(**(r | {"sites": tuple(r["sites"])})) for r in d["rules"])
        return cls(ModelSpec.from_dict(d["model"]), d["cpu"], int(d["threads"]), float(d["original_ms"]), rules,
                   d["combined_ms"], float(d["min_gain"]), d.get("combined_gain"),
                   d.get("combined_original_ms"))  # fmt: skip

    def save(self, path: str | os.PathLike[str]) -> Path:
        return atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ReplacePlan:
        try:
            return cls.from_json(read_json(path, what="replacement plan"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"The replacement plan '{path}' is corrupt ({exc}); write it again.") from None

    def table(self) -> str:
        lines = [f"{'rule':<20} {'sites':>5} {'ms':>8} {'gain':>7}  decision"]
        lines.append(f"{'(original)':<20} {'':>5} {self.original_ms:>8.3f} {'':>7}")
        for r in self.rules:
            if r.ms is None:
                lines.append(f"{r.name:<20} {0:>5} {'-':>8} {'-':>7}  no site")
                continue
            verdict = "replace" if r.applied else f"keep (gain under {self.min_gain:.0%})"
            lines.append(f"{r.name:<20} {len(r.sites):>5} {r.ms:>8.3f} {r.gain:>+7.1%}  {verdict}")
        if self.combined_ms is not None and self.combined_gain is not None:
            if self.combined_original_ms is not None and self.combined_original_ms != self.original_ms:
                lines.append(f"{'(original, again)':<20} {'':>5} {self.combined_original_ms:>8.3f}")
            lines.append(f"{'all kept rules':<20} {'':>5} {self.combined_ms:>8.3f} {self.combined_gain:>+7.1%}")
        lines.append(f"batch 1, {self.threads} thread(s), {self.cpu}; fastest interleaved round's median per model.")
        return "\n".join(lines)


def _timed(models: dict[str, nn.Module], x: torch.Tensor, config: ReplaceConfig) -> dict[str, float]:
    """Engine latency (ms) of each model, compiled and timed interleaved in one session."""
    from latprune.bench.timing import measure_interleaved
    from latprune.engine import compile

    xa = x.numpy()
    fns = {}
    for name, model in models.items():
        engine = compile(model.eval(), x, threads=config.threads)
        fns[name] = lambda engine=engine: engine(xa)
    timings = measure_interleaved(fns, warmup=10, runs=config.runs, threads=config.threads)
    return {name: t.median_ms for name, t in timings.items()}


def plan_replacements(spec: ModelSpec, config: ReplaceConfig, model: nn.Module | None = None) -> ReplacePlan:
    """Measure every rule on ``model`` (default: ``spec`` built with random weights; latency does not depend on
    their values) and keep the rules that pay."""
    from latprune.engine.isa import cpu_model

    original = (model if model is not None else spec.build(seed=0)).eval()
    x = torch.randn(1, spec.in_channels, spec.input_size, spec.input_size, generator=torch.Generator().manual_seed(0))
    names = config.rules or tuple(list_replacements())
    variants: dict[str, nn.Module] = {"(original)": original}
    sites = {}
    for name in names:
        rule = get_replacement(name)
        sites[name] = tuple(rule.find(original))
        if sites[name]:
            variants[name] = apply_replacements(copy.deepcopy(original), (name,))
    with_sites = tuple(n for n in names if sites[n])
    if len(with_sites) > 1:
        variants["(all)"] = apply_replacements(copy.deepcopy(original), with_sites)
    ms = _timed(variants, x, config)
    base = ms["(original)"]
    results = []
    for name in names:
        rule = get_replacement(name)
        if not sites[name]:
            results.append(RuleResult(name, rule.description, (), None, 0.0, False))
            continue
        gain = (base - ms[name]) / base
        results.append(RuleResult(name, rule.description, sites[name], ms[name], gain, gain >= config.min_gain))
    kept = tuple(r.name for r in results if r.applied)
    combined, again = None, base
    if len(kept) > 1 and kept == with_sites:  # every rule paid: "(all)" was timed beside them
        combined = ms["(all)"]
    elif len(kept) > 1:  # the kept rules together, against the original once more
        together = apply_replacements(copy.deepcopy(original), kept)
        both = _timed({"(original)": original, "combined": together}, x, config)
        combined, again = both["combined"], both["(original)"]
    elif kept:
        combined = ms[kept[0]]
    gain = None if combined is None else (again - combined) / again
    return ReplacePlan(spec, cpu_model(), config.threads, base, tuple(results), combined, config.min_gain, gain, again)


__all__ = ["REPLACE_FORMAT", "ReplaceConfig", "ReplacePlan", "RuleResult", "plan_replacements"]
