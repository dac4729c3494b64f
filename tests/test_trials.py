"""Distributed evaluation through optuna's storage: two worker processes on one study lose no trial and do none
twice; a claim whose process died is redone once; a worker's error stops the search with its message."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from latprune.errors import SearchError
from latprune.search.trials import Claim, TrialQueue, default_storage, serve

# A worker process: serves the queue with a cheap synthetic score, logging every trial it completed.
_WORKER = textwrap.dedent(
    """
    import json, sys, time
    from latprune.search.trials import TrialQueue, serve

    url, name, log = sys.argv[1], sys.argv[2], sys.argv[3]
    queue = TrialQueue(url, worker=name)
    open(log + ".ready", "w").close()

    def score(claim):
        time.sleep(0.02)  # long enough for the two workers to interleave
        return float(claim.x.sum()) / 100.0

    def done(claim, ok):
        with open(log, "a") as f:
            f.write(json.dumps({"number": claim.number, "row": claim.row, "ok": ok}) + "\\n")

    serve(queue, score, idle_timeout_s=60, on_done=done)
    """
)


def _score(claim: Claim) -> float:
    return float(claim.x.sum()) / 100.0


@pytest.mark.parametrize(("backend", "n"), [("journal", 40), ("sqlite", 16)])
def test_two_worker_processes_share_one_study_without_losing_or_repeating_a_trial(tmp_path: Path, backend, n):
    url = default_storage(tmp_path) if backend == "journal" else f"sqlite:///{tmp_path / 'trials.db'}"
    queue = TrialQueue(url, worker="search")
    queue.reopen()
    logs = [tmp_path / f"w{i}.log" for i in range(2)]
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, url, f"w{i}", str(log)], stderr=subprocess.PIPE)
        for i, log in enumerate(logs)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{log}.ready").exists() for log in logs) and time.monotonic() < deadline:
            time.sleep(0.05)  # both workers are serving before the first candidate arrives
        X = np.random.default_rng(0).integers(0, 10, size=(n, 6))  # (n, 6) one estimator call's candidates
        assert queue.submit("call-0", X) == n
        assert queue.submit("call-0", X) == 0  # a resumed call enqueues nothing twice
        values = queue.wait("call-0", n, work=None, timeout_s=120)  # the search only waits: the workers score
        queue.close()
        for p in procs:
            assert p.wait(timeout=60) == 0, p.stderr.read().decode() if p.stderr else ""
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert values == pytest.approx(X.sum(1) / 100.0)  # row for row
    trials = queue.trials("call-0")
    assert len(trials) == n and all(t.state.name == "COMPLETE" for t in trials)  # none lost, none re-enqueued
    assert sorted(int(t.user_attrs["row"]) for t in trials) == list(range(n))
    done = [json.loads(line) for log in logs for line in log.read_text().splitlines()]
    assert sorted(d["number"] for d in done) == sorted(t.number for t in trials)  # each trial scored exactly once
    assert all(d["ok"] for d in done)
    per_worker = [len(log.read_text().splitlines()) for log in logs]
    assert min(per_worker) >= 1 and sum(per_worker) == n  # both processes worked
    assert {t.user_attrs["worker"] for t in trials} == {"w0", "w1"}


def test_a_dead_workers_claim_is_redone_once_and_its_late_result_refused(tmp_path: Path) -> None:
    queue = TrialQueue(default_storage(tmp_path), worker="search")
    X = np.arange(12).reshape(4, 3)
    queue.submit("c", X)
    dead = TrialQueue(default_storage(tmp_path), worker="dead")
    lost = dead.claim("c")  # claimed, then its process "died"
    assert lost is not None
    time.sleep(0.05)
    values = queue.wait("c", 4, work=_score, stale_after_s=0.01, timeout_s=30)
    assert values == pytest.approx(X.sum(1) / 100.0)
    assert dead.run(lost, _score) is False  # the stale claim was failed: its late result is not written
    states = sorted(t.state.name for t in queue.trials("c"))
    assert states == ["COMPLETE"] * 4 + ["FAIL"]  # one redo, no duplicate result


def test_a_scoring_error_stops_the_wait_with_the_workers_message(tmp_path: Path) -> None:
    queue = TrialQueue(default_storage(tmp_path), worker="search")
    queue.submit("c", np.zeros((2, 3), dtype=np.int64))
    bad = TrialQueue(default_storage(tmp_path), worker="broken")

    def explode(claim: Claim) -> float:
        raise RuntimeError("out of memory")

    with pytest.raises(RuntimeError):
        bad.run(bad.claim("c"), explode)  # type: ignore[arg-type]
    with pytest.raises(SearchError, match=r"Worker broken could not score candidate 0 .*out of memory"):
        queue.wait("c", 2, work=None, timeout_s=10)


def test_serve_stops_when_the_queue_closes(tmp_path: Path) -> None:
    queue = TrialQueue(default_storage(tmp_path))
    queue.submit("c", np.ones((3, 2), dtype=np.int64))
    queue.close()
    assert serve(TrialQueue(default_storage(tmp_path)), _score, idle_timeout_s=5) == 3  # drains, then exits
    with pytest.raises(SearchError, match="does not exist"):
        TrialQueue(str(tmp_path / "missing" / "trials.journal"))
