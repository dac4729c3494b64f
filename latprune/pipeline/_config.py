"""RunConfig: what `latprune run` does, from baseline to report, with named presets for its budget."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latprune._limits import check_seed
from latprune.bench.runtimes import DEFAULT_BASELINES, get_runtime
from latprune.errors import LatpruneError
from latprune.search import MODES, SELECTIONS

#: What a run prunes when neither --model nor a --checkpoint says.
DEFAULT_MODEL = "resnet20"
DEFAULT_DATA = "fashion-mnist"
STAGES = ("baseline", "profile", "search", "select", "retrain", "measure", "export", "report")


@dataclass(frozen=True)
class PipelinePreset:
    """A named budget for every stage: the search's size, how many models are retrained and for how long."""

    name: str
    search_preset: str  # latprune.search.PRESETS name; it also names the super-net schedule
    population: int
    generations: int
    top_k: int
    finetune_epochs: int
    finetune_lr: float
    distill: bool
    baseline_epochs: int
    description: str


PIPELINE_PRESETS: dict[str, PipelinePreset] = {
    "quick": PipelinePreset(
        "quick", "quick", 16, 10, 3, 1, 0.01, False, 2,
        "The demo: a 16 x 10 search, 3 models fine-tuned 1 epoch each (~10 min for ResNet20 / Fashion-MNIST here).",
    ),
    "full": PipelinePreset(
        "full", "quick", 16, 10, 4, 3, 0.02, True, 30,
        "benchmarks/pipeline.py's run: the quick search, then 4 models fine-tuned 3 epochs each with distillation "
        "from the parent (45 min from a trained parent on this 2-core CPU).",
    ),
    "paper": PipelinePreset(
        "paper", "paper", 64, 128, 5, 30, 0.02, True, 160,
        "JCW's schedule (population 64, 128 generations, super-net 10 + 20 epochs): for a GPU machine.",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one pipeline run. ``None`` fields take the preset's value (see :meth:`resolved`)."""

    out_dir: Path
    model: str | None = None  # None: the --checkpoint's model, or DEFAULT_MODEL when the parent is trained here
    data: str | None = None  # None: the dataset the --checkpoint was trained on, or DEFAULT_DATA
    preset: str = "quick"
    checkpoint: Path | None = None  # a trained parent; None trains one for baseline_epochs
    profile: Path | None = None  # a latency profile of this device; None profiles it
    force_profile: bool = False
    profile_grid: tuple[int, int] = (8, 10)  # JCW's N (channel grid i/N) and M (sparsity grid k/M)
    population: int | None = None
    generations: int | None = None
    mode: str = "joint"
    selection: str = "uniform"
    latency_budget_ms: float | None = None  # retrain the best candidate under it instead of the top-k
    top_k: int | None = None
    finetune_method: str = "masked"
    finetune_epochs: int | None = None
    finetune_lr: float | None = None
    distill: bool | None = None
    baseline_epochs: int | None = None
    threads: int = 1  # latency is measured at batch 1 with this many threads on the engine and every runtime
    runtimes: tuple[str, ...] = DEFAULT_BASELINES  # what the engine is compared with (latprune.bench.list_runtimes)
    timing_runs: int = 200
    seed: int = 0
    device: str = "cpu"  # where training runs
    export: bool = True
    redo_from: str | None = None  # forget this stage and the ones after it (e.g. "measure" on an idle machine)

    def __post_init__(self) -> None:
        if self.preset not in PIPELINE_PRESETS:
            raise LatpruneError(f"Unknown preset '{self.preset}'; choose one of {', '.join(PIPELINE_PRESETS)}.")
        if self.mode not in MODES:
            raise LatpruneError(f"Unknown search mode '{self.mode}'; choose one of {', '.join(MODES)}.")
        if self.selection not in SELECTIONS:
            raise LatpruneError(f"Unknown selection '{self.selection}'; choose one of {', '.join(SELECTIONS)}.")
        positive = ("population", "generations", "top_k", "finetune_epochs", "baseline_epochs")
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LatpruneError(f"--{name.replace('_', '-')} is {value}; it must be at least 1.")
        if self.redo_from is not None and self.redo_from not in STAGES:
            raise LatpruneError(f"--redo-from {self.redo_from!r} is not a stage; choose one of {', '.join(STAGES)}.")
        if min(self.profile_grid) < 1 or len(self.profile_grid) != 2:
            raise LatpruneError(f"--profile-grid {self.profile_grid} needs two positive numbers N,M, e.g. 8,10.")
        if not self.runtimes or "engine" in self.runtimes:
            raise LatpruneError("--runtimes must name at least one runtime to compare the engine with, not the engine.")
        for name in self.runtimes:
            get_runtime(name)  # unknown or not installed: one sentence
        check_seed(self.seed)
        if self.threads < 1 or self.timing_runs < 1:
            raise LatpruneError("--threads and --timing-runs must be at least 1.")
        if self.finetune_lr is not None and not 0 < self.finetune_lr < math.inf:
            raise LatpruneError(f"--finetune-lr {self.finetune_lr} must be a positive, finite learning rate.")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise LatpruneError(f"The latency budget {self.latency_budget_ms} ms is not positive; write e.g. 0.2ms.")
        for name in ("checkpoint", "profile"):
            path = getattr(self, name)
            # A checkpoint may also be a `latprune train` run folder holding checkpoint.pt.
            found = (
                path is None
                or Path(path).is_file()
                or (name == "checkpoint" and (Path(path) / "checkpoint.pt").is_file())
            )
            if not found:
                raise LatpruneError(f"The --{name} file '{path}' does not exist; check the path.")

    def resolved(self) -> RunConfig:
        """A copy with every preset-dependent field filled in (what the run records and compares on resume)."""
        p = PIPELINE_PRESETS[self.preset]
        fill = {
            "population": p.population,
            "generations": p.generations,
            "top_k": p.top_k,
            "finetune_epochs": p.finetune_epochs,
            "finetune_lr": p.finetune_lr,
            "distill": p.distill,
            "baseline_epochs": p.baseline_epochs,
        }
        return dataclasses.replace(self, **{k: v for k, v in fill.items() if getattr(self, k) is None})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v for k, v in d.items()}
