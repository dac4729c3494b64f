"""End-to-end latency of a (randomly) sparsified zoo model: the engine vs ONNX Runtime dense vs PyTorch eager."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn as nn

from latprune._busy import busy_warning, worst
from latprune._limits import check_memory, check_seed, check_threads
from latprune.bench.runtimes import DEFAULT_BASELINES, get_runtime, time_runtimes
from latprune.bench.timing import Timing
from latprune.engine.isa import cpu_model, using_isa
from latprune.engine.runtime import compile
from latprune.errors import EngineError
from latprune.models import ModelSpec

LAYER_SETS = ("auto", "pointwise", "kxk", "all")


@dataclass(frozen=True)
class BenchConfig:
    """One end-to-end measurement: which model, how it is sparsified, and how it is timed."""

    model: str
    input_size: int = 224
    width_mult: float = 1.0
    num_classes: int = 1000
    sparsity: float = 0.0
    scheme: str = "group4"
    layers: str = "auto"  # which convs get sparsity: see sparsify_model
    threads: int = 1
    batch: int = 1
    warmup: int = 10
    runs: int = 50
    seed: int = 0
    autotune: bool = False
    baselines: tuple[str, ...] = DEFAULT_BASELINES  # runtimes timed beside the engine (latprune.bench.list_runtimes)
    isa: str | None = None  # the engine's compile target (avx512, avx2, generic); None: $LATPRUNE_ISA or the CPU's best

    def __post_init__(self) -> None:
        if not 0.0 <= self.sparsity < 1.0:
            raise EngineError(f"--sparsity {self.sparsity} is out of range; use a fraction in [0, 1), e.g. 0.9.")
        if self.layers not in LAYER_SETS:
            raise EngineError(f"--layers {self.layers!r} is unknown; choose one of {', '.join(LAYER_SETS)}.")
        if self.threads < 1 or self.batch < 1 or self.runs < 1 or self.warmup < 0:
            raise EngineError("--threads, --batch and --runs must be at least 1 and --warmup at least 0.")
        check_threads(self.threads)
        check_seed(self.seed)
        size = f"3x{self.input_size}x{self.input_size}"
        check_memory(4.0 * self.batch * 3 * self.input_size**2, f"{self.batch} input(s) of {size}", "lower --batch")
        for name in self.baselines:
            if name == "engine":
                raise EngineError("The engine is always timed; list only the runtimes to compare it with.")
            get_runtime(name)  # unknown or not installed: one sentence


@dataclass(frozen=True)
class BenchResult:
    """Timings per runtime ("engine" and each baseline) and the engine's speed-ups over the baselines."""

    config: BenchConfig
    timings: dict[str, Timing]  # runtime name -> median / min wall time and median CPU time (see Timing)
    compile_s: float
    max_rel_error: float  # engine vs torch output, relative to max |torch output|
    sparse_layers: int
    kernels: dict[str, int]  # kernel name -> number of layers using it
    load_warning: str | None = None  # one sentence when the machine looked busy while timing (latprune._busy)
    isa: str = ""  # the ISA the engine ran (its generated code's target)
    cpu: str = ""  # the CPU model it ran on

    @property
    def engine_ms(self) -> float:
        return self.timings["engine"].median_ms

    def speedup(self, runtime: str) -> float:
        """How many times faster the engine is than ``runtime`` (median latencies)."""
        return self.timings[runtime].median_ms / self.engine_ms

    def to_json(self) -> dict[str, object]:
        d = asdict(self)
        d["speedups"] = {name: self.speedup(name) for name in self.timings if name != "engine"}
        return d


def _is_depthwise(m: nn.Conv2d) -> bool:
    return m.groups > 1 and m.groups == m.in_channels == m.out_channels


def sparsify_model(model: nn.Module, scheme: str, sparsity: float, layers: str = "auto") -> int:
    """Zero weights in place with ``scheme``'s structure (magnitude masks); returns how many convs were pruned.

    ``layers``: "pointwise" = the 1x1 convs, "kxk" = the convs with a larger kernel, "all" = both; "auto" is
    pointwise for networks with depthwise convs (MobileNets, where 1x1 convs hold the FLOPs) and kxk
    otherwise (ResNets). The stem (the first conv) and depthwise convs are never sparsified, as in JCW.
    """
    from latprune.schemes import make_mask

    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if layers == "auto":
        layers = "pointwise" if any(_is_depthwise(m) for _, m in convs) else "kxk"
    count = 0
    for name, m in convs[1:]:
        pointwise = m.kernel_size == (1, 1)
        if _is_depthwise(m) or (layers == "pointwise" and not pointwise) or (layers == "kxk" and pointwise):
            continue
        if sparsity > 0:
            with torch.no_grad():
                mask = make_mask(scheme, m.weight, sparsity, layer=name).to(m.weight.dtype)
                # Rescale the kept weights so activations keep their scale through many pruned layers
                # (else they shrink towards denormals, which would distort the timings and the error check).
                m.weight.mul_(mask / max(float(mask.mean()), 1e-6) ** 0.5)
            count += 1
    return count


