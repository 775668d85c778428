"""Classification metrics of the ten digits, from a confusion matrix, in numpy.

Plain functions with scikit-learn's definitions and its ``zero_division=0`` convention (a
ratio whose denominator is 0 counts as 0), so logged numbers keep their meaning. They
replace ``sklearn.metrics`` on the training path, whose import cost every run 1.5-2.5 s of
start-up (issue 13); tests/test_metrics.py checks them against scikit-learn.
"""

from __future__ import annotations

import numpy as np

N_CLASSES = 10


def confusion(labels: np.ndarray, predictions: np.ndarray, n: int = N_CLASSES) -> np.ndarray:
    """Counts of true class (rows) against predicted class (columns), ``n`` x ``n``."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, np.int64)), 1)
    return matrix


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros(num.shape, dtype=np.float64), where=den > 0)


def per_class(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support of each class of a confusion ``matrix``."""
    tp = np.diag(matrix).astype(np.float64)
    predicted, actual = matrix.sum(axis=0), matrix.sum(axis=1)
    return {
        "precision": _ratio(tp, predicted),
        "recall": _ratio(tp, actual),
        "f1-score": _ratio(2 * tp, predicted + actual),
        "support": actual,
    }


def macro_f1(labels: np.ndarray, predictions: np.ndarray) -> float:
    """The unweighted mean of the ten classes' F1 (``f1_score(average="macro")``)."""
    return float(per_class(confusion(labels, predictions))["f1-score"].mean())


def classification_report(
    matrix: np.ndarray, names: list[str]
) -> dict[str, dict[str, float] | float]:
    """``sklearn.metrics.classification_report(..., output_dict=True)`` of a ``confusion``
    ``matrix`` for the classes ``names`` (in label order): per class, ``accuracy``, ``macro
    avg`` and ``weighted avg``. It takes the matrix, not the labels, so that a run counts its
    test predictions once for this report and its confusion-matrix artifact."""
    scores = per_class(matrix)
    support = scores["support"]
    total = int(support.sum())
    report: dict[str, dict[str, float] | float] = {}
    for i, name in enumerate(names):
        row = {key: float(scores[key][i]) for key in ("precision", "recall", "f1-score")}
        report[name] = row | {"support": int(support[i])}
    report["accuracy"] = float(np.trace(matrix) / total) if total else 0.0
    weights = support / total if total else np.zeros(len(names))
    for label, combine in (("macro avg", np.mean), ("weighted avg", lambda v: (v * weights).sum())):
        row = {key: float(combine(scores[key])) for key in ("precision", "recall", "f1-score")}
        report[label] = row | {"support": total}
    return report
