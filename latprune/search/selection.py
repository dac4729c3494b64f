"""Survival selection for the search: JCW's uniform non-dominated sorting selection, and standard NSGA-II's."""

from __future__ import annotations

from typing import Any

import numpy as np
from pymoo.core.population import Population
from pymoo.core.survival import Survival
from pymoo.operators.survival.rank_and_crowding import RankAndCrowding
from pymoo.operators.survival.rank_and_crowding.metrics import calc_crowding_distance
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from latprune.errors import SearchError

SELECTIONS: tuple[str, ...] = ("uniform", "standard")


def latency_targets(latency: np.ndarray, n_targets: int) -> np.ndarray:
    """JCW eq. 9: ``T_i = T_min + i (T_max - T_min) / (N - 1)`` for i = 0..N-1 over the merged population."""
    t_min, t_max = float(np.min(latency)), float(np.max(latency))
    if n_targets == 1:
        return np.array([(t_min + t_max) / 2.0])
    return t_min + np.arange(n_targets) * (t_max - t_min) / (n_targets - 1)


def uniform_nondominated_select(
    latency: np.ndarray, error: np.ndarray, n_select: int, n_targets: int = 4
) -> tuple[np.ndarray, np.ndarray]:
    """Pick ``n_select`` of the merged population P ∪ Q by JCW's uniform non-dominated sorting selection (§2.6).

    Standard NSGA-II selection trusts the error estimate as much as the latency estimate; with a noisy super-net
    estimate it drifts to the cheap end of the latency range (JCW Fig. 7). Here each of ``n_targets`` latencies
    T_i, spread evenly over the merged population's latency range (eq. 9), gets its own non-dominated sort on
    (|T_i - T|, error), and fronts are taken round-robin: F_0^(0), F_1^(0), ..., F_{N-1}^(0), F_0^(1), ...,
    skipping individuals already chosen, so every part of the latency range keeps its most accurate members.

    The paper's N is not the population size: the official JCW configuration uses 4 targets (the default here).
    With N equal to the population, the fronts of the first (fastest) targets fill the population before the
    round-robin reaches the slow ones — F_0^(0) alone is the ordinary Pareto front — so the slowest models are
    dropped every generation and the population collapses to the fast end (benchmarks/search_ablation.py).

    Tie-break of the last, partial take (as in the official code): the front's remaining members with the largest
    crowding distance in latency first (the front's latency extremes, then the most isolated), ties broken by lower
    error, then lower index. Fully deterministic; no RNG is used.

    Returns ``(chosen, round_of)``: indices into the inputs in the order they were chosen, and for each chosen
    individual the round ``s`` of the front ``F_i^(s)`` it was taken from (used as its rank in tournaments).
    """
    latency = np.asarray(latency, dtype=float)
    error = np.asarray(error, dtype=float)
    n = len(latency)
    if latency.shape != (n,) or error.shape != (n,):
        raise SearchError(
            f"Latency and error must be two 1-D arrays of one length, got {latency.shape} and {error.shape}."
        )
    if not (np.all(np.isfinite(latency)) and np.all(np.isfinite(error))):
        raise SearchError("A candidate has a non-finite latency or error estimate; check the predictor and estimator.")
    if n_targets < 1:
        raise SearchError(f"The number of latency targets {n_targets} must be at least 1.")
    n_select = min(int(n_select), n)
    if n_select <= 0:
        return np.empty(0, dtype=int), np.empty(0, dtype=int)
    targets = latency_targets(latency, n_targets)
    nds = NonDominatedSorting()
    # fronts[i][s] = indices of F_i^(s), the s-th front for target T_i
    fronts = [nds.do(np.column_stack([np.abs(t - latency), error])) for t in targets]
    taken = np.zeros(n, dtype=bool)
    chosen: list[int] = []
    rounds: list[int] = []
    s = 0
    while len(chosen) < n_select:
        for i in range(len(targets)):
            if s >= len(fronts[i]):
                continue
            front = np.asarray(fronts[i][s], dtype=int)
            front = front[~taken[front]]
            room = n_select - len(chosen)
            if len(front) > room:
                front = _truncate(front, latency, error, room)
            taken[front] = True
            chosen.extend(front.tolist())
            rounds.extend([s] * len(front))
            if len(chosen) == n_select:
                break
        s += 1
    return np.asarray(chosen, dtype=int), np.asarray(rounds, dtype=int)


def _truncate(front: np.ndarray, latency: np.ndarray, error: np.ndarray, room: int) -> np.ndarray:
    """The ``room`` members of ``front`` that keep its latency spread: largest latency crowding distance first."""
    crowd = calc_crowding_distance(latency[front][:, None]) if len(front) > 2 else np.full(len(front), np.inf)
    order = np.lexsort((front, error[front], -crowd))  # last key is primary
    return front[order[:room]]


class UniformNondominatedSurvival(Survival):
    """pymoo survival operator that applies :func:`uniform_nondominated_select` to objectives (latency, error).

    It also sets the attributes NSGA-II's binary tournament reads: ``rank`` is the round a survivor was taken in,
    ``crowding`` the usual crowding distance among the survivors in (latency, error).
    """

    def __init__(self, n_targets: int = 4) -> None:
        super().__init__(filter_infeasible=True)
        self.n_targets = n_targets

    def _do(self, problem: Any, pop: Population, *args: Any, n_survive: int | None = None, **kwargs: Any) -> Population:
        F = pop.get("F").astype(float, copy=False)  # (n, 2): latency ms, error
        n_survive = len(pop) if n_survive is None else n_survive
        chosen, rounds = uniform_nondominated_select(F[:, 0], F[:, 1], n_survive, self.n_targets)
        crowding = calc_crowding_distance(F[chosen]) if len(chosen) > 2 else np.full(len(chosen), np.inf)
        for k, i in enumerate(chosen):
            pop[i].set("rank", int(rounds[k]))
            pop[i].set("crowding", float(crowding[k]))
        return pop[chosen]


def make_survival(selection: str, n_targets: int = 4) -> Survival:
    """The survival operator for ``selection`` ("uniform": JCW §2.6; "standard": NSGA-II rank and crowding)."""
    if selection == "uniform":
        return UniformNondominatedSurvival(n_targets)
    if selection == "standard":
        return RankAndCrowding()
    raise SearchError(f"Unknown selection '{selection}'; use one of {', '.join(SELECTIONS)}.")
