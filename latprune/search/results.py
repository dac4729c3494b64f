"""What a search returns and writes: candidates, the Pareto front, and the best candidate under a latency budget."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from latprune._io import read_json
from latprune.errors import SearchError


@dataclass(frozen=True)
class Candidate:
    """One evaluated architecture: its encoding, decoded form (JSON), predicted latency and estimated error."""

    x: tuple[int, ...]
    latency_ms: float
    error: float
    arch: Any = None

    def to_dict(self) -> dict[str, Any]:
        return {"x": list(self.x), "latency_ms": self.latency_ms, "error": self.error, "arch": self.arch}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(tuple(int(v) for v in data["x"]), float(data["latency_ms"]), float(data["error"]), data.get("arch"))


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :func:`latprune.search.run_search`.

    ``front`` is the non-dominated subset of the final population on (latency, error), sorted by latency. Errors
    are compared within the final population only, because each generation's super-net gives its own estimates.
    """

    front: tuple[Candidate, ...]
    population: tuple[Candidate, ...]
    generations: int
    out_dir: Path
    latency_budget_ms: float | None = None
    best_under_budget: Candidate | None = None
    budget_note: str | None = None

    @classmethod
    def load(cls, run_dir: str | Path) -> SearchResult:
        """Read a finished search's ``front.json`` (what ``latprune validate-accuracy`` and the report start from)."""
        run_dir = Path(run_dir)
        data = read_json(run_dir / "front.json", what="search front")
        if data.get("format") != FRONT_FORMAT:
            raise SearchError(f"'{run_dir / 'front.json'}' is not a latprune search front ({data.get('format')!r}).")
        best = data.get("best_under_budget")
        return cls(
            front=tuple(Candidate.from_dict(c) for c in data["front"]),
            population=tuple(Candidate.from_dict(c) for c in data["population"]),
            generations=int(data["generations"]),
            out_dir=run_dir,
            latency_budget_ms=data.get("latency_budget_ms"),
            best_under_budget=Candidate.from_dict(best) if best else None,
            budget_note=data.get("budget_note"),
        )


FRONT_FORMAT = "latprune.search.front/1"
GENERATION_FORMAT = "latprune.search.generation/1"


def pareto_front(latency: np.ndarray, error: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated points of (latency, error), both minimised, sorted by latency."""
    F = np.column_stack([np.asarray(latency, dtype=float), np.asarray(error, dtype=float)])  # (n, 2)
    if len(F) == 0:
        return np.empty(0, dtype=int)
    front = NonDominatedSorting().do(F, only_non_dominated_front=True)
    front = np.asarray(front, dtype=int)
    return front[np.lexsort((F[front, 1], F[front, 0]))]


def best_under_budget(candidates: tuple[Candidate, ...], budget_ms: float) -> tuple[Candidate | None, str | None]:
    """The lowest-error candidate whose predicted latency is within ``budget_ms`` (JCW eq. 1's constrained
    objective), or ``None`` and a sentence saying how close the fastest one came."""
    fits = [c for c in candidates if c.latency_ms <= budget_ms]
    if fits:
        return min(fits, key=lambda c: (c.error, c.latency_ms)), None
    fastest = min(candidates, key=lambda c: c.latency_ms)
    return None, (
        f"No candidate of the final population meets the latency budget {budget_ms:.4g} ms; the fastest found "
        f"takes {fastest.latency_ms:.4g} ms, so raise the budget or search longer."
    )


def smallest_latency(predict: Any, xl: np.ndarray, xu: np.ndarray, passes: int = 3) -> tuple[np.ndarray, float]:
    """Coordinate descent on the predictor over every value of every free variable: the fastest encoding the
    bounds allow (latency is a sum over layers, so a few passes reach the minimum). Used to reject an impossible
    budget before any estimator time is spent."""
    xl, xu = np.asarray(xl, dtype=np.int64), np.asarray(xu, dtype=np.int64)
    x = xl.copy()
    best = float(np.asarray(predict(x[None, :]))[0])
    for _ in range(passes):
        improved = False
        for i in np.flatnonzero(xl < xu):
            values = np.arange(xl[i], xu[i] + 1)
            trial = np.tile(x, (len(values), 1))  # (n_values, n_var)
            trial[:, i] = values
            lat = np.asarray(predict(trial), dtype=float)
            j = int(np.argmin(lat))
            if lat[j] < best - 1e-12:
                x, best, improved = trial[j].copy(), float(lat[j]), True
        if not improved:
            break
    return x, best


def search_cost(out_dir: str | Path) -> dict[str, float]:
    """Wall seconds of a finished or running search, summed over its generation files: the algorithm
    (``evolution``), the predictor, the estimator, and the estimator's phases (``supernet_train_s``, ...)."""
    total: dict[str, float] = {}
    for path in sorted(Path(out_dir).glob("gen_*.json")):
        timing = read_json(path, what="search generation")["timing_s"]
        for key in ("evolution", "predictor", "estimator"):
            total[key] = total.get(key, 0.0) + float(timing[key])
        for key, value in timing.get("estimator_phases", {}).items():
            if key.endswith("_s"):
                total[key] = total.get(key, 0.0) + float(value)
    return total
