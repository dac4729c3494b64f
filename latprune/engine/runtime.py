"""``compile(model, example_input)``: capture, choose kernels, generate C, build, and run it as a CompiledModel."""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import stat
import statistics
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from latprune._io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from latprune._version import __version__
from latprune.engine.autotune import best_variant
from latprune.engine.build import build_shared_library, find_compiler, load_library
from latprune.engine.capture import capture
from latprune.engine.codegen import aligned_empty, describe, lower
from latprune.engine.detect import choose_kernel
from latprune.engine.ir import Graph
from latprune.engine.isa import Isa, host_isa, runnable_isas
from latprune.engine.torch_backend import TorchGraphRunner
from latprune.engine.trust import check_private, read_verified, verify_library, write_private
from latprune.errors import EngineError
from latprune.schemes import list_schemes

BACKENDS = ("c", "torch")


@dataclass(frozen=True)
class LayerChoice:
    """The kernel the compiler picked for one conv/linear layer (shown by ``summary()`` and saved with the model)."""

    name: str
    kernel: str
    variant: int
    c_in: int
    c_out: int
    kernel_size: int
    density: float  # fraction of nonzero weights


@dataclass(frozen=True)
class CompiledSpec:
    """What a compiled model needs besides its source and blob: shapes, arena size, target and layer choices."""

    name: str
    input_shape: tuple[int, int, int]  # (C, H, W) per image
    output_shape: tuple[int, ...]  # per image: (F,) or (C, H, W)
    arena_floats: int
    threads: int
    isa: str
    layers: tuple[LayerChoice, ...]
    ops: tuple[str, ...] = ()  # one description per IR op, in execution order (for profile())
    version: str = __version__


def choose_kernels(
    graph: Graph, schemes: Mapping[str, str] | None, threads: int, autotune: bool, isa: Isa | None = None
) -> None:
    """Fill in ``kernel``/``variant`` of every conv op for the target ``isa`` (default: the host's):
    detect.choose_kernel, then autotune's fastest variant (measured here, so only for the host).

    ``schemes`` maps conv/linear module names to a declared sparsity scheme (else it is detected from the zeros).
    """
    schemes = dict(schemes or {})
    names = {op.name for op in graph.conv_ops()}
    unknown = sorted(set(schemes) - names)
    if unknown:
        raise EngineError(
            f"The schemes mapping names layer(s) {', '.join(unknown)} that the model does not have; "
            f"use conv/linear module names such as {sorted(names)[:3]}."
        )
    bad = sorted(f"{k}={v}" for k, v in schemes.items() if v not in list_schemes())
    if bad:
        raise EngineError(f"Unknown sparsity scheme in {', '.join(bad)}; choose one of {', '.join(list_schemes())}.")
    for op in graph.conv_ops():
        spec, variant = choose_kernel(
            op.weight, op.meta, declared_scheme=schemes.get(op.name), nthreads=threads, isa=isa
        )
        if autotune and len(spec.variants) > 1:
            variant = best_variant(spec, op.meta, op.weight, threads)
        op.kernel, op.variant = spec.name, variant


def layer_choices(graph: Graph) -> tuple[LayerChoice, ...]:
    return tuple(
        LayerChoice(
            op.name,
            op.kernel,
            op.variant,
            op.meta.c_in,
            op.meta.c_out,
            op.meta.kh,
            round(float(np.count_nonzero(op.weight)) / op.weight.size, 4),
        )
        for op in graph.conv_ops()
    )


#: Most threads a saved model may ask for (a manifest edited to 10**9 threads would exhaust the process).
MAX_THREADS = 1024


def _spec_from_json(d: dict[str, Any]) -> CompiledSpec:
    if not isinstance(d, dict):
        raise TypeError(f"model.json holds a {type(d).__name__}, not an object")
    return CompiledSpec(
        name=d["name"],
        input_shape=tuple(d["input_shape"]),
        output_shape=tuple(d["output_shape"]),
        arena_floats=int(d["arena_floats"]),
        threads=int(d["threads"]),
        isa=d["isa"],
        layers=tuple(LayerChoice(**layer) for layer in d["layers"]),
        ops=tuple(d.get("ops", ())),
        version=d["version"],
    )


