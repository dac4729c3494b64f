"""The search driver: any registered algorithm, generation by generation, each one written atomically so a killed
run resumes exactly."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from latprune._io import atomic_write_json, read_json
from latprune.errors import SearchError
from latprune.search.algorithms import LatencyAware, SearchAlgorithm, get_algorithm
from latprune.search.config import SearchConfig
from latprune.search.genome import Genome
from latprune.search.interfaces import AccuracyEstimator, LatencyPredictor, SpaceLike, TimedEstimator, arch_to_dict
from latprune.search.results import (
    FRONT_FORMAT,
    GENERATION_FORMAT,
    Candidate,
    SearchResult,
    best_under_budget,
    pareto_front,
    smallest_latency,
)
from latprune.search.selection import latency_targets

STATE_FORMAT = "latprune.search.state/1"
SEARCH_FORMAT = "latprune.search.run/1"
# Fields that may change between a run and its --resume: they only affect the report.
_REPORT_ONLY_FIELDS = ("latency_budget_ms",)
_DEFAULTS = SearchConfig().to_dict()  # a run recorded before a field existed ran with its default


@dataclass(frozen=True)
class _Stage:
    """One NSGA-II run inside a search; ``first_gen``..``last_gen`` are global generation numbers."""

    name: str
    restriction: str
    first_gen: int
    last_gen: int


def _writes_files() -> bool:
    """Whether this process writes the run folder: torchrun's rank 0, or a lone process.

    Every rank of a distributed search runs the same (deterministic) NSGA-II loop; only rank 0 writes and shows
    progress. ``RANK`` is read from the environment because search/ stays free of torch.
    """
    return os.environ.get("RANK", "0").strip() in ("", "0")


def plan_stages(config: SearchConfig) -> tuple[_Stage, ...]:
    """The stages of a search; every mode uses ``generations + 1`` estimator calls in total."""
    g = config.generations
    if config.mode != "sequential":
        return (_Stage(config.mode, config.mode, 0, g),)
    g1 = min(g - 1, max(1, round(config.sequential_channel_share * g)))
    return (_Stage("channel", "channel-only", 0, g1), _Stage("weight", "weight-only", g1 + 1, g))


def gen_path(out_dir: Path, gen: int) -> Path:
    return out_dir / f"gen_{gen:04d}.json"


def pick_width_choices(
    X: np.ndarray, latency: np.ndarray, error: np.ndarray, width_idx: np.ndarray, k: int
) -> np.ndarray:
    """Up to ``k`` distinct width vectors from the Pareto front of (latency, error), nearest to ``k`` targets spread
    evenly over the front's latency range (eq. 9 again), so SCW's weight stage can reach every latency region."""
    front = pareto_front(latency, error)
    targets = latency_targets(latency[front], min(k, len(front)))
    picked: list[int] = []
    for t in targets:
        for j in front[np.argsort(np.abs(latency[front] - t), kind="stable")]:
            if j not in picked:
                picked.append(int(j))
                break
    table = X[np.asarray(picked)][:, width_idx]  # (k', n_width)
    _, first = np.unique(table, axis=0, return_index=True)
    return table[np.sort(first)]


def run_search(
    space: SpaceLike,
    predictor: LatencyPredictor,
    estimator: AccuracyEstimator,
    config: SearchConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    meta: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> SearchResult:
    """Search ``space`` for the latency/error Pareto front with ``config.algorithm`` and write the run to ``out_dir``.

    Each generation asks the algorithm (see :mod:`latprune.search.algorithms`) for a batch, predicts latency and
    estimates error for the whole batch in one estimator call, then tells the algorithm the results. NSGA-II
    (JCW §2.6, the default) asks for parents and offspring P ∪ Q, because the super-net is rebuilt from exactly the
    candidates it ranks, and selects the next P. With ``resume`` a run continues after its last completed generation
    and gives the same front as an uninterrupted run, provided the estimator is deterministic for a given input.

    Run directory layout (all JSON, written with latprune._io's atomic writers):

    - ``search.json``      the config, the space's bounds (and ``space.to_dict()`` when it has one) and caller metadata;
    - ``gen_XXXX.json``    per generation: every evaluated candidate of P ∪ Q (``evaluated``, with ``survived``), the
                           surviving population (``population``), and where the time went (``timing_s``);
    - ``state.json``       the algorithm's state after the last completed generation (for NSGA-II: population, RNG,
                           counters) and the population the run reports;
    - ``front.json``       the final population, its Pareto front, and the best candidate under the latency budget.

    The sequential mode (JCW's SCW ablation) runs two stages within the joint search's budget of ``generations + 1``
    estimator calls: a channel-only stage for ``round(share * generations)`` steps, then a weight-only stage whose
    widths are not free but chosen among the ``sequential_widths`` members of the channel stage's final front that are
    spread most evenly over latency (an extra integer gene picks one of them), so the sparsity search can still cover
    the whole latency range instead of the single width vector a knee point would leave.
    """
    out_dir = Path(out_dir)
    _check_interfaces(space, predictor, estimator)
    stages = plan_stages(config)
    state = _open_run(out_dir, space, config, resume, meta)
    progress = progress and _writes_files()
    if config.latency_budget_ms is not None:
        _check_budget_reachable(space, predictor, config)

    done = 0 if state is None else int(state["gen"]) + 1
    bar = tqdm(
        total=config.generations + 1,
        initial=min(done, config.generations + 1),
        unit="gen",
        desc=_bar_title(config),
        disable=not progress,
        dynamic_ncols=True,
    )
    try:
        for index, stage in enumerate(stages):
            if state is not None and (state["stage"] > index or (state["stage"] == index and state["stage_done"])):
                continue
            state = _run_stage(index, stage, stages, space, predictor, estimator, config, out_dir, state, bar)
    finally:
        bar.close()
    return _finish(space, config, out_dir, state)


def _bar_title(config: SearchConfig) -> str:
    if config.algorithm == "nsga2":
        return f"search ({config.mode}, {config.selection})"
    budget = "" if config.latency_budget_ms is None else f", budget {config.latency_budget_ms:g} ms"
    return f"search ({config.algorithm}, {config.mode}{budget})"


def _check_interfaces(space: Any, predictor: Any, estimator: Any) -> None:
    if not isinstance(predictor, LatencyPredictor):
        raise SearchError(f"The latency predictor {type(predictor).__name__} has no predict(X) method.")
    if not isinstance(estimator, AccuracyEstimator):
        raise SearchError(f"The accuracy estimator {type(estimator).__name__} has no evaluate(X) method.")
    if not isinstance(space, SpaceLike):
        raise SearchError(f"The search space {type(space).__name__} lacks n_var, xl, xu, restrict() or decode().")


def _identity(space: SpaceLike, config: SearchConfig) -> dict[str, Any]:
    """What must match between a run directory and a --resume of it (the budget too, where it steers the search)."""
    report_only = () if get_algorithm(config.algorithm).uses_budget else _REPORT_ONLY_FIELDS
    cfg = {k: v for k, v in config.to_dict().items() if k not in report_only}
    return {"config": cfg, "xl": np.asarray(space.xl).tolist(), "xu": np.asarray(space.xu).tolist()}


def _open_run(
    out_dir: Path, space: SpaceLike, config: SearchConfig, resume: bool, meta: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """Start a fresh run directory, or load and check the state of the one being resumed."""
    state_file = out_dir / "state.json"
    identity = _identity(space, config)
    if state_file.exists():
        if not resume:
            raise SearchError(
                f"'{out_dir}' already holds a search (state.json); pass --resume to continue it, or choose another "
                "--out."
            )
        state = read_json(state_file, what="search state")
        if state.get("format") != STATE_FORMAT:
            raise SearchError(f"'{state_file}' is not a latprune search state; choose another --out.")
        _check_same_run(state_file, state["identity"], identity)
        return state
    record = {"format": SEARCH_FORMAT, **identity, "meta": dict(meta or {})}
    if hasattr(space, "to_dict"):
        record["space"] = space.to_dict()
    if _writes_files():
        atomic_write_json(out_dir / "search.json", record)
    return None


def _check_same_run(state_file: Path, saved: dict[str, Any], now: dict[str, Any]) -> None:
    for key, value in now["config"].items():
        if saved["config"].get(key, _DEFAULTS.get(key)) != value:
            raise SearchError(
                f"The run in '{state_file.parent}' was started with {key}={saved['config'].get(key)!r}, not "
                f"{value!r}; resume with the same settings or choose another --out."
            )
    if saved["xl"] != now["xl"] or saved["xu"] != now["xu"]:
        raise SearchError(
            f"The run in '{state_file.parent}' was started on a different search space (model or bounds); "
            "resume with the same model and settings or choose another --out."
        )


def _check_budget_reachable(space: SpaceLike, predictor: LatencyPredictor, config: SearchConfig) -> None:
    """Refuse an impossible budget before spending any estimator time on it."""
    joint = space.restrict("joint") if config.mode == "sequential" else space.restrict(config.mode)
    _, fastest = smallest_latency(predictor.predict, joint.xl, joint.xu)
    budget = float(config.latency_budget_ms)  # type: ignore[arg-type]
    if budget < fastest:
        raise SearchError(
            f"The latency budget {budget:.4g} ms is below the smallest latency this search space can reach in mode "
            f"'{config.mode}' ({fastest:.4g} ms predicted); raise --latency-budget to at least {fastest:.4g} ms."
        )


def _stage_genome(space: SpaceLike, stage: _Stage, state: dict[str, Any] | None) -> Genome:
    restricted = space.restrict(stage.restriction)
    if stage.name != "weight":
        return Genome.from_bounds(restricted.xl, restricted.xu)
    channel = space.restrict("channel-only")
    width_idx = np.flatnonzero(np.asarray(channel.xl) < np.asarray(channel.xu))
    if state is None or "width_table" not in state:
        raise SearchError("The sequential search lost its channel-stage result; delete the run directory and rerun.")
    return Genome.with_choices(restricted.xl, restricted.xu, width_idx, np.asarray(state["width_table"]))


def _run_stage(
    index: int,
    stage: _Stage,
    stages: tuple[_Stage, ...],
    space: SpaceLike,
    predictor: LatencyPredictor,
    estimator: AccuracyEstimator,
    config: SearchConfig,
    out_dir: Path,
    state: dict[str, Any] | None,
    bar: tqdm,
) -> dict[str, Any]:
    genome = _stage_genome(space, stage, state)
    box = genome.decision_space(getattr(space, "categorical", None))
    spec = get_algorithm(config.algorithm)
    seed = stage_seed(config.seed, index)
    if state is not None and state["stage"] == index:
        algorithm = spec.restore(box, config, seed, state["algorithm"])
        gen = int(state["gen"]) + 1
    else:
        algorithm = spec.create(box, config, seed)
        gen = stage.first_gen
    if isinstance(algorithm, LatencyAware):  # e.g. NPAS screens its proposals into the budget
        algorithm.use_latency(lambda Z: predictor.predict(genome.expand(Z)))
    carry = {k: state[k] for k in ("width_table",) if state is not None and k in state}
    ended_early = False
    while gen <= stage.last_gen:
        step = _step(algorithm, genome, space, predictor, estimator)
        if step is None:
            if _writes_files():
                tqdm.write(
                    f"search: no new candidate could be proposed at generation {gen}; the '{stage.name}' stage ends "
                    "early."
                )
            bar.update(stage.last_gen - gen + 1)
            ended_early = True
            break
        header = {**_gen_header(config), "generation": gen, "stage": stage.name}
        if _writes_files():
            atomic_write_json(gen_path(out_dir, gen), header | step)
        done = gen == stage.last_gen
        if done:
            carry.update(_stage_outputs(index, stage, stages, algorithm, genome, space, config))
        state = _state(index, gen, done, algorithm, genome, space, config, carry)
        if _writes_files():
            atomic_write_json(out_dir / "state.json", state)
        bar.update(1)
        bar.set_postfix(best_error=f"{min(c['error'] for c in step['population']):.4f}", stage=stage.name)
        gen += 1
    if ended_early:
        carry.update(_stage_outputs(index, stage, stages, algorithm, genome, space, config))
        state = _state(index, gen - 1, True, algorithm, genome, space, config, carry)
        if _writes_files():
            atomic_write_json(out_dir / "state.json", state)
    assert state is not None  # the first generation of a stage always has a population to evaluate
    return state


def stage_seed(seed: int, stage: int) -> int:
    """An independent algorithm seed per search stage, derived from the user's seed."""
    return int(np.random.SeedSequence([seed, stage]).generate_state(1)[0])


def _stage_outputs(
    index: int,
    stage: _Stage,
    stages: tuple[_Stage, ...],
    algorithm: SearchAlgorithm,
    genome: Genome,
    space: SpaceLike,
    config: SearchConfig,
) -> dict[str, Any]:
    """What a finished stage hands to the next one: for SCW's channel stage, the width vectors to choose among."""
    if stage.name != "channel" or index + 1 >= len(stages):
        return {}
    Z, F = algorithm.population()
    X = genome.expand(Z)  # (n, n_var)
    channel = space.restrict("channel-only")
    width_idx = np.flatnonzero(np.asarray(channel.xl) < np.asarray(channel.xu))
    table = pick_width_choices(X, F[:, 0], F[:, 1], width_idx, config.sequential_widths)
    return {"width_table": table.tolist()}


def _gen_header(config: SearchConfig) -> dict[str, Any]:
    return {"format": GENERATION_FORMAT, "mode": config.mode, "selection": config.selection}


def _state(
    index: int,
    gen: int,
    stage_done: bool,
    algorithm: SearchAlgorithm,
    genome: Genome,
    space: SpaceLike,
    config: SearchConfig,
    carry: dict[str, Any],
) -> dict[str, Any]:
    Z, F = algorithm.population()
    return {
        "format": STATE_FORMAT,
        "identity": _identity(space, config),
        "stage": index,
        "gen": gen,
        "stage_done": stage_done,
        "genome": genome.to_dict(),
        "algorithm": algorithm.state(),
        "population": {"X": genome.expand(Z).tolist(), "F": np.asarray(F, dtype=float).tolist()},
        **carry,
    }


def _step(
    algorithm: SearchAlgorithm,
    genome: Genome,
    space: SpaceLike,
    predictor: LatencyPredictor,
    estimator: AccuracyEstimator,
) -> dict[str, Any] | None:
    """One generation: ask, predict + estimate the batch, tell. Returns the generation's JSON body (None: no batch)."""
    t0 = time.perf_counter()
    Z = algorithm.ask()
    if Z is None or len(Z) == 0:
        return None
    X = genome.expand(Z)  # (n, n_var)
    t1 = time.perf_counter()
    latency = _checked(predictor.predict(X), len(X), "latency predictor", lower=0.0, upper=None)
    t2 = time.perf_counter()
    error = _checked(estimator.evaluate(X), len(X), "accuracy estimator", lower=0.0, upper=1.0)
    t3 = time.perf_counter()
    algorithm.tell(np.column_stack([latency, error]))  # (n, 2)
    t4 = time.perf_counter()

    records = _records(space, X, latency, error)
    Z_kept, F_kept = algorithm.population()
    X_kept = genome.expand(Z_kept)  # (m, n_var); NSGA-II keeps survivors of this batch, others may keep older ones
    population = _records(space, X_kept, F_kept[:, 0], F_kept[:, 1])
    alive = {tuple(x) for x in X_kept.tolist()}
    timing: dict[str, Any] = {"evolution": (t1 - t0) + (t4 - t3), "predictor": t2 - t1, "estimator": t3 - t2}
    if isinstance(estimator, TimedEstimator):
        timing["estimator_phases"] = {k: float(v) for k, v in estimator.last_timing.items()}
    return {
        "n_evaluated": len(records),
        "evaluated": [r | {"survived": tuple(r["x"]) in alive} for r in records],
        "population": population,
        "timing_s": timing,
    }


def _records(space: SpaceLike, X: np.ndarray, latency: np.ndarray, error: np.ndarray) -> list[dict[str, Any]]:
    """The JSON record of each evaluated candidate: its encoding, objectives and decoded architecture."""
    return [
        Candidate(tuple(int(v) for v in x), float(lat), float(err), arch_to_dict(space.decode(x))).to_dict()
        for x, lat, err in zip(X, latency, error, strict=True)
    ]


def _checked(values: Any, n: int, what: str, lower: float, upper: float | None) -> np.ndarray:
    """The interfaces are other people's code: fail with one sentence if they return the wrong thing."""
    arr = np.asarray(values, dtype=float).reshape(-1)
    if arr.shape != (n,):
        raise SearchError(f"The {what} returned {arr.size} values for {n} candidates; it must return one per row.")
    if not np.all(np.isfinite(arr)):
        raise SearchError(f"The {what} returned a non-finite value (NaN or inf) for some candidate.")
    if np.any(arr < lower) or (upper is not None and np.any(arr > upper)):
        bound = f"[{lower}, {upper}]" if upper is not None else f">= {lower}"
        raise SearchError(f"The {what} returned {arr.min():.4g}..{arr.max():.4g}; values must be {bound}.")
    return arr


def _finish(space: SpaceLike, config: SearchConfig, out_dir: Path, state: dict[str, Any] | None) -> SearchResult:
    """Write ``front.json`` from the final population and return the result."""
    if state is None:
        raise SearchError(f"The search in '{out_dir}' has no completed generation to report.")
    if "population" in state:
        X = np.asarray(state["population"]["X"], dtype=np.int64)  # (n, n_var)
        F = np.asarray(state["population"]["F"], dtype=float)  # (n, 2)
    else:  # a state written before the algorithm protocol: NSGA-II's own population
        X = Genome.from_dict(state["genome"]).expand(np.asarray(state["algorithm"]["Z"]))
        F = np.asarray(state["algorithm"]["F"], dtype=float)
    order = np.lexsort((F[:, 1], F[:, 0]))
    population = tuple(
        Candidate(tuple(int(v) for v in X[i]), float(F[i, 0]), float(F[i, 1]), arch_to_dict(space.decode(X[i])))
        for i in order
    )
    front_idx = pareto_front(F[order, 0], F[order, 1])
    front = tuple(population[i] for i in front_idx)
    best, note = (None, None)
    if config.latency_budget_ms is not None:
        best, note = best_under_budget(population, config.latency_budget_ms)
    result = SearchResult(
        front=front,
        population=population,
        generations=int(state["gen"]),
        out_dir=out_dir,
        latency_budget_ms=config.latency_budget_ms,
        best_under_budget=best,
        budget_note=note,
    )
    if not _writes_files():
        return result
    atomic_write_json(
        out_dir / "front.json",
        {
            "format": FRONT_FORMAT,
            "config": config.to_dict(),
            "generations": result.generations,
            "front": [c.to_dict() for c in front],
            "population": [c.to_dict() for c in population],
            "latency_budget_ms": config.latency_budget_ms,
            "best_under_budget": best.to_dict() if best else None,
            "budget_note": note,
        },
    )
    return result
