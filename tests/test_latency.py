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
from latprune.latency.predictor import TrilinearPredictor
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
    pred = TrilinearPredictor(profile, SPACE)
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
    pred = TrilinearPredictor(profile, SPACE)
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
    pred = TrilinearPredictor(profile, space)
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
    pred = TrilinearPredictor(profile, space)
    # The first output-channel point is 10; 4 channels continue the first segment's line.
    got = pred.interpolate(np.array([[40.0]]), np.array([[4.0]]), np.array([[0.0]]))[0, 0]
    assert got == pytest.approx(0.1 + 0.04)
    steep = make_profile(space, lambda ci, co, sp: -0.5 + 0.06 * co + 0 * ci, grid_n=4)
    got = TrilinearPredictor(steep, space).interpolate(np.array([[40.0]]), np.array([[2.0]]), np.array([[0.0]]))
    assert got[0, 0] == 0.0


def test_additive_term_applies_offset_and_scale():
    base = make_profile(SPACE, multilinear)
    shifted = dataclasses.replace(base, additive=AdditiveTerm(0.7, 1.25))
    x = SPACE.sample_x(np.random.default_rng(4), 50)
    raw = TrilinearPredictor(base, SPACE).predict(x)
    np.testing.assert_allclose(TrilinearPredictor(shifted, SPACE).predict(x), 0.7 + 1.25 * raw)


def test_additive_fit_recovers_offset_and_scale():
    pts = [CalibrationPoint(f"m{i}", s, 0.3 + 1.1 * s) for i, s in enumerate([1.0, 2.0, 3.5, 5.0, 8.0])]
    term = AdditiveTerm.fit(pts)
    assert term.offset_ms == pytest.approx(0.3, abs=1e-4) and term.scale == pytest.approx(1.1, rel=1e-4)
    outlier = AdditiveTerm.fit([*pts, CalibrationPoint("burst", 4.0, 9.0)])  # one timing hit by a load burst
    assert outlier.offset_ms == pytest.approx(0.3, abs=0.05) and outlier.scale == pytest.approx(1.1, rel=0.02)
    one = AdditiveTerm.fit(pts[:1])
    assert one.scale == 1.0 and one.offset_ms == pytest.approx(0.3 + 0.1 * 1.0)
    no_scale = AdditiveTerm.fit(pts, fit_scale=False)
    assert no_scale.scale == 1.0 and no_scale.offset_ms > 0
    with pytest.warns(UserWarning, match="re-profile"):
        wild = AdditiveTerm.fit([CalibrationPoint(f"w{i}", s, 10 * s) for i, s in enumerate([1.0, 2.0, 3.0])])
    assert wild.offset_ms >= 0 and wild.scale == pytest.approx(2.0)  # absurd: broken tables, said, not hidden
    # Tables far above the measurements (noise spikes): the offset stays >= 0 and the scale says it.
    noisy = [
        CalibrationPoint("dense", 1.9, 0.16),
        CalibrationPoint("small", 0.6, 0.07),
        CalibrationPoint("r", 0.8, 0.12),
    ]
    with pytest.warns(UserWarning, match="re-profile"):
        term = AdditiveTerm.fit(noisy)
    assert term.offset_ms >= 0.0 and term.scale == pytest.approx(0.5)  # bounded: still ranks architectures
    below = AdditiveTerm.fit([CalibrationPoint("one", 2.0, 1.5)])  # one point under its layer sum: no warning
    assert below.offset_ms == 0.0 and below.scale == pytest.approx(0.75)


def test_robust_fit_recovers_a_small_model_among_outliers_and_never_goes_negative():
    """ResNet20-like numbers: 24 models of 0.15-0.55 ms, 2% timing noise and three load bursts (+30-60%)."""
    rng = np.random.default_rng(11)
    sums = np.sort(rng.uniform(0.13, 0.50, 24))
    measured = (0.012 + 1.05 * sums) * (1 + rng.normal(0.0, 0.02, 24))
    measured[[3, 10, 17]] *= [1.3, 1.6, 1.45]
    pts = [CalibrationPoint(f"m{i}", float(s), float(m)) for i, (s, m) in enumerate(zip(sums, measured, strict=True))]
    term = AdditiveTerm.fit(pts)
    assert term.scale == pytest.approx(1.05, rel=0.05) and 0.0 <= term.offset_ms <= 0.03
    clean = np.delete(np.arange(24), [3, 10, 17])
    rel = (term.offset_ms + term.scale * sums[clean]) / measured[clean] - 1
    assert np.mean(np.abs(rel)) < 0.03  # the bursts did not drag the line
    # The same models measured as an unconstrained line would put a NEGATIVE overhead (slope too steep):
    steep = [CalibrationPoint(p.name, p.layer_sum_ms, 1.3 * p.layer_sum_ms - 0.02) for p in pts]
    fitted = AdditiveTerm.fit(steep)
    assert fitted.offset_ms >= 0.0 and fitted.scale == pytest.approx(1.24, abs=0.06)