class CompiledModel:
    """A network compiled to generated C (or, only when asked for, interpreted with torch).

    Call it like the PyTorch model, with a torch tensor or a numpy array of shape (N, C, H, W); it
    returns the same kind. The arena is allocated once, so a call allocates only its output; calls on one
    instance are serialised (they share the arena), use one instance per thread for parallel serving.
    """

    def __init__(
        self,
        spec: CompiledSpec,
        source: str | None,
        blob: np.ndarray | None,
        lib_path: Path | None,
        runner: TorchGraphRunner | None = None,
        lib_sha256: str | None = None,
    ) -> None:
        self.spec = spec
        self.source = source
        self.blob = blob
        self.lib_path = lib_path
        self.lib_sha256 = lib_sha256  # None: a cache entry, verified against its sidecar
        self._runner = runner
        self._lock = threading.Lock()
        self._fn = None
        if lib_path is not None:
            self.lib_sha256 = verify_library(lib_path, lib_sha256)
            lib = load_library(lib_path, self.lib_sha256)
            self._lib = lib  # keep the handle alive as long as the function pointer
            self._fn = lib.lp_forward
            self._fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_int]
            self._fn.restype = None
            self._arena = aligned_empty(4 * max(spec.arena_floats, 1)).view(np.float32)

    @property
    def backend(self) -> str:
        return "c" if self._fn is not None else "torch"

    @property
    def threads(self) -> int:
        return self.spec.threads

    def _check(self, x: np.ndarray | torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.spec.input_shape:
            raise EngineError(
                f"{self.spec.name} was compiled for inputs of shape (N, {', '.join(map(str, self.spec.input_shape))}), "
                f"got {tuple(x.shape)}; recompile with an example input of the new shape."
            )

    def __call__(self, x: np.ndarray | torch.Tensor, threads: int | None = None) -> np.ndarray | torch.Tensor:
        """Run the network on a batch; ``threads`` overrides the thread count chosen at compile time."""
        self._check(x)
        nthreads = max(1, int(threads or self.spec.threads))
        if self._fn is None:
            assert self._runner is not None
            xt = torch.as_tensor(x).float()
            y = self._runner(xt, nthreads)
            return y if isinstance(x, torch.Tensor) else y.numpy()
        is_torch = isinstance(x, torch.Tensor)
        xa = np.ascontiguousarray(x.detach().cpu().float().numpy() if is_torch else x, dtype=np.float32)
        out = np.empty((xa.shape[0], *self.spec.output_shape), np.float32)
        with self._lock:
            self._fn(
                xa.ctypes.data, out.ctypes.data, self._arena.ctypes.data, self.blob.ctypes.data, xa.shape[0], nthreads
            )
        return torch.from_numpy(out) if is_torch else out

    def latency(self, batch: int = 1, threads: int | None = None, warmup: int = 10, repeats: int = 50) -> float:
        """Median seconds of one forward pass on random input (the timing the benchmarks and profiler use)."""
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, *self.spec.input_shape), dtype=np.float32)
        times = []
        for i in range(warmup + repeats):
            t0 = time.perf_counter()
            self(x, threads)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return statistics.median(times)

    def profile(
        self, threads: int | None = None, warmup: int = 5, repeats: int = 20, cpu_time: bool | None = None
    ) -> list[tuple[str, float]]:
        """Median seconds spent in each op of a batch-1 forward pass, as (op description, seconds) in order.

        The sum is the whole-model latency minus the call overhead; the latency profiler and the benchmarks
        use it to see which layers dominate. ``cpu_time`` (default: when running 1 thread) measures the
        calling thread's CPU time instead of wall time, so time the OS gave to other processes is not counted.
        """
        if self._fn is None:
            raise EngineError(
                f"{self.spec.name} runs on the torch backend, which has no per-op profile; use backend='c'."
            )
        fn = self._lib.lp_forward_profiled
        fn.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
        fn.restype = None
        x = np.random.default_rng(0).standard_normal((1, *self.spec.input_shape), dtype=np.float32)
        out = np.empty((1, *self.spec.output_shape), np.float32)
        nthreads = max(1, int(threads or self.spec.threads))
        cpu_clock = int(nthreads == 1 if cpu_time is None else cpu_time)
        runs = np.zeros((repeats, len(self.spec.ops)), np.float64)
        with self._lock:
            for r in range(-warmup, repeats):
                acc = np.zeros(len(self.spec.ops), np.float64)
                fn(
                    x.ctypes.data,
                    out.ctypes.data,
                    self._arena.ctypes.data,
                    self.blob.ctypes.data,
                    1,
                    nthreads,
                    acc.ctypes.data,
                    cpu_clock,
                )
                if r >= 0:
                    runs[r] = acc
        return list(zip(self.spec.ops, np.median(runs, axis=0).tolist(), strict=True))

    def summary(self) -> str:
        """One line per conv/linear layer: shape, density and the kernel chosen for it."""
        lines = [f"{self.spec.name} ({self.backend} backend, {self.spec.isa}, arena {self.spec.arena_floats * 4} B)"]
        for layer in self.spec.layers:
            lines.append(
                f"  {layer.name:<28} {layer.c_in:>5}->{layer.c_out:<5} k{layer.kernel_size} "
                f"density {layer.density:.3f}  {layer.kernel or '-'} v{layer.variant}"
            )
        return "\n".join(lines)

    def save(self, directory: str | Path) -> Path:
        """Write model.c, weights.bin, model.json and the built model.so, so ``load`` needs no compiler."""
        if self._fn is None or self.source is None or self.blob is None or self.lib_path is None:
            raise EngineError(
                f"{self.spec.name} runs on the torch backend, which cannot be saved; compile with "
                "backend='c' to save it."
            )
        directory = Path(directory)
        directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        check_private(directory, "saved model folder")  # load() refuses a folder others could write: refuse it now
        library = read_verified(self.lib_path, self.lib_sha256)  # the bytes that were verified and loaded
        blob = self.blob.tobytes()
        write_private(directory / "model.so", library, 0o755)
        for name, write in (
            ("model.c", lambda p: atomic_write_text(p, self.source)),
            ("weights.bin", lambda p: atomic_write_bytes(p, blob)),
            ("model.json", lambda p: atomic_write_json(p, self._manifest(blob, library))),
        ):
            path = write(directory / name)
            path.chmod(path.stat().st_mode & ~0o022)  # nobody else may swap what load() will trust
        return directory

    def _manifest(self, blob: bytes, library: bytes) -> dict[str, Any]:
        """model.json: the spec, plus what load() checks the other files against before running any of them."""
        meta = asdict(self.spec)
        meta["weights_sha256"] = hashlib.sha256(blob).hexdigest()
        meta["weights_bytes"] = len(blob)
        meta["weights_arrays"] = blob_layout(np.frombuffer(blob, np.uint8))
        meta["library_sha256"] = hashlib.sha256(library).hexdigest()
        return meta

    @classmethod
    def load(cls, directory: str | Path) -> CompiledModel:
        """Load a saved model: its own model.so when it was built for this ISA, else rebuild from model.c.

        Nothing from the folder runs before it is checked: the folder and its files must be yours (or root's) and
        not writable by others, model.so must match the sha256 in model.json, weights.bin its size, hash and
        array layout, and the library's own arena, input, output and op counts must match model.json. Any
        mismatch is one sentence; without these checks an edited model.json crashed the process (SIGSEGV).
        """
        directory = Path(directory).resolve()  # a symlink you pass is yours; the folder it names is checked
        check_private(directory, "saved model folder")
        for name in ("model.json", "weights.bin", "model.c"):
            if os.path.lexists(directory / name) and not stat.S_ISREG(
                check_private(directory / name, "saved model file").st_mode
            ):  # a FIFO or device would block or never end the read
                raise EngineError(f"'{directory / name}' is not a regular file; save the model again.")
        meta = read_json(directory / "model.json", "compiled model description")
        try:
            spec = _spec_from_json(meta)
            source = (directory / "model.c").read_text()
            raw = (directory / "weights.bin").read_bytes()
        except (KeyError, TypeError, ValueError, OSError) as exc:
            raise EngineError(
                f"The compiled model in '{directory}' is incomplete ({type(exc).__name__}: {exc}); "
                "save it again with CompiledModel.save()."
            ) from None
        if spec.version != __version__:
            raise EngineError(
                f"The compiled model in '{directory}' was saved by latprune {spec.version}, this is "
                f"{__version__}; recompile it from the PyTorch model."
            )
        _check_weights(directory, meta, raw, source)
        if not 1 <= spec.threads <= MAX_THREADS:
            raise EngineError(
                f"'{directory / 'model.json'}' asks for {spec.threads} threads; it was edited, so save the model again."
            )
        blob = aligned_empty(len(raw))
        blob[:] = np.frombuffer(raw, np.uint8)
        lib, lib_sha256 = directory / "model.so", meta.get("library_sha256")
        if spec.isa not in runnable_isas() or not lib.is_file():
            lib, lib_sha256 = build_shared_library(source), None
        elif not isinstance(lib_sha256, str):
            raise EngineError(
                f"'{directory / 'model.json'}' records no library_sha256 for model.so, so the library cannot be "
                "verified; save the model again (or delete model.so to rebuild it from model.c)."
            )
        cm = cls(spec, source, blob, lib, lib_sha256=lib_sha256)
        _check_sizes(cm, directory)
        return cm


