"""One job at a time per output folder or file: a second job is refused in one sentence naming the first one's PID,
and a job killed with SIGKILL leaves its folder to the next one (the kernel drops a flock with its holder)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from latprune._io import LOCK_NAME, output_lock
from latprune.cli import main
from latprune.errors import LatpruneError

from helpers import bad_input_files, refuse_work

#: Holds the locks of a folder (argv[1]) and of a file output (argv[2]) until it is killed.
HOLDER = textwrap.dedent(
    """
    import sys, time
    from latprune._io import output_lock
    with output_lock(sys.argv[1]), output_lock(sys.argv[2], file=True):
        print("locked", flush=True)
        time.sleep(600)
    """
)


def start(script: str, *args) -> subprocess.Popen:
    """Run ``script`` in a new Python; returns once it printed its first line (it holds its locks by then)."""
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().strip()
    assert line in ("locked", "saved"), f"the holder did not start: {line!r}"
    return proc


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory, fake_fashion_mnist) -> dict:
    return bad_input_files(tmp_path_factory.mktemp("locks"), fake_fashion_mnist)


@pytest.fixture(scope="module")
def holder(files):
    """A process holding ``busy/`` and ``busy.json`` next to the inputs, for the whole module."""
    proc = start(HOLDER, files["root"] / "busy", files["root"] / "busy.json")
    yield proc
    kill9(proc)


def test_a_second_holder_is_refused_and_a_killed_ones_lock_is_released(tmp_path):
    folder, file = tmp_path / "run", tmp_path / "profile.json"
    proc = start(HOLDER, folder, file)
    for path, kw in ((folder, {}), (file, {"file": True})):
        busy = rf"'{path}' is in use by another latprune job \(PID {proc.pid}\)"
        with pytest.raises(LatpruneError, match=busy), output_lock(path, **kw):
            pass
    kill9(proc)
    assert (folder / LOCK_NAME).read_text().strip() == str(proc.pid)  # SIGKILL left the file, but not the lock
    with output_lock(folder), output_lock(file, file=True):
        assert (folder / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (folder / LOCK_NAME).exists() and not (tmp_path / f".profile.json{LOCK_NAME}").exists()


#: Every command that writes, pointed at the held folder (or file).
LOCKED = {
    "train": lambda f, d, j: ["train", "--epochs", "1", "--out", d],
    "finetune": lambda f, d, j: ["finetune", "--plan", f["plan"], "--checkpoint", f["parent"], "--out", d],
    "prune --apply": lambda f, d, j: ["prune", "--apply", f["plan"], "--checkpoint", f["parent"], "--out", d],
    "prune": lambda f, d, j: ["prune", "--model", "resnet20", "--width", "0.5", "--sparsity", "0.5", "--out", j],
    "search": lambda f, d, j: ["search", "--checkpoint", f["parent"], "--profile", f["profile"], "--out", d],
    "run": lambda f, d, j: ["run", "--checkpoint", f["parent"], "--profile", f["profile"], "--out", d],
    "demo": lambda f, d, j: ["demo", "--checkpoint", f["parent"], "--profile", f["profile"], "--out", d],
    "profile": lambda f, d, j: ["profile", "--model", "resnet20", "--input-size", "1x28x28", "--out", j],
    "profile --emit-jobs": lambda f, d, j: ["profile", "--model", "resnet20", "--emit-jobs", j],
    "measure": lambda f, d, j: ["measure", f["corrupt_json"], "--out", j],
    "validate-latency": lambda f, d, j: ["validate-latency", "--profile", f["profile"], "--out", d],
    "validate-accuracy": lambda f, d, j: ["validate-accuracy", "--search", d],
    "compile": lambda f, d, j: ["compile", "--model", "resnet20", "--out", d],
    "export": lambda f, d, j: ["export", "--checkpoint", f["parent"], "--out", d],
    "export --c": lambda f, d, j: ["export", "--checkpoint", f["parent"], "--c", d],
}  # fmt: skip


@pytest.mark.parametrize("command", list(LOCKED))
def test_every_command_refuses_a_folder_another_job_holds(command, files, holder, monkeypatch, capsys):
    monkeypatch.setenv("LATPRUNE_DATA", str(files["data"]))
    refuse_work(monkeypatch)
    argv = LOCKED[command](files, files["root"] / "busy", files["root"] / "busy.json")
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"in use by another latprune job (PID {holder.pid})" in err[0], err


#: A `latprune train` that stops for good after saving its first epoch, holding its run folder, until killed.
TRAIN_THEN_HANG = textwrap.dedent(
    """
    import sys, time
    import latprune.train.loop as loop
    save = loop._save
    def save_then_hang(*args, **kwargs):
        save(*args, **kwargs)
        print("saved", flush=True)
        time.sleep(600)
    loop._save = save_then_hang
    from latprune.cli import main
    main(sys.argv[1:])
    """
)


def test_a_killed_train_is_refused_while_alive_then_resumes(files, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LATPRUNE_DATA", str(files["data"]))  # the child inherits it
    out = tmp_path / "run"
    argv = ["train", "--out", str(out), "--epochs", "2", "--batch-size", "25", "--width-mult", "0.25",
            "--val-per-class", "1", "--threads", "1"]  # fmt: skip
    job = start(TRAIN_THEN_HANG, *argv)  # epoch 1 is on disk, epoch 2 never comes
    assert main([*argv, "--resume"]) == 2
    assert f"in use by another latprune job (PID {job.pid})" in capsys.readouterr().err
    kill9(job)
    assert main([*argv, "--resume"]) == 0  # the same folder, right after the kill -9
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 2


def test_a_job_that_calls_another_on_its_own_folder_does_not_refuse_itself(tmp_path):
    with output_lock(tmp_path):
        with output_lock(tmp_path):
            assert (tmp_path / LOCK_NAME).exists()
        assert (tmp_path / LOCK_NAME).exists()  # the inner call leaves the outer one's lock alone
    assert not (tmp_path / LOCK_NAME).exists()


def test_a_planted_link_as_lock_file_is_refused_and_its_target_untouched(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    for name, plant in (("symlink", os.symlink), ("hardlink", os.link)):
        out = tmp_path / name
        out.mkdir()
        plant(victim, out / LOCK_NAME)
        with pytest.raises(LatpruneError) as exc, output_lock(out):
            pass
        assert str(out) in str(exc.value) and "\n" not in str(exc.value)
    assert victim.read_text() == "keep me\n"


def test_torchrun_workers_leave_the_lock_to_rank_0(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with output_lock(tmp_path / "run"):
        assert (tmp_path / "run").is_dir() and not (tmp_path / "run" / LOCK_NAME).exists()
