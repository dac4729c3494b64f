"""The sparse inference engine: compile a (pruned) PyTorch CNN to generated C with weight-sparse kernels."""

from latprune.engine.activations import list_activations
from latprune.engine.capture import SUPPORTED
from latprune.engine.export import export_c
from latprune.engine.runtime import CompiledModel, CompiledSpec, LayerChoice, compile

__all__ = ["SUPPORTED", "CompiledModel", "CompiledSpec", "LayerChoice", "compile", "export_c", "list_activations"]
