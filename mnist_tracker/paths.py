"""Where runs keep their local files (newest checkpoint, outbox): one folder per run.

``$MNIST_TRACKER_HOME``, else ``~/.mnist-tracker``; ``runs/<run_id>/`` below it. Standard
library only: training (checkpoints) and tracking (outboxes) both use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import HomeError

ENV_HOME = "MNIST_TRACKER_HOME"


def home() -> Path:
    """Where runs keep their local files: ``$MNIST_TRACKER_HOME``, else ``~/.mnist-tracker``."""
    return Path(os.environ.get(ENV_HOME) or Path.home() / ".mnist-tracker")


def run_dir(run_id: str) -> Path:
    """The local folder of one run: its newest checkpoint and, after an outage, its outbox."""
    return home() / "runs" / run_id


CHECKPOINT_FILE = "checkpoint.pt"


def checkpoint_path(run_id: str) -> Path:
    """Where run ``run_id`` keeps the checkpoint of its newest finished epoch."""
    return run_dir(run_id) / CHECKPOINT_FILE


def outbox_dir(run_id: str) -> Path:
    """The folder of run ``run_id``'s outbox (tracking calls not sent yet)."""
    return run_dir(run_id) / "outbox"


def ensure_home() -> Path:
    """``home()/runs``, created and checked writable; raises HomeError otherwise."""
    runs = home() / "runs"
    try:
        runs.mkdir(parents=True, exist_ok=True)
        probe = runs / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise HomeError(
            f"cannot write run files (checkpoints, outboxes) under {runs} ({exc.strerror}); "
            f"set {ENV_HOME} to a writable folder"
        ) from None
    return runs
