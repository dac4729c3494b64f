"""latprune: prune CNNs for real, measured CPU latency, and compile them to sparse kernels that make it true."""

from latprune._version import __version__
from latprune.errors import LatpruneError
from latprune.models import create_model, list_models, register_model

__all__ = ["LatpruneError", "__version__", "create_model", "list_models", "register_model"]
