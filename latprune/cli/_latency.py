"""`latprune profile`, `latprune measure` and `latprune validate-latency`: build and check latency profiles."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from latprune._io import output_lock
from latprune._limits import check_threads
from latprune.cli._parsers import parse_grid, parse_input_size
from latprune.errors import ProfileError
from latprune.latency.grid import GridConfig
from latprune.latency.jobs import TimingConfig, load_jobs, load_measurements, save_jobs, save_measurements
from latprune.latency.measure import measure_jobs
from latprune.latency.profile import load_profile, save_profile
from latprune.latency.profiling import ProfileConfig, assemble, make_jobs, model_space, profile_model
from latprune.latency.validate import ValidationConfig, validate_latency, write_validation
from latprune.models import ModelSpec


def _model_spec(args: argparse.Namespace) -> ModelSpec:
    from latprune.models import model_info

    info = model_info(args.model)
    in_channels, size = (3, info.default_input_size) if args.input_size is None else parse_input_size(args.input_size)
    classes = args.num_classes if args.num_classes is not None else info.default_num_classes
    return ModelSpec(args.model, classes, in_channels, size)


def _profile(args: argparse.Namespace) -> int:
    if args.assemble:
        if not args.out:
            raise ProfileError("Assembling a profile needs --out FILE to write it to.")
        with output_lock(args.out, file=True):
            profile = assemble(load_measurements(args.assemble))
            save_profile(profile, args.out)
        print(
            f"profile: {len(profile.tables)} tables, {profile.n_points} points, measured on "
            f"{profile.fingerprint.cpu_model}; wrote {args.out}"
        )
        return 0
    if not args.model:
        raise ProfileError("Profiling needs --model NAME (see `latprune models`), or --assemble TABLE.json.")
    n, m = parse_grid(args.grid)
    config = ProfileConfig(
        threads=args.threads,
        scheme=args.scheme,
        grid=GridConfig(n_channels=n, n_sparsity=m, trim_to_space=not args.full_grid),
        timing=TimingConfig(repeats=args.repeats, model_repeats=args.model_repeats, statistic=args.statistic),
        calibration_models=args.calibration,
        seed=args.seed,
    )
    spec = _model_spec(args)
    if args.emit_jobs:
        with output_lock(args.emit_jobs, file=True, flag="--emit-jobs"):
            jobs = make_jobs(spec, config)
            save_jobs(jobs, args.emit_jobs)
        print(
            f"jobs: {len(jobs.tables)} layer tables, {jobs.n_points} grid points, {len(jobs.models)} whole models; "
            f"wrote {args.emit_jobs}. On the device run: latprune measure {Path(args.emit_jobs).name} "
            "--out table.json"
        )
        return 0
    if not args.out:
        raise ProfileError("Profiling needs --out FILE for the profile (or --emit-jobs FILE for a remote device).")
    check_threads(args.threads)
    t0 = time.perf_counter()
    with output_lock(args.out, file=True):  # held while timing: a second profile would time this one's load
        profile = profile_model(spec, config)
        save_profile(profile, args.out)
    add = profile.additive
    print(
        f"profile: {len(profile.tables)} tables, {profile.n_points} points in {time.perf_counter() - t0:.0f} s; "
        f"additive term {add.offset_ms:+.3f} ms, scale {add.scale:.3f}, weights {add.ms_per_mb:.3f} ms/MB; "
        f"wrote {args.out}"
    )
    return 0


def _measure(args: argparse.Namespace) -> int:
    with output_lock(args.out, file=True):
        jobs = load_jobs(args.jobs)
        m = measure_jobs(jobs)
        save_measurements(m, args.out)
    print(
        f"measured {jobs.n_points} grid points and {len(jobs.models)} models in {m.seconds:.0f} s on "
        f"{m.fingerprint.cpu_model}; wrote {args.out}. On the host run: latprune profile --assemble "
        f"{Path(args.out).name} --out profile.json"
    )
    return 0


def _validate(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile, force=args.force)
    if args.model is not None and args.model != profile.model.name:
        raise ProfileError(
            f"The profile '{args.profile}' is for model {profile.model.name}, not {args.model}; "
            "profile that model first or drop --model."
        )
    out = Path(args.out if args.out is not None else Path(args.profile).with_suffix("").as_posix() + "_validation")
    statistic = args.statistic or profile.statistic
    config = ValidationConfig(
        samples=args.samples, seed=args.seed, repeats=args.repeats, statistic=statistic, sampling=args.sampling
    )
    with output_lock(out):
        space = model_space(profile.model, profile.scheme if args.scheme is None else args.scheme)
        result = validate_latency(profile, space, config)
        json_path, png_path = write_validation(result, profile, config, out)
    s = result.stats
    print(
        f"{profile.model.name} ({profile.model.input_size}px, {profile.threads} thread(s)), {args.samples} models: "
        f"Pearson r = {s['pearson_r']:.4f}, MAPE = {s['mape_pct']:.2f}%, within ±5%: {s['within_5_pct']:.0f}%, "
        f"within ±10%: {s['within_10_pct']:.0f}%"
    )
    print(f"wrote {json_path} and {png_path}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile",
        help="Measure a latency profile of a model's search space on this device (JCW §2.5).",
        description="Time every prunable layer over a grid of input channels, output channels and sparsities "
        "with the sparse engine, plus whole models for the additive term, and write a profile JSON. With "
        "--emit-jobs only the jobs are written, for `latprune measure` on a remote device; --assemble turns "
        "that device's table.json into a profile.",
    )
    p.add_argument("--model", help="Zoo model name (see `latprune models`).")
    p.add_argument("--input-size", help="Input as CxHxW, e.g. 3x224x224 or 1x28x28 (default: the model's own).")
    p.add_argument("--num-classes", type=int, help="Classifier outputs (default: the model's own, e.g. 1000).")
    p.add_argument("--threads", type=int, default=1, help="Engine threads to profile with (default 1).")
    p.add_argument(
        "--scheme",
        default="group4",
        help="Weight-sparsity scheme of the search space (default group4), or several joined by commas "
        "(group4,pattern): each layer then chooses among them and gets one table per scheme.",
    )
    p.add_argument("--grid", default="8,10", help="N,M: channel grid i/N and sparsity grid k/M (default 8,10).")
    p.add_argument(
        "--full-grid",
        action="store_true",
        help="Measure every grid point, also those the search space cannot reach (slower).",
    )
    p.add_argument("--repeats", type=int, default=7, help="Timed samples per grid point (default 7).")
    p.add_argument(
        "--model-repeats", type=int, default=30, help="Timed runs per whole model for the additive term (default 30)."
    )
    p.add_argument(
        "--statistic",
        choices=("median", "min", "cpu"),
        default="median",
        help="Reduce repeated timings by the median (default) or minimum of wall time, or use the median CPU time "
        "of the calling thread (1 thread only; immune to other processes on a busy, shared machine).",
    )
    p.add_argument(
        "--calibration",
        type=int,
        default=24,
        help="Whole models measured to fit the additive term: dense, smallest, then random (default 24).",
    )
    p.add_argument("--seed", type=int, default=0, help="Seed for layer weights and calibration models (default 0).")
    p.add_argument("--out", help="Where to write the profile JSON.")
    p.add_argument("--emit-jobs", metavar="JOBS.json", help="Only write the profiling jobs, for a remote device.")
    p.add_argument("--assemble", metavar="TABLE.json", help="Build the profile from a device's measurements file.")
    p.set_defaults(func=_profile)

    p = sub.add_parser(
        "measure",
        help="Run profiling jobs on this device and write the measurements (the device half of profiling).",
        description="Time every job of a jobs file (from `latprune profile --emit-jobs`) with this machine's "
        "engine, and write the measurements with this device's fingerprint.",
    )
    p.add_argument("jobs", help="The jobs JSON written by `latprune profile --emit-jobs`.")
    p.add_argument("--out", required=True, help="Where to write the measurements JSON (table.json).")
    p.set_defaults(func=_measure)

    p = sub.add_parser(
        "validate-latency",
        help="Compare a profile's predictions with measured latency of random pruned models.",
        description="Draw random architectures from the model's search space, compile each with the engine, "
        "measure it end to end and compare with the prediction: prints Pearson r, MAPE and the share within "
        "±5%% and ±10%%, and writes a JSON and a scatter plot.",
    )
    p.add_argument("--profile", required=True, help="The latency profile JSON to check.")
    p.add_argument("--model", help="Zoo model name; must match the profile's (default: the profile's).")
    p.add_argument("--scheme", help="Sparsity scheme of the space (default: the scheme the profile was built for).")
    p.add_argument("--samples", type=int, default=100, help="Random architectures to measure (default 100).")
    p.add_argument("--seed", type=int, default=1, help="Seed for the random architectures (default 1).")
    p.add_argument(
        "--sampling",
        choices=("spread", "uniform"),
        default="spread",
        help="spread: architectures from the smallest to the dense end of the space (default); uniform: every "
        "width and sparsity drawn independently (latencies then cluster near the mean).",
    )
    p.add_argument("--repeats", type=int, default=30, help="Timed runs per model (default 30).")
    p.add_argument(
        "--statistic",
        choices=("median", "min", "cpu"),
        help="Reduce each model's timed runs by median or min wall time, or median CPU time (default: what the "
        "profile used).",
    )
    p.add_argument("--out", help="Directory for validation.json and validation.png (default: next to the profile).")
    p.add_argument(
        "--force", action="store_true", help="Use a profile measured on another device or engine build anyway."
    )
    p.set_defaults(func=_validate)
