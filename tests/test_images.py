"""The run's static figures: the misclassified digits grid."""

from __future__ import annotations

import numpy as np
import pytest

from mnist_tracker import data
from mnist_tracker.reporting import images

from .conftest import SUBSET

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def digits():
    mnist = data.load_mnist(SUBSET, download_missing=False)
    return mnist.test_x.numpy(), mnist.test_y.numpy()


def test_misclassified_grid_shows_up_to_24_wrong_digits_titled_in_red(digits):
    x, y = digits
    assert images.misclassified_grid(x, y, y.copy()) is None  # all right: no figure
    wrong = (y + 1) % 10
    one_row = images.misclassified_grid(x[:6], y[:6], wrong[:6])
    full = images.misclassified_grid(x, y, wrong)
    assert one_row.dtype == np.uint8 and one_row.shape[2] == 3
    assert full.shape[1] == one_row.shape[1] and full.shape[0] > 3 * one_row.shape[0]
    assert images.misclassified_grid(x[:40], y[:40], wrong[:40]).shape == full.shape  # 24 max
    red = (full[..., 0] > 150) & (full[..., 1] < 80) & (full[..., 2] < 80)  # the titles
    dark = full.max(axis=2) < 60  # the digits (black on white)
    assert red.sum() > 24 * 20 and dark.sum() > 24 * 40
    # Each of the 4 rows of 6 holds digits: dark pixels in every sixth of every quarter.
    body = dark[int(full.shape[0] * 0.08) :]
    for band in np.array_split(body, 4, axis=0):
        for cell in np.array_split(band, 6, axis=1):
            assert cell.sum() > 20
