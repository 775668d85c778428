"""The callbacks a tracked run adds to ``fit``: metric logging and checkpoints."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np

from ..config import TrainConfig
from ..paths import checkpoint_path
from ..reporting import images
from ..tracking import RunSink, artifacts
from ..training import checkpoint
from ..training.callbacks import Callback, FitState

# Checkpoints up to this size are uploaded after every epoch (insurance against a machine
# that dies without a chance to upload); bigger ones (vgg16: about 1.5 GB with Adam's state)
# only when the run stops early, so that they do not slow every epoch down.
UPLOAD_EVERY_EPOCH_MAX_BYTES = 64 * 2**20


class MetricLogger(Callback):
    """One batch of metrics per epoch through the run's sink, step = epoch."""

    def __init__(self, sink: RunSink):
        self.sink = sink

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        self.sink.log_metrics(metrics, step=state.epoch)


class MisclassifiedDigits(Callback):
    """After each epoch, a grid of the test digits the model got wrong, logged with
    ``log_image`` (key ``artifacts.MISCLASSIFIED``, step = epoch) so the MLflow UI's image
    view shows how the mistakes change, and compares runs."""

    def __init__(self, sink: RunSink, images: np.ndarray, labels: np.ndarray, title: str):
        self.sink, self.images, self.labels, self.title = sink, images, labels, title

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        test = state.evals.get("test")
        if test is None:
            return
        title = f"{self.title}, epoch {state.epoch}: true → predicted"
        grid = images.misclassified_grid(self.images, self.labels, test.predictions, title)
        if grid is not None:
            self.sink.log_image(grid, artifacts.MISCLASSIFIED, step=state.epoch)


class Checkpointer(Callback):
    """Keeps the newest epoch's checkpoint in the run's folder and uploads it when due.

    Place it before ``MetricLogger``: a logged epoch then always has a checkpoint. A disk that
    fills up costs the checkpoints (one warning), not the run.
    """

    def __init__(
        self,
        sink: RunSink,
        config: TrainConfig,
        register: str | None,
        echo: Callable[[str], None] | None = None,
    ):
        self.sink, self.config, self.register = sink, config, register
        self.path = checkpoint_path(sink.run_id)
        self.epoch = self.uploaded = 0
        self.echo = echo or (lambda _line: None)
        self.broken = False

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        if self.broken:
            return
        saved = state.capture(copy=False)  # written below, before training goes on
        saved["config"] = self.config.to_dict()
        saved["register"] = self.register  # a resumed run registers its model as asked
        try:
            checkpoint.save(saved, self.path)
        except (OSError, RuntimeError) as exc:  # torch.save reports a full disk as RuntimeError
            self.broken = True
            self.echo(f"warning: cannot write checkpoints ({exc}); training goes on without")
            return
        self.epoch = state.epoch
        small = self.path.stat().st_size <= UPLOAD_EVERY_EPOCH_MAX_BYTES
        if small and not self.sink.offline:
            self.upload()

    def upload(self) -> None:
        """Send the newest checkpoint, unless it was sent already (or none was written)."""
        if self.epoch and self.uploaded != self.epoch:
            self.sink.log_artifact(self.path, artifacts.CHECKPOINT_DIR)
            self.uploaded = self.epoch

    def discard(self) -> None:
        """The run finished: it is never resumed, so its checkpoint (local, and the uploaded
        artifact: a cnn's is 5 MB beside a 1.7 MB model) is no longer needed."""
        if self.uploaded:
            self.sink.delete_artifacts(artifacts.CHECKPOINT_DIR)
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # kept when it holds an outbox
            self.path.parent.rmdir()
