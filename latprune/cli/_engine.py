"""`latprune bench`, `latprune compile` and `latprune export`: run, save and export models with the sparse engine."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn as nn

from latprune._io import output_lock
from latprune._limits import check_seed, check_threads
from latprune.bench.runtimes import DEFAULT_BASELINES, list_runtimes
from latprune.cli._parsers import parse_names
from latprune.engine.export import TARGETS
from latprune.errors import EngineError
from latprune.schemes import get_scheme


def _load_model(args: argparse.Namespace) -> tuple[nn.Module, int, int]:
    """The model to compile: from --checkpoint, or a zoo model with random weights; plus (channels, size)."""
    _check_model_flags(args)
    if args.checkpoint:
        from latprune.train.checkpoint import load_model_from_checkpoint

        model, ckpt = load_model_from_checkpoint(args.checkpoint)
        kw = ckpt["model_kwargs"]
        return model, int(kw.get("in_channels", 3)), int(args.input_size or kw["input_size"])
    if not args.model:
        raise EngineError("Name a model with --model NAME (see `latprune models`) or pass --checkpoint PATH.")
    from latprune.models import ModelSpec, model_info

    info = model_info(args.model)
    spec = ModelSpec(
        args.model, info.default_num_classes, 3, args.input_size or info.default_input_size, args.width_mult
    )
    return spec.build(seed=args.seed).eval(), spec.in_channels, spec.input_size  # random weights, the same per --seed


def _check_model_flags(args: argparse.Namespace) -> None:
    """The model flags' values, before anything is built (each is checked even where --checkpoint or --out make it
    unused, so a bad value is never silently ignored): --input-size 0 is not "the default", an unset flag is."""
    if args.input_size is not None and args.input_size < 8:
        raise EngineError(f"--input-size {args.input_size} is too small; pass at least 8 pixels, e.g. 32 or 224.")
    if not 0 < args.width_mult < math.inf:
        raise EngineError(f"--width-mult {args.width_mult} must be a positive, finite factor, e.g. 0.5 or 1.")
    if not 0.0 <= args.sparsity < 1.0:
        raise EngineError(f"--sparsity {args.sparsity} is out of range; use a fraction in [0, 1), e.g. 0.9.")
    check_seed(args.seed)
    get_scheme(args.scheme)  # an unknown name is one sentence listing the known ones, even where it goes unused


def _maybe_sparsify(model: nn.Module, args: argparse.Namespace) -> None:
    if args.sparsity:
        from latprune.bench import sparsify_model

        n = sparsify_model(model, args.scheme, args.sparsity, args.layers)
        print(f"sparsified {n} convs to {args.sparsity:.0%} with the {args.scheme} scheme")


def _bench(args: argparse.Namespace) -> int:
    from latprune.bench import BenchConfig, benchmark_model, format_result
    from latprune.models import model_info

    if not args.model:
        raise EngineError("Name the model to benchmark with --model NAME (see `latprune models`).")
    _check_model_flags(args)
    size = args.input_size or model_info(args.model).default_input_size
    cfg = BenchConfig(
        model=args.model,
        input_size=size,
        width_mult=args.width_mult,
        sparsity=args.sparsity,
        scheme=args.scheme,
        layers=args.layers,
        threads=args.threads,
        batch=args.batch,
        warmup=args.warmup,
        runs=args.runs,
        seed=args.seed,
        autotune=args.autotune,
        baselines=_baselines(args),
        isa=args.isa,
    )
    result = benchmark_model(cfg)
    print(json.dumps(result.to_json(), indent=2) if args.json else format_result(result))
    return 0


def _baselines(args: argparse.Namespace) -> tuple[str, ...]:
    """--runtimes, less those the --no-onnxruntime / --no-torch flags drop."""
    dropped = {"onnxruntime"} if args.no_onnxruntime else set()
    dropped |= {"torch"} if args.no_torch else set()
    return tuple(name for name in parse_names(args.runtimes, "--runtimes") if name not in dropped)


def _compile(args: argparse.Namespace) -> int:
    from latprune.engine import compile

    check_threads(args.threads)
    with output_lock(args.out, mode=0o755):  # CompiledModel.load trusts only folders others cannot write
        model, channels, size = _load_model(args)
        _maybe_sparsify(model, args)
        cm = compile(model, torch.zeros(1, channels, size, size), threads=args.threads, autotune=args.autotune)
        out = cm.save(args.out)
    print(cm.summary())
    print(f"engine latency {cm.latency() * 1e3:.3f} ms (batch 1, {args.threads} thread(s)); saved to {out}")
    return 0


def _export(args: argparse.Namespace) -> int:
    """--out: the whole bundle of a checkpoint (latprune.export); --c: one stand-alone C project (engine.export)."""
    _check_model_flags(args)
    if (args.out is None) == (args.c is None):
        raise EngineError("Pass --out DIR (the whole export bundle) or --c DIR (one C project), not both or neither.")
    targets = tuple(args.target or ())
    if args.out is not None:
        from latprune.export import ExportConfig, export_checkpoint, format_bundle

        if not args.checkpoint or args.model or args.sparsity:
            raise EngineError(
                "--out exports a trained model as it is: name it with --checkpoint PATH (--model and --sparsity "
                "go with --c)."
            )
        config = ExportConfig(threads=args.threads, targets=targets, onnx=not args.no_onnx, opset=args.opset)
        print(format_bundle(export_checkpoint(args.checkpoint, args.out, config)))
        return 0
    from latprune.engine.export import export_c

    if len(targets) > 1:
        raise EngineError(f"--c writes one C project, but {len(targets)} --target were given; pass one, or use --out.")
    target = targets[0] if targets else "host"
    model, channels, size = _load_model(args)
    _maybe_sparsify(model, args)
    out = export_c(model, torch.zeros(1, channels, size, size), args.c, target=target)
    cross = TARGETS[target][1]
    print(f"wrote the C project to {out}; build it with `make -C {out} CC={cross}` and run ./model weights.bin")
    return 0


def _add_model_flags(p: argparse.ArgumentParser, checkpoint: bool) -> None:
    p.add_argument(
        "--model",
        help="Zoo model name (see `latprune models`); its weights are random unless "
        + ("--checkpoint is given." if checkpoint else "you only measure speed."),
    )
    if checkpoint:
        p.add_argument("--checkpoint", help="A checkpoint written by `latprune train` to compile instead of --model.")
    p.add_argument("--input-size", type=int, default=None, help="Square input size in pixels (default: the model's).")
    p.add_argument("--width-mult", type=float, default=1.0, help="Channel width multiplier of the zoo model.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the random weights, so runs are repeatable.")
    p.add_argument("--sparsity", type=float, default=0.0, help="Fraction of weights to zero, e.g. 0.9 (default 0).")
    p.add_argument(
        "--scheme",
        default="group4",
        help="Sparsity scheme of the zeroed weights (group4, block_punched, pattern, unstructured, nm24).",
    )
    p.add_argument(
        "--layers",
        default="auto",
        choices=("auto", "pointwise", "kxk", "all"),
        help="Which convs to sparsify: auto = 1x1 convs of MobileNets, kxk convs of ResNets.",
    )


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="Time a model on the engine vs ONNX Runtime and PyTorch.",
        description="Compile a zoo model with random (optionally sparse) weights and print the median "
        "latency of the engine, ONNX Runtime (dense) and PyTorch eager, and the ratios.",
    )
    _add_model_flags(p, checkpoint=False)
    p.add_argument("--threads", type=int, default=1, help="Threads for every runtime (default 1).")
    p.add_argument("--batch", type=int, default=1, help="Images per forward pass (default 1).")
    p.add_argument("--runs", type=int, default=50, help="Timed runs; the median is reported (default 50).")
    p.add_argument("--warmup", type=int, default=10, help="Untimed runs before timing (default 10).")
    p.add_argument("--autotune", action="store_true", help="Time each layer's kernel variants and keep the fastest.")
    p.add_argument(
        "--runtimes",
        default=",".join(DEFAULT_BASELINES),
        help=f"Runtimes to time beside the engine, comma-separated (default {','.join(DEFAULT_BASELINES)}; registered: "
        f"{', '.join(list_runtimes(available_only=False))}; openvino needs `pip install openvino`).",
    )
    p.add_argument("--no-onnxruntime", action="store_true", help="Skip the ONNX Runtime baseline.")
    p.add_argument("--no-torch", action="store_true", help="Skip the PyTorch eager baseline.")
    p.add_argument(
        "--isa",
        help="Compile the engine for this ISA (avx512, avx2, generic: any this CPU runs) instead of its best one, "
        "e.g. to measure the AVX2 path on an AVX-512 machine (same as LATPRUNE_ISA).",
    )
    p.add_argument("--json", action="store_true", help="Print the result as JSON instead of a table.")
    p.set_defaults(func=_bench)

    p = sub.add_parser(
        "compile",
        help="Compile a model with the engine and save it to a folder.",
        description="Compile a model to generated C, print the kernel chosen for each layer and its "
        "latency, and save it so CompiledModel.load(DIR) runs it without a compiler.",
    )
    _add_model_flags(p, checkpoint=True)
    p.add_argument("--threads", type=int, default=1, help="Threads the compiled model runs with (default 1).")
    p.add_argument("--autotune", action="store_true", help="Time each layer's kernel variants and keep the fastest.")
    p.add_argument("--out", required=True, help="Folder to save the compiled model in.")
    p.set_defaults(func=_compile)

    p = sub.add_parser(
        "export",
        help="Export a model: a whole bundle (--out) or a stand-alone C project (--c).",
        description="--out DIR writes a checkpoint's whole bundle: plan.json + weights.pt, model.onnx, engine/ "
        "(a saved compiled model), c/<target>/ per --target, and export.json listing every file with its size "
        "and sha256. --c DIR writes only the generated C, the kernel sources, the weights, a main.c and a "
        "Makefile, ready to cross-compile for the target.",
    )
    _add_model_flags(p, checkpoint=True)
    p.add_argument("--out", type=Path, metavar="DIR", help="Folder to write the whole bundle of --checkpoint into.")
    p.add_argument("--c", type=Path, metavar="DIR", help="Folder to write one stand-alone C project into.")
    p.add_argument(
        "--target",
        action="append",
        choices=tuple(TARGETS),
        help="CPU the C code is generated for: aarch64 (ARM NEON), x86_64 (AVX2), x86_64-avx512, or host "
        "(default for --c); repeat it with --out for one c/<target>/ project each.",
    )
    p.add_argument("--threads", type=int, default=1, help="Threads the saved engine model runs with (default 1).")
    p.add_argument("--no-onnx", action="store_true", help="With --out, skip model.onnx.")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset of model.onnx (default 17).")
    p.set_defaults(func=_export)
