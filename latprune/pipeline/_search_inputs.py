"""Search from a trained checkpoint: its space, a device-profile predictor and a super-net estimator, then the run,
its plot and its table. `latprune search`, `latprune run` and benchmarks/search_ablation.py all come through here."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latprune._io import locks_output, read_json
from latprune.data import DataConfig, load_splits
from latprune.data.datasets import canonical_name
from latprune.errors import DataError, ModelError, ProfileError
from latprune.latency.predictor import TrilinearPredictor
from latprune.latency.profile import LatencyProfile, load_profile
from latprune.search import SearchConfig, SearchResult, get_preset, run_search
from latprune.space import SearchSpace
from latprune.supernet import SupernetConfig, SupernetData, SupernetEstimator
from latprune.train import load_model_from_checkpoint
from latprune.train.checkpoint import checkpoint_data_config


@dataclass(frozen=True)
class SearchInputs:
    """What :func:`latprune.search.run_search` needs, built from files, plus the metadata the run records."""

    space: SearchSpace
    predictor: TrilinearPredictor
    estimator: SupernetEstimator
    meta: dict[str, Any]


def completed_calls(out_dir: str | Path) -> int:
    """Estimator calls a search run directory has completed (generation files up to its saved state)."""
    out_dir = Path(out_dir)
    state_file = out_dir / "state.json"
    if not state_file.exists():
        return 0
    last = int(read_json(state_file, what="search state")["gen"])
    return sum(1 for p in out_dir.glob("gen_*.json") if int(p.stem.split("_")[1]) <= last)


def checkpoint_data(ckpt: dict[str, Any], checkpoint: str | Path, data: str | None) -> DataConfig:
    """The dataset split a parent was trained with; ``data`` (a name) must agree with it when both are known.

    The parent never saw its validation split, so the super-net must rank on that same split.
    """
    data_cfg = checkpoint_data_config(ckpt, checkpoint, None if ckpt.get("data") else data)
    if data and canonical_name(data) != canonical_name(data_cfg.name):
        raise DataError(f"The checkpoint '{checkpoint}' was trained on {data_cfg.name}, not {data}; fix --data.")
    return data_cfg


def check_parent(ckpt: dict[str, Any], checkpoint: str | Path, model: str | None = None) -> None:
    """A search starts from a dense parent of the model asked for (``model``, when given)."""
    if ckpt.get("plan") is not None:
        raise ModelError(
            f"The checkpoint '{checkpoint}' is already pruned; search from the dense parent it was pruned from."
        )
    if model and ckpt["model"] != model:
        raise ModelError(f"The checkpoint '{checkpoint}' holds a {ckpt['model']}, not a {model}; fix --model.")


def check_profile_fits(prof: LatencyProfile, profile: str | Path, ckpt: dict[str, Any]) -> None:
    """The profile must time the checkpoint's model at its input size, or its predictions describe another model."""
    if prof.model.name != ckpt["model"]:
        raise ProfileError(
            f"The latency profile '{profile}' is for {prof.model.name}, not {ckpt['model']}; "
            f"profile it with `latprune profile --model {ckpt['model']}`."
        )
    kwargs = ckpt["model_kwargs"]
    if (prof.model.input_size, prof.model.in_channels) != (kwargs["input_size"], kwargs["in_channels"]):
        raise ProfileError(
            f"The latency profile '{profile}' was measured at {prof.model.in_channels}x{prof.model.input_size}"
            f"x{prof.model.input_size} inputs, but the checkpoint takes {kwargs['in_channels']}x{kwargs['input_size']}"
            f"x{kwargs['input_size']}; profile with --input-size {kwargs['in_channels']}x{kwargs['input_size']}x"
            f"{kwargs['input_size']}."
        )


