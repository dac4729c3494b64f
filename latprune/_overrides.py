"""One rule for changing a frozen config from optional settings: None keeps the value, unknown names are refused."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from latprune.errors import SearchError

T = TypeVar("T")


def override(config: T, changes: Mapping[str, Any], what: str) -> T:
    """A copy of the dataclass ``config`` with ``changes`` applied, skipping None values (a CLI flag left unset keeps
    the preset's value); a name that is not a field is an error naming it, so a typo never silently does nothing."""
    fields = {f.name for f in dataclasses.fields(config)}  # type: ignore[arg-type]
    unknown = sorted(set(changes) - fields)
    if unknown:
        raise SearchError(f"Unknown {what}(s) {', '.join(unknown)}; valid: {', '.join(sorted(fields))}.")
    return dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})  # type: ignore[type-var]
