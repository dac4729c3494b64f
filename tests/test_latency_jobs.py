"""Profiling end to end on a tiny model with a tiny grid: the host/device job split, and assembling a profile."""

from __future__ import annotations

import json

import numpy as np
import pytest

from latprune.cli import main
from latprune.engine.fingerprint import current_fingerprint
from latprune.errors import ProfileError
from latprune.latency.grid import GridConfig
from latprune.latency.jobs import TimingConfig, emit_jobs, load_jobs, load_measurements
from latprune.latency.predictor import TrilinearPredictor
from latprune.latency.profile import LayerSignature, load_profile, save_profile
from latprune.latency.profiling import ProfileConfig, model_space, profile_model
from latprune.latency.validate import latency_stats
from latprune.models import ModelSpec

SPEC = ModelSpec("resnet20", 10, 1, 8)
TINY = ["--model", "resnet20", "--input-size", "1x8x8", "--num-classes", "10", "--grid", "2,2"]
FAST = ["--repeats", "1", "--model-repeats", "3", "--calibration", "1"]


def test_jobs_cover_every_layer_signature_once():
    space = model_space(SPEC, "group4")
    grid, timing = GridConfig(n_channels=2, n_sparsity=2), TimingConfig()
    jobs = emit_jobs(SPEC, space, threads=1, grid=grid, timing=timing, calibration_models=3, seed=5)
    sigs = {LayerSignature.of_layer(layer) for layer in space.layers}
    assert {t.signature for t in jobs.tables} == sigs and len(jobs.tables) == len(sigs)
    assert [m.name for m in jobs.models] == ["dense", "smallest", "random1"]
    smallest = jobs.models[1]
    assert min(smallest.widths) < 1.0 and max(smallest.sparsities) > 0.0
    again = emit_jobs(SPEC, space, threads=1, grid=grid, timing=timing, calibration_models=3, seed=5)
    assert again.digest() == jobs.digest()  # same seed, same jobs
    other = emit_jobs(SPEC, space, threads=1, grid=grid, timing=timing, calibration_models=3, seed=6)
    assert other.digest() != jobs.digest()


# One timed sample per grid point on a shared machine: the fit may rightly warn that tables and models disagree.
NOISY_FIT = pytest.mark.filterwarnings("ignore:The per-layer latency tables disagree")


