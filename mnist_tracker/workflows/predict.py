"""Classify digits in image files with a logged model: ``predict(model_uri, paths)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.images import read_digits
from ..tracking.model import load_served


@dataclass(frozen=True)
class Prediction:
    source: str  # the file, with ``#i`` for the i-th digit of an IDX file
    digit: int
    probability: float


def predict(model_uri: str, paths: Sequence[str | Path]) -> list[Prediction]:
    """Each file's digits (PNG / JPEG: one; IDX: every image), MNIST-style, through the model
    at ``model_uri``. Raises DataError for an unreadable file, ModelError for a bad URI, both
    before anything is classified."""
    digits = [(str(path), read_digits(path)) for path in paths]
    model = load_served(model_uri)
    out = []
    for source, images in digits:
        pixels = (images[:, None].astype(np.float32) / 255.0).astype(np.float32)
        served = model.predict(pixels)
        for i, (digit, probability) in enumerate(
            zip(served["label"], served["probability"], strict=True)
        ):
            name = source if len(images) == 1 else f"{source}#{i}"
            out.append(Prediction(name, int(digit), float(probability)))
    return out
