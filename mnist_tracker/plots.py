"""Plotly figures for one run. Functions that take numbers and return figures; no I/O."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots
from sklearn.metrics import confusion_matrix

DIGITS = [str(d) for d in range(10)]


def learning_curves(history: Sequence[dict[str, float]], title: str = "") -> go.Figure:
    """Loss and accuracy per epoch for every split present in ``history``."""
    epochs = list(range(1, len(history) + 1))
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Loss", "Accuracy"))
    for split, dash in (("train", "solid"), ("val", "dot"), ("test", "dash")):
        if f"{split}_loss" not in history[0]:
            continue
        for col, metric in ((1, "loss"), (2, "accuracy")):
            fig.add_trace(
                go.Scatter(
                    x=epochs,
                    y=[h[f"{split}_{metric}"] for h in history],
                    name=f"{split}_{metric}",
                    mode="lines+markers",
                    line={"dash": dash},
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(title_text="cross-entropy", row=1, col=1)
    fig.update_yaxes(title_text="accuracy", tickformat=".1%", row=1, col=2)
    fig.update_layout(title=title or "Learning curves", template="plotly_white", height=420)
    return fig


def confusion_matrix_figure(
    labels: np.ndarray, predictions: np.ndarray, title: str = ""
) -> go.Figure:
    """Counts of true digit (rows) against predicted digit (columns)."""
    cm = confusion_matrix(labels, predictions, labels=list(range(10)))
    fig = go.Figure(
        go.Heatmap(
            z=cm,
            x=DIGITS,
            y=DIGITS,
            colorscale="Blues",
            text=cm,
            texttemplate="%{text}",
            hovertemplate="true %{y}, predicted %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or "Confusion matrix (test set)",
        xaxis_title="predicted",
        yaxis_title="true",
        yaxis_autorange="reversed",
        template="plotly_white",
        height=520,
        width=560,
    )
    return fig
