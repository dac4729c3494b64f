"""The CLI's string parsers: latency budgets, N,M grids and CxHxW input sizes, each failing with one ArgumentError."""

from __future__ import annotations

import re

from latprune.errors import ArgumentError

_UNITS_TO_MS = {"ms": 1.0, "s": 1000.0, "us": 1e-3, "µs": 1e-3}


def parse_latency(text: str) -> float:
    """'2.5ms', '2.5', '2500us' or '0.0025s' -> milliseconds (a bare number is milliseconds)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(ms|s|us|µs)?\s*", text)
    if not m or float(m.group(1)) <= 0:
        raise ArgumentError(f"The latency budget '{text}' is not a positive duration; write it like 2.5ms or 2500us.")
    return float(m.group(1)) * _UNITS_TO_MS[m.group(2) or "ms"]


def parse_grid(text: str, flag: str = "--grid") -> tuple[int, int]:
    """'8,10' -> (8, 10): channel divisions N and sparsity divisions M."""
    try:
        n, m = (int(p) for p in text.split(","))
    except ValueError:
        raise ArgumentError(f"{flag} '{text}' is not two integers N,M; write it like 8,10.") from None
    return n, m


def parse_input_size(text: str) -> tuple[int, int]:
    """'3x224x224' -> (3, 224); square images only, since the zoo models take one input size."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) != 3 or parts[1] != parts[2] or min(parts) < 1:
        raise ArgumentError(f"The input size '{text}' must be CxHxW with H == W, e.g. 3x224x224 or 1x28x28.")
    return parts[0], parts[1]


def parse_names(text: str, flag: str) -> tuple[str, ...]:
    """'onnxruntime,torch' -> ('onnxruntime', 'torch'): a comma-separated list of names, in order, without repeats."""
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise ArgumentError(f"{flag} '{text}' names nothing; write names separated by commas, like onnxruntime,torch.")
    return names


__all__ = ["parse_grid", "parse_input_size", "parse_latency", "parse_names"]
