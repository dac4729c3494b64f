"""Export one model as a bundle: plan + weights, ONNX, the saved compiled engine model, C projects, a manifest."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import io
import os
import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from latprune._io import atomic_write_bytes, atomic_write_json, locks_output
from latprune._limits import check_threads
from latprune._version import __version__
from latprune.engine import CompiledModel, compile
from latprune.engine.export import TARGETS, export_c
from latprune.errors import EngineError, ModelError, PlanError
from latprune.prune import PruningPlan, bake_masks, count_params, save_pruned
from latprune.train.checkpoint import atomic_torch_save

MANIFEST_NAME = "export.json"
PLAN_NAME = "plan.json"
WEIGHTS_NAME = "weights.pt"
ONNX_NAME = "model.onnx"
ENGINE_DIR = "engine"
C_DIR = "c"


@dataclass(frozen=True)
class ExportConfig:
    """What to write besides plan + weights and the compiled engine model (both always written).

    ``targets`` names the stand-alone C projects to write under ``c/<target>/`` (see
    ``latprune.engine.export.TARGETS``, e.g. "aarch64"); none by default, since the saved engine model already
    runs on this machine. ``rtol`` bounds the ONNX and engine outputs' max abs error relative to the largest
    torch output: the export checks both against torch and fails rather than write a model that disagrees.
    """

    threads: int = 1
    targets: tuple[str, ...] = ()
    onnx: bool = True
    opset: int = 17
    autotune: bool = False
    rtol: float = 1e-4
    seed: int = 0  # of the random check input export_checkpoint makes

    def __post_init__(self) -> None:
        check_threads(self.threads)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown:
            raise EngineError(f"Unknown export target {unknown[0]!r}; choose one of: {', '.join(TARGETS)}.")
        if len(set(self.targets)) != len(self.targets):
            raise EngineError(f"The export targets {list(self.targets)} repeat one; name each target once.")
        if not 7 <= self.opset <= 21:
            raise ModelError(f"ONNX opset {self.opset} is not supported; use one in 7..21, e.g. 17.")
        if not self.rtol > 0:
            raise ModelError(f"The export tolerance rtol={self.rtol} must be positive, e.g. 1e-4.")


@dataclass(frozen=True)
class ExportedFile:
    """One file of a bundle, as the manifest lists it (``path`` relative to the bundle folder)."""

    path: str
    size_bytes: int
    sha256: str


@dataclass(frozen=True)
class ExportBundle:
    """Where an export wrote its parts; ``None`` for a part that was not asked for (or has no plan)."""

    out_dir: Path
    manifest: Path
    weights: Path
    plan: Path | None
    onnx: Path | None
    engine: Path
    c: Mapping[str, Path]  # target -> C project folder
    files: tuple[ExportedFile, ...]
    size_bytes: int  # of every file listed, manifest excluded


def _baked_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with every parametrization (weight mask) replaced by its plain value."""
    return bake_masks(copy.deepcopy(model).eval())


def _check_plan_applied(model: nn.Module, plan: PruningPlan) -> None:
    """One sentence when ``model`` is not the plan's pruned model (its weights.pt would not reload with the plan)."""
    modules = dict(model.named_modules())
    for ly in plan.layers:
        module = modules.get(ly.name)
        if module is None:
            raise PlanError(f"The model has no layer '{ly.name}' that the plan prunes; export the model it fits.")
        keep = plan.kept_out_channels(ly.name)
        weight = getattr(module, "weight", None)
        if keep is not None and weight is not None and weight.shape[0] != len(keep):
            raise PlanError(
                f"Layer '{ly.name}' has {weight.shape[0]} output channels but the plan keeps {len(keep)}; export "
                "the model apply_plan returned, or pass plan=None for a dense model."
            )


def _max_error(out: np.ndarray, ref: torch.Tensor) -> tuple[float, float]:
    """(max abs error, the bound rtol is relative to: the largest |torch output|, at least 1)."""
    return float(np.abs(out - ref.numpy()).max()), max(float(ref.abs().max()), 1.0)


def _write_weights(
    path: Path, baked: nn.Module, plan: PruningPlan | None, meta: Mapping[str, Any] | None
) -> tuple[Path, Path | None]:
    """weights.pt (baked state dict + ``meta``, + the plan) and plan.json; a zoo plan goes through save_pruned."""
    meta = dict(meta or {})
    if plan is None:
        return atomic_torch_save(path / WEIGHTS_NAME, {**meta, "state_dict": baked.state_dict()}), None
    plan_path = plan.save(path / PLAN_NAME)
    if plan.model is not None:
        extra = {k: v for k, v in meta.items() if k not in ("model", "model_kwargs", "state_dict", "plan")}
        return save_pruned(path / WEIGHTS_NAME, baked, plan, extra), plan_path
    ckpt = {**meta, "state_dict": baked.state_dict(), "plan": plan.to_dict()}
    return atomic_torch_save(path / WEIGHTS_NAME, ckpt), plan_path