def build_search_inputs(
    checkpoint: str | Path,
    profile: str | Path,
    supernet: SupernetConfig,
    *,
    seed: int,
    model: str | None = None,
    data: str | None = None,
    force_profile: bool = False,
    device: str = "cpu",
    resume_dir: str | Path | None = None,
    progress: bool = True,
) -> SearchInputs:
    """Checkpoint -> model and its search space, profile -> latency predictor, data -> super-net estimator.

    ``model`` and ``data`` are only checked against what the checkpoint records. With ``resume_dir`` the
    estimator's call counter continues from that run's completed generations: it seeds each call from the
    counter, so a resumed search trains exactly the super-nets an uninterrupted one would.
    """
    parent, ckpt = load_model_from_checkpoint(checkpoint)
    check_parent(ckpt, checkpoint, model)
    prof = load_profile(profile, force=force_profile)
    check_profile_fits(prof, profile, ckpt)
    kwargs = ckpt["model_kwargs"]
    space = SearchSpace.from_model(parent, kwargs["input_size"], kwargs["in_channels"], scheme=prof.scheme)
    predictor = TrilinearPredictor(prof, space)
    data_cfg = checkpoint_data(ckpt, checkpoint, data)
    splits = load_splits(data_cfg)
    estimator = SupernetEstimator(
        parent,
        space,
        SupernetData(splits.train, splits.val, splits.info),
        supernet,
        seed,
        device=device,
        progress=progress,
    )
    if resume_dir is not None:
        estimator.calls = completed_calls(resume_dir)
    meta = {
        "model": ckpt["model"],
        "model_kwargs": dict(kwargs),
        "checkpoint": str(Path(checkpoint).resolve()),
        "profile": str(Path(profile).resolve()),
        "data": dataclasses.asdict(data_cfg),
        "supernet": supernet.to_dict(),
    }
    return SearchInputs(space, predictor, estimator, meta)


@dataclass(frozen=True)
class SearchJob:
    """One search of a trained checkpoint's pruned architectures, as :func:`search_checkpoint` runs it.

    ``search`` and ``supernet`` default to the ``preset``'s (``latprune.search.PRESETS``, which also names the
    super-net schedule); callers change settings on top of those with ``SearchConfig.override`` and
    ``SupernetConfig.override``. ``model`` and ``data`` are only checked against what the checkpoint records.
    ``resume`` continues the run in ``out_dir`` after its last completed generation.
    """

    checkpoint: Path
    profile: Path
    out_dir: Path
    preset: str = "quick"
    search: SearchConfig | None = None
    supernet: SupernetConfig | None = None
    model: str | None = None
    data: str | None = None
    force_profile: bool = False
    device: str = "cpu"
    resume: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        get_preset(self.preset)  # an unknown name fails here with the list of valid ones

    def search_config(self) -> SearchConfig:
        """The search's settings: ``search``, or the preset's."""
        return self.search or get_preset(self.preset).search_config()

    def supernet_config(self) -> SupernetConfig:
        """The super-net's schedule: ``supernet``, or the one the preset names."""
        return self.supernet or SupernetConfig.preset(get_preset(self.preset).supernet_preset)


@dataclass(frozen=True)
class SearchOutcome:
    """What :func:`search_checkpoint` produced: the result, its plot and its front as a table.

    Under torchrun every rank searches but only rank 0 writes: the others get no plot and an empty table.
    """

    result: SearchResult
    plot: Path | None
    table: str


def search_inputs(job: SearchJob) -> SearchInputs:
    """The job's space, predictor and estimator (seeded from its search config), with the metadata the run records."""
    inputs = build_search_inputs(
        job.checkpoint,
        job.profile,
        job.supernet_config(),
        seed=job.search_config().seed,
        model=job.model,
        data=job.data,
        force_profile=job.force_profile,
        device=job.device,
        resume_dir=job.out_dir if job.resume else None,
        progress=job.progress,
    )
    inputs.meta["preset"] = job.preset
    return inputs


@locks_output("job.out_dir")
def search_checkpoint(job: SearchJob) -> SearchOutcome:
    """Search a checkpoint: preset and its changes -> super-net schedule -> space, predictor and estimator -> the
    search in ``job.out_dir`` (gen_XXXX.json, state.json, front.json) -> front.png -> the front as a table."""
    from latprune.report import front_table, plot_search
    from latprune.train.distributed import is_main

    config = job.search_config()
    inputs = search_inputs(job)
    result = run_search(
        inputs.space, inputs.predictor, inputs.estimator, config, job.out_dir, resume=job.resume, meta=inputs.meta,
        progress=job.progress,
    )  # fmt: skip
    if not is_main():
        return SearchOutcome(result, None, "")
    title = f"{inputs.meta.get('model', 'search')}: {config.mode}, {config.selection}"
    return SearchOutcome(result, plot_search(job.out_dir, result=result, title=title), front_table(result))
