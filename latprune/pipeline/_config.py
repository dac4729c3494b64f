"""RunConfig: what `latprune run` does, from baseline to report, with named presets for its budget."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from latprune._limits import check_seed
from latprune._space_layers import requested_schemes
from latprune.bench.runtimes import DEFAULT_BASELINES, get_runtime
from latprune.errors import LatpruneError
from latprune.search import MODES, SELECTIONS, list_algorithms

#: What a run prunes when neither --model nor a --checkpoint says.
DEFAULT_MODEL = "resnet20"
DEFAULT_DATA = "fashion-mnist"
STAGES = ("baseline", "replace", "profile", "search", "select", "retrain", "measure", "export", "report")
#: The schemes an NPAS run's layers choose among (block_punched and pattern fall back to block_fc on linear layers).
NPAS_SCHEMES = "dense,group4,block_punched,pattern,unstructured"
#: The depthwise kernel sizes an NPAS run's depthwise convs choose among (MobileNetV3 / EfficientNet use 3 and 5).
NPAS_KERNEL_SIZES = (3, 5, 7)


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
    search: str = "nsga2"  # the search algorithm: "nsga2" (JCW) or "npas" (NPAS phases 1-3, needs the budget)
    scheme: str | None = None  # the profile's schemes: None is "group4" for JCW, NPAS_SCHEMES for NPAS
    workers: int = 1  # processes scoring the search's candidates (latprune search --workers)
    shortlist: int = 4  # NPAS: best candidates under the budget compiled and measured before one is retrained
    phase3_epochs: int = 2  # NPAS phase 3: the equal, short budget each retraining method gets
    phase3_per_class: int | None = 1000  # ... on this many training images per class (None: all)
    kernel_sizes: tuple[int, ...] | None = None  # depthwise sizes to choose among: None is (3, 5, 7) for NPAS, ()
    replace_epochs: int = 1  # NPAS phase 1: epochs that fine-tune the parent after its ops were replaced

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
        self._check_search()
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

    def _check_search(self) -> None:
        if self.search not in list_algorithms():
            raise LatpruneError(f"Unknown --search '{self.search}'; choose one of {', '.join(list_algorithms())}.")
        if self.search == "npas" and self.latency_budget_ms is None:
            raise LatpruneError("--search npas maximises accuracy under a latency budget; pass --latency-budget.")
        for name in ("workers", "shortlist", "phase3_epochs", "replace_epochs"):
            if getattr(self, name) < 1:
                raise LatpruneError(f"--{name.replace('_', '-')} is {getattr(self, name)}; it must be at least 1.")
        if self.scheme is not None:
            requested_schemes(self.scheme)  # "" or an unknown name: one sentence, before any work
        if any(k < 1 or k % 2 == 0 for k in self.kernel_sizes or ()):
            raise LatpruneError(f"--kernel-sizes {self.kernel_sizes} must be positive odd sizes, like 3,5,7.")
        if self.phase3_per_class is not None and self.phase3_per_class < 1:
            raise LatpruneError(f"--phase3-per-class is {self.phase3_per_class}; use at least 1 (or leave it unset).")

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages this run goes through: NPAS adds its phase 1, "replace", after the baseline."""
        return tuple(s for s in STAGES if s != "replace" or self.search == "npas")

    @property
    def schemes(self) -> str:
        """The schemes the profile (and so the search space) offers each layer."""
        return self.scheme or (NPAS_SCHEMES if self.search == "npas" else "group4")

    @property
    def kernels(self) -> tuple[int, ...]:
        """The kernel sizes depthwise layers choose among (profiled, so searched): NPAS's filter-size choice."""
        if self.kernel_sizes is not None:
            return self.kernel_sizes
        return NPAS_KERNEL_SIZES if self.search == "npas" else ()

    def resolved(self) -> RunConfig:
        """A copy with every preset-dependent field filled in (what the run records and compares on resume).

        NPAS scores ``population`` candidates per estimator call and NSGA-II ``2 x population`` (P ∪ Q), so an NPAS
        run takes twice the preset's population: each generation then costs the same super-net time.
        """
        p = PIPELINE_PRESETS[self.preset]
        fill = {
            "population": p.population * (2 if self.search == "npas" else 1),
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
