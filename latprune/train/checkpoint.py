"""Rebuilding a zoo model from a latprune checkpoint, and the metadata that makes that possible."""

from __future__ import annotations

import collections
import math
import os
import pickle
import re
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from latprune._io import _atomic_write
from latprune.data import DataConfig
from latprune.errors import DataError, LatpruneError, ModelError
from latprune.train.config import ModelSpec

CHECKPOINT_NAME = "checkpoint.pt"
REQUIRED_KEYS = ("model", "model_kwargs", "state_dict", "epoch", "metrics")


#: What a checkpoint may hold besides containers: ``load_checkpoint`` reads with ``weights_only=True``, which refuses
#: every other Python object, so a crafted file cannot run code when it is loaded.
#: Exact types: a numpy.float64 is a float subclass, but torch pickles it as a numpy object that it then refuses.
_PLAIN_LEAVES = (str, int, float, bool, type(None))


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value of ``obj`` that is not a tensor or plain JSON-like data.

    Writers call this before saving, so that everything latprune writes loads back under ``weights_only=True``
    (a numpy scalar or a config object in a checkpoint would otherwise make the file unloadable).
    """
    if type(obj) in _PLAIN_LEAVES or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, collections.OrderedDict):
        for key, value in obj.items():
            if type(key) not in (str, int):
                raise TypeError(f"{where} has a key {key!r} of type {type(key).__name__}; use str or int keys")
            check_plain(value, f"{where}[{key!r}]")
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            check_plain(value, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} holds a {type(obj).__module__}.{type(obj).__qualname__}; store plain data instead")


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` (checkpoints survive a kill -9 mid-write).

    ``obj`` must hold only tensors and plain data (see :func:`check_plain`): it is checked before anything is
    written, so what is saved always loads back with ``weights_only=True``.
    """
    check_plain(obj)
    return _atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a latprune checkpoint dict, with one clear sentence for a missing or corrupt file.

    The file is read with ``weights_only=True``: torch's restricted unpickler builds only tensors and plain
    containers, so a crafted checkpoint (a pickle whose loading would call ``os.system``) is refused before
    any of its code runs. latprune writes nothing else into checkpoints (``atomic_torch_save`` checks).
    """
    path = Path(path)
    if not path.is_file():
        why = "is not a regular file (a folder, pipe or device)" if path.exists() else "does not exist"
        raise LatpruneError(f"The checkpoint '{path}' {why}; train one with `latprune train` or fix the path.")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of files saved by older versions
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights_only" not in str(exc).lower().replace(" ", "_"):
            raise LatpruneError(
                f"The checkpoint '{path}' cannot be read (UnpicklingError); it is truncated or not a torch "
                "checkpoint, so retrain or copy it again."
            ) from None
        raise LatpruneError(
            f"The checkpoint '{path}' holds {_refused(exc)}, not only tensors and plain data, and latprune refuses "
            "to unpickle it because that could run code; use a checkpoint written by latprune."
        ) from None
    except Exception as exc:  # torch raises many types for truncated/corrupt zip files
        raise LatpruneError(
            f"The checkpoint '{path}' cannot be read ({exc.__class__.__name__}); it is truncated or not a "
            "torch checkpoint, so retrain or copy it again."
        ) from None
    if not isinstance(ckpt, dict):
        raise LatpruneError(f"The checkpoint '{path}' holds a {type(ckpt).__name__}, not a latprune checkpoint dict.")
    _check_model_fields(ckpt, path)
    return ckpt


def _check_model_fields(ckpt: dict[str, Any], path: Path) -> None:
    """One sentence naming the file and the field when the model description is not what rebuilding it needs.

    Checked at load, so that every command refuses e.g. ``input_size='big'`` the same way, before any work,
    instead of a ValueError from deep inside the model builder. A missing field is left to whoever needs it.
    """
    if "model" in ckpt and not isinstance(ckpt["model"], str):
        raise ModelError(f"The checkpoint '{path}' has model={ckpt['model']!r}, not a model name; retrain it.")
    kwargs = ckpt.get("model_kwargs", {})
    if not isinstance(kwargs, dict):
        raise ModelError(f"The checkpoint '{path}' has model_kwargs of type {type(kwargs).__name__}, not a dict.")
    for name in ("num_classes", "in_channels", "input_size", "width_mult"):
        value = kwargs.get(name, 1)
        kinds = (int, float) if name == "width_mult" else (int,)  # exact types: True is no channel count
        if type(value) not in kinds or not 0 < value < math.inf:
            need = "a positive number" if name == "width_mult" else "a positive integer"
            raise ModelError(
                f"The checkpoint '{path}' has model_kwargs {name}={value!r}, which is not {need}; "
                "use a checkpoint written by `latprune train`."
            )


def _refused(exc: Exception) -> str:
    """What torch's restricted unpickler refused (e.g. the global ``posix.system``), from its long message."""
    found = re.search(r"GLOBAL ([\w.]+)|Unsupported global: GLOBAL ([\w.]+)", str(exc))
    if found:
        return f"a reference to {found.group(1) or found.group(2)}"
    return "pickle instructions outside the safe subset"


