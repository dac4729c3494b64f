"""NSGA-II over integer encodings on pymoo (ask/tell), with a JSON-serialisable state for exact resume."""

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
from latprune.search.config import SearchConfig
from latprune.search.genome import Genome
from latprune.search.selection import make_survival


def make_algorithm(genome: Genome, config: SearchConfig, seed: int) -> NSGA2:
    """NSGA-II set up for ask/tell, with pymoo's integer recipe: integer sampling, SBX and polynomial mutation on
    the relaxed variables followed by rounding repair, duplicate elimination, and the configured survival."""
    if genome.n_dec == 0:
        raise SearchError(
            "Every search variable is fixed in this mode, so there is nothing to search; widen the space."
        )
    xl, xu = genome.bounds()
    problem = Problem(n_var=genome.n_dec, n_obj=2, xl=xl, xu=xu, vtype=int)
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


def restore_algorithm(genome: Genome, config: SearchConfig, seed: int, state: dict[str, Any]) -> NSGA2:
    """Rebuild the algorithm :func:`algorithm_state` described, so the next ``ask`` equals an uninterrupted run's."""
    algorithm = make_algorithm(genome, config, seed)
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


def stage_seed(seed: int, stage: int) -> int:
    """An independent pymoo seed per search stage, derived from the user's seed."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])
