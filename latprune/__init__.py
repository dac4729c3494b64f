"""latprune: prune CNNs for real, measured CPU latency, and compile them to sparse kernels that make it true.

The public API is re-exported here and imported lazily (PEP 562), so ``import latprune`` stays cheap and
users never need deep import paths.
"""

from __future__ import annotations

import importlib
from typing import Any

from latprune._version import __version__
from latprune.errors import LatpruneError

# public name -> (module, attribute)
_EXPORTS: dict[str, tuple[str, str]] = {
    # models
    "ModelSpec": ("latprune.models", "ModelSpec"),
    "create_model": ("latprune.models", "create_model"),
    "list_models": ("latprune.models", "list_models"),
    "register_model": ("latprune.models", "register_model"),
    # data and training
    "DataConfig": ("latprune.data", "DataConfig"),
    "find_dataset_root": ("latprune.data", "find_dataset_root"),
    "load_splits": ("latprune.data", "load_splits"),
    "TrainConfig": ("latprune.train", "TrainConfig"),
    "evaluate": ("latprune.train", "evaluate"),
    "load_model_from_checkpoint": ("latprune.train", "load_model_from_checkpoint"),
    "train_model": ("latprune.train", "train_model"),
    # pruning
    "Arch": ("latprune.space", "Arch"),
    "SearchSpace": ("latprune.space", "SearchSpace"),
    "PruningPlan": ("latprune.prune", "PruningPlan"),
    "apply_plan": ("latprune.prune", "apply_plan"),
    "bake_masks": ("latprune.prune", "bake_masks"),
    "list_schemes": ("latprune.schemes", "list_schemes"),
    "register_scheme": ("latprune.schemes", "register_scheme"),
    "load_pruned": ("latprune.prune", "load_pruned"),
    "plan_from_arch": ("latprune.prune", "plan_from_arch"),
    "uniform_plan": ("latprune.prune", "uniform_plan"),
    # engine
    "CompiledModel": ("latprune.engine", "CompiledModel"),
    "compile_model": ("latprune.engine", "compile"),
    "export_c": ("latprune.engine", "export_c"),
    # export bundles
    "ExportBundle": ("latprune.export", "ExportBundle"),
    "ExportConfig": ("latprune.export", "ExportConfig"),
    "export_checkpoint": ("latprune.export", "export_checkpoint"),
    "export_model": ("latprune.export", "export_model"),
    # search and accuracy estimation
    "SearchConfig": ("latprune.search", "SearchConfig"),
    "SearchResult": ("latprune.search", "SearchResult"),
    "list_algorithms": ("latprune.search", "list_algorithms"),
    "register_algorithm": ("latprune.search", "register_algorithm"),
    "run_search": ("latprune.search", "run_search"),
    "SearchJob": ("latprune.pipeline", "SearchJob"),
    "search_checkpoint": ("latprune.pipeline", "search_checkpoint"),
    "SupernetConfig": ("latprune.supernet", "SupernetConfig"),
    "SupernetEstimator": ("latprune.supernet", "SupernetEstimator"),
    # comparisons with other runtimes
    "list_runtimes": ("latprune.bench", "list_runtimes"),
    "register_runtime": ("latprune.bench", "register_runtime"),
    # the quick start's main job
    "RunConfig": ("latprune.pipeline", "RunConfig"),
    "RunReport": ("latprune.pipeline", "RunReport"),
    "run_pipeline": ("latprune.pipeline", "run_pipeline"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        module, attr = _EXPORTS[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value  # import once
        return value
    raise AttributeError(f"module 'latprune' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = ["LatpruneError", "__version__", *_EXPORTS]
