"""Every bad input of issue #16 is one sentence on stderr, exit status 2, and refused before the command's work."""

from __future__ import annotations

import shutil

import pytest
import torch

from latprune.cli import main

from helpers import bad_input_files


@pytest.fixture(scope="module")
def files(tmp_path_factory, fake_fashion_mnist) -> dict:
    return bad_input_files(tmp_path_factory.mktemp("inputs"), fake_fashion_mnist)


@pytest.fixture(autouse=True)
def _data(monkeypatch, files):
    monkeypatch.setenv("LATPRUNE_DATA", str(files["data"]))


def refused(capsys, argv: list) -> str:
    """Run the CLI; it must exit 2 with exactly one line on stderr and no traceback. Returns that line."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse
        code = exc.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


def test_prune_apply_never_overwrites_a_checkpoint_silently(files, tmp_path, capsys):
    trained = tmp_path / "checkpoint.pt"
    shutil.copy(files["parent"], trained)
    before = trained.read_bytes()
    argv = ["prune", "--apply", files["plan"], "--checkpoint", trained, "--out", tmp_path]
    line = refused(capsys, argv)
    assert "already holds a checkpoint.pt" in line and "--force" in line
    assert trained.read_bytes() == before
    assert main([str(a) for a in [*argv[:3], "--checkpoint", files["parent"], "--out", tmp_path, "--force"]]) == 0
    assert torch.load(trained, weights_only=True)["plan"] is not None  # replaced, as asked