def blob_layout(blob: np.ndarray) -> list[int]:
    """Bytes from each packed array's offset to the next (the last: to the end), read from the blob's offset table.

    ``pack_blob`` writes the table (one int64 per array, then zeros up to the first array's 64-byte-aligned
    offset), so the sizes are recoverable from the blob itself; saving them lets load() detect a blob that was
    truncated or re-laid out even when its hash in model.json was updated to match.
    """
    header = int(blob[:8].view("<i8")[0]) if len(blob) >= 8 else 0
    if header == 0:
        return []  # no arrays (a network without convs): the table is all zeros
    if header < 0 or header % 64 or header > len(blob):
        return [-1]  # not a table pack_blob writes: fails every comparison
    table = blob[:header].view("<i8")
    offsets = [int(o) for o in table if o != 0]
    ends = [*offsets[1:], len(blob)]
    return [end - off for off, end in zip(offsets, ends, strict=True)]


_LP_ARR = re.compile(r"LP_ARR\(\w+, (\d+)\)")


def _check_weights(directory: Path, meta: dict[str, Any], raw: bytes, source: str) -> None:
    """weights.bin against model.json (hash, size, layout) and against model.c (how many arrays it reads)."""
    path = directory / "weights.bin"
    if hashlib.sha256(raw).hexdigest() != meta.get("weights_sha256"):
        raise EngineError(f"'{path}' does not match model.json (truncated or replaced); save the model again.")
    layout = blob_layout(np.frombuffer(raw, np.uint8))
    needed = max((int(k) for k in _LP_ARR.findall(source)), default=-1) + 1
    if meta.get("weights_bytes") != len(raw) or meta.get("weights_arrays") != layout or len(layout) != needed:
        raise EngineError(
            f"'{path}' holds {len(raw)} bytes in {len(layout)} arrays, but model.json records "
            f"{meta.get('weights_bytes')} bytes in {len(meta.get('weights_arrays') or [])} and model.c reads "
            f"{needed} arrays; the files were edited or mixed up, so save the model again."
        )


