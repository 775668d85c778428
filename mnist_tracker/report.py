"""The interactive comparison report: one self-contained HTML file (plotly.js inline).

Figure functions take numbers and return plotly figures; ``render_report`` assembles them into
a page; ``write_report`` is the only function that reads the store (metric histories and the
confusion matrix artifact, for the shown runs only) and the MNIST files (sample digits).

Every trace is built from plain Python lists, so the figure JSON embedded in the page holds
readable numbers (plotly would otherwise base64-encode numpy arrays).
"""

from __future__ import annotations

import base64
import contextlib
import html
import importlib.util
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from plotly.colors import qualitative
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from .compare import LAB_RESULTS, Comparison, human_rows, lower_is_better

CURVE_METRICS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
CONFUSION_JSON = "reports/confusion_matrix.json"  # {"labels": [0..9], "matrix": 10x10 counts}
CONFUSION_HTML = "plots/confusion_matrix.html"  # the per-run plotly figure every run has
N_SAMPLES = 20
MAX_DETAILED_RUNS = 12  # runs whose curves and confusion matrices the page draws
PNG_HINT = (
    "no PNG of the comparison figure: no static-image engine; `pip install kaleido` "
    "(it drives Chrome: run `plotly_get_chrome` once if none is installed) and run again"
)
DIGITS = [str(d) for d in range(10)]


@dataclass
class ReportInputs:
    """Everything the page shows besides the table: per-run data keyed by run id, and notes."""

    histories: dict[str, pd.DataFrame] = field(default_factory=dict)  # step-indexed
    confusions: dict[str, list[list[int]]] = field(default_factory=dict)
    samples: tuple[list[list[list[int]]], list[int]] | None = None  # images, labels
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Figures


def run_labels(table: pd.DataFrame) -> list[str]:
    """One legend label per row: the model's name, plus the run name when a model repeats."""
    counts = table["model"].value_counts()
    return [
        model if counts[model] == 1 else f"{model} · {run_name}"
        for model, run_name in zip(table["model"], table["run_name"], strict=True)
    ]


def run_colors(n: int) -> list[str]:
    """One colour per shown run, the same in every figure."""
    return [qualitative.Plotly[i % len(qualitative.Plotly)] for i in range(n)]


def _values(series: pd.Series) -> list[float | None]:
    """A column as a JSON-friendly list (NaN / NA as None)."""
    return [None if pd.isna(v) else float(v) for v in series]


def comparison_figure(table: pd.DataFrame) -> go.Figure:
    """The lab's ``model_comparison``: bars of accuracy (%), macro F1 and training time (s)."""
    labels = run_labels(table)
    panels = (
        ("accuracy_pct", "Accuracy (%)", "{:.2f}"),
        ("f1_macro", "F1", "{:.4f}"),
        ("training_time_s", "Training Time (s)", "{:.1f}"),
    )
    fig = make_subplots(rows=1, cols=3, subplot_titles=[title for _, title, _ in panels])
    for col, (key, title, fmt) in enumerate(panels, start=1):
        values = _values(table[key])
        fig.add_trace(
            go.Bar(
                x=labels,
                y=values,
                name=title,
                text=["" if v is None else fmt.format(v) for v in values],
                textposition="outside",
                marker_color=run_colors(len(labels)),
                showlegend=False,
            ),
            row=1,
            col=col,
        )
    present = [v for v in _values(table["accuracy_pct"]) if v is not None]
    if present:  # accuracies sit close together: start the axis just below the lowest
        fig.update_yaxes(range=[max(0.0, math.floor(min(present)) - 1.0), 100.5], row=1, col=1)
    fig.update_layout(
        title="Model comparison (test set)", template="plotly_white", height=460, bargap=0.35
    )
    return fig