def _write_onnx(path: Path, baked: nn.Module, x: torch.Tensor, ref: torch.Tensor, config: ExportConfig) -> Path:
    """Export to ONNX (batch axis dynamic), check the graph with onnx.checker and run it once with onnxruntime."""
    import onnx
    import onnxruntime as ort

    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                baked,
                (x,),
                buf,
                dynamo=False,
                opset_version=config.opset,
                input_names=["input"],
                output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )
        onnx.checker.check_model(onnx.load_from_string(buf.getvalue()), full_check=True)
        session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
        (out,) = session.run(None, {"input": x.numpy()})
    except Exception as exc:  # the exporter, checker and runtime raise many types; name the first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"The model cannot be exported to ONNX opset {config.opset} ({first}); try another opset or --no-onnx."
        ) from None
    err, scale = _max_error(out, ref)
    if err > config.rtol * scale:
        raise ModelError(
            f"The ONNX export's output differs from torch by {err:.3g} (allowed {config.rtol * scale:.3g}); "
            "report this model, or export with --no-onnx."
        )
    return atomic_write_bytes(path / ONNX_NAME, buf.getvalue())


def _write_engine(
    path: Path, baked: nn.Module, x: torch.Tensor, ref: torch.Tensor, plan: PruningPlan | None, config: ExportConfig
) -> CompiledModel:
    """Compile with the C backend, check it against torch, and save it so ``CompiledModel.load`` needs no cc."""
    schemes = plan.layer_schemes() if plan is not None else None
    cm = compile(baked, x[:1], threads=config.threads, schemes=schemes, autotune=config.autotune)
    err, scale = _max_error(np.asarray(cm(x.numpy())), ref)
    if err > config.rtol * scale:
        raise EngineError(
            f"The compiled model's output differs from torch by {err:.3g} (allowed {config.rtol * scale:.3g}); "
            "report this model to the engine's maintainers."
        )
    shutil.rmtree(path / ENGINE_DIR, ignore_errors=True)  # no stale file from an earlier export is left in it
    cm.save(path / ENGINE_DIR)
    return cm


def _plan_summary(model: nn.Module, plan: PruningPlan | None) -> dict[str, Any]:
    """What the manifest says about the pruning: kept channels, sparse layers, dense vs nonzero parameters."""
    summary: dict[str, Any] = {
        "params": count_params(model),
        "nonzero_params": count_params(model, nonzero=True),
    }
    if plan is None:
        return {"pruned": False, **summary}
    sparse = [ly for ly in plan.layers if ly.sparsity > 0]
    return {
        "pruned": True,
        "model": None if plan.model is None else dataclasses.asdict(plan.model),
        "kept_channels": sum(len(g.keep) for g in plan.groups),
        "total_channels": sum(g.channels for g in plan.groups),
        "layers": len(plan.layers),
        "sparse_layers": len(sparse),
        "schemes": sorted({ly.scheme for ly in sparse}),
        "max_sparsity": max((ly.sparsity for ly in sparse), default=0.0),
        **summary,
    }