def test_weight_mb_matches_a_loop_over_layers_and_enters_the_prediction():
    profile = make_profile(SPACE, multilinear)
    pred = TrilinearPredictor(profile, SPACE)
    x = SPACE.sample_x(np.random.default_rng(12), 30)
    c_in, c_out, sp = SPACE.layer_dims(x)
    want = np.zeros(len(x))
    for li, layer in enumerate(SPACE.layers):
        fan_in = 1 if layer.kind == "depthwise" else c_in[:, li] / layer.groups
        want += c_out[:, li] * fan_in * layer.kernel**2 * (1 - sp[:, li]) * 4 / 1e6
    np.testing.assert_allclose(pred.weight_mb(x), want)
    term = AdditiveTerm(0.05, 1.1, (), ms_per_mb=0.2)
    full = TrilinearPredictor(dataclasses.replace(profile, additive=term), SPACE).predict(x)
    np.testing.assert_allclose(full, 0.05 + 1.1 * pred.predict_layers(x).sum(1) + 0.2 * want)


def test_three_term_fit_recovers_the_weight_cost_among_outliers():
    """Layer sums and weight sizes correlated as in a real space (r ~ 0.9), 2% noise, two load bursts."""
    rng = np.random.default_rng(13)
    sums = rng.uniform(0.15, 0.6, 24)
    mb = 1.5 * sums + rng.uniform(-0.15, 0.15, 24)
    measured = (0.01 + 1.02 * sums + 0.15 * mb) * (1 + rng.normal(0.0, 0.01, 24))
    measured[[5, 19]] *= [1.4, 1.7]
    rows = zip(sums, measured, mb, strict=True)
    pts = [CalibrationPoint(f"m{i}", float(a), float(b), float(c)) for i, (a, b, c) in enumerate(rows)]
    term = AdditiveTerm.fit(pts)
    assert term.ms_per_mb == pytest.approx(0.15, abs=0.05) and term.scale == pytest.approx(1.02, abs=0.08)
    assert 0.0 <= term.offset_ms <= 0.03
    two = AdditiveTerm.fit(pts[:3])  # too few models for three terms: the weight term stays out
    assert two.ms_per_mb == 0.0 and two.offset_ms >= 0.0
    back = AdditiveTerm.from_json(json.loads(json.dumps(term.to_json())))
    assert back.ms_per_mb == pytest.approx(term.ms_per_mb, abs=1e-6)
    assert back.points[3].weight_mb == pytest.approx(mb[3])


def test_predict_accepts_one_vector_and_rejects_wrong_width():
    pred = TrilinearPredictor(make_profile(SPACE, multilinear), SPACE)
    x = SPACE.sample_x(np.random.default_rng(5), 3)
    assert pred.predict(x[0]).shape == (1,)
    assert pred.predict(x[0])[0] == pytest.approx(pred.predict(x)[0])
    with pytest.raises(ProfileError, match="integer array"):
        pred.predict(x[:, :-1])


def test_missing_table_names_the_layer():
    profile = make_profile(SPACE, multilinear)
    other = FakeSpace([*SPACE.layers, FakeLayer("extra", "conv", 64, 64)])
    with pytest.raises(ProfileError, match="'extra'"):
        TrilinearPredictor(profile, other)


def test_predicts_over_ten_thousand_archs_per_second():
    layers = [FakeLayer(f"c{i}", "conv", 32 * (1 + i % 4), 32 * (1 + (i + 1) % 4)) for i in range(50)]
    space = FakeSpace(layers)
    pred = TrilinearPredictor(make_profile(space, multilinear, grid_n=8), space)
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
    np.testing.assert_allclose(
        TrilinearPredictor(loaded, SPACE).predict(x), TrilinearPredictor(profile, SPACE).predict(x)
    )
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


def test_old_format_profile_is_refused_with_one_sentence(tmp_path):
    data = make_profile(SPACE, multilinear, fp=current_fingerprint()).to_json()
    data["format_version"] = 1
    data.pop("layer_overhead_ms")
    path = tmp_path / "old.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"old\.json.*old format 1.*re-profile with `latprune profile --model fake"):
        load_profile(path)
    data["format_version"] = 2
    data["layer_overhead_ms"] = 0.006
    data["additive"]["offset_ms"] = -0.25  # what the old fit produced; never valid in format 2
    path.write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="negative offset"):
        load_profile(path)


def test_call_overhead_is_measured_with_a_no_op_twin_of_the_kernel():
    from latprune.engine.detect import choose_kernel
    from latprune.engine.layer import bind_layer
    from latprune.latency.jobs import TimingConfig
    from latprune.latency.measure import _time_point, call_overhead_ms, layer_meta

    sig = LayerSignature("conv", 8, 8, (3, 3), (1, 1), (1, 1), 1, (6, 6), "group4")
    meta = layer_meta(sig, 8, 8)
    weight = np.random.default_rng(0).standard_normal((8, 8, 3, 3), dtype=np.float32)
    spec, variant = choose_kernel(weight, meta, declared_scheme=None, nthreads=1)
    layer = bind_layer(spec, weight, None, meta, 1, variant, 1)
    x = np.ones((8, 6, 6), np.float32)
    out = np.full((8, 6, 6), 7.0, np.float32)
    timing = TimingConfig(warmup=1, repeats=2, statistic="cpu")
    overhead = call_overhead_ms(layer, x, out, timing)
    assert 0 < overhead < 1.0 and np.all(out == 7.0)  # the twin ran nothing: the output is untouched
    kernel_ms, taken_out = _time_point(sig, weight, 8, 8, 0.0, 1, timing)
    assert kernel_ms >= 0.0 and 0 < taken_out < 1.0


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
    pred = TrilinearPredictor(make_profile(SPACE, multilinear), SPACE)
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
