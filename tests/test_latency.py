"""Latency predictor, profile files and the profiling grid, on synthetic tables (no timing involved)."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass

import numpy as np
import pytest

from latprune.engine.fingerprint import DeviceFingerprint, current_fingerprint
from latprune.errors import ProfileError
from latprune.latency.grid import GridConfig, channel_grid, plan_grids, sparsity_grid, trim
from latprune.latency.predictor import LatencyPredictor
from latprune.latency.profile import (
    AdditiveTerm,
    CalibrationPoint,
    LatencyProfile,
    LatencyTable,
    LayerSignature,
    load_profile,
    save_profile,
)
from latprune.models import ModelSpec


@dataclass(frozen=True)
class FakeLayer:
    name: str
    kind: str
    c_in: int
    c_out: int
    kernel: int = 3
    stride: int = 1
    padding: int = 1
    groups: int = 1
    in_hw: tuple[int, int] = (8, 8)
    scheme: str = "group4"


class FakeSpace:
    """Three integer variables per layer: c_in, c_out and sparsity in tenths (the real space is richer)."""

    def __init__(self, layers: list[FakeLayer]) -> None:
        self.layers = tuple(layers)
        self.n_var = 3 * len(layers)
        lo, hi = [], []
        for layer in layers:
            lo += [max(1, layer.c_in // 2), max(1, layer.c_out // 2), 0]
            hi += [layer.c_in, layer.c_out, 0 if layer.kind == "depthwise" else 7]
        self.xl, self.xu = np.array(lo), np.array(hi)

    def layer_dims(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = np.asarray(x)
        return x[:, 0::3], x[:, 1::3], x[:, 2::3] / 10.0  # (n, L) each

    def sample_x(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.xl, self.xu + 1, size=(n, self.n_var))


def fingerprint(**changes: object) -> DeviceFingerprint:
    fp = DeviceFingerprint("Test CPU", "x86_64", "avx2", 2, "gcc 12", ("-O3",), "0.1.0", "abc")
    return dataclasses.replace(fp, **changes)


def make_profile(space: FakeSpace, f, grid_n: int = 4, fp: DeviceFingerprint | None = None) -> LatencyProfile:
    """A profile whose tables hold f(c_in, c_out, sparsity) at the grid points of every layer signature."""
    tables = []
    for sig, grid in plan_grids(space, GridConfig(n_channels=grid_n, trim_to_space=False), np.random.default_rng(0)):
        ci, co, sp = np.meshgrid(grid.cin, grid.cout, grid.sparsity, indexing="ij")  # (I, J, K) each
        if grid.tied:
            ci = co
        tables.append(LatencyTable(sig, grid, f(ci, co, sp).astype(np.float64)))
    return LatencyProfile(
        fingerprint=fp or fingerprint(),
        threads=1,
        model=ModelSpec("fake", 10, 3, 8),
        scheme="group4",
        tables=tuple(tables),
        additive=AdditiveTerm(0.0, 1.0),
        grid_n=grid_n,
        grid_m=10,
        build_seconds=1.0,
    )


def multilinear(ci, co, sp):
    """Affine in each variable separately, so trilinear interpolation must reproduce it exactly."""
    return 0.05 + 0.002 * ci + 0.003 * co - 0.04 * sp + 0.0001 * ci * co * (1 - sp)


SPACE = FakeSpace(
    [
        FakeLayer("conv1", "conv", 16, 32),
        FakeLayer("conv2", "conv", 32, 32, kernel=1, padding=0),
        FakeLayer("conv3", "conv", 32, 32, kernel=1, padding=0),  # same signature as conv2: shares its table
        FakeLayer("dw", "depthwise", 32, 32, groups=32, scheme="dense"),
        FakeLayer("fc", "linear", 32, 10, kernel=1, padding=0, in_hw=(1, 1), scheme="block_fc"),
    ]
)


def test_signatures_are_deduplicated():
    profile = make_profile(SPACE, multilinear)
    assert len(profile.tables) == 4
    dw = next(t for t in profile.tables if t.signature.kind == "depthwise")
    assert dw.grid.tied and dw.grid.sparsity == (0.0,) and dw.ms.shape == (1, 4, 1)


def test_exact_on_grid_points():
    rng = np.random.default_rng(1)
    profile = make_profile(SPACE, lambda ci, co, sp: rng.uniform(0.1, 2.0, size=np.shape(ci)))
    pred = LatencyPredictor(profile, SPACE)
    for li, layer in enumerate(SPACE.layers):
        table = profile.table_for(LayerSignature.of_layer(layer))
        for i, ci in enumerate(table.grid.cin):
            for j, co in enumerate(table.grid.cout):
                for k, s in enumerate(table.grid.sparsity):
                    cin = np.array([[lay.c_in for lay in SPACE.layers]], float)
                    cout = np.array([[lay.c_out for lay in SPACE.layers]], float)
                    sp = np.zeros((1, len(SPACE.layers)))
                    cin[0, li], cout[0, li], sp[0, li] = ci, co, s
                    got = pred.interpolate(cin, cout, sp)[0, li]
                    assert got == pytest.approx(table.ms[i, j, k], rel=1e-12), (layer.name, ci, co, s)


def test_linear_between_grid_points():
    profile = make_profile(SPACE, multilinear)
    pred = LatencyPredictor(profile, SPACE)
    x = SPACE.sample_x(np.random.default_rng(2), 200)
    cin, cout, sp = SPACE.layer_dims(x)
    expected = multilinear(cin, cout, sp)
    # A depthwise table has one channel axis (c_in = c_out): piecewise linear in c between its grid points.
    dw = next(li for li, layer in enumerate(SPACE.layers) if layer.kind == "depthwise")
    grid = np.array(profile.table_for(LayerSignature.of_layer(SPACE.layers[dw])).grid.cout, float)
    expected[:, dw] = np.interp(cout[:, dw], grid, multilinear(grid, grid, 0.0))
    np.testing.assert_allclose(pred.predict_layers(x), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pred.predict(x), expected.sum(1), rtol=1e-10)


def test_matches_tau_formula_on_uniform_grid():
    """On an evenly spaced grid the implementation equals JCW eq. 8 written out with tau(x) = max(0, 1 - |x|)."""
    space = FakeSpace([FakeLayer("c", "conv", 40, 40)])
    rng = np.random.default_rng(3)
    profile = make_profile(space, lambda ci, co, sp: rng.uniform(0.1, 1.0, size=np.shape(ci)), grid_n=8)
    table = profile.tables[0]
    assert table.grid.cin == (5, 10, 15, 20, 25, 30, 35, 40)
    pred = LatencyPredictor(profile, space)
    tau = lambda v: np.maximum(0.0, 1.0 - np.abs(v))  # noqa: E731
    for ci, co, s in rng.uniform([5, 5, 0.0], [40, 40, 0.9], size=(20, 3)):
        i = np.arange(8)[:, None, None]
        j = np.arange(8)[None, :, None]
        k = np.arange(10)[None, None, :]
        ref = np.sum(tau(ci / 5 - 1 - i) * tau(co / 5 - 1 - j) * tau(s * 10 - k) * table.ms)
        got = pred.interpolate(np.array([[ci]]), np.array([[co]]), np.array([[s]]))[0, 0]
        assert got == pytest.approx(ref, rel=1e-10)


def test_extrapolates_below_first_grid_point_and_never_negative():
    space = FakeSpace([FakeLayer("c", "conv", 40, 40, scheme="dense")])
    profile = make_profile(space, lambda ci, co, sp: 0.1 + 0.01 * co + 0 * ci, grid_n=4)
    pred = LatencyPredictor(profile, space)
    # The first output-channel point is 10; 4 channels continue the first segment's line.
    got = pred.interpolate(np.array([[40.0]]), np.array([[4.0]]), np.array([[0.0]]))[0, 0]
    assert got == pytest.approx(0.1 + 0.04)
    steep = make_profile(space, lambda ci, co, sp: -0.5 + 0.06 * co + 0 * ci, grid_n=4)
    got = LatencyPredictor(steep, space).interpolate(np.array([[40.0]]), np.array([[2.0]]), np.array([[0.0]]))
    assert got[0, 0] == 0.0


def test_additive_term_applies_offset_and_scale():
    base = make_profile(SPACE, multilinear)
    shifted = dataclasses.replace(base, additive=AdditiveTerm(0.7, 1.25))
    x = SPACE.sample_x(np.random.default_rng(4), 50)
    raw = LatencyPredictor(base, SPACE).predict(x)
    np.testing.assert_allclose(LatencyPredictor(shifted, SPACE).predict(x), 0.7 + 1.25 * raw)


def test_additive_fit_recovers_offset_and_scale():
    pts = [CalibrationPoint(f"m{i}", s, 0.3 + 1.1 * s) for i, s in enumerate([1.0, 2.0, 3.5, 5.0, 8.0])]
    term = AdditiveTerm.fit(pts)
    assert term.offset_ms == pytest.approx(0.3) and term.scale == pytest.approx(1.1)
    outlier = AdditiveTerm.fit([*pts, CalibrationPoint("burst", 4.0, 9.0)])  # one timing hit by a load burst
    assert outlier.offset_ms == pytest.approx(0.3) and outlier.scale == pytest.approx(1.1)
    one = AdditiveTerm.fit(pts[:1])
    assert one.scale == 1.0 and one.offset_ms == pytest.approx(0.3 + 0.1 * 1.0)
    wild = AdditiveTerm.fit([CalibrationPoint(f"w{i}", s, 10 * s) for i, s in enumerate([1.0, 2.0, 3.0])])
    assert wild.scale == 1.0  # an absurd scale means broken tables: fall back to an offset
    # Tables far above the measurements (noise spikes): an offset would predict negative latency, so scale only.
    noisy = [
        CalibrationPoint("dense", 1.9, 0.16),
        CalibrationPoint("small", 0.6, 0.07),
        CalibrationPoint("r", 0.8, 0.12),
    ]
    with pytest.warns(UserWarning, match="re-profile"):
        term = AdditiveTerm.fit(noisy)
    assert term.offset_ms == 0.0 and 0 < term.scale < 0.2


def test_predict_accepts_one_vector_and_rejects_wrong_width():
    pred = LatencyPredictor(make_profile(SPACE, multilinear), SPACE)
    x = SPACE.sample_x(np.random.default_rng(5), 3)
    assert pred.predict(x[0]).shape == (1,)
    assert pred.predict(x[0])[0] == pytest.approx(pred.predict(x)[0])
    with pytest.raises(ProfileError, match="integer array"):
        pred.predict(x[:, :-1])


def test_missing_table_names_the_layer():
    profile = make_profile(SPACE, multilinear)
    other = FakeSpace([*SPACE.layers, FakeLayer("extra", "conv", 64, 64)])
    with pytest.raises(ProfileError, match="'extra'"):
        LatencyPredictor(profile, other)


def test_predicts_over_ten_thousand_archs_per_second():
    layers = [FakeLayer(f"c{i}", "conv", 32 * (1 + i % 4), 32 * (1 + (i + 1) % 4)) for i in range(50)]
    space = FakeSpace(layers)
    pred = LatencyPredictor(make_profile(space, multilinear, grid_n=8), space)
    x = space.sample_x(np.random.default_rng(6), 10_000)
    pred.predict(x[:10])
    t0 = time.thread_time()  # CPU time: other processes on a busy machine do not count against the predictor
    out = pred.predict(x)
    elapsed = time.thread_time() - t0
    assert out.shape == (10_000,) and np.all(out > 0)
    assert elapsed < 1.0, f"10,000 predictions took {elapsed:.3f} s (target ≥ 10,000/s; expected ~0.05 s)"


def test_profile_round_trip(tmp_path):
    profile = make_profile(SPACE, multilinear, fp=current_fingerprint())
    path = save_profile(profile, tmp_path / "p.json")
    loaded = load_profile(path)
    x = SPACE.sample_x(np.random.default_rng(7), 20)
    np.testing.assert_allclose(LatencyPredictor(loaded, SPACE).predict(x), LatencyPredictor(profile, SPACE).predict(x))
    assert loaded.fingerprint == profile.fingerprint and loaded.threads == 1


def test_profile_from_another_device_is_refused_unless_forced(tmp_path):
    here = current_fingerprint()
    path = save_profile(
        make_profile(SPACE, multilinear, fp=dataclasses.replace(here, cpu_model="Other CPU 9000")), tmp_path / "p.json"
    )
    with pytest.raises(ProfileError, match=r"another device.*Other CPU 9000.*--force"):
        load_profile(path)
    with pytest.warns(UserWarning, match="another device"):
        assert load_profile(path, force=True).fingerprint.cpu_model == "Other CPU 9000"
    stale = save_profile(
        make_profile(SPACE, multilinear, fp=dataclasses.replace(here, engine_hash="0" * 16)), tmp_path / "stale.json"
    )
    with pytest.raises(ProfileError, match="engine_hash"):
        load_profile(stale)


def test_corrupt_or_truncated_profile_names_the_file(tmp_path):
    path = save_profile(make_profile(SPACE, multilinear, fp=current_fingerprint()), tmp_path / "p.json")
    text = path.read_text()
    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(ProfileError, match=r"truncated\.json"):
        load_profile(truncated)
    data = json.loads(text)
    del data["tables"][0]["ms"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"broken.json.*corrupt"):
        load_profile(broken)
    data = json.loads(text)
    data["tables"][0]["ms"][0][0][0] = -1.0
    negative = tmp_path / "negative.json"
    negative.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"negative\.json"):
        load_profile(negative)
    with pytest.raises(ProfileError, match=r"missing\.json"):
        load_profile(tmp_path / "missing.json")


def test_channel_and_sparsity_grids():
    assert channel_grid(64, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert channel_grid(3, 8) == [1, 2, 3]
    assert channel_grid(24, 8, multiple=4) == [4, 8, 12, 16, 20, 24]
    assert sparsity_grid(10) == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert trim([8, 16, 24, 32], 20, 32) == [16, 24, 32]
    assert trim([8, 16, 24, 32], 16, 16) == [16]
    assert trim([0.0, 0.1, 0.2, 0.3], 0.0, 0.25) == [0.0, 0.1, 0.2, 0.3]


def test_grid_trimmed_to_the_space_still_brackets_every_reachable_value():
    grids = plan_grids(SPACE, GridConfig(n_channels=8), np.random.default_rng(8))
    conv1 = dict(grids)[LayerSignature.of_layer(SPACE.layers[0])]
    assert conv1.cin == (8, 10, 12, 14, 16) and conv1.cout == (16, 20, 24, 28, 32)
    assert conv1.sparsity == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
    pred = LatencyPredictor(make_profile(SPACE, multilinear), SPACE)
    assert pred.threads == 1


def test_timing_loop_and_statistic_checks():
    from latprune.latency.jobs import TimingConfig, check_statistic
    from latprune.latency.measure import time_call

    calls = []
    sec = time_call(lambda: calls.append(1), warmup=3, repeats=4, statistic="min")
    assert sec > 0 and len(calls) >= 3 + 1 + 4  # warmup, one estimate, then >= 1 call per sample
    with pytest.raises(ProfileError, match="needs 1 thread"):
        check_statistic("cpu", 2)
    check_statistic("cpu", 1)
    with pytest.raises(ProfileError, match="statistic 'mean'"):
        TimingConfig(statistic="mean")
    with pytest.raises(ProfileError, match="repeats"):
        TimingConfig(repeats=0)


def test_spread_sampling_covers_the_space_and_stays_in_bounds():
    from latprune.latency.validate import ValidationConfig, sample_archs

    rng = np.random.default_rng(9)
    spread = sample_archs(SPACE, rng, 200, "spread")
    uniform = sample_archs(SPACE, rng, 200, "uniform")
    for x in (spread, uniform):
        assert x.shape == (200, SPACE.n_var) and np.all(x >= SPACE.xl) and np.all(x <= SPACE.xu)
    pos = lambda x: ((x - SPACE.xl) / np.maximum(SPACE.xu - SPACE.xl, 1)).mean(1)  # noqa: E731  (n,) in [0, 1]
    assert pos(spread).min() < 0.15 and pos(spread).max() > 0.85  # from the smallest to the largest end
    assert pos(spread).std() > 2 * pos(uniform).std()  # independent draws cluster at the middle
    with pytest.raises(ProfileError, match="sampling 'grid'"):
        ValidationConfig(sampling="grid")
