"""The genome: which variables of an architecture encoding a search algorithm actually decides."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from latprune.errors import SearchError
from latprune.search.algorithms import DecisionSpace


@dataclass(frozen=True)
class Genome:
    """Maps pymoo's decision vectors onto full architecture encodings.

    pymoo only sees the free variables (``xl < xu``): SBX on a variable with ``xl == xu`` divides by zero, and
    fixed variables would only waste mutation probability. A genome may also carry a *choice* variable (the first
    decision variable) that picks one row of ``choice_table`` for the variables ``choice_idx`` — the sequential
    (SCW) mode uses it to choose among the width vectors its channel stage found.
    """

    base: tuple[int, ...]
    free: tuple[int, ...]
    choice_idx: tuple[int, ...] = ()
    choice_table: tuple[tuple[int, ...], ...] = ()
    free_lower: tuple[int, ...] = ()
    free_upper: tuple[int, ...] = ()

    @classmethod
    def from_bounds(cls, xl: np.ndarray, xu: np.ndarray) -> Genome:
        """Search every variable whose bounds differ; the others stay at their single value."""
        xl, xu = np.asarray(xl, dtype=np.int64), np.asarray(xu, dtype=np.int64)
        if xl.shape != xu.shape or xl.ndim != 1:
            raise SearchError(f"The search bounds have shapes {xl.shape} and {xu.shape}; they must be equal 1-D.")
        if np.any(xl > xu):
            i = int(np.flatnonzero(xl > xu)[0])
            raise SearchError(f"Search variable {i} has lower bound {xl[i]} above its upper bound {xu[i]}.")
        free = np.flatnonzero(xl < xu)
        return cls(
            base=tuple(int(v) for v in xl),
            free=tuple(int(i) for i in free),
            free_lower=tuple(int(v) for v in xl[free]),
            free_upper=tuple(int(v) for v in xu[free]),
        )

    @classmethod
    def with_choices(cls, xl: np.ndarray, xu: np.ndarray, choice_idx: np.ndarray, table: np.ndarray) -> Genome:
        """Like :meth:`from_bounds`, but the variables ``choice_idx`` take one row of ``table`` (K, len(choice_idx))."""
        table = np.asarray(table, dtype=np.int64)
        choice_idx = np.asarray(choice_idx, dtype=np.int64)
        if table.ndim != 2 or table.shape[1] != len(choice_idx) or len(table) == 0:
            raise SearchError(f"The choice table has shape {table.shape}; it needs (K >= 1, {len(choice_idx)}).")
        xl, xu = np.array(xl, dtype=np.int64), np.array(xu, dtype=np.int64)
        xl[choice_idx] = xu[choice_idx] = table[0]
        plain = cls.from_bounds(xl, xu)
        if len(table) == 1:
            return plain
        return cls(
            base=plain.base,
            free=plain.free,
            choice_idx=tuple(int(i) for i in choice_idx),
            choice_table=tuple(tuple(int(v) for v in row) for row in table),
            free_lower=plain.free_lower,
            free_upper=plain.free_upper,
        )

    @property
    def has_choice(self) -> bool:
        return len(self.choice_table) > 1

    @property
    def n_dec(self) -> int:
        """Number of pymoo decision variables."""
        return len(self.free) + int(self.has_choice)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """pymoo's (xl, xu) over the decision variables."""
        lo, hi = list(self.free_lower), list(self.free_upper)
        if self.has_choice:
            lo, hi = [0, *lo], [len(self.choice_table) - 1, *hi]
        return np.asarray(lo, dtype=np.int64), np.asarray(hi, dtype=np.int64)

    def decision_space(self, categorical: np.ndarray | None = None) -> DecisionSpace:
        """The box an algorithm searches; ``categorical`` (n_var,) marks the encoding's unordered variables (the
        choice variable of the sequential mode is one too)."""
        lo, hi = self.bounds()
        flags = np.zeros(len(self.base), dtype=bool) if categorical is None else np.asarray(categorical, dtype=bool)
        cat = [bool(flags[i]) for i in self.free]
        return DecisionSpace(lo, hi, np.asarray([True, *cat] if self.has_choice else cat, dtype=bool))

    def expand(self, Z: np.ndarray) -> np.ndarray:
        """Decision vectors ``Z`` (n, n_dec) -> full encodings (n, n_var), clipped to the bounds."""
        Z = np.rint(np.asarray(Z, dtype=float)).astype(np.int64).reshape(-1, self.n_dec)  # (n, n_dec)
        lo, hi = self.bounds()
        Z = np.clip(Z, lo, hi)
        X = np.tile(np.asarray(self.base, dtype=np.int64), (len(Z), 1))  # (n, n_var)
        offset = int(self.has_choice)
        X[:, list(self.free)] = Z[:, offset:]
        if self.has_choice:
            X[:, list(self.choice_idx)] = np.asarray(self.choice_table, dtype=np.int64)[Z[:, 0]]
        return X

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": list(self.base),
            "free": list(self.free),
            "choice_idx": list(self.choice_idx),
            "choice_table": [list(r) for r in self.choice_table],
            "free_lower": list(self.free_lower),
            "free_upper": list(self.free_upper),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Genome:
        return cls(
            base=tuple(data["base"]),
            free=tuple(data["free"]),
            choice_idx=tuple(data["choice_idx"]),
            choice_table=tuple(tuple(r) for r in data["choice_table"]),
            free_lower=tuple(data["free_lower"]),
            free_upper=tuple(data["free_upper"]),
        )
