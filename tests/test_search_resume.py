"""`run_search(resume=True)` after a real kill -9 in the middle of a generation gives the uninterrupted front."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from latprune.search import SearchConfig, list_algorithms, run_search
from latprune.search.synthetic import SyntheticProblem

PROBLEM = SyntheticProblem(n_groups=3, n_layers=5, seed=1, noise=0.03)

# Runs the same search in a child process whose estimator SIGKILLs its own process on the KILL_AT-th call,
# i.e. after the algorithm's ask() and before tell(): the worst moment, with a generation half done.
_CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from latprune.search import SearchConfig, run_search
    from latprune.search.synthetic import SyntheticProblem

    problem = SyntheticProblem(n_groups=3, n_layers=5, seed=1, noise=0.03)
    inner = problem.estimator()
    kill_at = int(sys.argv[2])

    class KillingEstimator:
        calls = 0
        def evaluate(self, X):
            KillingEstimator.calls += 1
            if KillingEstimator.calls == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return inner.evaluate(X)

    config = SearchConfig(population=8, generations=5, seed=11, algorithm=sys.argv[3])
    run_search(problem.space(), problem.predictor(), KillingEstimator(), config, sys.argv[1], progress=False)
    """
)


@pytest.mark.parametrize("algorithm", list_algorithms())
def test_resume_after_kill_9_mid_generation(tmp_path: Path, algorithm: str) -> None:
    """Every registered search algorithm: its saved state continues a killed run exactly."""
    config = SearchConfig(population=8, generations=5, seed=11, algorithm=algorithm)
    out = tmp_path / "killed"
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(out), "4", algorithm], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    state = json.loads((out / "state.json").read_text())
    assert state["gen"] == 2  # generations 0..2 completed; generation 3 died inside the estimator
    assert not (out / "gen_0003.json").exists() and not (out / "front.json").exists()

    estimator = PROBLEM.estimator()
    resumed = run_search(PROBLEM.space(), PROBLEM.predictor(), estimator, config, out, resume=True, progress=False)
    assert estimator.calls == config.generations - 2  # only generations 3..5 were run again
    full = run_search(
        PROBLEM.space(), PROBLEM.predictor(), PROBLEM.estimator(), config, tmp_path / "full", progress=False
    )
    assert resumed.front == full.front and resumed.population == full.population
    for name in ("front.json", "gen_0005.json"):
        a, b = json.loads((out / name).read_text()), json.loads((tmp_path / "full" / name).read_text())
        a.pop("timing_s", None), b.pop("timing_s", None)
        assert a == b