def _describe_files(out_dir: Path, paths: list[Path]) -> tuple[ExportedFile, ...]:
    """Size and sha256 of every file under ``paths`` (files or folders), sorted by relative path."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(q for q in p.rglob("*") if q.is_file()) if p.is_dir() else [p])
    out = []
    for f in sorted(files):
        data = f.read_bytes()
        out.append(ExportedFile(f.relative_to(out_dir).as_posix(), len(data), hashlib.sha256(data).hexdigest()))
    return tuple(out)


@locks_output("out_dir")
def export_model(
    model: nn.Module,
    plan: PruningPlan | None,
    out_dir: str | os.PathLike[str],
    config: ExportConfig = ExportConfig(),
    *,
    example_input: torch.Tensor,
    meta: Mapping[str, Any] | None = None,
) -> ExportBundle:
    """Write ``model`` (pruned by ``plan``, or dense when it is None) as a bundle into ``out_dir``.

    The bundle holds plan.json + weights.pt (masks baked; ``load_pruned`` rebuilds it on a fresh zoo model and
    ``meta``, e.g. a checkpoint's "epoch" and "metrics", is stored in it), model.onnx, engine/ (a saved
    ``CompiledModel``), c/<target>/ per ``config.targets``, and export.json, a manifest of every file with its
    size and sha256. ONNX and engine outputs are checked against torch on ``example_input`` (N, C, H, W)
    during the export, so a broken part fails here and not on a device. The manifest is removed first and
    written last, so a folder without one holds an export that did not finish. ``model`` is not changed.
    """
    out = Path(out_dir)
    if example_input.ndim != 4:
        raise ModelError(
            f"The example input has shape {tuple(example_input.shape)}; pass one batch shaped (N, C, H, W)."
        )
    if plan is not None:
        _check_plan_applied(model, plan)
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    baked = _baked_copy(model).cpu()
    x = example_input.detach().float().cpu()
    with torch.no_grad():
        ref = baked(x)  # (N, classes) or (N, C, H, W)
    weights, plan_path = _write_weights(out, baked, plan, meta)
    onnx_path = _write_onnx(out, baked, x, ref, config) if config.onnx else None
    cm = _write_engine(out, baked, x, ref, plan, config)
    schemes = plan.layer_schemes() if plan is not None else None
    c_dirs = {t: export_c(baked, x[:1], out / C_DIR / t, target=t, schemes=schemes) for t in config.targets}
    parts = [p for p in (plan_path, weights, onnx_path) if p is not None] + [out / ENGINE_DIR, *c_dirs.values()]
    files = _describe_files(out, parts)
    manifest = {
        "latprune_version": __version__,
        "torch_version": torch.__version__,
        "input_shape": list(x.shape[1:]),
        "output_shape": list(ref.shape[1:]),
        "engine": {
            "isa": cm.spec.isa,
            "threads": cm.spec.threads,
            "kernels": sorted({layer.kernel for layer in cm.spec.layers}),
        },
        "onnx_opset": config.opset if config.onnx else None,
        "c_targets": list(config.targets),
        "plan": _plan_summary(baked, plan),
        "size_bytes": sum(f.size_bytes for f in files),
        "files": [dataclasses.asdict(f) for f in files],
    }
    manifest_path = atomic_write_json(out / MANIFEST_NAME, manifest)
    return ExportBundle(
        out, manifest_path, weights, plan_path, onnx_path, out / ENGINE_DIR, c_dirs, files, manifest["size_bytes"]
    )


def export_checkpoint(
    checkpoint: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: ExportConfig = ExportConfig(),
) -> ExportBundle:
    """Export a latprune checkpoint (file or run folder; pruned when it carries a "plan", else dense).

    The input shape comes from the checkpoint's model_kwargs (in_channels, input_size); the check input is
    two random images drawn with ``config.seed``. weights.pt keeps the checkpoint's model, epoch and metrics,
    so ``load_model_from_checkpoint`` and ``latprune export`` accept it again.
    """
    from latprune.train.checkpoint import load_model_from_checkpoint

    model, ckpt = load_model_from_checkpoint(checkpoint)
    kw = ckpt["model_kwargs"]
    size, channels = int(kw["input_size"]), int(kw["in_channels"])
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.randn(2, channels, size, size, generator=gen)  # (N, C, H, W)
    plan = PruningPlan.from_dict(ckpt["plan"]) if ckpt.get("plan") is not None else None
    meta = {k: ckpt[k] for k in ("model", "model_kwargs", "epoch", "metrics", "data") if k in ckpt}
    return export_model(model, plan, out_dir, config, example_input=x, meta=meta)


def format_bundle(bundle: ExportBundle) -> str:
    """A short table of the bundle's parts (folders summed) and their sizes, for the CLI."""
    sizes: dict[str, int] = {}
    for f in bundle.files:
        parts = f.path.split("/")
        key = "/".join(parts[:2]) + "/" if parts[0] == C_DIR else (parts[0] + "/" if len(parts) > 1 else parts[0])
        sizes[key] = sizes.get(key, 0) + f.size_bytes
    width = max(len(k) for k in [*sizes, "total"])
    lines = [f"  {k:<{width}}  {v:>12,} B" for k, v in sizes.items()]
    lines.append(f"  {'total':<{width}}  {bundle.size_bytes:>12,} B")
    return f"wrote {bundle.out_dir} ({MANIFEST_NAME} lists every file with its sha256):\n" + "\n".join(lines)


__all__ = ["ExportBundle", "ExportConfig", "ExportedFile", "export_checkpoint", "export_model", "format_bundle"]
