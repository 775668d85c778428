"""Where one run's tracking calls go: the server while it answers, else the run's outbox.

Contracts:
- Every call a run makes after it was created goes through its ``RunSink``.
- A call that finds the server unreachable (``client.is_unreachable``: a database store
  locked or away counts) does not raise: the sink turns offline and that call, and every
  later one, is appended to the run's outbox in order, for ``mnist-tracker sync`` to replay.
  A file the server refuses (an artifact, image or model: a full or forbidden artifact store)
  is kept in the outbox too, with the reason in ``refused``, and the run goes on; a refused
  metric, param or tag raises (a bug, not luck).
- While offline, the sink probes the server at most every ``RECONNECT_EVERY_S`` seconds; when
  it answers again, the outbox is replayed (past what it still refuses) and the sink goes
  back online.
- ``end`` ends the run on the server only when the server holds everything else: with
  operations still in the outbox the end is queued behind them, the run stays RUNNING (with
  ``artifacts.PENDING_TAG`` when the server can be told), and ``sync`` finishes it.
- Calls use few HTTP retries (``SINK_HTTP``) so that a dead server costs seconds, not MLflow's
  default minutes; variables the user set in the environment win.
- Thread-safe: the system-metrics sampler calls it beside the training loop; one call at a
  time goes out (or into the outbox), so the outbox's order is the order of the calls.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from mlflow.entities import DatasetInput, Metric, Param, RunTag

from ..paths import outbox_dir
from ..uris import redact
from . import model as model_mod
from . import outbox as outbox_mod
from . import records
from .client import (
    answered,
    check_reachable,
    client,
    delete_run_artifacts,
    env_vars,
    is_unreachable,
    one_line,
    outage_reason,
)

RECONNECT_EVERY_S = 30.0
SINK_HTTP = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


class RunSink:
    """The tracking calls of run ``run_id`` on tracking URI ``uri``."""

    def __init__(self, run_id: str, uri: str):
        self.run_id, self.uri = run_id, uri
        self.client = client(uri)
        self.outbox = outbox_mod.Outbox(outbox_dir(run_id))
        self.offline_reason: str | None = None
        self.refused: list[str] = []  # why the server refused the files kept in the outbox
        self._last_probe = 0.0
        self._lock = threading.RLock()

    @property
    def offline(self) -> bool:
        return self.offline_reason is not None

    @property
    def unsent(self) -> int:
        """How many operations wait in the outbox."""
        return len(self.outbox.pending())

    def _send(self, send, probe_now: bool = False, keep_refused: bool = False) -> bool:
        """``send()`` to the server; False (and the sink offline) when it is unreachable.
        Offline, the server is probed first (``probe_now``: whatever the last probe's age).
        ``keep_refused``: a refusal returns False (the caller keeps the call) instead of
        raising."""
        if self.offline:
            self._try_reconnect(force=probe_now)
        if self.offline:
            return False
        try:
            with env_vars(SINK_HTTP, override=False):
                send()
            return True
        except Exception as exc:
            if is_unreachable(exc) and not (keep_refused and answered(exc)):
                self.offline_reason = outage_reason(exc, self.uri)
                self._last_probe = time.monotonic()
                return False
            if not keep_refused:
                raise
            self.refused.append(one_line(exc, self.uri))
            return False

    def _keep(self, op: dict, files: dict[str, Path] | None = None) -> None:
        """Append ``op`` (and ``files``) to the outbox."""
        meta = {"run_id": self.run_id, "tracking_uri": redact(self.uri)}
        self.outbox.add({**op, "run_id": self.run_id}, files, meta)

    def _call(self, op: dict, send, files=None, probe_now: bool = False) -> None:
        with self._lock:
            if not self._send(send, probe_now, keep_refused=files is not None):
                self._keep(op, files)

    def _replay(self) -> None:
        """Send the outbox now; offline again if the server stops answering meanwhile."""
        try:
            with env_vars(SINK_HTTP, override=False):
                result = outbox_mod.replay(self.outbox, self.client)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            self.offline_reason = outage_reason(exc, self.uri)
            self._last_probe = time.monotonic()
            return
        # Calls answered with errors again (a server whose reads pass while its writes get
        # 503): they stay in the outbox, and the run says why, as for the files it refused.
        self.refused.extend(failure.reason for failure in result.failed)

    def _try_reconnect(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_probe < RECONNECT_EVERY_S:
            return
        self._last_probe = time.monotonic()
        try:
            check_reachable(self.uri, timeout_s=2, writes=True)
        except Exception:  # still away: stay offline, try again later
            return
        self.offline_reason = None
        self._replay()

    # -- metrics, params, tags ------------------------------------------------------------

    def log_batch(self, metrics=(), params=None, tags=None) -> None:
        metrics, params, tags = list(metrics), dict(params or {}), dict(tags or {})
        op = {
            "op": "log_batch",
            "metrics": [
                {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                for m in metrics
            ],
            "params": params,
            "tags": tags,
        }

        def send():
            self.client.log_batch(
                self.run_id,
                metrics=metrics,
                params=[Param(k, v) for k, v in params.items()],
                tags=[RunTag(k, v) for k, v in tags.items()],
            )

        self._call(op, send)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        """One batch of metrics at ``step``, all with the same timestamp."""
        ts = int(time.time() * 1000)
        self.log_batch(metrics=[Metric(k, float(v), ts, step) for k, v in metrics.items()])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.log_batch(tags=tags)

    def log_params(self, params: dict[str, str]) -> None:
        """``records.log_params`` online; offline every param is kept (MLflow accepts an
        equal value logged twice)."""

        def send():
            records.log_params(self.client, self.run_id, params)

        self._call({"op": "log_batch", "metrics": [], "params": params, "tags": {}}, send)

    # -- artifacts and the model ----------------------------------------------------------

    def log_inputs(self, inputs: list[DatasetInput]) -> None:
        self._call(
            {"op": "log_inputs", "datasets": outbox_mod.encode_inputs(inputs)},
            lambda: self.client.log_inputs(self.run_id, datasets=inputs),
        )

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        self._call(
            {"op": "log_artifact", "name": path.name, "artifact_path": artifact_path},
            lambda: self.client.log_artifact(self.run_id, str(path), artifact_path),
            files={path.name: path},
        )

    def log_bytes(self, data: bytes, artifact_file: str) -> None:
        """``data`` as the artifact ``artifact_file`` (a path inside the run's artifacts)."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact_file).name
            path.write_bytes(data)
            folder = str(Path(artifact_file).parent)
            self.log_artifact(path, None if folder == "." else folder)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.log_bytes(text.encode("utf-8"), artifact_file)

    def log_image(self, image: np.ndarray, key: str, step: int) -> None:
        """An RGB uint8 image under ``key`` at ``step`` (MLflow's image view, across runs)."""
        timestamp = int(time.time() * 1000)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "image.png"
            PIL.Image.fromarray(image).save(path)
            self._call(
                {"op": "log_image", "key": key, "step": step, "timestamp": timestamp},
                lambda: self.client.log_image(
                    self.run_id, image, key=key, step=step, timestamp=timestamp, synchronous=True
                ),
                files={"image.png": path},
            )

    def log_dict(self, obj: dict, artifact_file: str) -> None:
        self.log_text(json.dumps(obj, indent=2), artifact_file)

    def log_model(
        self, model: torch.nn.Module, example: torch.Tensor, config, register=None, step=0
    ):
        """``model.log_model`` online; offline the weights, the example and the config are
        kept so that ``sync`` rebuilds and logs the same model."""

        def send():
            model_mod.log_model(
                model, example, self.run_id, config.model, register=register, step=step
            )

        with self._lock:
            if self._send(send, probe_now=True, keep_refused=True):
                return
            with tempfile.TemporaryDirectory() as tmp:
                files = model_mod.save_for_replay(model, example, config, Path(tmp))
                self._keep({"op": "log_model", "register": register, "step": step}, files)

    def delete_artifacts(self, artifact_path: str) -> bool:
        """Delete the run's artifacts under ``artifact_path`` (a finished run's checkpoints);
        best effort, online only: True when they are gone. Stores that cannot delete (and an
        offline sink) keep them."""
        if self.offline:
            return False
        with env_vars(SINK_HTTP, override=False):
            return delete_run_artifacts(self.client, self.run_id, artifact_path)

    # -- the end ----------------------------------------------------------------------------

    def end(self, status: str) -> None:
        """End the run with ``status`` (see the module's contract)."""
        with self._lock:
            end_time = int(time.time() * 1000)
            op = {"op": "set_terminated", "status": status, "end_time": end_time}
            if not self.offline and not self.outbox.pending():
                sent = self._send(
                    lambda: self.client.set_terminated(self.run_id, status, end_time=end_time)
                )
                if sent:
                    return
            self._keep(op)
            # One more try now: a server back within the last 30 s gets the outbox, and the end
            # only if everything before it went through.
            if self.offline:
                self._try_reconnect(force=True)
            else:
                self._replay()
