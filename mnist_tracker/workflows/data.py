"""The data a training config asks for: MNIST loaded, verified and split. No MLflow, so that
what trains without tracking (``benchmarks/plain_run.py``) loads the data as a tracked run does.
"""

from __future__ import annotations

import os

from ..config import TrainConfig
from ..data import MNIST, Splits, load_mnist, split_data


def splits_for(config: TrainConfig, mnist: MNIST) -> Splits:
    """The splits ``config`` asks for (seed, limits, validation hold-out). Raises DataError."""
    return split_data(
        mnist,
        seed=config.seed,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        val_size=config.val_size,
    )


def prepare_data(config: TrainConfig, data_dir: str | os.PathLike | None) -> Splits:
    """Load, verify and split MNIST as ``config`` asks. Raises DataError."""
    return splits_for(config, load_mnist(data_dir))
