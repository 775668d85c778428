"""The names and schemas of what a run stores, shared by the writers and the readers.

A training run writes (``workflows.train``) and ``reporting`` reads:

- the logged model, named after its architecture (``cnn``: ``runs:/<run_id>/cnn``; the run's
  tag ``MODEL_URI_TAG`` holds its ``models:/`` URI): a pyfunc taking float32
  ``(N, 1, 28, 28)`` pixels in [0, 1] and returning label, probability, prob_0..prob_9, whose
  artifact ``network`` is the PyTorch model (pt2: pixels -> logits).
- ``CONFIG``: ``TrainConfig.to_dict()`` as JSON, so a run can be rebuilt from its artifacts.
- ``LEARNING_CURVES`` / ``CONFUSION_FIGURE``: PNG images (the MLflow UI previews them, offline).
- ``MISCLASSIFIED``: the key of ``log_image`` grids of misclassified test digits, one per epoch
  (step = epoch), which the UI's image view compares across runs.
- ``CONFUSION_MATRIX``: ``{"labels": [0..9], "matrix": [[count, ...] x 10]}``, rows the true
  digit, columns the predicted one (``confusion_payload`` / ``read_confusion``).
- ``CLASSIFICATION_REPORT``: scikit-learn's ``classification_report(output_dict=True)``
  layout (written by ``training.metrics.classification_report``).
- ``CHECKPOINT``: the newest ``training.checkpoint`` of a run that may be resumed.

Tags other parts select runs by live here too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..constants import DEFAULT_EXPERIMENT  # noqa: F401 - the experiment runs go to by default

MODEL_URI_TAG = "mnist_tracker.model_uri"
CONFIG = "config.json"
LEARNING_CURVES = "plots/learning_curves.png"
CONFUSION_FIGURE = "plots/confusion_matrix.png"
MISCLASSIFIED = "misclassified"
CONFUSION_MATRIX = "reports/confusion_matrix.json"
CLASSIFICATION_REPORT = "reports/classification_report.json"
CHECKPOINT_DIR = "checkpoints"
CHECKPOINT = f"{CHECKPOINT_DIR}/checkpoint.pt"

DIGITS = [str(d) for d in range(10)]  # class names, in label order

ROLE_TAG = "mnist_tracker.role"  # "study" (a tuner's parent), "study_result" (its final run)
SUITE_TAG = "mnist_tracker.suite_id"
OPTUNA_STATE_TAG = "optuna.state"  # a tuner's trial run: its trial's Optuna state

# Liveness and truthfulness of a run (tracking/lease.py, tracking/outbox.py):
HOLDER_TAG = "mnist_tracker.holder"  # "host:pid" of the process training the run
HEARTBEAT_TAG = "mnist_tracker.heartbeat"  # UTC ISO time of its last sign of life
PENDING_TAG = "mnist_tracker.pending"  # what the outbox still holds, and where; unset when sent
REAPED_TAG = "mnist_tracker.reaped"  # why `runs reap` ended the run FAILED
CREATE_KEY_TAG = "mnist_tracker.create_key"  # finds a run whose creation answer was lost


def confusion_payload(matrix: np.ndarray) -> dict:
    """The ``CONFUSION_MATRIX`` artifact's content for a 10 x 10 ``matrix`` of counts
    (``training.metrics.confusion``: true digit in rows, predicted digit in columns)."""
    counts = np.asarray(matrix)
    if counts.shape != (10, 10):
        raise ValueError(f"not a 10x10 confusion matrix: shape {counts.shape}")
    return {"labels": list(range(10)), "matrix": counts.astype(np.int64).tolist()}


def read_confusion(payload: dict) -> list[list[int]]:
    """The matrix of a ``CONFUSION_MATRIX`` artifact; ValueError when it is not one."""
    matrix = payload.get("matrix") if isinstance(payload, dict) else None
    if not _is_square(matrix, 10):
        raise ValueError("not a 10x10 confusion matrix")
    return [[int(v) for v in row] for row in matrix]


def _is_square(matrix: Sequence | None, n: int) -> bool:
    return (
        isinstance(matrix, list)
        and len(matrix) == n
        and all(isinstance(row, list) and len(row) == n for row in matrix)
    )
