"""Atomic writers and the one-sentence errors for missing or corrupt files."""

from __future__ import annotations

import os

import pytest
import torch

from latprune._io import atomic_write_json, read_json
from latprune.errors import LatpruneError
from latprune.train.checkpoint import atomic_torch_save, load_checkpoint


def test_json_round_trip_leaves_no_temporary_files(tmp_path):
    path = atomic_write_json(tmp_path / "sub" / "r.json", {"a": [1, 2.5], "b": "x"})
    assert read_json(path) == {"a": [1, 2.5], "b": "x"}
    assert os.listdir(path.parent) == ["r.json"]


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = atomic_write_json(tmp_path / "r.json", {"v": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        atomic_write_json(path, {"v": Boom()})
    assert read_json(path) == {"v": 1}
    assert os.listdir(tmp_path) == ["r.json"]


def test_missing_and_corrupt_json_name_the_file(tmp_path):
    with pytest.raises(LatpruneError, match=r"nope\.json"):
        read_json(tmp_path / "nope.json", "profile")
    bad = tmp_path / "bad.json"
    bad.write_text('{"a": [1, 2')
    with pytest.raises(LatpruneError, match=r"bad\.json.*truncated"):
        read_json(bad)


def test_checkpoint_round_trip_and_corruption(tmp_path):
    path = atomic_torch_save(tmp_path / "c.pt", {"state_dict": {"w": torch.ones(3)}})
    assert torch.equal(load_checkpoint(path)["state_dict"]["w"], torch.ones(3))
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(LatpruneError, match=r"c\.pt.*truncated"):
        load_checkpoint(path)
    with pytest.raises(LatpruneError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_written_files_get_the_usual_permissions(tmp_path):
    umask = os.umask(0)
    os.umask(umask)
    path = atomic_write_json(tmp_path / "r.json", {})
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
