"""Plotly figures of the comparison report: functions that take numbers and return figures.

``comparison_figure``, ``curves_figure``, ``cost_figure``, ``samples_figure``,
``confusion_figure`` (a run's own figures are PNG images: ``images.py``). Every trace is
built from plain Python lists, so the figure JSON holds readable numbers (plotly would
otherwise base64-encode numpy arrays).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from ..tracking.artifacts import DIGITS
from .compare import display_name
from .render import one_line

BAR_HEADROOM = 1.15  # room above a bar panel's top for the tallest bar's value label


def _line(x, y, name: str, dash: str, **kwargs) -> go.Scatter:
    """One learning-curve trace: epochs on x, a metric on y."""
    line = {"dash": dash} | ({"color": kwargs.pop("color")} if "color" in kwargs else {})
    return go.Scatter(x=list(x), y=list(y), name=name, mode="lines+markers", line=line, **kwargs)


def _curve_axes(fig: go.Figure, accuracy_title: str, **accuracy_axis) -> None:
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="cross-entropy", row=1, col=1)
    fig.update_yaxes(title_text=accuracy_title, row=1, col=2, **accuracy_axis)


def _heatmap(matrix: Sequence[Sequence[int]], **kwargs) -> go.Heatmap:
    """A confusion matrix: true digit rows, predicted digit columns, counts written in."""
    z = [[int(v) for v in row] for row in matrix]
    return go.Heatmap(
        z=z,
        x=DIGITS,
        y=DIGITS,
        text=z,
        texttemplate="%{text}",
        colorscale="Blues",
        hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        **kwargs,
    )


def run_labels(table: pd.DataFrame) -> list[str]:
    """One legend label per row: the model's display name, plus the run name (on one line)
    when a model repeats."""
    counts = table["model"].value_counts()
    return [
        display_name(model) if counts[model] == 1 else f"{display_name(model)} · {one_line(name)}"
        for model, name in zip(table["model"], table["run_name"], strict=True)
    ]


def run_colors(n: int) -> list[str]:
    """One colour per shown run, the same in every figure."""
    return [qualitative.Plotly[i % len(qualitative.Plotly)] for i in range(n)]


def _values(series: pd.Series) -> list[float | None]:
    """A column as a JSON-friendly list (NaN / NA as None)."""
    return [None if pd.isna(v) else float(v) for v in series]


def comparison_figure(table: pd.DataFrame) -> go.Figure:
    """The lab's ``model_comparison``: bars of accuracy (%), macro F1 and training time (s).

    Every panel's y axis starts at 0: accuracy on 0-100 %, F1 on 0-1, time up to the longest
    run; each range ends ``BAR_HEADROOM`` above that top, so the value label written above the
    tallest bar fits inside the plot (and ``cliponaxis=False`` keeps it whole in any case).
    """
    labels = run_labels(table)
    panels = (  # column, title, label format, top of the scale (None: the data's), tick step
        ("accuracy_pct", "Accuracy (%)", "{:.2f}", 100.0, 20),
        ("f1_macro", "F1", "{:.4f}", 1.0, 0.2),
        ("training_time_s", "Training Time (s)", "{:.1f}", None, None),
    )
    fig = make_subplots(rows=1, cols=3, subplot_titles=[panel[1] for panel in panels])
    for col, (key, title, fmt, scale_top, dtick) in enumerate(panels, start=1):
        values = _values(table[key])
        fig.add_trace(
            go.Bar(
                x=labels,
                y=values,
                name=title,
                text=["" if v is None else fmt.format(v) for v in values],
                textposition="outside",
                cliponaxis=False,
                marker_color=run_colors(len(labels)),
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        present = [v for v in values if v is not None and math.isfinite(v)]
        top = max([scale_top or 0.0, *present]) or 1.0  # a bar past the scale still fits
        axis = {"range": [0.0, top * BAR_HEADROOM]} | ({"dtick": dtick} if dtick else {})
        fig.update_yaxes(**axis, row=1, col=col)
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
                trace = _line(
                    [int(s) for s in series.index],
                    [float(v) * scale for v in series],
                    f"{label} {split}",
                    dash,
                    color=color,
                    legendgroup=label,
                    showlegend=col == 1,
                )
                fig.add_trace(trace, row=1, col=col)
    _curve_axes(fig, "accuracy (%)")
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
        fig.add_trace(
            _heatmap(matrix, name=label, showscale=False), row=i // cols + 1, col=i % cols + 1
        )
    fig.update_xaxes(title_text="predicted")
    fig.update_yaxes(title_text="true", autorange="reversed")
    fig.update_layout(
        title="Confusion matrices (test set)", template="plotly_white", height=420 * rows
    )
    return fig
