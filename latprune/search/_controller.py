"""NPAS's RL controller: one softmax per decision variable, trained with REINFORCE (pure numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: Entropy bonus: enough to keep every value's probability off zero over a short search, far below a typical
#: advantage (which is standardised to unit spread), so the rewards still decide.
_ENTROPY = 1e-3


@dataclass
class Controller:
    """A factorised categorical policy over integer decision variables: variable ``j`` takes ``lower[j] + k`` with
    probability ``softmax(logits[j])[k]``.

    NPAS's meta-modelling controller picks a filter type, scheme and rate per layer; its architecture is not
    given in the abstract we follow, so this one is the smallest that learns per-layer preferences: independent
    per-variable logits (as in ENAS's / MnasNet's factorised decisions, without their RNN), which also makes the
    state a few hundred numbers that save to JSON exactly. Logits are padded to the widest variable with
    ``-inf`` where a variable has fewer values.
    """

    lower: np.ndarray  # (d,) int
    sizes: np.ndarray  # (d,) int, values per variable
    logits: np.ndarray  # (d, K) float, -inf beyond each variable's size
    steps: int = 0

    @classmethod
    def uniform(cls, lower: np.ndarray, upper: np.ndarray) -> Controller:
        """A controller that starts with every value of every variable equally likely."""
        lower = np.asarray(lower, dtype=np.int64)
        sizes = np.asarray(upper, dtype=np.int64) - lower + 1
        width = int(sizes.max()) if len(sizes) else 1
        valid = np.arange(width)[None, :] < sizes[:, None]  # (d, K)
        logits = np.where(valid, 0.0, -np.inf)
        return cls(lower, sizes, logits)

    @property
    def valid(self) -> np.ndarray:
        return np.isfinite(self.logits)  # (d, K)

    def probabilities(self) -> np.ndarray:
        """(d, K) probabilities, 0 beyond each variable's size."""
        z = self.logits - self.logits.max(axis=1, keepdims=True)
        e = np.where(self.valid, np.exp(z), 0.0)
        return e / e.sum(axis=1, keepdims=True)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` decision vectors, shape (n, d), drawn with the Gumbel-max trick (one vectorised draw)."""
        d, k = self.logits.shape
        gumbel = rng.gumbel(size=(n, d, k))
        choice = np.argmax(self.logits[None] + gumbel, axis=2)  # (n, d); -inf never wins
        return self.lower[None, :] + choice

    def update(self, Z: np.ndarray, advantages: np.ndarray, lr: float) -> None:
        """One REINFORCE step: ascend mean_i A_i ∇ log π(z_i) plus an entropy bonus, by plain gradient ascent.

        ``Z`` (n, d) are samples of this policy, ``advantages`` (n,) their rewards minus a baseline. For a softmax,
        ∇_θ log π(a) = onehot(a) − p, so the gradient is a weighted count of the chosen values minus p. Not Adam:
        its per-coordinate normalisation moved variables whose values earned nothing (pure noise) as far as those
        that did (tests/test_search_npas.py), while a plain step is proportional to the evidence.
        """
        Z = np.asarray(Z, dtype=np.int64)
        adv = np.asarray(advantages, dtype=float)
        if len(Z) == 0 or not np.any(adv):
            return
        p = self.probabilities()  # (d, K)
        d, k = p.shape
        onehot = np.zeros((len(Z), d, k))
        idx = Z - self.lower[None, :]  # (n, d)
        onehot[np.arange(len(Z))[:, None], np.arange(d)[None, :], idx] = 1.0
        grad = np.einsum("n,ndk->dk", adv, onehot - p[None]) / len(Z)  # (d, K)
        logp = np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), 0.0)
        entropy = -(p * logp).sum(axis=1, keepdims=True)  # (d, 1)
        grad += _ENTROPY * (-p * (logp + entropy))  # ∂H/∂θ_k = −p_k (log p_k + H)
        self.logits = np.where(self.valid, self.logits + lr * grad, -np.inf)
        self.steps += 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON (``None`` where a logit is -inf; JSON has no infinity)."""

        def rows(a: np.ndarray) -> list[list[float | None]]:
            return [[float(x) if np.isfinite(x) else None for x in row] for row in a]

        return {
            "lower": self.lower.tolist(),
            "sizes": self.sizes.tolist(),
            "logits": rows(self.logits),
            "steps": self.steps,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Controller:
        logits = np.asarray([[-np.inf if x is None else x for x in row] for row in d["logits"]], dtype=float)
        width = logits.shape[1] if logits.ndim == 2 else 1
        logits = logits.reshape(-1, width)
        return cls(
            np.asarray(d["lower"], dtype=np.int64),
            np.asarray(d["sizes"], dtype=np.int64),
            logits,
            int(d["steps"]),
        )
