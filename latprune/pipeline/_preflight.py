"""`latprune run`'s inputs checked before any stage starts, so a bad one costs a second, not a baseline evaluation."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch.nn as nn

from latprune._limits import check_threads
from latprune.data.datasets import find_dataset_root
from latprune.errors import ProfileError, SearchError
from latprune.latency.profile import LatencyProfile, load_profile
from latprune.pipeline._config import DEFAULT_DATA, DEFAULT_MODEL, RunConfig
from latprune.pipeline._search_inputs import check_parent, check_profile_fits, checkpoint_data
from latprune.train.checkpoint import load_model_from_checkpoint, resolve_checkpoint_path


def check_run_inputs(cfg: RunConfig) -> RunConfig:
    """Refuse now, in one sentence, what a stage would refuse minutes later: threads beyond the cores, a pruned
    parent or one of another model than ``--model``, a dataset that is missing or not the parent's, a profile of
    another device, thread count or model, and a latency budget below the fastest model the profile predicts.

    Returns ``cfg`` with ``model`` and ``data`` taken from the parent checkpoint when they were left unset (else
    the defaults), so the run is named after the model it really prunes.
    """
    check_threads(cfg.threads)
    parent: tuple[nn.Module, dict[str, Any]] | None = None
    if cfg.checkpoint is not None:
        path = resolve_checkpoint_path(cfg.checkpoint)
        parent = load_model_from_checkpoint(path)  # checks the file's keys and that its weights fit the model
        ckpt = parent[1]
        check_parent(ckpt, path, cfg.model)
        recorded = checkpoint_data(ckpt, path, cfg.data).name  # refuses a --data that is not the parent's
        cfg = dataclasses.replace(cfg, model=ckpt["model"], data=cfg.data or recorded)
    else:
        cfg = dataclasses.replace(cfg, model=cfg.model or DEFAULT_MODEL, data=cfg.data or DEFAULT_DATA)
    find_dataset_root(cfg.data)  # type: ignore[arg-type]
    if cfg.profile is not None:
        prof = load_profile(cfg.profile, force=cfg.force_profile, threads=cfg.threads)
        if parent is None:
            if prof.model.name != cfg.model:
                raise ProfileError(
                    f"The latency profile '{cfg.profile}' is for {prof.model.name}, not {cfg.model}; profile it with "
                    f"`latprune profile --model {cfg.model}`."
                )
        else:
            check_profile_fits(prof, cfg.profile, parent[1])
            if cfg.latency_budget_ms is not None:
                _check_budget(cfg, prof, *parent)
    return cfg


def _check_budget(cfg: RunConfig, prof: LatencyProfile, model: nn.Module, ckpt: dict[str, Any]) -> None:
    """The budget must be reachable: at least the fastest architecture of the search space, as the profile
    predicts it (the search refuses the same, but only after the baseline and the super-net's data are loaded)."""
    from latprune.latency.predictor import TrilinearPredictor
    from latprune.search.results import smallest_latency
    from latprune.space import SearchSpace

    kwargs = ckpt["model_kwargs"]
    space = SearchSpace.from_model(model, kwargs["input_size"], kwargs["in_channels"], scheme=prof.scheme)
    searched = space.restrict("joint" if cfg.mode == "sequential" else cfg.mode)  # type: ignore[arg-type]
    _, fastest = smallest_latency(TrilinearPredictor(prof, space).predict, searched.xl, searched.xu)
    budget = float(cfg.latency_budget_ms)  # type: ignore[arg-type]
    if budget < fastest:
        raise SearchError(
            f"The latency budget {budget:.4g} ms is below the fastest {cfg.model} the profile '{cfg.profile}' "
            f"predicts in mode '{cfg.mode}' ({fastest:.4g} ms); raise --latency-budget to at least {fastest:.4g} ms."
        )


__all__ = ["check_run_inputs"]