def calibrate_batchnorm(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Set every BN's running statistics from a forward pass on ``x``, then return the model in eval mode.

    Freshly initialised zoo models have identity BN, and their depthwise init shrinks activations ~C-fold
    per layer: after a dozen layers they approach denormals, which are slow on every runtime. Real trained
    models are normalised, so the benchmark normalises too.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(x)
    for bn in bns:
        bn.momentum = 0.1
    return model.eval()


def _check_batch_fits(model: nn.Module, cfg: BenchConfig) -> None:
    """Refuse a batch whose activations cannot fit in memory, in one sentence, before anything is allocated.

    Every runtime holds the model's widest activation for the whole batch (torch, ONNX Runtime and the engine's
    arena at once): found on one image, then scaled by the batch.
    """
    widest = 0

    def record(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal widest
        if isinstance(output, torch.Tensor):
            widest = max(widest, output.numel())

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(record) for m in leaves]
    try:
        with torch.inference_mode():
            model(torch.zeros(1, 3, cfg.input_size, cfg.input_size))
    finally:
        for h in hooks:
            h.remove()
    per_image = 4.0 * (3 * cfg.input_size**2 + (1 + len(cfg.baselines)) * widest)  # float32 bytes
    check_memory(cfg.batch * per_image, f"A --batch of {cfg.batch} images", "use a smaller --batch")


def benchmark_model(cfg: BenchConfig) -> BenchResult:
    """Build the zoo model with random weights, sparsify it, compile it for ``cfg.isa``, and time the engine and
    its baselines."""
    with using_isa(cfg.isa):
        return _benchmark_model(cfg)


def _benchmark_model(cfg: BenchConfig) -> BenchResult:
    spec = ModelSpec(cfg.model, cfg.num_classes, 3, cfg.input_size, cfg.width_mult)
    model = spec.build(seed=cfg.seed)  # random weights, the same ones for the same seed
    model.eval()
    _check_batch_fits(model, cfg)
    n_sparse = sparsify_model(model, cfg.scheme, cfg.sparsity, cfg.layers)
    gen = torch.Generator().manual_seed(cfg.seed)
    calibrate_batchnorm(model, torch.randn(4, 3, cfg.input_size, cfg.input_size, generator=gen))
    x = torch.randn(cfg.batch, 3, cfg.input_size, cfg.input_size, generator=gen)
    t0 = time.perf_counter()
    cm = compile(model, x, threads=cfg.threads, autotune=cfg.autotune)
    compile_s = time.perf_counter() - t0
    xa = x.numpy()
    with torch.inference_mode():
        ref = model(x)
    timings = time_runtimes(
        model, x, cfg.threads, ("engine", *cfg.baselines), warmup=cfg.warmup, runs=cfg.runs,
        prepared={"engine": lambda: cm(xa)},
    )  # fmt: skip
    err = float(np.abs(cm(xa) - ref.numpy()).max() / max(float(ref.abs().max()), 1e-12))
    kernels: dict[str, int] = {}
    for layer in cm.spec.layers:
        kernels[layer.kernel] = kernels.get(layer.kernel, 0) + 1
    warning = busy_warning(worst(t.load for t in timings.values()), "This benchmark")
    return BenchResult(cfg, timings, compile_s, err, n_sparse, kernels, warning, isa=cm.spec.isa, cpu=cpu_model())


def format_result(r: BenchResult) -> str:
    """A few human lines: each runtime's median and the engine's speed-ups."""
    c = r.config
    lines = [
        f"{c.model} @ {c.input_size}px, batch {c.batch}, {c.threads} thread(s), {c.scheme} sparsity {c.sparsity:.0%} "
        f"on {r.sparse_layers} convs (median of {c.runs} runs), engine compiled for {r.isa} on {r.cpu}",
        f"  latprune engine  {r.engine_ms:9.3f} ms   (compiled in {r.compile_s:.1f} s, "
        f"max rel error {r.max_rel_error:.1e})",
    ]
    baselines = [name for name in r.timings if name != "engine"]
    for name in baselines:
        label = get_runtime(name).label
        ms = r.timings[name].median_ms
        lines.append(f"  {label:<16} {ms:9.3f} ms   engine is {r.speedup(name):.2f}x faster")
    if c.threads == 1:  # CPU time of the calling thread: what preemption on a busy machine does not inflate
        cpu = [f"engine {r.timings['engine'].cpu_ms:.3f}"]
        cpu += [f"{get_runtime(name).label} {r.timings[name].cpu_ms:.3f}" for name in baselines]
        lines.append("  CPU time (ms): " + ", ".join(cpu))
    lines.append("  kernels: " + ", ".join(f"{k} x{n}" for k, n in sorted(r.kernels.items())))
    if r.load_warning:
        lines.append(f"  warning: {r.load_warning}")
    return "\n".join(lines)


__all__ = [
    "LAYER_SETS",
    "BenchConfig",
    "BenchResult",
    "benchmark_model",
    "calibrate_batchnorm",
    "format_result",
    "sparsify_model",
]
