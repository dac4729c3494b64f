"""SupernetEstimator: JCW §2.4's accuracy estimator, a super-net rebuilt each generation for exactly P ∪ Q."""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from latprune.data.datasets import DatasetInfo, ImageData, Images, in_memory
from latprune.data.sampling import class_subset
from latprune.data.transforms import Augment, apply_augment, normalize
from latprune.errors import SearchError
from latprune.space import SearchSpace
from latprune.supernet._bn import recalibrate_bn
from latprune.supernet._config import SupernetConfig
from latprune.supernet._masks import MaskedSupernet, Subnet
from latprune.supernet._space import SpaceAdapter


@dataclass(frozen=True, eq=False)
class SupernetData:
    """The data a super-net sees: the training split (minus validation), the validation split, and normalisation.

    Never the test split: the search ranks candidates on a validation split carved from the training set.
    """

    train: Images
    val: Images
    info: DatasetInfo


@dataclass(frozen=True)
class SupernetTiming:
    """Wall seconds of one :meth:`SupernetEstimator.evaluate` call, split as the search-cost experiment reports it."""

    supernet_train_s: float
    bn_recalib_s: float
    eval_s: float
    candidates: int

    def as_dict(self) -> dict[str, float]:
        return {
            "supernet_train_s": self.supernet_train_s,
            "bn_recalib_s": self.bn_recalib_s,
            "eval_s": self.eval_s,
            "candidates": float(self.candidates),
        }


def supernet_subsets(data: SupernetData, config: SupernetConfig, seed: int) -> tuple[ImageData, ImageData]:
    """The super-net's (train, val) images: a class/sample subset of the train split, and the val split's images
    of the same classes (at most ``val_per_class`` each). ``latprune validate-accuracy`` scores on the same ones.
    """
    available = int(torch.unique(data.train.labels).numel())
    classes = None if config.classes is None or config.classes >= available else config.classes  # "where it has them"
    train = data.train.subset(class_subset(data.train.labels, classes, config.train_per_class, seed))
    in_classes = torch.isin(data.val.labels, torch.unique(train.labels))
    val = data.val.subset(torch.nonzero(in_classes).flatten())
    if config.val_per_class is not None and len(val):
        val = val.subset(class_subset(val.labels, None, config.val_per_class, seed + 1))
    if len(val) == 0:
        raise SearchError("The validation split holds no image of the super-net's classes; raise val_per_class.")
    return in_memory(train), in_memory(val)  # read every epoch: a streamed folder's subsets are decoded once


def _distributed() -> ModuleType:
    """:mod:`latprune.train.distributed`, imported late so that the super-net stays importable without train/."""
    from latprune.train import distributed

    return distributed


def _train_without_dropout(model: nn.Module) -> None:
    """Train mode for BN, eval mode for dropout.

    Dropout would draw from torch's global RNG, breaking "same seed, same errors", and a super-net's few
    steps per candidate gain nothing from its regularisation.
    """
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.eval()


