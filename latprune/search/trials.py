"""Distributed candidate evaluation through optuna's storage: the search enqueues one trial per candidate of an
estimator call, and every process that joins the study (the search itself, the helpers of ``latprune search
--workers N``, ``latprune search-worker`` on other machines) claims waiting trials, scores them and writes the
error back. numpy + optuna only; what a trial is scored with is the caller's business (a callable).

The storage is an optuna journal file on one machine (the default: ``RUN/trials.journal``; file locks make it safe
for processes on one host or on a network file system that honours them) or an RDB URL (``postgresql://...``,
``mysql://...``) for many machines, or ``sqlite:///...`` on one. Every trial is claimed by exactly one process:
optuna moves a WAITING trial to RUNNING for one claimant only (SQLite ignores the row lock optuna takes for that,
so two processes could both claim one trial: claims on SQLite go through a file lock beside the database). A claim
whose process died is failed after ``stale_after_s`` and enqueued again, and a late result for a failed trial is
refused by the storage, so each candidate's error is written exactly once.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latprune.errors import SearchError

#: The study that holds evaluation trials (one per storage; calls are told apart by their ``call`` attribute).
STUDY_NAME = "latprune-evaluations"
#: Seconds between polls of the storage while waiting for trials.
POLL_S = 0.1


def default_storage(run_dir: str | Path) -> str:
    """The journal file a search in ``run_dir`` shares its evaluations through unless told another storage."""
    return str(Path(run_dir) / "trials.journal")


def check_storage(url: str, flag: str = "--storage") -> None:
    """Refuse, in one sentence and without connecting, a storage that cannot be one: an empty name, a URL whose
    scheme SQLAlchemy has no dialect for, or a journal path that is a folder or lies in a missing folder."""
    if "://" in url:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError, NoSuchModuleError

        try:
            make_url(url).get_dialect()
        except (ArgumentError, NoSuchModuleError, ValueError) as exc:
            raise SearchError(f"{flag} '{url}' is not a database URL SQLAlchemy knows ({exc}).") from None
        return
    path = Path(url.removeprefix("journal:"))
    if not url.strip() or path.is_dir() or not path.parent.is_dir():
        raise SearchError(
            f"{flag} '{url}' is neither a database URL nor a journal file in an existing folder; pass e.g. "
            "trials.journal or sqlite:///trials.db."
        )


def open_storage(url: str) -> Any:
    """An optuna storage: an RDB URL (``sqlite:///trials.db``, ``postgresql://host/db``) or a journal file path."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    if "://" in url:
        try:
            return optuna.storages.RDBStorage(url)
        except Exception as exc:  # sqlalchemy raises many types for a bad URL or an unreachable server
            raise SearchError(f"The trial storage '{url}' cannot be opened ({exc}); check the URL.") from None
    from optuna.storages.journal import JournalFileBackend

    path = Path(url.removeprefix("journal:"))
    if not path.parent.is_dir():
        raise SearchError(f"The folder of the trial journal '{path}' does not exist; create it or pass another one.")
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


@dataclass(frozen=True)
class Claim:
    """One candidate a process has claimed: its trial, the estimator call it belongs to, its row and encoding."""

    trial_id: int
    number: int
    call: str
    row: int
    x: np.ndarray


#: How a process scores a claim: the value, or the value and attributes to record on the trial.
Work = Callable[[Claim], "float | tuple[float, dict[str, Any]]"]


class TrialQueue:
    """A study of evaluation trials in a shared storage (see the module docstring)."""

    def __init__(self, url: str, worker: str | None = None) -> None:
        import optuna

        self.url = url
        self.worker = worker or f"{os.uname().nodename}:{os.getpid()}"
        self.storage = open_storage(url)
        self.study = optuna.create_study(
            storage=self.storage, study_name=STUDY_NAME, load_if_exists=True, direction="minimize"
        )
        self._id = self.study._study_id

    # ------------------------------------------------------------------ the search's side

    def submit(self, call: str, X: np.ndarray) -> int:
        """Enqueue one trial per row of ``X`` (n, n_var) for ``call``; rows already there (a resumed call) are kept,
        done or not. Returns how many were enqueued."""
        have = {int(t.user_attrs["row"]) for t in self.trials(call) if not _failed(t)}
        added = 0
        for row, x in enumerate(np.asarray(X, dtype=np.int64)):
            if row not in have:
                self._enqueue(call, row, x)
                added += 1
        return added

    def _enqueue(self, call: str, row: int, x: np.ndarray) -> None:
        self.study.enqueue_trial({}, user_attrs={"call": call, "row": int(row), "x": [int(v) for v in x]})

    def wait(
        self,
        call: str,
        n: int,
        work: Work | None = None,
        *,
        stale_after_s: float = 600.0,
        timeout_s: float | None = None,
    ) -> np.ndarray:
        """The values of rows 0..n-1 of ``call`` once every one is complete, shape (n,).

        Meanwhile this process scores trials of the call itself with ``work`` (None: it only waits), fails and
        re-enqueues claims older than ``stale_after_s`` (their process died), and raises the error a worker reported
        for a candidate it could not score.
        """
        start = time.monotonic()
        while True:
            trials = self.trials(call)
            done = {int(t.user_attrs["row"]): float(t.value) for t in trials if t.state.name == "COMPLETE"}
            if len(done) >= n:
                return np.asarray([done[r] for r in range(n)], dtype=float)
            pending = {int(t.user_attrs["row"]) for t in trials if t.state.name in ("WAITING", "RUNNING")}
            for t in trials:
                row = int(t.user_attrs["row"])
                if t.state.name == "FAIL" and "error" in t.user_attrs and row not in done and row not in pending:
                    raise SearchError(
                        f"Worker {t.user_attrs.get('worker')} could not score candidate {t.user_attrs['row']} of "
                        f"estimator call {call}: {t.user_attrs['error']}"
                    )
            claim = self.claim(call) if work is not None else None
            if claim is not None:
                self.run(claim, work)  # type: ignore[arg-type]
                continue
            self._requeue_stale(trials, stale_after_s)
            if timeout_s is not None and time.monotonic() - start > timeout_s:
                raise SearchError(
                    f"Estimator call {call} still lacks {n - len(done)} of {n} results after {timeout_s:.0f} s; are "
                    f"the workers of '{self.url}' running?"
                )
            time.sleep(POLL_S)

    def _requeue_stale(self, trials: list[Any], stale_after_s: float) -> None:
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        now = datetime.datetime.now()
        for t in trials:
            if t.state != TrialState.RUNNING or t.datetime_start is None:
                continue
            if (now - t.datetime_start).total_seconds() <= stale_after_s:
                continue
            try:
                self.storage.set_trial_user_attr(t._trial_id, "stale", True)
                self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except UpdateFinishedTrialError:
                continue  # it finished meanwhile
            self._enqueue(t.user_attrs["call"], int(t.user_attrs["row"]), np.asarray(t.user_attrs["x"]))

    def close(self) -> None:
        """Tell the workers the search is over (they exit when the queue is empty)."""
        self.study.set_user_attr("closed", True)

    def reopen(self) -> None:
        """A search (re)starting in this storage: workers should stay."""
        self.study.set_user_attr("closed", False)

    def closed(self) -> bool:
        return bool(self.storage.get_study_user_attrs(self._id).get("closed", False))

    # ------------------------------------------------------------------ every process's side

    def claim(self, call: str | None = None) -> Claim | None:
        """Move one WAITING trial (of ``call``, or any) to RUNNING for this process; None when there is none."""
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        with self._claim_lock():
            for t in self.storage.get_all_trials(self._id, deepcopy=False, states=(TrialState.WAITING,)):
                if call is not None and t.user_attrs.get("call") != call:
                    continue
                try:
                    if not self.storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                        continue  # another process took it first
                except UpdateFinishedTrialError:
                    continue
                self.storage.set_trial_user_attr(t._trial_id, "worker", self.worker)
                x = np.asarray(t.user_attrs["x"], dtype=np.int64)
                return Claim(t._trial_id, t.number, str(t.user_attrs["call"]), int(t.user_attrs["row"]), x)
        return None

    @contextlib.contextmanager
    def _claim_lock(self) -> Iterator[None]:
        """An exclusive file lock beside an SQLite database (whose transactions do not lock the row read for a
        claim); nothing for journal files (optuna resolves claims in the log) and server databases (row locks)."""
        if not self.url.startswith("sqlite:///"):
            yield
            return
        path = self.url.removeprefix("sqlite:///") + ".claim-lock"
        with open(path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def run(self, claim: Claim, work: Work) -> bool:
        """Score ``claim`` with ``work`` and write the value (and the attributes ``work`` returns beside it, such as
        where its time went); False if the trial was failed meanwhile (stale).

        An exception in ``work`` fails the trial with its message (the search then stops with it) and is re-raised.
        """
        from optuna.exceptions import UpdateFinishedTrialError
        from optuna.trial import TrialState

        t0 = time.perf_counter()
        try:
            out = work(claim)
        except Exception as exc:
            self.storage.set_trial_user_attr(claim.trial_id, "error", f"{type(exc).__name__}: {exc}")
            self.storage.set_trial_state_values(claim.trial_id, TrialState.FAIL)
            raise
        value, attrs = (float(out[0]), dict(out[1])) if isinstance(out, tuple) else (float(out), {})
        try:
            for key, v in attrs.items():
                self.storage.set_trial_user_attr(claim.trial_id, key, v)
            self.storage.set_trial_user_attr(claim.trial_id, "seconds", time.perf_counter() - t0)
            self.storage.set_trial_state_values(claim.trial_id, TrialState.COMPLETE, [value])
        except UpdateFinishedTrialError:
            return False
        return True

    def trials(self, call: str) -> list[Any]:
        """Every trial of ``call``, as optuna FrozenTrials (who scored what, and how long it took)."""
        return [t for t in self.storage.get_all_trials(self._id, deepcopy=False) if t.user_attrs.get("call") == call]


def _failed(trial: Any) -> bool:
    return trial.state.name == "FAIL"


def serve(
    queue: TrialQueue,
    work: Work,
    *,
    idle_timeout_s: float = 1800.0,
    parent_pid: int | None = None,
    on_done: Callable[[Claim, bool], None] | None = None,
) -> int:
    """A worker's loop: claim, score, write back, until the search closes the queue (and nothing waits), the parent
    process that started this one is gone, or nothing came for ``idle_timeout_s``. Returns the trials scored."""
    scored = 0
    idle_since = time.monotonic()
    while True:
        claim = queue.claim()
        if claim is not None:
            ok = queue.run(claim, work)
            scored += int(ok)
            if on_done is not None:
                on_done(claim, ok)
            idle_since = time.monotonic()
            continue
        if queue.closed():
            return scored
        if parent_pid is not None and os.getppid() != parent_pid:
            return scored  # the search that spawned this worker died (we were re-parented)
        if time.monotonic() - idle_since > idle_timeout_s:
            return scored
        time.sleep(POLL_S)
