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
from latprune.bench.runtimes import REFERENCE_RUNTIME, runtime_info
from latprune.errors import LatpruneError
from latprune.report import arch_summary, figure_png

REPORT_FORMAT = "latprune.report/2"
#: Version 1 had engine_ms / onnxruntime_ms / torch_ms and two speed-up fields per row; it still loads.
_OLD_FORMAT = "latprune.report/1"


@dataclass(frozen=True)
class ModelRow:
    """One model of the report. Latencies are keyed by runtime ("engine", then the baselines it was compared with);
    ``speedup_vs_dense[r]`` is the dense model's latency on runtime ``r`` over this model's engine latency."""

    name: str
    architecture: str
    predicted_ms: float | None
    latency_ms: dict[str, float]
    speedup_vs_dense: dict[str, float]
    test_acc: float
    acc_drop: float  # in accuracy points (percent), dense minus this model
    nonzero_params: int
    engine_weights_bytes: int
    export_bytes: int | None = None

    @property
    def engine_ms(self) -> float:
        return self.latency_ms["engine"]

    @classmethod
    def dense(cls, timing: dict[str, Any], test_acc: float) -> ModelRow:
        return cls.pruned(
            {"name": "dense", "predicted_ms": None}, timing, timing, test_acc, test_acc, None, "width 1.0, dense"
        )

    @classmethod
    def pruned(
        cls,
        selected: dict[str, Any],
        timing: dict[str, Any],
        dense: dict[str, Any],
        test_acc: float,
        dense_acc: float,
        export_bytes: int | None,
        architecture: str | None = None,
    ) -> ModelRow:
        latency, dense_latency = measured_latencies(timing), measured_latencies(dense)
        predicted = selected.get("predicted_ms")
        return cls(
            selected["name"], architecture or arch_summary(selected.get("arch")),
            None if predicted is None else float(predicted), latency,
            {k: v / latency["engine"] for k, v in dense_latency.items()}, test_acc, 100 * (dense_acc - test_acc),
            int(timing["params"]), int(timing["engine_weights_bytes"]), export_bytes,
        )  # fmt: skip


def measured_latencies(timing: dict[str, Any]) -> dict[str, float]:
    """Latency per runtime of one model of measure.json ("<runtime>_ms" keys in runs measured before the registry)."""
    if "latency_ms" in timing:
        return {k: float(v) for k, v in timing["latency_ms"].items()}
    return {k[: -len("_ms")]: float(v) for k, v in timing.items() if k.endswith("_ms")}


def _row_from_v1(r: dict[str, Any], dense: dict[str, Any]) -> dict[str, Any]:
    """A version-1 report row in the version-2 fields (the torch speed-up is computed from the dense row)."""
    latency = {k: r.pop(f"{k}_ms") for k in ("engine", "onnxruntime", "torch")}
    r["latency_ms"] = latency
    r["speedup_vs_dense"] = {
        "engine": r.pop("speedup_vs_dense_engine"),
        "onnxruntime": r.pop("speedup_vs_dense_onnxruntime"),
        "torch": dense["torch_ms"] / latency["engine"],
    }
    return r


def _short(runtime: str) -> str:
    info = runtime_info(runtime)
    return info.short if info else runtime


def _label(runtime: str) -> str:
    info = runtime_info(runtime)
    return info.label if info else runtime


def reference_runtime(runtimes: list[str] | tuple[str, ...]) -> str:
    """The baseline speed-ups are quoted against: ONNX Runtime when it was measured, else the first baseline."""
    baselines = [r for r in runtimes if r != "engine"]
    return REFERENCE_RUNTIME if REFERENCE_RUNTIME in baselines else (baselines or ["engine"])[0]


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
    latency_budget_ms: float | None = None  # the run's --latency-budget, if it had one
    search: str = "nsga2"  # the search algorithm of the run

    def budget_line(self) -> str | None:
        """Whether each pruned model MEASURES within the budget (the search only predicted it)."""
        if self.latency_budget_ms is None or len(self.rows) < 2:
            return None
        parts = [
            f"{r.name} {r.engine_ms:.3f} ms ({'met' if r.engine_ms <= self.latency_budget_ms else 'MISSED'})"
            for r in self.rows[1:]
        ]
        return f"latency budget {self.latency_budget_ms:g} ms, measured: " + ", ".join(parts)

    @property
    def reference(self) -> str:
        return reference_runtime(list(self.rows[0].latency_ms)) if self.rows else REFERENCE_RUNTIME

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"format": REPORT_FORMAT, "latprune_version": __version__, **d}

    @classmethod
    def load(cls, out_dir: str | Path) -> RunReport:
        path = Path(out_dir) / "report.json"
        d = read_json(path, what="run report")
        if d.get("format") not in (REPORT_FORMAT, _OLD_FORMAT):
            raise LatpruneError(f"'{path}' is not a latprune run report; rerun `latprune run` to write it.")
        raw = d["rows"]
        if d["format"] == _OLD_FORMAT:
            raw = [_row_from_v1(dict(r), raw[0]) for r in raw]
        rows = tuple(ModelRow(**r) for r in raw)
        keep = {f.name for f in dataclasses.fields(cls)} - {"rows"}
        return cls(rows=rows, **{k: v for k, v in d.items() if k in keep})

    def table(self) -> str:
        """Fixed-width table: the dense model first, then the pruned ones from fastest to slowest."""
        ref = self.reference
        short = _short(ref)
        head = (
            f"{'model':<6} {'architecture':<44} {'pred ms':>8} {'engine ms':>9} {f'{short} ms':>7} {'vs engine':>9} "
            f"{f'vs {short}':>7} {'test acc':>8} {'drop':>6} {'nonzero':>9} {'weights':>9}"
        )
        lines = [head]
        for r in self.rows:
            pred = f"{r.predicted_ms:.3f}" if r.predicted_ms is not None else "-"
            lines.append(
                f"{r.name:<6} {r.architecture[:44]:<44} {pred:>8} {r.engine_ms:>9.3f} {r.latency_ms[ref]:>7.3f} "
                f"{r.speedup_vs_dense['engine']:>8.2f}x {r.speedup_vs_dense[ref]:>6.2f}x {r.test_acc:>8.2%} "
                f"{r.acc_drop:>5.2f}p {r.nonzero_params:>9,} {r.engine_weights_bytes / 1024:>6.0f} KiB"
            )
        lines.append(
            f"speed-ups: the dense model's latency (engine / {_label(ref)}) over each model's engine latency; batch 1, "
            f"{self.threads} thread(s), fastest of interleaved rounds' medians, {self.cpu}; weights: the engine's "
            "packed weights on disk."
        )
        if self.budget_line():
            lines.append(self.budget_line())  # type: ignore[arg-type]
        if self.load_warning:
            lines.append(f"warning: {self.load_warning}")
        return "\n".join(lines)


