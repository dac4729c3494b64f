"""Fuzzing the CLI: hypothesis puts one generated bad value into one flag of a valid command line, for every
subcommand and every flag of it that ``build_parser()`` lists; the command must exit with status 2 and one sentence
on stderr, without a traceback and before it starts its real work (see helpers.refuse_work)."""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latprune._limits import MAX_SEED, usable_cores
from latprune.cli import build_parser

from helpers import bad_input_files, refuse_work, refused


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("the CLI has no subcommands")


SUBPARSERS = _subparsers()


def valid_command(command: str, f: dict) -> list:
    """A command line that would run (and start real work): the fuzzed flag is appended and, argparse keeping a
    flag's last value, replaces the valid one."""
    out = f["root"] / "out"
    search = ["--checkpoint", f["parent"], "--profile", f["profile"]]
    return {
        "demo": ["demo", *search, "--out", out / "demo"],
        "run": ["run", *search, "--out", out / "run"],
        "train": ["train", "--out", out / "train", "--epochs", "1", "--width-mult", "0.25"],
        "eval": ["eval", "--checkpoint", f["parent"]],
        "prune": ["prune", "--model", "resnet20", "--width", "0.5", "--sparsity", "0.5", "--in-channels", "1",
                  "--input-size", "28", "--width-mult", "0.25", "--out", out / "plan.json"],
        "finetune": ["finetune", "--plan", f["plan"], "--checkpoint", f["parent"], "--out", out / "finetune"],
        "profile": ["profile", "--model", "resnet20", "--input-size", "1x28x28", "--out", out / "profile.json"],
        "measure": ["measure", f["jobs"], "--out", out / "table.json"],
        "validate-latency": ["validate-latency", "--profile", f["profile"], "--samples", "3", "--out", out / "val"],
        "search": ["search", *search, "--out", out / "search"],
        "validate-accuracy": ["validate-accuracy", "--search", f["search"]],
        "bench": ["bench", "--model", "resnet20", "--input-size", "32", "--runs", "1"],
        "compile": ["compile", "--model", "resnet20", "--input-size", "32", "--out", out / "compile"],
        "export": ["export", "--checkpoint", f["parent"], "--out", out / "export"],
        "replace": ["replace", "--model", "resnet20", "--input-size", "1x28x28", "--runs", "10",
                    "--out", out / "replace.json"],
        # no search is running here: the worker refuses --run after its other flags, so those are fuzzed
        "search-worker": ["search-worker", "--run", f["empty_dir"]],
    }[command]  # fmt: skip


#: Files that no command takes where a checkpoint, plan, profile, jobs file or search folder is expected.
BAD_FILES = ("missing", "empty_dir", "a_file", "corrupt_json", "empty", "corrupt_pt", "evil_pt", "big",
             "plan_list", "plan_null_sparsity", "plan_no_groups", "fifo")  # fmt: skip
INPUT_FLAGS = {"checkpoint", "plan", "profile", "apply", "assemble", "jobs", "search"}
FILE_OUTPUTS = {("replace", "out"), ("prune", "out"), ("profile", "out"), ("measure", "out"), ("profile", "emit_jobs")}
#: Integer flags for which 0 is a valid value; every other integer flag needs at least 1, and none takes a negative.
ZERO_OK = {"seed", "split_seed", "val_per_class", "generations", "train_per_class", "warmup",
           "supernet_channel_epochs", "supernet_weight_epochs", "phase3_per_class", "npas_elites"}  # fmt: skip
#: Bad strings for the flags parsed from text (--latency-budget 2.5ms, --grid 8,10, --input-size 1x28x28, ...).
BAD_TEXT = ("", "x", "-1", "nan", "0,0", "a,b", "3x0x0", "1,2,3", "💥")


