"""Atomic writers and the one-sentence errors for missing or corrupt files."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from latprune._io import atomic_write_json, read_json
from latprune.cli import main
from latprune.errors import LatpruneError
from latprune.train.checkpoint import atomic_torch_save, check_plain, load_checkpoint


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


class _Payload:
    """Unpickling this runs ``os.system`` (as a crafted checkpoint would), which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_in_a_checkpoint_is_refused_before_it_runs(tmp_path, capsys):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"model": "resnet20", "state_dict": {}, "x": _Payload(marker)}, evil)  # a torch zip with a payload
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"state_dict": _Payload(marker)}))  # a bare pickle, as torch.save once wrote
    for path, what in ((evil, r"a reference to (posix|os)\.system"), (raw, "pickle instructions")):
        with pytest.raises(LatpruneError, match=rf"'{re.escape(str(path))}' holds ({what}).*refuses") as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
    # Through the CLI: one sentence and status 2, where the payload used to run and eval reported success.
    assert main(["eval", "--checkpoint", str(evil)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(evil) in err and "refuses" in err
    assert not marker.exists()


def test_checkpoints_must_hold_plain_data_so_they_load_back_safely(tmp_path):
    path = atomic_torch_save(tmp_path / "c.pt", {"state_dict": {"w": torch.ones(2)}, "opt": {"state": {0: {}}}})
    with pytest.raises(TypeError, match=r"checkpoint\['metrics'\]\['acc'\] holds a numpy\.float64"):
        atomic_torch_save(path, {"state_dict": {}, "metrics": {"acc": np.float64(0.5)}})
    with pytest.raises(TypeError, match=r"checkpoint\['cfg'\] holds a .*Path"):
        atomic_torch_save(path, {"cfg": tmp_path})
    assert sorted(os.listdir(tmp_path)) == ["c.pt"]  # the refused saves wrote nothing and kept the old file
    assert load_checkpoint(path)["opt"] == {"state": {0: {}}}


def test_the_shipped_benchmark_checkpoint_loads_with_weights_only():
    shipped = Path(__file__).parents[1] / "benchmarks" / "results" / "resnet20-fashion-mnist.pt"
    ckpt = load_checkpoint(shipped)
    check_plain(ckpt)
    assert ckpt["model"] == "resnet20" and len(ckpt["state_dict"]) > 100
