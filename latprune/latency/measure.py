"""The device half of profiling: time every grid point with the engine's layer runner, and whole models end to end."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from latprune.engine.fingerprint import current_fingerprint
from latprune.errors import ProfileError
from latprune.latency.jobs import Measurements, ModelJob, ProfileJobs, TableJob, TimingConfig, check_statistic
from latprune.latency.profile import LayerSignature
from latprune.models import ModelSpec

#: Activation timed with every layer (ReLU; the fused epilogue costs about the same for every activation).
_ACT_RELU = 1


def layer_meta(sig: LayerSignature, c_in: int, c_out: int) -> Any:
    """The engine's ``ConvMeta`` for ``sig`` pruned to ``c_in`` -> ``c_out`` channels."""
    from latprune.engine.kernels import ConvMeta

    if sig.kind == "linear":
        return ConvMeta(c_in=c_in, c_out=c_out, h=1, w=1, is_linear=True)
    groups = c_out if sig.kind == "depthwise" else sig.groups
    return ConvMeta(
        c_in=c_in, c_out=c_out, h=sig.in_hw[0], w=sig.in_hw[1], kh=sig.kernel[0], kw=sig.kernel[1],
        stride_h=sig.stride[0], stride_w=sig.stride[1], pad_h=sig.padding[0], pad_w=sig.padding[1], groups=groups,
    )  # fmt: skip


def masked_weight(full: np.ndarray, sig: LayerSignature, c_in: int, c_out: int, sparsity: float) -> np.ndarray:
    """The top-left (c_out, c_in/groups) slice of ``full`` with the scheme's mask at ``sparsity`` applied.

    The mask comes from the pruning package's generator, so the zeros have exactly the structure (and the
    spread over groups) that a pruned model hands to the engine.
    """
    from latprune.prune import make_mask

    per_group = 1 if sig.kind == "depthwise" else c_in // sig.groups
    w = np.ascontiguousarray(full[:c_out, :per_group])  # (c_out, c_in/groups, kh, kw)
    if sparsity <= 0.0 or sig.scheme == "dense":
        return w
    wt = torch.from_numpy(w)
    if sig.kind == "linear":
        wt = wt.reshape(c_out, per_group)  # (out, in): linear schemes such as block_fc take the 2-D weight
    mask = make_mask(sig.scheme, wt, sparsity, layer=sig.key).reshape(w.shape)
    return np.where(mask.numpy(), w, np.float32(0))


def declared_scheme(scheme: str, sparsity: float) -> str | None:
    """The scheme declared to the engine: the layer's scheme once it has zeros, else none (dense weights)."""
    return scheme if sparsity > 0.0 and scheme != "dense" else None


def time_call(call: Callable[[], object], warmup: int, repeats: int, statistic: str) -> float:
    """Seconds per ``call()``: samples of back-to-back calls lasting >= ~1 ms each, reduced by ``statistic``.

    The same loop times layers and whole models, so both sides of the additive-term fit see the same timer.
    """
    clock = time.thread_time if statistic == "cpu" else time.perf_counter
    for _ in range(max(1, warmup)):
        call()
    t0 = clock()
    call()
    inner = max(1, min(1000, int(1e-3 / max(clock() - t0, 1e-7))))
    samples = []
    for _ in range(max(1, repeats)):
        t0 = clock()
        for _ in range(inner):
            call()
        samples.append((clock() - t0) / inner)
    return min(samples) if statistic == "min" else statistics.median(samples)


def _time_point(
    sig: LayerSignature, weight: np.ndarray, c_in: int, c_out: int, sparsity: float, threads: int, timing: TimingConfig
) -> float:
    """Latency (ms) of one layer with the kernel (and variant) that ``engine.compile`` chooses for this weight.

    The layer is bound once through the engine's layer runner (packed weights, loaded kernel) and then called on
    one random image, exactly as ``engine.layer.time_layer`` does, but reduced with ``timing.statistic``.
    """
    from latprune.engine.detect import choose_kernel
    from latprune.engine.layer import bind_layer

    meta = layer_meta(sig, c_in, c_out)
    declared = declared_scheme(sig.scheme, sparsity)
    spec, variant = choose_kernel(weight, meta, declared_scheme=declared, nthreads=threads)
    layer = bind_layer(spec, weight, np.zeros(c_out, np.float32), meta, _ACT_RELU, variant, threads)
    x = np.random.default_rng(0).standard_normal((meta.c_in, meta.h, meta.w), dtype=np.float32)
    out = np.empty((meta.c_out, meta.h_out, meta.w_out), dtype=np.float32)
    return time_call(lambda: layer.call(x, out), timing.warmup, timing.repeats, timing.statistic) * 1e3