def curves_figure(table: pd.DataFrame, histories: Mapping[str, pd.DataFrame]) -> go.Figure:
    """Per-epoch loss and accuracy (%) of every shown run, train solid and test dashed."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy (%)"))
    colors = run_colors(len(table))
    for label, run_id, color in zip(run_labels(table), table["run_id"], colors, strict=True):
        history = histories.get(run_id)
        if history is None or history.empty:
            continue
        for split, dash in (("train", "solid"), ("test", "dash")):
            for col, metric, scale in ((1, "loss", 1.0), (2, "accuracy", 100.0)):
                key = f"{split}_{metric}"
                if key not in history:
                    continue
                series = history[key].dropna()
                fig.add_trace(
                    go.Scatter(
                        x=[int(s) for s in series.index],
                        y=[float(v) * scale for v in series],
                        name=f"{label} {split}",
                        legendgroup=label,
                        showlegend=col == 1,
                        mode="lines+markers",
                        line={"dash": dash, "color": color},
                    ),
                    row=1,
                    col=col,
                )
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="cross-entropy", row=1, col=1)
    fig.update_yaxes(title_text="accuracy (%)", row=1, col=2)
    fig.update_layout(title="Learning curves", template="plotly_white", height=460)
    return fig


def cost_figure(table: pd.DataFrame) -> go.Figure:
    """Accuracy against training time, one marker per run: is a model worth its cost?"""
    fig = go.Figure()
    for label, seconds, accuracy, color in zip(
        run_labels(table),
        _values(table["training_time_s"]),
        _values(table["accuracy_pct"]),
        run_colors(len(table)),
        strict=True,
    ):
        fig.add_trace(
            go.Scatter(
                x=[seconds],
                y=[accuracy],
                name=label,
                mode="markers+text",
                text=[label],
                textposition="top center",
                marker={"size": 14, "color": color},
            )
        )
    fig.update_xaxes(title_text="training time (s, log scale)", type="log")
    fig.update_yaxes(title_text="test accuracy (%)")
    fig.update_layout(
        title="Accuracy against training time (up and to the left is better)",
        template="plotly_white",
        height=460,
    )
    return fig


def samples_figure(images: Sequence[Sequence[Sequence[int]]], labels: Sequence[int]) -> go.Figure:
    """The lab's ``sample_images``: a grid of MNIST digits (10 a row) titled with their labels."""
    cols = min(10, len(labels))
    rows = math.ceil(len(labels) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[f"Label: {y}" for y in labels],
        horizontal_spacing=0.01,
        vertical_spacing=0.12,
    )
    for i, (image, label) in enumerate(zip(images, labels, strict=True)):
        fig.add_trace(
            go.Heatmap(
                z=[list(row) for row in image],
                name=f"label {label}",
                colorscale="gray",
                showscale=False,
                hovertemplate="x %{x}, y %{y}: %{z}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False, autorange="reversed")
    fig.update_layout(
        title="Sample MNIST digits (training set)",
        template="plotly_white",
        height=150 * rows + 80,
    )
    return fig


def confusion_figure(
    table: pd.DataFrame, confusions: Mapping[str, Sequence[Sequence[int]]]
) -> go.Figure:
    """The shown runs' test-set confusion matrices (true digit rows, predicted columns)."""
    shown = [
        (label, confusions[run_id])
        for label, run_id in zip(run_labels(table), table["run_id"], strict=True)
        if run_id in confusions
    ]
    cols = min(3, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig = make_subplots(
        rows=rows,
        cols=cols,
        subplot_titles=[label for label, _ in shown],
        horizontal_spacing=0.06,
        vertical_spacing=0.1,
    )
    for i, (label, matrix) in enumerate(shown):
        z = [[int(v) for v in row] for row in matrix]
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=DIGITS,
                y=DIGITS,
                name=label,
                text=z,
                texttemplate="%{text}",
                colorscale="Blues",
                showscale=False,
                hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
            ),
            row=i // cols + 1,
            col=i % cols + 1,
        )
    fig.update_xaxes(title_text="predicted")
    fig.update_yaxes(title_text="true", autorange="reversed")
    fig.update_layout(
        title="Confusion matrices (test set)", template="plotly_white", height=420 * rows
    )
    return fig


# ---------------------------------------------------------------------------------------------
# The page


def table_html(table: pd.DataFrame, caption: str) -> str:
    """An HTML table with the human headers and rounding of ``compare.render_table``."""
    headers, rows = human_rows(table)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return (
        f"<table><caption>{html.escape(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin: 1rem 0; font-size: 0.9rem; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3rem; }
th, td { border-bottom: 1px solid #ddd; padding: 0.25rem 0.6rem; text-align: left; }
td:nth-child(2), td:nth-child(3), td:nth-child(4) { text-align: right; }
.tables { display: flex; flex-wrap: wrap; gap: 2rem; align-items: flex-start; }
.note { color: #666; font-style: italic; }
section { margin-bottom: 2.5rem; }
"""


def _figure_div(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=div_id, config={"displaylogo": False}
    )


def _section(title: str, body: str, section_id: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{body}</section>'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def render_report(comparison: Comparison, inputs: ReportInputs, source: str) -> str:
    """The whole page as one HTML string: plotly.js inline once, then every section."""
    table, query = comparison.table, comparison.query
    order = "lowest" if lower_is_better(query.metric) else "highest"
    summary = (
        f"{len(table)} run(s) shown ({query.mode} by {query.metric}, {order} first) out of "
        f"{comparison.n_runs} training run(s) in experiment(s) "
        f"{', '.join(comparison.experiment_names)}; tracking store {source}; generated "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}."
    )
    lab = table_html(
        LAB_RESULTS,
        "The lab's own results (quoted from the lab, unknown GPU; not measured here)",
    )
    sections = [
        _section(
            "Results", f'<div class="tables">{table_html(table, "Measured")}{lab}</div>', "results"
        ),
        _section(
            "Accuracy, F1 and training time per model",
            _figure_div(comparison_figure(table), "fig-comparison"),
            "comparison",
        ),
    ]
    if any(not h.empty for h in inputs.histories.values()):
        curves = _figure_div(curves_figure(table, inputs.histories), "fig-curves")
    else:
        curves = _note("None of the shown runs logged per-epoch losses or accuracies.")
    sections.append(_section("Learning curves", curves, "curves"))
    sections.append(
        _section("Is it worth the cost?", _figure_div(cost_figure(table), "fig-cost"), "cost")
    )
    if inputs.samples is not None:
        samples = _figure_div(samples_figure(*inputs.samples), "fig-samples")
    else:
        samples = _note("Sample digits left out: no MNIST files available (see notes).")
    sections.append(_section("Sample digits", samples, "samples"))
    if inputs.confusions:
        confusion = _figure_div(confusion_figure(table, inputs.confusions), "fig-confusion")
    else:
        confusion = _note("No confusion matrix artifact found for the shown runs.")
    sections.append(_section("Confusion matrices", confusion, "confusion"))
    if inputs.notes:
        notes = "".join(f"<li>{html.escape(n)}</li>" for n in inputs.notes)
        sections.append(_section("Notes", f"<ul>{notes}</ul>", "notes"))
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>mnist-tracker: model comparison</title>"
        f"<style>{STYLE}</style>"
        f'<script type="text/javascript">{get_plotlyjs()}</script></head><body>'
        f"<h1>MNIST model comparison</h1><p>{html.escape(summary)}</p>"
        + "".join(sections)
        + "</body></html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Reading what the page needs


def fetch_histories(client: MlflowClient, run_ids: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Per-epoch ``CURVE_METRICS`` of ``run_ids``: one DataFrame per run, indexed by step.

    A step logged twice keeps its latest value. Runs without any of the metrics map to an
    empty frame.
    """
    histories = {}
    for run_id in run_ids:
        columns = {}
        for key in CURVE_METRICS:
            points = sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp)
            if points:
                columns[key] = pd.Series({m.step: m.value for m in points}).sort_index()
        histories[run_id] = pd.DataFrame(columns)
    return histories


def decode_plotly_array(value) -> np.ndarray:
    """A plotly JSON array: a plain (nested) list, or plotly's ``{dtype, bdata, shape}``."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype="<" + value["dtype"])
        shape = value.get("shape")
        if shape:
            array = array.reshape([int(s) for s in str(shape).split(",")])
        return array
    return np.asarray(value)


def confusion_from_html(text: str) -> list[list[int]] | None:
    """The first heatmap's ``z`` in a plotly HTML page (the run's confusion matrix figure)."""
    start = text.find("Plotly.newPlot(")
    if start < 0:
        return None
    bracket = text.find("[", start)
    try:
        traces, _ = json.JSONDecoder().raw_decode(text, bracket)
    except ValueError:
        return None
    for trace in traces:
        if trace.get("type") == "heatmap" and "z" in trace:
            return decode_plotly_array(trace["z"]).astype(int).tolist()
    return None


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar per artifact download; a report needs none."""
    name = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    previous = os.environ.get(name)
    os.environ[name] = "false"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def fetch_confusion(client: MlflowClient, run_id: str) -> list[list[int]] | None:
    """The run's test-set confusion matrix from its artifacts, or None when it has none.

    Reads ``reports/confusion_matrix.json`` when the run logged it, else the matrix inside
    ``plots/confusion_matrix.html``.
    """
    with tempfile.TemporaryDirectory() as tmp, _no_progress_bars():
        for artifact in (CONFUSION_JSON, CONFUSION_HTML):
            try:
                path = Path(client.download_artifacts(run_id, artifact, tmp))
            except (MlflowException, OSError):
                continue
            text = path.read_text(encoding="utf-8")
            if artifact == CONFUSION_JSON:
                return [[int(v) for v in row] for row in json.loads(text)["matrix"]]
            return confusion_from_html(text)
    return None


def load_samples(data_dir: str | None, n: int = N_SAMPLES) -> tuple[list, list[int]]:
    """The first ``n`` training digits and labels. Never downloads; raises DataError."""
    from .data import load_mnist  # late import: torch is only needed for the report

    mnist = load_mnist(data_dir, download_missing=False)
    return mnist.train_x[:n].tolist(), mnist.train_y[:n].tolist()


def gather(client: MlflowClient, comparison: Comparison, data_dir: str | None) -> ReportInputs:
    """Histories and confusion matrices of the first ``MAX_DETAILED_RUNS`` shown runs (the
    best ones), and the sample digits. Nothing is read for runs that are not shown."""
    from .data import DataError

    shown = list(comparison.table["run_id"])
    run_ids = shown[:MAX_DETAILED_RUNS]
    inputs = ReportInputs(histories=fetch_histories(client, run_ids))
    if len(shown) > len(run_ids):
        inputs.notes.append(
            f"Learning curves and confusion matrices of the first {len(run_ids)} of "
            f"{len(shown)} shown runs only."
        )
    missing = []
    for run_id in run_ids:
        matrix = fetch_confusion(client, run_id)
        if matrix is None:
            missing.append(run_id)
        else:
            inputs.confusions[run_id] = matrix
    if missing:
        inputs.notes.append(
            f"No confusion matrix artifact for run(s) {', '.join(missing)}: left out."
        )
    try:
        inputs.samples = load_samples(data_dir)
    except DataError as exc:
        inputs.notes.append(f"Sample digits left out: {exc}")
    return inputs


def write_png(fig: go.Figure, path: Path) -> str:
    """Write ``fig`` as a PNG when a static-image engine works; return a one-line note."""
    if importlib.util.find_spec("kaleido") is None:
        return PNG_HINT
    try:
        fig.write_image(str(path), width=1400, height=500)
    except Exception as exc:  # kaleido present but unusable (no Chrome, version mismatch, ...)
        reason = " ".join(str(exc).split())[:200]
        return f"no PNG of the comparison figure: the static-image engine failed ({reason})"
    return f"wrote {path}"


def write_report(
    path: str | Path,
    comparison: Comparison,
    client: MlflowClient,
    *,
    data_dir: str | None = None,
    source: str = "",
) -> list[str]:
    """Write the HTML report to ``path`` and the comparison PNG beside it (``.png``).

    Returns the one-line notes the page lists too: what was left out, and the PNG's fate.
    """
    path = Path(path)
    inputs = gather(client, comparison, data_dir)
    inputs.notes.append(write_png(comparison_figure(comparison.table), path.with_suffix(".png")))
    path.write_text(render_report(comparison, inputs, source), encoding="utf-8")
    return inputs.notes
