"""The run report: one row per model (architecture, predicted and measured latency, speed-ups, accuracy, size),
printed as a table and written as report.json, report.html and a Pareto plot of measured latency against accuracy."""

from __future__ import annotations

import base64
import dataclasses
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from latprune._io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from latprune._version import __version__
from latprune.errors import LatpruneError
from latprune.report import arch_summary, figure_png

REPORT_FORMAT = "latprune.report/1"


@dataclass(frozen=True)
class ModelRow:
    """One model of the report. Speed-ups are the dense model's latency over this model's engine latency."""

    name: str
    architecture: str
    predicted_ms: float | None
    engine_ms: float
    onnxruntime_ms: float
    torch_ms: float
    speedup_vs_dense_engine: float
    speedup_vs_dense_onnxruntime: float
    test_acc: float
    acc_drop: float  # in accuracy points (percent), dense minus this model
    nonzero_params: int
    engine_weights_bytes: int
    export_bytes: int | None = None

    @classmethod
    def dense(cls, timing: dict[str, Any], test_acc: float) -> ModelRow:
        return cls(
            "dense", "width 1.0, dense", None, timing["engine_ms"], timing["onnxruntime_ms"], timing["torch_ms"],
            1.0, timing["onnxruntime_ms"] / timing["engine_ms"], test_acc, 0.0, int(timing["params"]),
            int(timing["engine_weights_bytes"]),
        )  # fmt: skip

    @classmethod
    def pruned(
        cls,
        selected: dict[str, Any],
        timing: dict[str, Any],
        dense: dict[str, Any],
        test_acc: float,
        dense_acc: float,
        export_bytes: int | None,
    ) -> ModelRow:
        return cls(
            selected["name"], arch_summary(selected.get("arch")), float(selected["predicted_ms"]), timing["engine_ms"],
            timing["onnxruntime_ms"], timing["torch_ms"], dense["engine_ms"] / timing["engine_ms"],
            dense["onnxruntime_ms"] / timing["engine_ms"], test_acc, 100 * (dense_acc - test_acc),
            int(timing["params"]), int(timing["engine_weights_bytes"]), export_bytes,
        )  # fmt: skip


@dataclass(frozen=True)
class RunReport:
    """What `latprune run` found, for people (the table, HTML, plot) and for programs (report.json)."""

    model: str
    data: str
    cpu: str
    threads: int
    preset: str
    rows: tuple[ModelRow, ...]
    stage_seconds: dict[str, float]
    load_warning: str | None = None  # one sentence when the machine looked busy while latency was measured

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"format": REPORT_FORMAT, "latprune_version": __version__, **d}

    @classmethod
    def load(cls, out_dir: str | Path) -> RunReport:
        path = Path(out_dir) / "report.json"
        d = read_json(path, what="run report")
        if d.get("format") != REPORT_FORMAT:
            raise LatpruneError(f"'{path}' is not a latprune run report; rerun `latprune run` to write it.")
        rows = tuple(ModelRow(**r) for r in d["rows"])
        keep = {f.name for f in dataclasses.fields(cls)} - {"rows"}
        return cls(rows=rows, **{k: v for k, v in d.items() if k in keep})

    def table(self) -> str:
        """Fixed-width table: the dense model first, then the pruned ones from fastest to slowest."""
        head = (
            f"{'model':<6} {'architecture':<44} {'pred ms':>8} {'engine ms':>9} {'ORT ms':>7} {'vs engine':>9} "
            f"{'vs ORT':>7} {'test acc':>8} {'drop':>6} {'nonzero':>9} {'weights':>9}"
        )
        lines = [head]
        for r in self.rows:
            pred = f"{r.predicted_ms:.3f}" if r.predicted_ms is not None else "-"
            lines.append(
                f"{r.name:<6} {r.architecture[:44]:<44} {pred:>8} {r.engine_ms:>9.3f} {r.onnxruntime_ms:>7.3f} "
                f"{r.speedup_vs_dense_engine:>8.2f}x {r.speedup_vs_dense_onnxruntime:>6.2f}x {r.test_acc:>8.2%} "
                f"{r.acc_drop:>5.2f}p {r.nonzero_params:>9,} {r.engine_weights_bytes / 1024:>6.0f} KiB"
            )
        lines.append(
            f"speed-ups: the dense model's latency (engine / ONNX Runtime) over each model's engine latency; batch 1, "
            f"{self.threads} thread(s), fastest of interleaved rounds' medians, {self.cpu}; weights: the engine's "
            "packed weights on disk."
        )
        if self.load_warning:
            lines.append(f"WARNING: {self.load_warning}")
        return "\n".join(lines)


