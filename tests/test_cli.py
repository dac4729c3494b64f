"""The CLI as a user meets it: every subcommand and flag explains itself, and user errors are one sentence."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from latprune.cli import build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_flag_has_help():
    missing = []
    for name, sub in _subparsers(build_parser()).items():
        if not sub.description and not sub.format_usage():
            missing.append(name)
        for action in sub._actions:
            if action.option_strings and action.help in (None, "") and action.dest != "help":
                missing.append(f"{name} {action.option_strings[0]}")
            if not action.option_strings and action.help in (None, "") and action.dest != "help":
                missing.append(f"{name} <{action.dest}>")
    assert not missing, f"flags without help text: {missing}"


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in ("resnet20", "mobilenet_v2", "resnet18"):
        assert name in out


def test_console_script_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "latprune.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith("latprune ")


def test_no_command_prints_help(capsys):
    assert main([]) == 1
    assert "COMMAND" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["models", "--bogus"]])
def test_bad_flags_exit_with_usage(argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2


def test_public_api_resolves():
    import latprune

    for name in latprune.__all__:
        assert getattr(latprune, name) is not None, name


def test_latprune_warnings_print_as_one_line_and_others_keep_their_format() -> None:
    import warnings

    import latprune.latency.jobs
    from latprune.cli import _warnings_as_lines

    ours = latprune.latency.jobs.__file__
    with _warnings_as_lines("profile"):
        line = warnings.formatwarning("the tables disagree", UserWarning, ours, 375, "return x")
        other = warnings.formatwarning("old API", DeprecationWarning, "/elsewhere/lib.py", 7, "f()")
    assert line == "latprune profile: warning: the tables disagree\n"
    assert other.startswith("/elsewhere/lib.py:7: DeprecationWarning: old API")
    assert warnings.formatwarning("w", UserWarning, ours, 1, "").startswith(ours)  # restored on exit
