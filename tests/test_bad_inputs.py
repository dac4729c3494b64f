"""Every bad input of issue #16 is one sentence on stderr, exit status 2, and refused before the command's work."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from latprune._limits import available_memory, usable_cores
from latprune.cli import main
from latprune.errors import LatpruneError, SearchError

from helpers import WorkStarted, bad_input_files, refuse_work, refused


@pytest.fixture(scope="module")
def files(tmp_path_factory, fake_fashion_mnist) -> dict:
    return bad_input_files(tmp_path_factory.mktemp("inputs"), fake_fashion_mnist)


@pytest.fixture(autouse=True)
def _data(monkeypatch, files):
    monkeypatch.setenv("LATPRUNE_DATA", str(files["data"]))


@pytest.fixture
def no_work(monkeypatch):
    refuse_work(monkeypatch)


# --------------------------------------------------------------------------------------------- --out, every command

FOLDER_OUTS = {
    "train": lambda f: ["train", "--epochs", "1"],
    "finetune": lambda f: ["finetune", "--plan", f["plan"], "--checkpoint", f["parent"]],
    "prune --apply": lambda f: ["prune", "--apply", f["plan"], "--checkpoint", f["parent"]],
    "search": lambda f: ["search", "--checkpoint", f["parent"], "--profile", f["profile"]],
    "run": lambda f: ["run", "--checkpoint", f["parent"], "--profile", f["profile"]],
    "demo": lambda f: ["demo", "--checkpoint", f["parent"], "--profile", f["profile"]],
    "compile": lambda f: ["compile", "--checkpoint", f["parent"]],
    "export": lambda f: ["export", "--checkpoint", f["parent"]],
    "validate-latency": lambda f: ["validate-latency", "--profile", f["profile"], "--samples", "3"],
}
FILE_OUTS = {
    "prune": lambda f: ["prune", "--model", "resnet20", "--width", "0.5", "--sparsity", "0.5"],
    "profile": lambda f: ["profile", "--model", "resnet20", "--input-size", "1x28x28"],
    "profile --assemble": lambda f: ["profile", "--assemble", f["corrupt_json"]],
    "measure": lambda f: ["measure", f["corrupt_json"]],
}
UNWRITABLE = [
    pytest.param("read-only", marks=pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")),
    "under a file",
    "/dev/null",
]


def _bad_out(kind: str, f: dict, folder: bool) -> Path:
    if kind == "read-only":
        ro = f["root"] / "read-only"
        ro.mkdir(exist_ok=True)
        ro.chmod(0o500)
        return ro / "out"
    return {"taken": f["a_file"] if folder else f["empty_dir"], "under a file": f["a_file"] / "out"}.get(
        kind, Path(kind)
    )


@pytest.mark.parametrize("kind", ["taken", *UNWRITABLE])
@pytest.mark.parametrize("command", [*FOLDER_OUTS, "export --c"])
def test_a_folder_out_that_is_a_file_or_unwritable_is_refused_first(command, kind, files, capsys, no_work):
    out = _bad_out(kind, files, folder=True)
    argv = [*FOLDER_OUTS["export"](files), "--c", out] if command == "export --c" else [
        *FOLDER_OUTS[command](files), "--out", out]  # fmt: skip
    line = refused(capsys, argv)
    assert str(out) in line and ("is a file" in line or "cannot be written" in line), line


@pytest.mark.parametrize("kind", ["taken", *UNWRITABLE])
@pytest.mark.parametrize("command", [*FILE_OUTS, "profile --emit-jobs"])
def test_a_file_out_that_is_a_folder_or_unwritable_is_refused_first(command, kind, files, capsys, no_work):
    out = _bad_out(kind, files, folder=False)
    argv = [*FILE_OUTS["profile"](files), "--emit-jobs", out] if command == "profile --emit-jobs" else [
        *FILE_OUTS[command](files), "--out", out]  # fmt: skip
    line = refused(capsys, argv)
    assert str(out) in line and ("folder" in line or "regular file" in line or "cannot be written" in line), line


def test_a_refused_job_leaves_no_folder_behind(files, capsys, no_work):
    out = files["root"] / "never-made" / "run"
    refused(capsys, ["finetune", "--plan", files["plan_list"], "--checkpoint", files["parent"], "--out", out])
    assert not out.exists()


# --------------------------------------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    "argv",
    [
        lambda f: ["train", "--out", f["root"] / "t", "--batch-size", "0"],
        lambda f: ["eval", "--checkpoint", f["parent"], "--batch-size", "0"],
        lambda f: ["finetune", "--plan", f["plan"], "--checkpoint", f["parent"], "--out", f["root"] / "f",
                   "--batch-size", "0"],
        lambda f: ["validate-accuracy", "--search", f["empty_dir"], "--batch-size", "0"],
        lambda f: ["train", "--out", f["root"] / "t", "--lr", "inf"],
        lambda f: ["finetune", "--plan", f["plan"], "--checkpoint", f["parent"], "--out", f["root"] / "f",
                   "--rho-max", "inf"],
        lambda f: ["train", "--out", f["root"] / "t", "--width-mult", "nan"],
        lambda f: ["bench", "--model", "resnet20", "--input-size", "0"],
        lambda f: ["compile", "--model", "resnet20", "--input-size", "0", "--out", f["root"] / "c"],
        lambda f: ["prune", "--model", "resnet20", "--width", "0.5", "--sparsity", "0.5", "--input-size", "0",
                   "--out", f["root"] / "p.json"],
    ],
    ids=["train batch", "eval batch", "finetune batch", "validate-accuracy batch", "lr inf", "rho inf",
         "width-mult nan", "bench size 0", "compile size 0", "prune size 0"],
)  # fmt: skip
def test_bad_numbers_are_one_sentence(argv, files, capsys, no_work):
    line = refused(capsys, argv(files))
    assert "error:" in line


def test_a_batch_beyond_memory_is_one_sentence(capsys, no_work):
    assert "memory" in refused(capsys, ["bench", "--model", "resnet20", "--batch", str(10**12)])
    # small enough that its inputs fit, too large for its activations: refused once the model shows its widths
    batch = available_memory() // 50_000
    assert "memory" in refused(capsys, ["bench", "--model", "resnet20", "--batch", str(batch), "--runtimes", "torch"])


def test_an_input_beyond_memory_is_one_sentence(files, capsys, no_work):
    line = refused(capsys, ["profile", "--model", "resnet20", "--input-size", "3x100000x100000", "--out",
                            files["root"] / "p.json"])  # fmt: skip
    assert "memory" in line and "3x100000x100000" in line


@pytest.mark.parametrize(
    "argv",
    [
        lambda f, n: ["train", "--out", f["root"] / "t", "--threads", n],
        lambda f, n: ["eval", "--checkpoint", f["parent"], "--threads", n],
        lambda f, n: ["finetune", "--plan", f["plan"], "--checkpoint", f["parent"], "--out", f["root"] / "f",
                      "--threads", n],
        lambda f, n: ["profile", "--model", "resnet20", "--input-size", "1x28x28", "--out", f["root"] / "p.json",
                      "--threads", n],
        lambda f, n: ["bench", "--model", "resnet20", "--threads", n],
        lambda f, n: ["compile", "--model", "resnet20", "--out", f["root"] / "c", "--threads", n],
        lambda f, n: ["export", "--checkpoint", f["parent"], "--out", f["root"] / "e", "--threads", n],
        lambda f, n: ["run", "--checkpoint", f["parent"], "--out", f["root"] / "r", "--threads", n],
    ],
    ids=["train", "eval", "finetune", "profile", "bench", "compile", "export", "run"],
)  # fmt: skip
def test_threads_beyond_the_cores_are_refused(argv, files, capsys, no_work):
    line = refused(capsys, argv(files, str(usable_cores() + 1)))
    assert f"{usable_cores()} core(s)" in line


# ----------------------------------------------------------------------------------------- checkpoints and plans

CHECKPOINT_COMMANDS = {
    "eval": lambda f, c: ["eval", "--checkpoint", c],
    "prune": lambda f, c: ["prune", "--model", "resnet20", "--width", "0.5", "--sparsity", "0.5", "--checkpoint", c,
                           "--out", f["root"] / "p.json"],
    "prune --apply": lambda f, c: ["prune", "--apply", f["plan"], "--checkpoint", c, "--out", f["root"] / "a"],
    "finetune": lambda f, c: ["finetune", "--plan", f["plan"], "--checkpoint", c, "--out", f["root"] / "f"],
    "search": lambda f, c: ["search", "--checkpoint", c, "--profile", f["profile"], "--out", f["root"] / "s"],
    "compile": lambda f, c: ["compile", "--checkpoint", c, "--out", f["root"] / "c"],
    "export": lambda f, c: ["export", "--checkpoint", c, "--out", f["root"] / "e"],
    "run": lambda f, c: ["run", "--checkpoint", c, "--profile", f["profile"], "--out", f["root"] / "r"],
}  # fmt: skip


@pytest.mark.parametrize("command", list(CHECKPOINT_COMMANDS))
def test_a_checkpoint_with_a_bad_model_field_names_it(command, files, capsys, no_work):
    line = refused(capsys, CHECKPOINT_COMMANDS[command](files, files["big"]))
    assert "big.pt" in line and "input_size='big'" in line


@pytest.mark.parametrize("command", ["prune", "prune --apply", "finetune", "search", "run"])
def test_an_already_pruned_checkpoint_is_named_as_such(command, files, capsys, no_work):
    line = refused(capsys, CHECKPOINT_COMMANDS[command](files, files["pruned"]))
    assert "is already pruned" in line and "profile" not in line


@pytest.mark.parametrize(
    ("plan", "field"),
    [("plan_list", "is a JSON list"), ("plan_null_sparsity", "layers[0].sparsity = null"),
     ("plan_no_groups", "lacks the field 'groups'"), ("corrupt_json", "not valid JSON"), ("empty", "not valid JSON")],
)  # fmt: skip
@pytest.mark.parametrize("command", ["prune --apply", "finetune"])
def test_a_bad_plan_names_the_file_and_the_field(command, plan, field, files, capsys, no_work):
    if command == "finetune":
        argv = ["finetune", "--plan", files[plan], "--checkpoint", files["parent"], "--out", files["root"] / "f"]
    else:
        argv = ["prune", "--apply", files[plan], "--checkpoint", files["parent"], "--out", files["root"] / "a"]
    line = refused(capsys, argv)
    assert str(files[plan]) in line and field in line, line


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
    plan_mode = ["prune", "--model", "resnet20", "--width", "0.5", "--sparsity", "0.5", "--out", tmp_path / "p.json"]
    assert "--force only goes with --apply" in refused(capsys, [*plan_mode, "--force"])


def test_usage_errors_are_one_line(capsys):
    assert "invalid int value" in refused(capsys, ["train", "--out", "x", "--batch-size", "abc"])
    assert "invalid choice" in refused(capsys, ["trian"])
    assert "required" in refused(capsys, ["search"])


# ----------------------------------------------------------------------------------------------------------- run


def test_run_refuses_a_model_that_is_not_the_checkpoints(files, capsys, no_work):
    line = refused(capsys, ["run", "--model", "mobilenet_v2", "--checkpoint", files["parent"], "--out",
                            files["root"] / "r"])  # fmt: skip
    assert "holds a resnet20, not a mobilenet_v2" in line


def test_run_takes_model_and_data_from_the_checkpoint(files, tmp_path, capsys, no_work):
    with pytest.raises(WorkStarted):  # got as far as the baseline stage
        main(["run", "--checkpoint", str(files["parent"]), "--profile", str(files["profile"]), "--out", str(tmp_path)])
    assert "latprune run: resnet20 on fashion-mnist" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("bad", "fixed", "says"),
    [
        (["--profile", "corrupt_json"], ["--profile", "profile"], "not valid JSON"),
        (["--profile", "profile_two_threads"], ["--profile", "profile"], "measured with 2 thread(s)"),
        (["--latency-budget", "0.001ms"], ["--latency-budget", "5ms"], "below the fastest resnet20"),
        (["--data", "/nonexistent/images"], ["--data", "fashion-mnist"], "fashion-mnist, not /nonexistent/images"),
        (["--data", "cifar10"], [], "trained on fashion-mnist, not cifar10"),
    ],
)
def test_run_checks_profile_budget_and_data_first_and_is_corrected_in_place(bad, fixed, says, files, tmp_path,
                                                                          capsys, no_work):  # fmt: skip
    base = ["run", "--checkpoint", files["parent"], "--out", tmp_path / "run"]
    resolve = [files.get(a, a) for a in bad]
    line = refused(capsys, [*base, *(["--profile", files["profile"]] if "--profile" not in bad else []), *resolve])
    assert says in line, line  # and the parent was not evaluated: no_work would have raised
    argv = [*base, *(["--profile", files["profile"]] if "--profile" not in fixed else []), *fixed]
    with pytest.raises(WorkStarted):  # the corrected run, in the same folder, gets past every check
        main([str(files.get(a, a)) for a in argv])


def test_run_never_writes_into_a_folder_that_is_not_a_run(files, tmp_path, capsys, no_work):
    mine = tmp_path / "profile.json"  # e.g. from `latprune profile --out runs/profile.json`, then `run --out runs`
    mine.write_text("mine\n")
    argv = ["run", "--checkpoint", files["parent"], "--out", tmp_path]
    assert "holds other files but no latprune run" in refused(capsys, argv)
    (tmp_path / "status.json").write_text("[]\n")
    assert "is not a latprune run status, or is damaged" in refused(capsys, argv)
    assert mine.read_text() == "mine\n"


def test_a_setting_no_finished_stage_used_may_change(files, tmp_path, monkeypatch, capsys):
    import latprune.pipeline._stages as stages

    monkeypatch.setattr(stages, "_baseline", lambda cfg, out: {"checkpoint": str(files["parent"]), "test_acc": 0.5})
    monkeypatch.setattr(stages, "_profile", lambda cfg, out, parent: {"profile": str(files["profile"])})

    def search_refuses(cfg, *args):
        raise SearchError(f"search refused budget {cfg.latency_budget_ms}")

    monkeypatch.setattr(stages, "_search", search_refuses)
    argv = ["run", "--checkpoint", str(files["parent"]), "--out", str(tmp_path), "--no-export"]
    assert main([*argv, "--latency-budget", "0.05ms"]) == 2
    assert main([*argv, "--latency-budget", "0.07ms"]) == 2  # baseline and profile done; the search never finished
    assert "search refused budget 0.07" in capsys.readouterr().err
    with pytest.raises(LatpruneError, match="started with seed=0, not 1"):  # the baseline stage used the seed
        from latprune.pipeline import RunConfig, run_pipeline

        run_pipeline(RunConfig(tmp_path, checkpoint=files["parent"], seed=1, latency_budget_ms=0.07))