def measure_table(job: TableJob, threads: int, timing: TimingConfig, tick: Callable[[], None]) -> np.ndarray:
    """Latency (ms) of every grid point of ``job``, shaped like its grid."""
    sig, grid = job.signature, job.grid
    rng = np.random.default_rng(job.seed)
    per_group = 1 if sig.kind == "depthwise" else sig.c_in // sig.groups
    full = rng.standard_normal((sig.c_out, per_group, *sig.kernel), dtype=np.float32)  # (c_out, c_in/g, kh, kw)
    if sig.kind == "linear":
        full = full[:, :, :1, :1]
    out = np.empty(grid.shape)
    for i, ci in enumerate(grid.cin):
        for j, co in enumerate(grid.cout):
            c_in = co if grid.tied else ci
            for k, s in enumerate(grid.sparsity):
                weight = masked_weight(full, sig, c_in, co, s)
                out[i, j, k] = _time_point(sig, weight, c_in, co, s, threads, timing)
                tick()
    return out


def build_model(
    spec: ModelSpec, job: ModelJob | None = None, scheme: str = "group4", space: Any = None
) -> tuple[torch.nn.Module, dict[str, str]]:
    """The zoo model of ``spec`` in eval mode, pruned to ``job``'s architecture (the dense model for None),
    and the schemes to declare to the engine for its sparse layers.

    ``space`` is the model's search space for ``scheme`` (built here when not given; pass it when building
    many models, since tracing the channel graph is the slow part).
    """
    model = spec.build().eval()
    if job is None or job.widths is None:
        return model, {}
    from latprune.prune import apply_plan, bake_masks, plan_from_arch
    from latprune.space import Arch, SearchSpace

    if space is None:
        space = SearchSpace.from_model(model, spec.input_size, spec.in_channels, scheme=scheme)
    arch = Arch(job.widths, job.sparsities or ())
    plan = plan_from_arch(model, space, arch)
    schemes = {
        layer.name: d
        for layer, s in zip(space.layers, arch.sparsities, strict=True)
        if (d := declared_scheme(layer.scheme, s)) is not None
    }
    return bake_masks(apply_plan(model, plan)).eval(), schemes  # plain weights with zeros, as export does


def compile_model(
    model: torch.nn.Module, schemes: dict[str, str], spec: ModelSpec, threads: int
) -> Callable[[], object]:
    """A zero-argument call running the engine-compiled ``model`` on one random batch-1 image."""
    from latprune.engine import compile as engine_compile

    x = torch.zeros(1, spec.in_channels, spec.input_size, spec.input_size)
    compiled = engine_compile(model, x, threads=threads, schemes=schemes)
    xn = np.random.default_rng(0).standard_normal(tuple(x.shape), dtype=np.float32)
    return lambda: compiled(xn, threads)


def time_models(calls: Sequence[Callable[[], object]], timing: TimingConfig, progress: bool = False) -> list[float]:
    """Latency (ms) of each compiled model, timed in ``timing.model_rounds`` interleaved rounds.

    A burst of load from other processes lasts seconds: timing every model once per round, round after round,
    spreads each model's samples over the whole run, so one burst cannot spoil a model. Each round takes
    ``model_repeats / model_rounds`` samples; the rounds are reduced with the same statistic as the samples.
    """
    rounds = max(1, timing.model_rounds)
    per_round = max(1, -(-timing.model_repeats // rounds))
    results: list[list[float]] = [[] for _ in calls]
    with tqdm(total=rounds * len(calls), desc="time models", unit="run", disable=not progress) as bar:
        for r in range(rounds):
            for i, call in enumerate(calls):
                warmup = timing.model_warmup if r == 0 else 1
                results[i].append(time_call(call, warmup, per_round, timing.statistic))
                bar.update(1)
    reduce = min if timing.statistic == "min" else statistics.median
    return [reduce(samples) * 1e3 for samples in results]


def time_model(
    model: torch.nn.Module, schemes: dict[str, str], spec: ModelSpec, threads: int, timing: TimingConfig
) -> float:
    """Latency (ms) of one batch-1 call of the engine-compiled ``model``."""
    return time_models([compile_model(model, schemes, spec, threads)], timing)[0]


def measure_jobs(jobs: ProfileJobs, progress: bool = True) -> Measurements:
    """Run every job on this machine with its engine; the result carries this machine's fingerprint."""
    if jobs.threads < 1:
        raise ProfileError(f"The jobs ask for {jobs.threads} threads; they need at least 1.")
    check_statistic(jobs.timing.statistic, jobs.threads)
    t0 = time.perf_counter()
    # Torch (mask generation, tracing) on one thread: its idle OpenMP workers spin for a while after each op and
    # would steal the cores the engine is being timed on; on one thread the masks are also faster here.
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    bar = tqdm(total=jobs.n_points, desc="profile layers", unit="pt", disable=not progress)
    try:
        tables = tuple(measure_table(job, jobs.threads, jobs.timing, lambda: bar.update(1)) for job in jobs.tables)
        bar.close()
        calls = []
        space = None
        for job in tqdm(jobs.models, desc="compile models", unit="model", disable=not progress):
            if space is None and job.widths is not None:
                from latprune.latency.profiling import model_space

                space = model_space(jobs.model, jobs.scheme)
            model, schemes = build_model(jobs.model, job, jobs.scheme, space)
            calls.append(compile_model(model, schemes, jobs.model, jobs.threads))
        models = time_models(calls, jobs.timing, progress)
    finally:
        bar.close()
        torch.set_num_threads(torch_threads)
    return Measurements(jobs, current_fingerprint(), tables, tuple(models), time.perf_counter() - t0)
