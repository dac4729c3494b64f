"""User-facing errors: one clear sentence naming the input and what to do."""

from __future__ import annotations


class LatpruneError(Exception):
    """An error caused by the user's input or environment, not by a bug in latprune.

    The message is one sentence that names the offending input (a file, a layer, a value) and says
    what to do about it. The CLI prints it without a traceback and exits with status 2.
    """


class DataError(LatpruneError):
    """A dataset file is missing, truncated or corrupt."""


class ModelError(LatpruneError):
    """A model, checkpoint or layer cannot be used as asked."""


class PlanError(LatpruneError):
    """A pruning plan or architecture does not fit the model, or holds an invalid value."""


class EngineError(LatpruneError):
    """The sparse engine cannot compile or run a model (no C compiler, unsupported op, ...)."""


class ProfileError(LatpruneError):
    """A latency profile is missing, corrupt, or was measured on another device or engine version."""


class SearchError(LatpruneError):
    """A search cannot start or resume as asked (impossible budget, mismatched run directory, ...)."""


class ArgumentError(LatpruneError):
    """A command-line value (a latency budget, a grid, an input size) cannot be read as what its flag expects."""
