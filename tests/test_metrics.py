"""training.metrics gives scikit-learn's numbers (the definitions the logged metrics had)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import classification_report as sk_report
from sklearn.metrics import f1_score

from mnist_tracker.training.metrics import classification_report, confusion, macro_f1

pytestmark = pytest.mark.fast
DIGITS = [str(d) for d in range(10)]


def _cases():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 500)
    noisy = np.where(rng.random(500) < 0.7, labels, rng.integers(0, 10, 500))
    yield "mostly right", labels, noisy
    # Digits never predicted (precision 0/0) and never present (recall 0/0): zero_division=0.
    yield "missing classes", labels % 4, np.minimum(labels, 6)
    yield "all one class", np.full(20, 3), np.full(20, 3)
    yield "all wrong", np.zeros(8, dtype=int), np.ones(8, dtype=int)


@pytest.mark.parametrize("name, labels, predictions", list(_cases()), ids=lambda v: None)
def test_macro_f1_and_report_match_sklearn(name, labels, predictions):
    expected_f1 = f1_score(
        labels, predictions, average="macro", labels=list(range(10)), zero_division=0
    )
    assert macro_f1(labels, predictions) == pytest.approx(expected_f1, abs=1e-12), name
    expected = sk_report(
        labels,
        predictions,
        labels=list(range(10)),
        target_names=DIGITS,
        output_dict=True,
        zero_division=0,
    )
    got = classification_report(confusion(labels, predictions), DIGITS)
    assert list(got) == list(expected), name
    for key, value in expected.items():
        if isinstance(value, dict):
            assert got[key] == pytest.approx(value, abs=1e-12), (name, key)
            assert got[key]["support"] == value["support"]
        else:
            assert got[key] == pytest.approx(value, abs=1e-12), (name, key)