class SupernetEstimator:
    """Estimates error rates of the 2n candidates of one generation with a freshly trained super-net.

    Each :meth:`evaluate` call (1) restarts the shared weights from the parent (or, with ``warm_start``,
    continues from the previous call), (2) trains them on a class/sample subset of the training split,
    each batch updating ``candidates_per_batch`` randomly chosen candidates: first with channel masks only,
    then with their norm-based weight-sparsity masks too, (3) recomputes every candidate's BN statistics on
    a fixed set of R training images, and (4) measures its error on the validation split. All randomness
    comes from ``seed``: the same seed and inputs give the same errors.

    Under torchrun every rank draws the same batches and candidates from the same generator and trains on its
    strided share of each batch (``batch_size`` is the global batch), gradients averaged over ranks before each
    step; the candidates are then scored round-robin across ranks and the errors summed, so every rank returns
    the same errors and the search stays in lock-step.
    """

    def __init__(
        self,
        model: nn.Module,
        space: SearchSpace,
        data: SupernetData,
        config: SupernetConfig,
        seed: int,
        *,
        device: str | torch.device = "cpu",
        progress: bool = True,
    ) -> None:
        self.config = config
        self.seed = int(seed)
        self.device = torch.device(device)
        self.env = _distributed().init_distributed(self.device)  # a no-op outside torchrun
        if config.batch_size % self.env.world_size:
            raise SearchError(
                f"The super-net batch size {config.batch_size} does not split evenly over {self.env.world_size} "
                f"processes; use a batch size divisible by {self.env.world_size}."
            )
        self.progress = progress and self.env.is_main
        # A private copy: the shared weights are trained in place, the caller's model stays the parent.
        self.model = copy.deepcopy(model).to(self.device)
        self.parent_state = copy.deepcopy(self.model.state_dict())
        self.adapter = SpaceAdapter(space, self.model, config.importance)
        self.supernet = MaskedSupernet(self.model, self.adapter.graph)
        self._select_data(data)
        self.calls = 0
        self.last_timing: dict[str, float] = {}
        self.history: list[SupernetTiming] = []

    def _select_data(self, data: SupernetData) -> None:
        cfg = self.config
        info = data.info
        train, val = supernet_subsets(data, cfg, self.seed)
        self.train = train.to(self.device)
        self.val = val.to(self.device)
        self.mean, self.std = info.mean, info.std
        self.augment = info.augment if cfg.augment else Augment()
        # R fixed images for BN recalibration: a seeded draw from the training subset, un-augmented.
        g = torch.Generator().manual_seed(self.seed + 2)
        bn_idx = torch.randperm(len(train), generator=g)[: cfg.bn_images]
        self.bn_images = train.images[bn_idx].to(self.device)  # uint8, normalised per batch to bound memory

    # ------------------------------------------------------------------ public API

    def evaluate(self, X: np.ndarray) -> np.ndarray:
        """``X`` (n, n_var) int encodings of the candidates to rank -> (n,) validation error rates in [0, 1]."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[0] == 0:
            raise SearchError(f"The estimator needs a non-empty (n, n_var) integer array, got shape {X.shape}.")
        unique, inverse = np.unique(X, axis=0, return_inverse=True)
        candidates = self.adapter.candidates(unique)
        errors = self.evaluate_candidates(candidates)
        return errors[np.asarray(inverse).reshape(-1)]

    def evaluate_candidates(self, candidates: Sequence[Subnet]) -> np.ndarray:
        """Train a super-net holding exactly ``candidates``, then return each one's validation error."""
        if not candidates:
            raise SearchError("The estimator was given no candidate to evaluate.")
        call_seed = self.seed * 1_000_003 + self.calls
        self.calls += 1
        gen = torch.Generator().manual_seed(call_seed)
        if not self.config.warm_start or self.calls == 1:
            self.model.load_state_dict(self.parent_state)
        t0 = time.perf_counter()
        self.train_supernet(candidates, gen)
        t1 = time.perf_counter()
        errors, bn_s = self._score(candidates)
        t2 = time.perf_counter()
        timing = SupernetTiming(t1 - t0, bn_s, t2 - t1 - bn_s, len(candidates))
        self.history.append(timing)
        self.last_timing = timing.as_dict()
        return errors

    @property
    def total_timing(self) -> dict[str, float]:
        """Seconds summed over every call so far, per phase."""
        keys = ("supernet_train_s", "bn_recalib_s", "eval_s")
        return {k: float(sum(t.as_dict()[k] for t in self.history)) for k in keys}

    # ------------------------------------------------------------------ training

    def train_supernet(self, candidates: Sequence[Subnet], gen: torch.Generator) -> None:
        """Both stages of super-net training on the shared weights, sampling candidates per batch from ``gen``."""
        cfg = self.config
        epochs = cfg.channel_epochs + cfg.weight_epochs
        if epochs == 0:
            return
        n = len(self.train)
        steps_per_epoch = max(1, n // cfg.batch_size)
        params = [p for p in self.model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0
        )
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        env = self.env
        channel = [self.supernet.channel_masks(c) for c in candidates]
        weight_masks: dict[int, dict[str, torch.Tensor]] = {}
        uses = [0] * len(candidates)
        _train_without_dropout(self.model)
        for epoch in range(epochs):
            stage_weights = epoch >= cfg.channel_epochs
            perm = torch.randperm(n, generator=gen)
            desc = f"super-net {'weight' if stage_weights else 'channel'} epoch {epoch + 1}/{epochs}"
            bar = tqdm(range(steps_per_epoch), desc=desc, leave=False, disable=not self.progress, unit="batch")
            for step in bar:
                idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size].to(self.device)
                images = apply_augment(self.train.images[idx], self.augment, gen)
                y = self.train.labels[idx]
                if env.is_distributed:  # every rank drew the whole batch from the same generator; keep a share
                    images, y = images[env.rank :: env.world_size], y[env.rank :: env.world_size]
                x = normalize(images, self.mean, self.std)
                chosen = torch.randint(len(candidates), (cfg.candidates_per_batch,), generator=gen).tolist()
                opt.zero_grad(set_to_none=True)
                total = 0.0
                for c in chosen:
                    wm: Mapping[str, torch.Tensor] = {}
                    if stage_weights:
                        if c not in weight_masks or uses[c] % cfg.mask_every == 0:
                            weight_masks[c] = self.supernet.weight_masks(candidates[c])
                        uses[c] += 1
                        wm = weight_masks[c]
                    with self.supernet.active(channel[c]):
                        loss = F.cross_entropy(self.supernet.forward(x, wm), y) / len(chosen)
                    loss.backward()
                    total += float(loss.detach())
                _distributed().average_gradients(params, env)  # a no-op in a single process
                opt.step()
                sched.step()
                bar.set_postfix(loss=f"{total:.3f}")
        _distributed().broadcast_buffers(self.model)  # ranks saw different images: keep rank 0's BN statistics
        self.model.eval()

    # ------------------------------------------------------------------ scoring

    @torch.no_grad()
    def _score(self, candidates: Sequence[Subnet]) -> tuple[np.ndarray, float]:
        """Recalibrate BN and measure validation error per candidate; returns (errors, seconds spent in BN).

        Each candidate is scored as a physically smaller copy (``MaskedSupernet.extract``), which computes the
        same function as the masked super-net but runs thin candidates faster; the shared weights and their
        BN statistics are left untouched. Under torchrun rank r scores candidates r, r + K, ... and the errors
        are summed over ranks, so every rank returns all of them.
        """
        cfg = self.config
        env = self.env
        errors = np.zeros(len(candidates))
        bn_s = 0.0
        mine = range(env.rank, len(candidates), env.world_size)
        bar = tqdm(mine, desc="BN recalibration + validation", leave=False, disable=not self.progress)
        for i in bar:
            cand = candidates[i]
            small = self.supernet.extract(cand, self.supernet.weight_masks(cand))
            t0 = time.perf_counter()
            recalibrate_bn(small, lambda x, small=small: small(self._normalize(x)), self.bn_images, cfg.eval_batch_size)
            bn_s += time.perf_counter() - t0
            wrong = 0
            for s in range(0, len(self.val), cfg.eval_batch_size):
                logits = small(self._normalize(self.val.images[s : s + cfg.eval_batch_size]))
                wrong += int((logits.argmax(1) != self.val.labels[s : s + cfg.eval_batch_size]).sum())
            errors[i] = wrong / len(self.val)
        if env.is_distributed:
            errors = _distributed().all_reduce_sum(torch.from_numpy(errors).to(self.device)).cpu().numpy()
        return errors, bn_s

    def _normalize(self, images: torch.Tensor) -> torch.Tensor:
        return normalize(images, self.mean, self.std)
