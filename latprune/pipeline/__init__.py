"""The main job, `latprune run`: from a model and a dataset to measured, deployable pruned models and a report."""

from latprune.pipeline._config import PIPELINE_PRESETS, STAGES, PipelinePreset, RunConfig
from latprune.pipeline._report import ModelRow, RunReport, write_report
from latprune.pipeline._search_inputs import (
    SearchInputs,
    SearchJob,
    SearchOutcome,
    build_search_inputs,
    checkpoint_data,
    completed_calls,
    search_checkpoint,
    search_inputs,
)
from latprune.pipeline._stages import run_pipeline

__all__ = [
    "PIPELINE_PRESETS",
    "STAGES",
    "ModelRow",
    "PipelinePreset",
    "RunConfig",
    "RunReport",
    "SearchInputs",
    "SearchJob",
    "SearchOutcome",
    "build_search_inputs",
    "checkpoint_data",
    "completed_calls",
    "run_pipeline",
    "search_checkpoint",
    "search_inputs",
    "write_report",
]
