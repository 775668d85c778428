"""Static images of one run, for the MLflow UI (which previews PNG natively, offline).

Functions from numbers to image bytes or pixel arrays; matplotlib's object API (no pyplot, no
global backend), so they are safe in any process. What the run logs them as is
``tracking.artifacts``' business.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from ..tracking.artifacts import DIGITS

DPI = 110
MAX_MISCLASSIFIED = 24  # digits in one grid: 4 rows of 6


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig, **kwargs) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", **kwargs)
    return buffer.getvalue()


def learning_curves_png(history: Sequence[dict[str, float]], title: str = "") -> bytes:
    """Loss and accuracy per epoch for every split in ``history``, as a PNG."""
    fig = _figure(10, 4)
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = list(range(1, len(history) + 1))
    for split, style in (("train", "-"), ("val", ":"), ("test", "--")):
        if f"{split}_loss" not in history[0]:
            continue
        loss_ax.plot(epochs, [h[f"{split}_loss"] for h in history], style, marker="o", label=split)
        accuracy = [100 * h[f"{split}_accuracy"] for h in history]
        acc_ax.plot(epochs, accuracy, style, marker="o", label=split)
    for ax, name in ((loss_ax, "cross-entropy"), (acc_ax, "accuracy (%)")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_xticks(epochs)
        ax.grid(alpha=0.3)
        ax.legend()
    loss_ax.set_title("Loss")
    acc_ax.set_title("Accuracy")
    fig.suptitle(title or "Learning curves")
    return _png(fig)


def confusion_matrix_png(matrix: Sequence[Sequence[int]], title: str = "") -> bytes:
    """A 10 x 10 confusion matrix (true digit rows, predicted columns), counts written in."""
    counts = np.asarray(matrix, dtype=np.int64)
    fig = _figure(6.2, 5.6)
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    threshold = counts.max() / 2 if counts.size else 0
    for (row, col), value in np.ndenumerate(counts):
        color = "white" if value > threshold else "black"
        ax.text(col, row, str(value), ha="center", va="center", color=color, fontsize=8)
    ax.set_xticks(range(10), DIGITS)
    ax.set_yticks(range(10), DIGITS)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_title(title or "Confusion matrix (test set)")
    return _png(fig)


# One cell of the misclassified grid, in pixels of the mosaic: the digit (28 x 28) under a
# strip for its "true → predicted" title.
CELL_W, CELL_H, TITLE_H = 34, 40, 11


def misclassified_grid(
    images: np.ndarray, labels: np.ndarray, predictions: np.ndarray, title: str = ""
) -> np.ndarray | None:
    """Up to ``MAX_MISCLASSIFIED`` wrongly classified digits (uint8 (N, 28, 28)), each titled
    true -> predicted, 6 a row, as an RGB uint8 array; None when every digit was right.

    The digits are pasted into one mosaic drawn on a single axes: a figure of 24 subplots
    took seconds to lay out, more than the rest of a short run's plots together.
    """
    wrong = np.flatnonzero(np.asarray(labels) != np.asarray(predictions))[:MAX_MISCLASSIFIED]
    if len(wrong) == 0:
        return None
    cols = 6
    rows = -(-len(wrong) // cols)
    mosaic = np.zeros((rows * CELL_H, cols * CELL_W), dtype=np.uint8)  # white under gray_r
    fig = _figure(cols * 1.1, rows * 1.25 + 0.4)
    ax = fig.subplots()
    ax.axis("off")
    for k, i in enumerate(wrong):
        top, left = (k // cols) * CELL_H + TITLE_H, (k % cols) * CELL_W + (CELL_W - 28) // 2
        mosaic[top : top + 28, left : left + 28] = images[i]
        ax.text(left + 14, top - 1.5, f"{labels[i]} → {predictions[i]}", ha="center",
                va="bottom", fontsize=9, color="#b00020")  # fmt: skip
    ax.imshow(mosaic, cmap="gray_r", vmin=0, vmax=255, interpolation="nearest")
    fig.suptitle(title or "Misclassified test digits (true → predicted)", fontsize=9)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def figure_png(fig) -> bytes:
    """A pyplot figure (or an Axes, or an array of them, as optuna returns) as a PNG, with
    room for legends placed outside the axes; the figure is closed (pyplot keeps it else)."""
    import matplotlib.pyplot as plt

    target = np.ravel(fig)[0] if isinstance(fig, np.ndarray) else fig
    target = getattr(target, "figure", target)
    try:
        return _png(target, bbox_inches="tight", dpi=DPI)
    finally:
        plt.close(target)


def comparison_png(labels: Sequence[str], accuracy_pct, f1, seconds) -> bytes:
    """The lab's ``model_comparison.png``: bars of test accuracy (%), macro F1 and training time
    (s) per run, each value written above its bar, every axis from 0."""
    fig = _figure(14, 4.6)
    axes = fig.subplots(1, 3)
    panels = (
        (accuracy_pct, "Accuracy (%)", "{:.2f}", 100.0),
        (f1, "F1", "{:.4f}", 1.0),
        (seconds, "Training Time (s)", "{:.1f}", None),
    )
    colors = [f"C{i % 10}" for i in range(len(labels))]
    for ax, (values, name, fmt, top) in zip(axes, panels, strict=True):
        shown = [0.0 if v is None or v != v else float(v) for v in values]  # NaN / None: 0
        bars = ax.bar(range(len(labels)), shown, color=colors)
        ax.bar_label(bars, labels=[fmt.format(v) for v in shown], fontsize=8, padding=2)
        ax.set_ylim(0, (top or max(shown, default=1.0) or 1.0) * 1.15)
        ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
        ax.set_title(name)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Model comparison (test set)")
    return _png(fig)
