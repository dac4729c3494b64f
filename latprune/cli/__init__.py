"""The `latprune` console script: a thin layer that parses flags, builds a config and calls one library function.

Each subcommand group lives in its own module (``latprune/cli/_<group>.py``) exposing
``register(subparsers)``; that module adds its parsers and sets ``func`` on each, a callable taking the
parsed ``argparse.Namespace`` and returning an exit status.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NoReturn

from latprune._version import __version__
from latprune.errors import LatpruneError

# The order here is the order `latprune --help` lists the groups in.
_COMMAND_MODULES: tuple[str, ...] = (
    "_demo",
    "_run",
    "_models",
    "_train",
    "_prune",
    "_finetune",
    "_latency",
    "_replace",
    "_search",
    "_supernet",
    "_engine",
)


class _Parser(argparse.ArgumentParser):
    """A flag argparse cannot read is one line too, like every other user error (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see `{self.prog} --help`.\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the full argument parser (also used by tests to check every flag has help text)."""
    parser = _Parser(
        prog="latprune",
        description="Prune CNNs for real, measured CPU latency: search, retrain, compile to sparse kernels.",
    )
    parser.add_argument("--version", action="version", version=f"latprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"latprune.cli.{name}").register(sub)
    return parser


_PACKAGE = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _warnings_as_lines(command: str) -> Iterator[None]:
    """Print latprune's own warnings (a busy machine, a profile that disagrees with whole-model timings) as one line
    like its errors, not with a source path and line; other libraries' warnings keep Python's format."""
    default = warnings.formatwarning

    def one_line(
        message: Warning | str, category: type[Warning], filename: str, lineno: int, line: str | None = None
    ) -> str:
        if issubclass(category, UserWarning) and Path(filename).resolve().is_relative_to(_PACKAGE):
            return f"latprune {command}: warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = one_line
    try:
        yield
    finally:
        warnings.formatwarning = default


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point. User errors print one sentence and exit 2; bugs keep their traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        with _warnings_as_lines(args.command):
            return int(args.func(args) or 0)
    except LatpruneError as exc:
        print(f"latprune {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        how = "rerun with --resume" if hasattr(args, "resume") else "rerun the same command"
        print(f"latprune {args.command}: interrupted; {how} to continue where it stopped.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
