"""NPAS's phase-2 search: an RL controller proposes candidates, optuna's TPE refines them, the driver's estimator
(the super-net with BN recalibration) scores them; registered as "npas" beside NSGA-II (numpy + optuna, no torch).

NPAS (CVPR 2021) describes its search in one sentence: "a meta-modeling procedure based on reinforcement learning
with fast evaluation and Bayesian optimization". What this module does where that sentence is silent:

- **Objective.** Accuracy under a latency budget B, as the reward ``(1 − error) − λ·max(0, latency/B − 1)``
  (``SearchConfig.npas_penalty`` is λ). Under the budget only accuracy counts.
- **Controller.** A factorised softmax policy over every decision variable (a width per group, a sparsity, scheme
  and kernel size per layer: whatever the space holds), trained with REINFORCE (plain gradient steps); the
  baseline is the mean reward of the batch, whose candidates were all scored by the same super-net (errors are
  comparable within one estimator call only), and advantages are standardised.
- **Bayesian optimisation.** optuna's TPE sampler (``GPSampler`` needs torch, which ``search/`` never imports),
  rebuilt each batch from every trial so far and seeded from this search's generator, proposes the rest of the
  batch. Its trials carry the latency constraint, so TPE also learns where the budget lies.
- **Fast evaluation.** Each batch is one estimator call (the super-net trained on exactly those candidates, as
  JCW's). The ``npas_elites`` best candidates so far are re-estimated beside the new ones, as NSGA-II re-estimates
  its parents, so a lucky estimate does not stay on top.
- **Latency screening.** Predicted latency costs microseconds; a proposal outside the band
  ``[npas_latency_floor·B, B]`` is redrawn before it costs an estimator call (a too-slow model would only be
  penalised, a much faster one cannot be the most accurate under B). Screened-out TPE proposals stay in its history
  as infeasible trials.

Everything random comes from one ``numpy`` generator whose state, with the controller's logits,
the archive and the TPE history, is the JSON :meth:`NPASSearch.state`: a resumed search asks exactly what the
uninterrupted one would have.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from latprune.errors import SearchError
from latprune.search._controller import Controller
from latprune.search.algorithms import DecisionSpace, register_algorithm
from latprune.search.config import SearchConfig

#: Controller samples drawn per slot before screening (the policy truncated to the latency band).
_POOL = 32
#: TPE proposals tried per slot before the least-violating one is taken.
_TRIES = 16


def npas_reward(latency_ms: np.ndarray, error: np.ndarray, budget_ms: float, penalty: float) -> np.ndarray:
    """NPAS's reward: accuracy minus ``penalty`` times the relative overshoot of the latency budget."""
    over = np.maximum(0.0, np.asarray(latency_ms, dtype=float) / budget_ms - 1.0)
    return 1.0 - np.asarray(error, dtype=float) - penalty * over