def bad_value(command: str, action: argparse.Action, f: dict) -> st.SearchStrategy:
    """Values ``action``'s flag must refuse, by what the flag takes."""
    if action.choices is not None:
        return st.sampled_from(["not-a-choice", "", "RESNET20"])
    if action.type is int:
        low = 0 if action.dest in ZERO_OK else 1
        high = {"threads": usable_cores(), "seed": MAX_SEED, "split_seed": MAX_SEED}.get(action.dest)
        above = st.nothing() if high is None else st.integers(min_value=high + 1)
        return (st.integers(max_value=low - 1) | above).map(str)
    if action.type is float:
        negative = st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False)
        return (st.sampled_from([math.nan, math.inf, -math.inf]) | negative).map(repr)
    if action.dest in INPUT_FLAGS:
        return st.sampled_from(BAD_FILES).map(lambda name: f["root"] / "missing.pt" if name == "missing" else f[name])
    if action.dest in ("out", "c", "emit_jobs"):
        taken = f["empty_dir"] if (command, action.dest) in FILE_OUTPUTS else f["a_file"]
        return st.sampled_from([taken, f["a_file"] / "out", "/dev/null"])
    if action.dest == "storage":
        return st.sampled_from(["", "nosuchdb://host/db", f["empty_dir"], f["a_file"] / "trials.journal"])
    if action.dest == "data":
        return st.sampled_from(["/nonexistent/images", str(f["a_file"]), "imagenet-foo", "cifar10"])
    if action.dest == "model":
        return st.sampled_from(["nosuchnet", "mobilenet_v2"] if command == "search" else ["nosuchnet"])
    return st.sampled_from(BAD_TEXT)


def fuzzable(command: str) -> list[argparse.Action]:
    """The flags of ``command`` that take a value (switches like --resume have no bad value)."""
    return [a for a in SUBPARSERS[command]._actions if a.dest != "help" and a.nargs != 0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, fake_fashion_mnist) -> dict:
    from latprune.latency.jobs import save_jobs
    from latprune.latency.profiling import ProfileConfig, make_jobs
    from latprune.models import ModelSpec

    f = bad_input_files(tmp_path_factory.mktemp("fuzz"), fake_fashion_mnist)
    spec = ModelSpec("resnet20", 10, 1, 28, 0.25)
    f["jobs"] = save_jobs(make_jobs(spec, ProfileConfig(calibration_models=2)), f["root"] / "jobs.json")
    f["search"] = f["empty_dir"]  # no finished search: validate-accuracy refuses any folder here, fuzzed or not
    return f


def assert_refused(argv: list, capsys, files: dict) -> None:
    capsys.readouterr()  # nothing from an earlier example
    line = refused(capsys, argv)  # exit 2, one line, no traceback
    assert line.startswith("latprune") and "error:" in line, f"{argv}: {line}"
    assert not files["marker"].exists(), "a pickle payload ran"


COMMANDS = [c for c in SUBPARSERS if fuzzable(c)]


def test_every_command_with_flags_is_fuzzed():
    assert set(COMMANDS) == set(SUBPARSERS) - {"models"}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_bad_value_in_any_flag_is_one_sentence(command, files, monkeypatch, capsys):
    monkeypatch.setenv("LATPRUNE_DATA", str(files["data"]))
    refuse_work(monkeypatch)
    actions = fuzzable(command)

    @settings(
        max_examples=min(2 * len(actions), 30),
        deadline=None,
        derandomize=True,  # the same examples on every run: CI stays deterministic
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(data=st.data())
    def check(data):
        action = data.draw(st.sampled_from(actions), label="flag")
        value = data.draw(bad_value(command, action, files), label="value")
        flag = action.option_strings[0] if action.option_strings else None
        argv = valid_command(command, files)
        # --flag=VALUE, since a value like -inf would read as a flag; a positional (measure's jobs) is replaced
        bad = [value if a == files["jobs"] else a for a in argv] if flag is None else [*argv, f"{flag}={value}"]
        assert_refused(bad, capsys, files)

    check()
