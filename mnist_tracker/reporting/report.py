"""The interactive comparison report: one self-contained HTML file (plotly.js inline).

``render_report`` assembles the figures (``figures.py``) into a page; ``gather`` is the only
function that reads the store (metric histories and the ``artifacts.CONFUSION_MATRIX`` data,
for the shown runs only, through ``tracking.store``) and the MNIST files (sample digits).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs

from ..data import load_mnist
from ..errors import DataError
from ..tracking import artifacts, store
from . import images
from .compare import LAB_RESULTS, Comparison, lower_is_better
from .figures import (
    comparison_figure,
    confusion_figure,
    cost_figure,
    curves_figure,
    run_labels,
    samples_figure,
)
from .render import human_rows

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

CURVE_METRICS = ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
N_SAMPLES = 20
MAX_DETAILED_RUNS = 12  # runs whose curves and confusion matrices the page draws


@dataclass
class ReportInputs:
    """Everything the page shows besides the table: per-run data keyed by run id, and notes."""

    histories: dict[str, pd.DataFrame] = field(default_factory=dict)  # step-indexed
    confusions: dict[str, list[list[int]]] = field(default_factory=dict)
    samples: tuple[list[list[list[int]]], list[int]] | None = None  # images, labels
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# The page


def table_html(table: pd.DataFrame, caption: str) -> str:
    """An HTML table as ``render.render_table`` shows it: human headers, display names, the
    lab's rounding, every cell on one line."""
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
            points = store.metric_history(run_id, key, client)
            if points:
                columns[key] = pd.Series({m.step: m.value for m in points}).sort_index()
        histories[run_id] = pd.DataFrame(columns)
    return histories


def fetch_confusion(client: MlflowClient, run_id: str) -> list[list[int]] | None:
    """The run's test-set confusion matrix (``artifacts.CONFUSION_MATRIX``), or None when it
    has none (a run from before the artifact existed, a search trial)."""
    payload = store.read_json_artifact(run_id, artifacts.CONFUSION_MATRIX, client)
    if payload is None:
        return None
    try:
        return artifacts.read_confusion(payload)
    except ValueError:
        return None


def load_samples(data_dir: str | None, n: int = N_SAMPLES) -> tuple[list, list[int]]:
    """The first ``n`` training digits and labels. Never downloads; raises DataError."""
    mnist = load_mnist(data_dir, download_missing=False)
    return mnist.train_x[:n].tolist(), mnist.train_y[:n].tolist()


def gather(client: MlflowClient, comparison: Comparison, data_dir: str | None) -> ReportInputs:
    """Histories and confusion matrices of the first ``MAX_DETAILED_RUNS`` shown runs (the
    best ones), and the sample digits. Nothing is read for runs that are not shown."""
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


def write_png(table: pd.DataFrame, path: Path) -> str:
    """The comparison figure as a PNG beside the page (matplotlib: no browser or internet
    needed); return the one-line note saying where."""
    png = images.comparison_png(
        run_labels(table),
        table["accuracy_pct"].tolist(),
        table["f1_macro"].tolist(),
        table["training_time_s"].tolist(),
    )
    path.write_bytes(png)
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

    Returns the one-line notes for the terminal: what the page lists as left out, and where
    the PNG went (not on the page: a reader of a shared report needs no writer's path).
    """
    path = Path(path)
    inputs = gather(client, comparison, data_dir)
    wrote = write_png(comparison.table, path.with_suffix(".png"))
    path.write_text(render_report(comparison, inputs, source), encoding="utf-8")
    return [*inputs.notes, wrote]