@register_algorithm(
    "npas",
    description="NPAS: a REINFORCE controller proposes, optuna's TPE refines, maximising accuracy − "
    "λ·max(0, latency/budget − 1) under --latency-budget; proposals screened into the budget by the predictor.",
    uses_budget=True,
)
class NPASSearch:
    """NPAS phase 2 as a :class:`~latprune.search.algorithms.SearchAlgorithm` (see the module docstring)."""

    def __init__(self, space: DecisionSpace, config: SearchConfig, seed: int, state: dict[str, Any] | None) -> None:
        if space.n_dec == 0:
            raise SearchError(
                "Every search variable is fixed in this mode, so there is nothing to search; widen the space."
            )
        if config.latency_budget_ms is None:
            raise SearchError("The npas search needs a latency budget; pass --latency-budget (e.g. 0.3ms).")
        self.space = space
        self.config = config
        self.budget = float(config.latency_budget_ms)
        self._predict: Callable[[np.ndarray], np.ndarray] | None = None
        self._pending: tuple[np.ndarray, list[str]] | None = None
        self._names = [f"v{j:03d}" for j in range(space.n_dec)]
        if state is None:
            self.rng = np.random.default_rng(seed)
            self.controller = Controller.uniform(space.lower, space.upper)
            self.archive: dict[tuple[int, ...], dict[str, float]] = {}
            self.history: list[dict[str, Any]] = []
            self.gen = 0
        else:
            self.rng = np.random.default_rng()
            self.rng.bit_generator.state = state["rng"]
            self.controller = Controller.from_dict(state["controller"])
            self.archive = {
                tuple(int(v) for v in a["z"]): {k: float(a[k]) for k in _ARCHIVED} for a in state["archive"]
            }
            self.history = list(state["history"])
            self.gen = int(state["gen"])

    @classmethod
    def create(cls, space: DecisionSpace, config: SearchConfig, seed: int) -> NPASSearch:
        return cls(space, config, seed, None)

    @classmethod
    def restore(cls, space: DecisionSpace, config: SearchConfig, seed: int, state: dict[str, Any]) -> NPASSearch:
        return cls(space, config, seed, state)

    def use_latency(self, predict: Callable[[np.ndarray], np.ndarray]) -> None:
        self._predict = predict

    # ---------------------------------------------------------------------------------------------- protocol

    def ask(self) -> np.ndarray | None:
        n = self.config.population
        elites = self._elites(min(self.config.npas_elites, len(self.archive))) if self.gen else []
        taken = set(self.archive) | {tuple(z) for z in elites}
        n_new = n - len(elites)
        n_rl = round(n_new * self.config.npas_rl_share)
        rl = self._propose_rl(n_rl, taken)
        bo = self._propose_bo(n_new - n_rl, taken)
        extra = self._propose_rl(n_new - n_rl - len(bo), taken)  # TPE could not fill its share: the controller does
        parts = [np.asarray(p, dtype=np.int64).reshape(-1, self.space.n_dec) for p in (elites, rl, bo, extra)]
        Z = np.vstack(parts)  # (n, n_dec)
        sources = ["elite"] * len(parts[0]) + ["rl"] * len(parts[1]) + ["bo"] * len(parts[2]) + ["rl"] * len(parts[3])
        self._pending = (Z, sources)
        return Z

    def tell(self, F: np.ndarray) -> None:
        if self._pending is None:
            raise SearchError("NPAS was told objectives it did not ask for; call ask() first.")
        Z, sources = self._pending
        F = np.asarray(F, dtype=float).reshape(len(Z), 2)
        reward = npas_reward(F[:, 0], F[:, 1], self.budget, self.config.npas_penalty)
        for z, (lat, err), r in zip(Z, F, reward, strict=True):
            key = tuple(int(v) for v in z)
            self.archive[key] = {"latency_ms": float(lat), "error": float(err), "reward": float(r), "gen": self.gen}
            self.history.append({"z": list(key), "value": float(r), **self._constraints(float(lat))})
        rl = np.asarray([s == "rl" for s in sources])
        if rl.any() and len(reward) > 1:
            advantage = (reward - reward.mean()) / (reward.std() + 1e-9)  # baseline: this batch (one super-net)
            self.controller.update(Z[rl], advantage[rl], self.config.npas_policy_lr)
        self.gen += 1
        self._pending = None

    def population(self) -> tuple[np.ndarray, np.ndarray]:
        """The ``population`` best candidates by reward so far, with their latest (latency, error)."""
        best = self._ranked()[: self.config.population]
        Z = np.asarray([list(z) for z in best], dtype=np.int64).reshape(-1, self.space.n_dec)
        F = np.asarray([[self.archive[z]["latency_ms"], self.archive[z]["error"]] for z in best], dtype=float)
        return Z, F.reshape(-1, 2)

    def state(self) -> dict[str, Any]:
        return {
            "gen": self.gen,
            "rng": self.rng.bit_generator.state,
            "controller": self.controller.to_dict(),
            "archive": [{"z": list(z), **a} for z, a in self.archive.items()],
            "history": self.history,
        }

    # ---------------------------------------------------------------------------------------------- proposals

    def _ranked(self) -> list[tuple[int, ...]]:
        """Archive keys by reward (highest first), then latency, then encoding: a total, deterministic order."""
        return sorted(self.archive, key=lambda z: (-self.archive[z]["reward"], self.archive[z]["latency_ms"], z))

    def _elites(self, k: int) -> list[tuple[int, ...]]:
        return self._ranked()[:k]

    def _constraints(self, latency_ms: float) -> dict[str, float]:
        """optuna constraints (feasible when <= 0): under the budget, and above the floor of the band."""
        ratio = latency_ms / self.budget
        return {"over": ratio - 1.0, "under": self.config.npas_latency_floor - ratio}

    def _violation(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(violation >= 0, latency ms) of each row of ``Z``; no predictor bound: nothing violates."""
        if self._predict is None:
            return np.zeros(len(Z)), np.full(len(Z), np.nan)
        lat = np.asarray(self._predict(np.asarray(Z, dtype=np.int64)), dtype=float).reshape(len(Z))
        ratio = lat / self.budget
        return np.maximum(0.0, ratio - 1.0) + np.maximum(0.0, self.config.npas_latency_floor - ratio), lat

    def _propose_rl(self, n: int, taken: set[tuple[int, ...]]) -> np.ndarray:
        """``n`` new controller samples: in the order drawn, those inside the latency band first."""
        if n <= 0:
            return np.empty((0, self.space.n_dec), dtype=np.int64)
        pool = self.controller.sample(self.rng, n * _POOL)  # (n * _POOL, n_dec)
        violation, _ = self._violation(pool)
        picked: list[int] = []
        for i in np.argsort(violation, kind="stable"):
            key = tuple(int(v) for v in pool[i])
            if key not in taken:
                taken.add(key)
                picked.append(int(i))
                if len(picked) == n:
                    break
        while len(picked) < n:  # every draw was already evaluated: repeat the best ones
            picked.append(int(np.argsort(violation, kind="stable")[len(picked) % len(pool)]))
        return pool[np.asarray(picked)]

    def _propose_bo(self, n: int, taken: set[tuple[int, ...]]) -> list[list[int]]:
        """Up to ``n`` new TPE proposals inside the latency band (the least-violating one where none was)."""
        if n <= 0:
            return []
        import optuna  # imported here: `import latprune.search` stays fast

        optuna.logging.set_verbosity(logging.WARNING)
        study = optuna.create_study(
            direction="maximize", sampler=optuna.samplers.TPESampler(seed=int(self.rng.integers(2**31)))
        )
        dists = self._distributions(optuna)
        study.add_trials([self._frozen(optuna, t, dists) for t in self.history])
        out: list[list[int]] = []
        for _ in range(n):
            fallback: tuple[float, list[int]] | None = None
            for _ in range(_TRIES):
                trial = study.ask(dists)
                z = [int(trial.params[name]) for name in self._names]
                violation, lat = self._violation(np.asarray([z]))
                key = tuple(z)
                if violation[0] == 0.0 and key not in taken:
                    taken.add(key)
                    out.append(z)  # left running: TPE's constant liar spreads the next proposals away from it
                    break
                if key in taken and key not in self.archive:  # a proposal of this same batch
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    continue
                known = self.archive.get(key)  # an evaluated candidate: its reward and latency are known
                value, ms = (known["reward"], known["latency_ms"]) if known else (0.0, float(lat[0]))
                record = {"z": z, "value": value, **self._constraints(ms)}
                for name in ("over", "under"):
                    trial.set_constraint(name, record[name])
                study.tell(trial, value)
                self.history.append(record)
                if key not in taken and (fallback is None or violation[0] < fallback[0]):
                    fallback = (float(violation[0]), z)
            else:
                if fallback is not None and tuple(fallback[1]) not in taken:
                    taken.add(tuple(fallback[1]))
                    out.append(fallback[1])
        return out

    def _distributions(self, optuna: Any) -> dict[str, Any]:
        """One optuna distribution per decision variable: categorical for labels (schemes), integer otherwise."""
        dists = {}
        for name, lo, hi, cat in zip(
            self._names, self.space.lower, self.space.upper, self.space.categorical, strict=True
        ):
            if cat:
                dists[name] = optuna.distributions.CategoricalDistribution(tuple(range(int(lo), int(hi) + 1)))
            else:
                dists[name] = optuna.distributions.IntDistribution(int(lo), int(hi))
        return dists

    def _frozen(self, optuna: Any, record: dict[str, Any], dists: dict[str, Any]) -> Any:
        return optuna.trial.create_trial(
            params={name: int(v) for name, v in zip(self._names, record["z"], strict=True)},
            distributions=dists,
            value=float(record["value"]),
            constraints={"over": float(record["over"]), "under": float(record["under"])},
        )


_ARCHIVED = ("latency_ms", "error", "reward", "gen")
