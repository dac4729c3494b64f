"""Weight-sparsity schemes (JCW's group-of-4; NPAS's block-punched, pattern, block FC; unstructured; 2:4): one registry.

Pruning makes masks with a scheme, the search space asks which scheme each layer can take and what its channel
counts round to, and the engine recognises a scheme in a weight's zeros and picks the kernels that run it. All three
read the :class:`Scheme` records here, so a new scheme is one ``register_scheme`` entry (plus its engine kernel), and
the tests parametrised over :func:`list_schemes` cover it at once.
"""

from latprune.schemes import _builtin  # noqa: F401 - registers the built-in schemes
from latprune.schemes._registry import (
    LAYER_KINDS,
    Scheme,
    SchemeLayer,
    SchemeParams,
    detection_order,
    get_scheme,
    layer_scheme,
    list_schemes,
    make_mask,
    mask_sparsity,
    register_scheme,
)
from latprune.schemes._structure import BLOCK_IN, BLOCK_OUT, FULL_PATTERN, ROWS, PATTERNS_3x3, kernel_patterns

__all__ = [
    "BLOCK_IN",
    "BLOCK_OUT",
    "FULL_PATTERN",
    "LAYER_KINDS",
    "ROWS",
    "PATTERNS_3x3",
    "Scheme",
    "SchemeLayer",
    "SchemeParams",
    "detection_order",
    "get_scheme",
    "kernel_patterns",
    "layer_scheme",
    "list_schemes",
    "make_mask",
    "mask_sparsity",
    "register_scheme",
]