@NOISY_FIT
def test_job_split_on_localhost(tmp_path, capsys):
    jobs_path, table_path, profile_path = tmp_path / "jobs.json", tmp_path / "table.json", tmp_path / "p.json"
    assert main(["profile", *TINY, *FAST, "--emit-jobs", str(jobs_path)]) == 0
    jobs = load_jobs(jobs_path)
    assert jobs.threads == 1 and jobs.model == SPEC and jobs.timing == TimingConfig(repeats=1, model_repeats=3)

    assert main(["measure", str(jobs_path), "--out", str(table_path)]) == 0
    measured = load_measurements(table_path)
    assert measured.fingerprint == current_fingerprint()
    for job, ms in zip(jobs.tables, measured.tables, strict=True):
        assert ms.shape == job.grid.shape and np.all(ms >= 0) and np.any(ms > 0)
    assert measured.call_overhead_ms > 0  # the layer runner's call overhead, taken out of every point

    assert main(["profile", "--assemble", str(table_path), "--out", str(profile_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    profile = load_profile(profile_path)
    assert profile.model == SPEC and profile.threads == 1 and len(profile.tables) == len(jobs.tables)
    assert profile.layer_overhead_ms == pytest.approx(measured.call_overhead_ms, abs=1e-6)
    # One calibration model (the dense one): the additive term makes the dense prediction equal its measurement.
    space = model_space(SPEC, "group4")
    dense_x = space.encode(space.dense_arch())
    pred = TrilinearPredictor(profile, space).predict(dense_x)[0]
    assert pred == pytest.approx(measured.models[0], rel=1e-4)
    assert profile.additive.offset_ms >= 0 and profile.additive.points[0].name == "dense"


def test_measurements_edited_after_measuring_are_refused(tmp_path):
    jobs_path, table_path = tmp_path / "jobs.json", tmp_path / "table.json"
    assert main(["profile", *TINY, *FAST, "--emit-jobs", str(jobs_path)]) == 0
    assert main(["measure", str(jobs_path), "--out", str(table_path)]) == 0
    data = json.loads(table_path.read_text())
    data["jobs"]["threads"] = 2
    table_path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"table\.json.*edited"):
        load_measurements(table_path)
    assert main(["profile", "--assemble", str(table_path), "--out", str(tmp_path / "p.json")]) == 2
    data["jobs"]["threads"] = 1
    data["format_version"] = 1  # tables from before the call overhead was taken out
    table_path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"table\.json.*format 1.*latprune measure"):
        load_measurements(table_path)
    jobs_path.write_text(jobs_path.read_text()[:100])
    assert main(["measure", str(jobs_path), "--out", str(table_path)]) == 2


def test_bad_cli_values_are_one_sentence(capsys):
    assert main(["profile", *TINY[:2], "--input-size", "3x224x200", "--out", "x.json"]) == 2
    assert "CxHxW" in capsys.readouterr().err
    assert main(["profile", *TINY[:2], "--grid", "8", "--out", "x.json"]) == 2
    assert "N,M" in capsys.readouterr().err
    assert main(["profile", *TINY, "--out", "x.json", "--calibration", "0"]) == 2
    assert "at least one whole-model" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_profile(tmp_path_factory):
    """A real profile of ResNet20 at 8x8 on a 2x2 grid (timings are real but never asserted on)."""
    config = ProfileConfig(
        grid=GridConfig(n_channels=2, n_sparsity=2),
        timing=TimingConfig(warmup=1, repeats=3, model_warmup=1, model_repeats=3),
        calibration_models=3,
    )
    profile = profile_model(SPEC, config, progress=False)
    return profile, save_profile(profile, tmp_path_factory.mktemp("profile") / "p.json")


@NOISY_FIT
def test_tiny_end_to_end_profile(tiny_profile):
    profile, path = tiny_profile
    space = model_space(SPEC, "group4")
    assert [p.name for p in profile.additive.points] == ["dense", "smallest", "random1"]
    for table in profile.tables:
        assert table.ms.shape == table.grid.shape and np.all(table.ms >= 0) and np.any(table.ms > 0)
        assert table.grid.cout[-1] == table.signature.c_out  # the unpruned layer is always a grid point
    pred = TrilinearPredictor(load_profile(path), space).predict(space.sample_x(np.random.default_rng(0), 50))
    assert pred.shape == (50,) and np.all(np.isfinite(pred))
    smallest = min(p.layer_sum_ms for p in profile.additive.points)
    assert profile.additive.offset_ms >= 0 and profile.additive.scale > 0  # the fit is physical
    assert profile.additive.offset_ms + profile.additive.scale * smallest > 0


@NOISY_FIT
def test_validate_latency_writes_stable_json_and_scatter(tiny_profile, tmp_path, capsys):
    _, path = tiny_profile
    out = tmp_path / "val"
    # --force: the engine may be rebuilt between the fixture and this test (the refusal has its own test).
    args = [
        "validate-latency",
        "--profile",
        str(path),
        "--samples",
        "2",
        "--repeats",
        "3",
        "--out",
        str(out),
        "--force",
    ]
    assert main([*args, "--model", "resnet20"]) == 0
    printed = capsys.readouterr().out
    assert "Pearson r" in printed and "MAPE" in printed and "±10%" in printed
    data = json.loads((out / "validation.json").read_text())
    assert data["format"] == "latprune-latency-validation" and data["samples"] == 2 and data["threads"] == 1
    assert set(data["stats"]) >= {"pearson_r", "mape_pct", "within_5_pct", "within_10_pct"}
    assert all(m["measured_ms"] > 0 and np.isfinite(m["predicted_ms"]) for m in data["models"])
    assert (out / "validation.png").read_bytes()[:4] == b"\x89PNG"
    assert main([*args, "--model", "mobilenet_v2"]) == 2
    assert "is for model resnet20" in capsys.readouterr().err


def test_latency_stats_on_known_numbers():
    measured = np.array([1.0, 2.0, 4.0, 8.0])
    predicted = np.array([1.04, 2.18, 4.0, 7.0])  # +4%, +9%, 0%, -12.5%
    s = latency_stats(predicted, measured)
    assert s["mape_pct"] == pytest.approx((4 + 9 + 0 + 12.5) / 4)
    assert s["within_5_pct"] == 50.0 and s["within_10_pct"] == 75.0
    assert s["mean_error_pct"] == pytest.approx((4 + 9 - 12.5) / 4)
    assert s["pearson_r"] == pytest.approx(np.corrcoef(predicted, measured)[0, 1])