def pareto_png(report: RunReport) -> bytes:
    """Measured latency against test accuracy: pruned models on the engine, the dense model on every runtime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    dense, pruned = report.rows[0], report.rows[1:]
    ref = report.reference
    short = _short(ref)
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    if pruned:
        order = np.argsort([r.engine_ms for r in pruned])
        xs = [pruned[i].engine_ms for i in order]
        ys = [100 * pruned[i].test_acc for i in order]
        ax.plot(xs, ys, "-o", color="tab:blue", label="pruned, latprune engine")
        for i in order:
            r = pruned[i]
            ax.annotate(
                f"{r.name}: {r.speedup_vs_dense[ref]:.2f}x {short}", (r.engine_ms, 100 * r.test_acc), fontsize=8,
                xytext=(4, 4), textcoords="offset points",
            )  # fmt: skip
    acc = 100 * dense.test_acc
    for name, ms in dense.latency_ms.items():
        rt = runtime_info(name)
        marker, color = (rt.marker, rt.color) if rt else ("o", "0.5")
        ax.scatter([ms], [acc], marker=marker, s=70, color=color, label=f"dense, {_label(name)}")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel(f"measured batch-1 latency (ms, log scale), {report.threads} thread(s)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(
        f"latprune run: {report.model} / {report.data} (x {short}: speed-up over {_label(ref)} on the dense model)",
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return figure_png(fig, dpi=120)


def report_html(report: RunReport, png: bytes) -> str:
    """A self-contained HTML page: the plot inlined, the table, and where the time went."""
    runtimes = list(report.rows[0].latency_ms)  # "engine", then the baselines
    ref = report.reference
    names = {n: _short(n) for n in runtimes}
    cols = ["model", "architecture", "predicted ms", *(f"{names[n]} ms" for n in runtimes), "vs dense engine",
            f"vs dense {names[ref]}", "test acc", "drop (points)", "nonzero params", "engine weights",
            "export bundle"]  # fmt: skip
    body = []
    for r in report.rows:
        cells = [r.name, r.architecture, "-" if r.predicted_ms is None else f"{r.predicted_ms:.3f}",
                 *(f"{r.latency_ms[n]:.3f}" for n in runtimes), f"{r.speedup_vs_dense['engine']:.2f}x",
                 f"{r.speedup_vs_dense[ref]:.2f}x", f"{r.test_acc:.2%}", f"{r.acc_drop:.2f}",
                 f"{r.nonzero_params:,}", f"{r.engine_weights_bytes / 1024:.0f} KiB",
                 "-" if r.export_bytes is None else f"{r.export_bytes / 1e6:.2f} MB"]  # fmt: skip
        body.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    stages = "".join(f"<li>{html.escape(k)}: {v:.0f} s</li>" for k, v in report.stage_seconds.items())
    img = base64.b64encode(png).decode()
    warning = (
        f'<p style="color:#b00"><b>Warning:</b> {html.escape(report.load_warning)}</p>' if report.load_warning else ""
    )
    budget = f"<p>{html.escape(report.budget_line() or '')}</p>" if report.budget_line() else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>latprune run: {html.escape(report.model)}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}} td:nth-child(2){{text-align:left}}</style></head>
<body><h1>latprune run: {html.escape(report.model)} on {html.escape(report.data)}</h1>
<p>Preset {html.escape(report.preset)}, search {html.escape(report.search)}; latency measured at batch 1 with
{report.threads} thread(s) on {html.escape(report.cpu)}; speed-ups are the dense model's latency over each model's
engine latency.</p>{warning}{budget}
<img alt="measured latency against test accuracy" src="data:image/png;base64,{img}">
<table><tr>{"".join(f"<th>{html.escape(c)}</th>" for c in cols)}</tr>
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
