"""Results for people: tables and plots of search runs (the pipeline report extends this module)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latprune._io import atomic_write_bytes, read_json
from latprune.errors import SearchError
from latprune.search.results import Candidate, SearchResult


def load_evaluated(run_dir: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Predicted latency (ms) and estimated error of every candidate evaluated in a search run, over all generations."""
    run_dir = Path(run_dir)
    files = sorted(run_dir.glob("gen_*.json"))
    if not files:
        raise SearchError(f"'{run_dir}' holds no gen_*.json files; point to a search output directory.")
    latency: list[float] = []
    error: list[float] = []
    for path in files:
        for cand in read_json(path, what="search generation")["evaluated"]:
            latency.append(cand["latency_ms"])
            error.append(cand["error"])
    return np.asarray(latency), np.asarray(error)


def arch_summary(arch: Any) -> str:
    """A short human summary of a decoded architecture (mean/min width, mean/max sparsity), or its raw integers."""
    if isinstance(arch, dict) and "widths" in arch and "sparsities" in arch:
        widths = np.asarray(arch["widths"], dtype=float)
        sparsities = np.asarray(arch["sparsities"], dtype=float)
        w = f"width mean {widths.mean():.2f} min {widths.min():.1f}" if widths.size else "width 1.0"
        s = f"sparsity mean {sparsities.mean():.2f} max {sparsities.max():.1f}" if sparsities.size else "dense"
        return f"{w}, {s}"
    if isinstance(arch, dict) and "values" in arch:
        return " ".join(str(v) for v in arch["values"])
    return str(arch)


def front_table(result: SearchResult) -> str:
    """The Pareto front as a fixed-width text table, fastest first; the best candidate under the budget is starred."""
    best = result.best_under_budget
    lines = [f"{'#':>3} {'latency ms':>11} {'est. error':>10}  architecture"]
    for i, cand in enumerate(result.front):
        mark = "*" if best is not None and cand.x == best.x else " "
        lines.append(f"{i:>3}{mark}{cand.latency_ms:>11.4f} {100 * cand.error:>9.2f}%  {arch_summary(cand.arch)}")
    if best is not None and all(c.x != best.x for c in result.front):
        lines.append(f"  * {best.latency_ms:>11.4f} {100 * best.error:>9.2f}%  {arch_summary(best.arch)}")
    if result.latency_budget_ms is not None:
        lines.append(
            f"* best under the {result.latency_budget_ms:g} ms budget"
            if best is not None
            else (result.budget_note or "")
        )
    return "\n".join(lines)


def plot_search(
    run_dir: str | Path,
    out_path: str | Path | None = None,
    *,
    result: SearchResult | None = None,
    title: str | None = None,
) -> Path:
    """Plot predicted latency against estimated error: every evaluated candidate in grey, the final population in
    light blue, the final Pareto front highlighted, and the latency budget with its best candidate if one was set.

    Estimated errors come from a different super-net each generation, so grey points of early generations are
    only roughly comparable with the front; they show where the search has looked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    result = result if result is not None else SearchResult.load(run_dir)
    out_path = Path(out_path) if out_path is not None else run_dir / "front.png"
    all_lat, all_err = load_evaluated(run_dir)

    fig, ax = plt.subplots(figsize=(7.0, 4.8), dpi=120)
    ax.scatter(all_lat, 100 * all_err, s=9, c="0.75", label=f"evaluated ({len(all_lat)})", zorder=1)
    _scatter(ax, result.population, s=18, c="tab:blue", alpha=0.5, label="final population", zorder=2)
    front = sorted(result.front, key=lambda c: c.latency_ms)
    ax.plot(
        [c.latency_ms for c in front],
        [100 * c.error for c in front],
        "o-",
        color="tab:red",
        ms=5,
        lw=1.5,
        label=f"Pareto front ({len(front)})",
        zorder=3,
    )
    if result.latency_budget_ms is not None:
        ax.axvline(result.latency_budget_ms, color="k", ls="--", lw=1, label=f"budget {result.latency_budget_ms:g} ms")
        if result.best_under_budget is not None:
            b = result.best_under_budget
            ax.scatter(
                [b.latency_ms],
                [100 * b.error],
                marker="*",
                s=180,
                c="gold",
                edgecolors="k",
                zorder=4,
                label="best under budget",
            )
    ax.set_xlabel("predicted latency (ms)")
    ax.set_ylabel("estimated error (%)")
    ax.set_title(title or f"search: {run_dir.name} ({result.generations + 1} generations)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save_png(fig, out_path)


def figure_png(fig: Any, dpi: float | None = None) -> bytes:
    """Render a matplotlib figure to PNG bytes and free it (callers write the bytes atomically)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _save_png(fig: Any, out_path: Path) -> Path:
    """Render ``fig`` to PNG and write it atomically, like every other result file; then free it."""
    return atomic_write_bytes(out_path, figure_png(fig))


def _scatter(ax: Any, cands: Sequence[Candidate], **style: Any) -> None:
    ax.scatter([c.latency_ms for c in cands], [100 * c.error for c in cands], **style)


def plot_latency_histograms(
    latencies: dict[str, np.ndarray], out_path: str | Path, *, title: str, bins: int = 20
) -> Path:
    """Side-by-side latency histograms of populations (JCW Fig. 7: standard vs uniform selection), shared bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = np.concatenate([np.asarray(v, dtype=float) for v in latencies.values()])
    edges = np.linspace(values.min(), values.max(), bins + 1)
    fig, axes = plt.subplots(1, len(latencies), figsize=(5.0 * len(latencies), 3.8), dpi=120, sharey=True)
    for ax, (name, lat) in zip(np.atleast_1d(axes), latencies.items(), strict=True):
        ax.hist(lat, bins=edges, color="tab:blue", edgecolor="k", alpha=0.8)
        ax.set_title(name)
        ax.set_xlabel("predicted latency (ms)")
        ax.grid(True, alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("models in population")
    fig.suptitle(title)
    fig.tight_layout()
    return _save_png(fig, Path(out_path))