def _check_sizes(cm: CompiledModel, directory: Path) -> None:
    """The library's own arena, input, output and op counts must match the spec the caller sizes buffers by."""
    lib, spec = cm._lib, cm.spec
    expected = {
        "arena_floats": spec.arena_floats,
        "input floats": int(np.prod(spec.input_shape)),
        "output floats": int(np.prod(spec.output_shape)),
        "ops": len(spec.ops),
    }
    for (what, want), fn in zip(
        expected.items(), ("lp_arena_floats", "lp_input_floats", "lp_output_floats", "lp_num_ops"), strict=True
    ):
        getattr(lib, fn).restype = ctypes.c_int
        got = int(getattr(lib, fn)())
        if got != want:
            raise EngineError(
                f"'{directory / 'model.json'}' records {want} {what}, but its library needs {got}; the manifest was "
                "edited or belongs to another build, so save the model again."
            )


def compile(
    model: nn.Module,
    example_input: torch.Tensor,
    threads: int = 1,
    backend: str = "c",
    schemes: Mapping[str, str] | None = None,
    autotune: bool = False,
) -> CompiledModel:
    """Compile ``model`` (eval-mode semantics) for inputs shaped like ``example_input`` (N, C, H, W).

    ``schemes`` declares the sparsity scheme of named conv/linear layers (else it is detected from the
    zeros); ``autotune`` times each layer's kernel variants and keeps the fastest (cached per device).
    ``backend="torch"`` interprets the same IR with torch ops, and runs the model's own code for ops the C
    engine does not compile; it runs only when asked for, never as a silent fallback, so a missing C compiler
    or an unsupported op is an error that says so.
    """
    if backend not in BACKENDS:
        raise EngineError(f"Unknown engine backend {backend!r}; choose 'c' (generated C) or 'torch' (reference).")
    if threads < 1:
        raise EngineError(f"threads must be at least 1, got {threads}.")
    if backend == "c":
        find_compiler()  # fail before any work when there is no compiler
    graph = capture(model, example_input, allow_torch_ops=backend == "torch")
    out = graph.output
    out_shape = (out.c,) if out.flat else (out.c, out.h, out.w)
    in_shape = (graph.input.c, graph.input.h, graph.input.w)
    isa = host_isa()
    if backend == "torch":
        ops = tuple(f"{op.name}: {describe(op)}" for op in graph.ops)
        spec = CompiledSpec(graph.name, in_shape, out_shape, 0, threads, "torch", layer_choices(graph), ops)
        return CompiledModel(spec, None, None, None, TorchGraphRunner(graph))
    choose_kernels(graph, schemes, threads, autotune, isa)
    ops = tuple(f"{op.name}: {describe(op)}" for op in graph.ops)
    lowered = lower(graph, isa)
    lib = build_shared_library(lowered.source, isa)
    spec = CompiledSpec(
        graph.name, in_shape, out_shape, lowered.arena_floats, threads, isa.name, layer_choices(graph), ops
    )
    return CompiledModel(spec, lowered.source, lowered.blob, lib)


__all__ = ["BACKENDS", "CompiledModel", "CompiledSpec", "LayerChoice", "choose_kernels", "compile", "layer_choices"]