def pareto_png(report: RunReport) -> bytes:
    """Measured latency against test accuracy: pruned models on the engine, the dense model on engine / ORT / torch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    dense, pruned = report.rows[0], report.rows[1:]
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    if pruned:
        order = np.argsort([r.engine_ms for r in pruned])
        xs = [pruned[i].engine_ms for i in order]
        ys = [100 * pruned[i].test_acc for i in order]
        ax.plot(xs, ys, "-o", color="tab:blue", label="pruned, latprune engine")
        for i in order:
            r = pruned[i]
            ax.annotate(
                f"{r.name}: {r.speedup_vs_dense_onnxruntime:.2f}x ORT", (r.engine_ms, 100 * r.test_acc), fontsize=8,
                xytext=(4, 4), textcoords="offset points",
            )  # fmt: skip
    acc = 100 * dense.test_acc
    ax.scatter([dense.engine_ms], [acc], marker="s", s=70, color="tab:green", label="dense, latprune engine")
    ax.scatter([dense.onnxruntime_ms], [acc], marker="D", s=70, color="tab:orange", label="dense, ONNX Runtime")
    ax.scatter([dense.torch_ms], [acc], marker="^", s=70, color="tab:red", label="dense, PyTorch eager")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel(f"measured batch-1 latency (ms, log scale), {report.threads} thread(s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"latprune run: {report.model} / {report.data} (x ORT: speed-up over ONNX Runtime on the dense model)",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return figure_png(fig, dpi=120)


def report_html(report: RunReport, png: bytes) -> str:
    """A self-contained HTML page: the plot inlined, the table, and where the time went."""
    cols = ["model", "architecture", "predicted ms", "engine ms", "ORT ms", "PyTorch ms", "vs dense engine",
            "vs dense ORT", "test acc", "drop (points)", "nonzero params", "engine weights",
            "export bundle"]  # fmt: skip
    body = []
    for r in report.rows:
        cells = [r.name, r.architecture, "-" if r.predicted_ms is None else f"{r.predicted_ms:.3f}",
                 f"{r.engine_ms:.3f}", f"{r.onnxruntime_ms:.3f}", f"{r.torch_ms:.3f}",
                 f"{r.speedup_vs_dense_engine:.2f}x", f"{r.speedup_vs_dense_onnxruntime:.2f}x", f"{r.test_acc:.2%}",
                 f"{r.acc_drop:.2f}", f"{r.nonzero_params:,}", f"{r.engine_weights_bytes / 1024:.0f} KiB",
                 "-" if r.export_bytes is None else f"{r.export_bytes / 1e6:.2f} MB"]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    stages = "".join(f"<li>{html.escape(k)}: {v:.0f} s</li>" for k, v in report.stage_seconds.items())
    img = base64.b64encode(png).decode()
    warning = (
        f'<p style="color:#b00"><b>Warning:</b> {html.escape(report.load_warning)}</p>' if report.load_warning else ""
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>latprune run: {html.escape(report.model)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:nth-child(2){{text-align:left}}</style></head>
<body><h1>latprune run: {html.escape(report.model)} on {html.escape(report.data)}</h1>
<p>Preset {html.escape(report.preset)}; latency measured at batch 1 with {report.threads} thread(s) on
{html.escape(report.cpu)}; speed-ups are the dense model's latency over each model's engine latency.</p>{warning}
<img alt="measured latency against test accuracy" src="data:image/png;base64,{img}">
<table><tr>{"".join(f"<th>{c}</th>" for c in cols)}</tr>
{"".join(body)}</table>
<h2>Where the time went</h2><ul>{stages}</ul>
<p>latprune {__version__}</p></body></html>
"""


def write_report(report: RunReport, out_dir: str | Path) -> tuple[Path, Path, Path]:
    """Write report.json, pareto.png and report.html (all atomically) into ``out_dir``."""
    out_dir = Path(out_dir)
    png = pareto_png(report)
    atomic_write_bytes(out_dir / "pareto.png", png)
    atomic_write_text(out_dir / "report.html", report_html(report, png))
    atomic_write_json(out_dir / "report.json", report.to_json())
    return out_dir / "report.json", out_dir / "report.html", out_dir / "pareto.png"
