"""The single source of latprune's version (read by pyproject and by profile fingerprints)."""

__version__ = "0.1.0"
