"""Busy-machine detection from timings, with the clocks simulated (deterministic: nothing here is really timed)."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest
from test_latency import SPACE, make_profile, multilinear

import latprune.bench as bench
import latprune.bench.timing as timing
import latprune.latency.measure as measure
from latprune._busy import LoadCheck, LoadMonitor, busy_warning, load_check, worst
from latprune.engine.fingerprint import current_fingerprint
from latprune.errors import ProfileError
from latprune.latency.jobs import TimingConfig
from latprune.latency.profile import load_profile, save_profile
from latprune.pipeline import RunReport


class FakeClock:
    """Stands in for the ``time`` module: a call of ``work(ms)`` advances the wall clock by ``ms`` and the calling
    thread's CPU clock by ``share * ms`` (share 1: a quiet machine; 0.5: another process holds half the core)."""

    def __init__(self, share: float = 1.0) -> None:
        self.wall = self.cpu = 0.0
        self.share = share

    def perf_counter(self) -> float:
        return self.wall

    def thread_time(self) -> float:
        return self.cpu

    def work(self, ms: float) -> None:
        self.wall += ms * 1e-3
        self.cpu += self.share * ms * 1e-3


def test_load_check_reads_preemption_and_round_spread():
    quiet = load_check([1.0] * 10, [0.98] * 10, [1.0, 1.1, 1.05])
    assert not quiet.busy and quiet.reason() is None and busy_warning(quiet, "x") is None
    preempted = load_check([1.0] * 10, [0.5] * 10, [1.0, 1.02])  # steady medians, but half the time preempted
    assert preempted.busy and "ran only 50% of the wall time" in preempted.reason()
    bursty = load_check([1.0] * 10, None, [1.0, 2.6, 1.1])  # several threads: only the spread is read
    assert bursty.cpu_ratio is None and "took 2.6x the fastest" in bursty.reason()
    both = worst([quiet, preempted, bursty])
    assert both == LoadCheck(0.5, 1.6) and both.busy
    assert LoadCheck.from_json(json.loads(json.dumps(both.to_json()))) == both
    assert LoadCheck.from_json(None) == LoadCheck() and not LoadCheck().busy  # older files: not measured
    assert LoadCheck.from_json({"cpu_ratio": "x", "spread": float("nan")}) == LoadCheck()
    sentence = busy_warning(both, "This benchmark")
    assert sentence.startswith("This benchmark was measured on a busy machine (") and sentence.endswith("machine.")
    assert "\n" not in sentence and sentence.count(". ") == 0


@pytest.mark.parametrize(("share", "threads", "busy"), [(1.0, 1, False), (0.5, 1, True), (0.5, 2, False)])
def test_interleaved_timing_flags_a_preempted_runtime(monkeypatch, share, threads, busy):
    clock = FakeClock(share)
    monkeypatch.setattr(timing, "time", clock)
    timings = bench.measure_interleaved({"engine": lambda: clock.work(2.0)}, warmup=1, runs=50, threads=threads)
    t = timings["engine"]
    assert t.median_ms == pytest.approx(2.0) and t.load.busy is busy
    assert t.load.spread == pytest.approx(0.0)  # steady medians: only the CPU clock shows the load


def test_interleaved_timing_flags_a_burst_of_load(monkeypatch):
    clock = FakeClock()
    calls = iter(range(10**6))
    monkeypatch.setattr(timing, "time", clock)
    # Calls 30..59 take 3x as long (a burst of load on the VM): a few rounds' medians are 3x the others.
    timings = bench.measure_interleaved(
        {"engine": lambda: clock.work(3.0 if 30 <= next(calls) < 60 else 1.0)}, warmup=0, runs=50, threads=2
    )
    assert timings["engine"].load.spread == pytest.approx(2.0) and timings["engine"].load.busy
    assert timings["engine"].median_ms == pytest.approx(1.0)  # the fastest round is still the result


def test_bench_result_prints_the_warning():
    cfg = bench.BenchConfig(model="resnet20", baselines=())
    warning = busy_warning(LoadCheck(0.45, None), "This benchmark")
    r = bench.BenchResult(cfg, {"engine": bench.Timing(1.0, 1.0, 0.5)}, 0.1, 0.0, 3, {"dense": 3}, warning)
    assert f"warning: {warning}" in bench.format_result(r) and r.to_json()["load_warning"] == warning


def test_profiling_loop_collects_the_load(monkeypatch):
    clock = FakeClock(0.4)
    monkeypatch.setattr(measure, "time", clock)
    monitor = LoadMonitor()
    timing = TimingConfig(warmup=1, repeats=3, model_repeats=6, model_rounds=3)
    sec = measure.time_call(lambda: clock.work(0.5), 1, 3, "median", monitor)
    assert sec == pytest.approx(0.5e-3)
    assert measure.time_call(lambda: clock.work(0.5), 1, 3, "cpu") == pytest.approx(0.2e-3)  # the CPU clock
    ms = measure.time_models([lambda: clock.work(2.0), lambda: clock.work(4.0)], timing, monitor=monitor)
    assert ms == pytest.approx([2.0, 4.0]) and sorted(monitor.rounds) == [0, 1]
    assert monitor.check(threads=1).busy and monitor.check(threads=1).cpu_ratio == pytest.approx(0.4)
    assert not monitor.check(threads=4).busy  # the rounds agree and the CPU clock says nothing with 4 threads


def test_a_busy_profile_keeps_its_flag_and_warns_where_it_is_used(tmp_path):
    profile = make_profile(SPACE, multilinear, fp=current_fingerprint())
    quiet = save_profile(dataclasses.replace(profile, load=LoadCheck(0.97, 0.1)), tmp_path / "quiet.json")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_profile(quiet).load == LoadCheck(0.97, 0.1)
    busy = save_profile(dataclasses.replace(profile, load=LoadCheck(0.3, 0.1)), tmp_path / "busy.json")
    assert json.loads(busy.read_text())["load"]["busy"] is True
    with pytest.warns(UserWarning, match=r"busy\.json' was measured on a busy machine .*30% of the wall time"):
        assert load_profile(busy).load.busy


def test_the_thread_count_is_part_of_what_a_profile_is_checked_against(tmp_path):
    path = save_profile(make_profile(SPACE, multilinear, fp=current_fingerprint()), tmp_path / "p.json")
    assert load_profile(path, threads=1).threads == 1
    with pytest.raises(ProfileError, match=r"p\.json' was measured with 1 thread\(s\), but this run uses 2; "):
        load_profile(path, threads=2)
    with pytest.warns(UserWarning, match=r"measured with 1 thread\(s\), but this run uses 2"):
        load_profile(path, threads=2, force=True)


def test_the_run_report_warns_when_latency_was_measured_under_load():
    warning = busy_warning(LoadCheck(0.5, None), "The measure stage")
    report = RunReport("resnet20", "fashion-mnist", "cpu", 1, "quick", (), {}, warning)
    assert report.table().splitlines()[-1] == f"warning: {warning}"
    assert "warning" not in dataclasses.replace(report, load_warning=None).table()
