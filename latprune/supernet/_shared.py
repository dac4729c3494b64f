"""The super-net estimator with its scoring fanned out through optuna's storage: the search trains each call's
super-net, saves it, and enqueues one trial per candidate; it and any number of worker processes (on this machine
or others that share the run folder) claim trials and score them (BN recalibration + validation)."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import numpy as np

from latprune.errors import SearchError
from latprune.search.trials import Claim, TrialQueue
from latprune.supernet._estimator import SupernetEstimator

#: Saved super-nets are named after the estimator call they belong to.
_WEIGHTS = "call_{:05d}.pt"


def call_id(index: int, X: np.ndarray, seed: int) -> str:
    """The name of estimator call ``index`` on candidates ``X``: a resumed search asks the same call the same name,
    so the trials already scored before a kill are reused, and a worker can tell which saved super-net to load."""
    digest = hashlib.sha256(np.ascontiguousarray(X, dtype=np.int64).tobytes() + str(seed).encode()).hexdigest()
    return f"{index:05d}-{digest[:12]}"


class SharedEstimator:
    """An :class:`~latprune.search.AccuracyEstimator` that trains the super-net here and scores through a queue.

    Errors equal the in-process estimator's exactly: every candidate is scored with the same saved weights, the
    same BN images and the same validation images, and scoring draws no randomness, so which process scores it
    does not matter (on one machine; another CPU's float rounding can, rarely, flip a borderline image).
    """

    def __init__(
        self, estimator: SupernetEstimator, queue: TrialQueue, weights_dir: Path, stale_after_s: float = 600.0
    ) -> None:
        self.estimator = estimator
        self.queue = queue
        self.weights_dir = Path(weights_dir)
        self.stale_after_s = stale_after_s
        self.last_timing: dict[str, float] = {}

    def evaluate(self, X: np.ndarray) -> np.ndarray:
        """``X`` (n, n_var) -> (n,) errors; this process scores candidates too while it waits for the others."""
        from latprune.train.checkpoint import atomic_torch_save, load_checkpoint

        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] == 0:
            raise SearchError(f"The estimator needs a non-empty (n, n_var) integer array, got shape {X.shape}.")
        unique, inverse = np.unique(X, axis=0, return_inverse=True)
        est = self.estimator
        index = est.calls
        call = call_id(index, unique, est.seed)
        path = self.weights_dir / _WEIGHTS.format(index)
        t0 = time.perf_counter()
        saved = load_checkpoint(path) if path.exists() else None
        if saved is not None and saved.get("call") == call:  # trained before a kill: its trials may be done too
            est.model.load_state_dict(saved["state_dict"])
            est.model.eval()
            est.calls += 1
        else:
            est.train_call(est.adapter.candidates(unique))
            atomic_torch_save(path, {"call": call, "state_dict": est.model.state_dict()})
        for old in self.weights_dir.glob("call_*.pt"):  # workers need this call's weights and nothing older
            if int(old.stem.split("_")[1]) < index:
                old.unlink(missing_ok=True)
        t1 = time.perf_counter()
        self.queue.submit(call, unique)
        errors = self.queue.wait(call, len(unique), work=self._score_here, stale_after_s=self.stale_after_s)
        t2 = time.perf_counter()
        trials = [t for t in self.queue.trials(call) if t.state.name == "COMPLETE"]
        self.last_timing = {
            "supernet_train_s": t1 - t0,
            "bn_recalib_s": float(sum(t.user_attrs.get("bn_s", 0.0) for t in trials)),
            "eval_s": float(sum(t.user_attrs.get("seconds", 0.0) - t.user_attrs.get("bn_s", 0.0) for t in trials)),
            "score_wall_s": t2 - t1,
            "workers": float(len({t.user_attrs.get("worker") for t in trials})),
            "candidates": float(len(unique)),
        }
        return errors[np.asarray(inverse).reshape(-1)]

    def _score_here(self, claim: Claim) -> tuple[float, dict[str, Any]]:
        """Score with the super-net this process just trained (or loaded): it is the one the call saved."""
        error, bn_s = self.estimator.score_candidate(self.estimator.adapter.candidates(claim.x[None])[0])
        return error, {"bn_s": bn_s}


class ScoringWorker:
    """What a worker process scores a claim with: the saved super-net of the claim's call, loaded once per call."""

    def __init__(self, estimator: SupernetEstimator, weights_dir: Path, wait_s: float = 60.0) -> None:
        self.estimator = estimator
        self.weights_dir = Path(weights_dir)
        self.wait_s = wait_s
        self._loaded: str | None = None

    def __call__(self, claim: Claim) -> tuple[float, dict[str, Any]]:
        if self._loaded != claim.call:
            self._load(claim.call)
        error, bn_s = self.estimator.score_candidate(self.estimator.adapter.candidates(claim.x[None])[0])
        return error, {"bn_s": bn_s}

    def _load(self, call: str) -> None:
        from latprune.train.checkpoint import load_checkpoint

        path = self.weights_dir / _WEIGHTS.format(int(call.split("-")[0]))
        deadline = time.monotonic() + self.wait_s
        while not path.exists():  # on a network file system the file may show up a moment after the trials
            if time.monotonic() > deadline:
                raise SearchError(
                    f"The super-net '{path}' of estimator call {call} is missing; is the run folder shared?"
                )
            time.sleep(0.2)
        saved = load_checkpoint(path)
        if saved.get("call") != call:
            raise SearchError(
                f"The super-net '{path}' belongs to call {saved.get('call')}, not {call}; rerun the search."
            )
        self.estimator.model.load_state_dict(saved["state_dict"])
        self.estimator.model.eval()
        self._loaded = call