def checkpoint_meta(spec: ModelSpec, data: DataConfig | None = None) -> dict[str, Any]:
    """The checkpoint keys that let :func:`load_model_from_checkpoint` rebuild the model (and its data split)."""
    meta: dict[str, Any] = {"model": spec.name, "model_kwargs": spec.kwargs()}
    if data is not None:
        meta["data"] = asdict(data)
    return meta


def checkpoint_data_config(ckpt: dict[str, Any], path: str | Path, name: str | None = None) -> DataConfig:
    """The dataset and validation split a checkpoint was trained with (``name`` replaces only the dataset).

    Reusing the recorded split matters: the parent never saw its validation images, so anything ranked or
    reported on "val" later must use exactly those.
    """
    saved: dict[str, Any] = ckpt.get("data") or {}
    name = name or saved.get("name")
    if not name:
        raise DataError(f"The checkpoint '{path}' does not record its dataset; pass --data.")
    return DataConfig(
        name=name,
        val_per_class=int(saved.get("val_per_class", DataConfig.val_per_class)),
        split_seed=int(saved.get("split_seed", DataConfig.split_seed)),
        image_size=saved.get("image_size"),
    )


def resolve_checkpoint_path(path: str | Path) -> Path:
    """Accept a checkpoint file or a run folder (then its ``checkpoint.pt``)."""
    path = Path(path)
    return path / CHECKPOINT_NAME if path.is_dir() else path


def load_model_from_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the zoo model a checkpoint was trained from and load its weights; returns (model, checkpoint).

    ``path`` is a checkpoint file or a run folder. The model is returned in eval mode on ``map_location``.
    """
    path = resolve_checkpoint_path(path)
    ckpt = load_checkpoint(path, map_location=map_location)
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ModelError(
            f"The checkpoint '{path}' lacks {', '.join(missing)}; it was not written by `latprune train`; retrain it."
        )
    spec = ModelSpec.from_dict({"name": ckpt["model"], **ckpt["model_kwargs"]})
    if ckpt.get("plan") is not None:
        # A pruned checkpoint (latprune prune --apply, finetune): rebuild the zoo model, then replay its plan.
        from latprune.prune import PruningPlan, build_pruned

        model = build_pruned(PruningPlan.from_dict(ckpt["plan"]), ckpt["state_dict"])
        return model.to(map_location).eval(), ckpt
    model = spec.build()
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError:
        raise ModelError(
            f"The checkpoint '{path}' has weights that do not fit a fresh '{spec.name}' (a pruned or masked model?); "
            "load it with the tool that wrote it."
        ) from None
    return model.to(map_location).eval(), ckpt
