"""NSGA-II over integer encodings on pymoo (ask/tell), with a JSON-serialisable state for exact resume: the "nsga2"
entry of the search-algorithm registry (JCW §2.6, with its uniform non-dominated selection by default)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.population import Population
from pymoo.core.problem import Problem
from pymoo.core.termination import NoTermination
from pymoo.operators.crossover.sbx import SBX
from pymoo.operators.mutation.pm import PM
from pymoo.operators.repair.rounding import RoundingRepair
from pymoo.operators.sampling.rnd import IntegerRandomSampling

from latprune.errors import SearchError
from latprune.search.algorithms import DecisionSpace, register_algorithm
from latprune.search.config import SearchConfig
from latprune.search.selection import make_survival


def make_algorithm(space: DecisionSpace, config: SearchConfig, seed: int) -> NSGA2:
    """NSGA-II set up for ask/tell, with pymoo's integer recipe: integer sampling, SBX and polynomial mutation on
    the relaxed variables followed by rounding repair, duplicate elimination, and the configured survival."""
    if space.n_dec == 0:
        raise SearchError(
            "Every search variable is fixed in this mode, so there is nothing to search; widen the space."
        )
    problem = Problem(n_var=space.n_dec, n_obj=2, xl=space.lower, xu=space.upper, vtype=int)
    algorithm = NSGA2(
        pop_size=config.population,
        sampling=IntegerRandomSampling(),
        crossover=SBX(prob=config.crossover_prob, eta=config.crossover_eta, vtype=float, repair=RoundingRepair()),
        mutation=PM(eta=config.mutation_eta, vtype=float, repair=RoundingRepair()),
        survival=make_survival(config.selection, config.latency_targets),
        eliminate_duplicates=True,
    )
    algorithm.setup(problem, termination=NoTermination(), seed=seed, verbose=False)
    return algorithm


def algorithm_state(algorithm: NSGA2) -> dict[str, Any]:
    """Everything needed to continue after the last ``tell``: the population with its objectives and the
    tournament attributes (rank, crowding), the generation counter, and the RNG state. Plain JSON types."""
    pop = algorithm.pop
    crowding = [float(c) if np.isfinite(c) else None for c in pop.get("crowding").astype(float)]
    return {
        "n_iter": int(algorithm.n_iter),
        "Z": pop.get("X").astype(np.int64).tolist(),
        "F": pop.get("F").astype(float).tolist(),
        "rank": [int(r) for r in pop.get("rank")],
        "crowding": crowding,  # None stands for +inf (JSON has no infinity)
        "rng": algorithm.random_state.bit_generator.state,
    }


def restore_algorithm(space: DecisionSpace, config: SearchConfig, seed: int, state: dict[str, Any]) -> NSGA2:
    """Rebuild the algorithm :func:`algorithm_state` described, so the next ``ask`` equals an uninterrupted run's."""
    algorithm = make_algorithm(space, config, seed)
    algorithm._initialize()  # pymoo's own reset of the counters and start time
    pop = Population.new(X=np.asarray(state["Z"], dtype=np.int64), F=np.asarray(state["F"], dtype=float))
    pop.set("rank", np.asarray(state["rank"], dtype=int))
    pop.set("crowding", np.asarray([np.inf if c is None else c for c in state["crowding"]], dtype=float))
    algorithm.pop = pop
    algorithm.is_initialized = True
    algorithm.n_iter = int(state["n_iter"])
    algorithm.random_state.bit_generator.state = state["rng"]
    algorithm._set_optimum()
    return algorithm


@register_algorithm(
    "nsga2",
    description="NSGA-II (pymoo) evaluating parents and offspring P ∪ Q each generation in one estimator call; "
    "survival by JCW's uniform non-dominated selection or NSGA-II's rank and crowding (SearchConfig.selection).",
)
class NSGA2Search:
    """NSGA-II as a :class:`~latprune.search.algorithms.SearchAlgorithm`.

    Each ``ask`` returns the parents P followed by pymoo's offspring Q: JCW rebuilds the super-net from exactly
    P ∪ Q, so the parents are re-estimated beside their children and both get the new errors before survival.
    """

    def __init__(self, algorithm: NSGA2) -> None:
        self.algorithm = algorithm
        self._offspring: Population | None = None
        self._n_parents = 0

    @classmethod
    def create(cls, space: DecisionSpace, config: SearchConfig, seed: int) -> NSGA2Search:
        return cls(make_algorithm(space, config, seed))

    @classmethod
    def restore(cls, space: DecisionSpace, config: SearchConfig, seed: int, state: dict[str, Any]) -> NSGA2Search:
        return cls(restore_algorithm(space, config, seed, state))

    def ask(self) -> np.ndarray | None:
        off = self.algorithm.ask()
        if off is None or len(off) == 0:
            return None
        first = not self.algorithm.is_initialized
        parents = np.empty((0, off.get("X").shape[1]), dtype=np.int64)
        if not first:
            parents = self.algorithm.pop.get("X").astype(np.int64)
        self._offspring, self._n_parents = off, 0 if first else len(parents)
        return np.vstack([parents, off.get("X").astype(np.int64)])  # (n_par + n_off, n_dec)

    def tell(self, F: np.ndarray) -> None:
        if self._offspring is None:
            raise SearchError("NSGA-II was told objectives it did not ask for; call ask() first.")
        if self._n_parents:
            self.algorithm.pop.set("F", F[: self._n_parents])
        self._offspring.set("F", F[self._n_parents :])
        self.algorithm.tell(infills=self._offspring)
        self._offspring = None

    def population(self) -> tuple[np.ndarray, np.ndarray]:
        pop = self.algorithm.pop
        return pop.get("X").astype(np.int64), pop.get("F").astype(float)

    def state(self) -> dict[str, Any]:
        return algorithm_state(self.algorithm)
