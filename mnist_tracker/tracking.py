"""The MLflow side of a run: start or attach, log config, epochs, model and artifacts.

Contracts:
- ``tracked_run`` starts a run (or attaches to ``$MLFLOW_RUN_ID`` under ``mlflow run``, or
  resumes a given run) and always ends it: FINISHED on success, KILLED on Ctrl-C / SIGTERM,
  FAILED on any other error. It yields the run's ``RunSink`` (sink.py), through which every
  later call goes, so that a server that goes away mid-run costs no data.
- ``log_params`` never tries to change a param MLflow already holds (``mlflow run`` logs the
  entry point's parameters first); equal values are skipped.
- ``EpochLogger`` sends one ``log_batch`` call per epoch (through the sink).
- Tracking URIs are printed and tagged only through ``redact``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path

import mlflow
import numpy as np
import torch
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from . import __version__
from .config import TrainConfig, params_equal
from .uris import redact, scrub, set_tracking_uri  # noqa: F401 - part of this API

DEFAULT_EXPERIMENT = "mnist"
MODEL_ARTIFACT = "model"


class EndRun(Exception):
    """Raised inside ``tracked_run`` to end the run early with ``status`` and ``tags``.

    The tuner raises it to end a pruned trial KILLED with ``optuna.state=PRUNED``.
    """

    def __init__(self, status: str, tags: dict[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.tags = tags or {}


class Interrupted(BaseException):
    """Raised by the SIGTERM handler so that the run ends KILLED like on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def attached_run_id() -> str | None:
    """The run ``mlflow run`` created for this process, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def git_commit() -> str | None:
    """The commit of the mnist_tracker source tree, when it is a git checkout."""
    with contextlib.suppress(Exception):
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            return out.stdout.strip()
    return None


def device_name(device: str) -> str:
    """A human name for the device the run used (GPU model or CPU model)."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def run_tags(device: str) -> dict[str, str]:
    tags = {
        "mnist_tracker.version": __version__,
        "torch.version": torch.__version__,
        "mlflow.version": mlflow.__version__,
        "device": device,
        "device_name": device_name(device),
        "cpu_threads": str(torch.get_num_threads()),
    }
    commit = git_commit()
    if commit:
        tags["git_commit"] = commit
    return tags


@contextlib.contextmanager
def tracked_run(
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
    parent_run_id: str | None = None,
    attach: bool = True,
    status_tags: dict[str, dict[str, str]] | None = None,
    resume_run_id: str | None = None,
):
    """Start a run and guarantee it ends with the right status; yield its ``RunSink``.

    With ``attach`` (the default) and ``$MLFLOW_RUN_ID`` set, the run ``mlflow run`` created is
    used instead; ``resume_run_id`` continues that (stopped) run. With ``parent_run_id`` the
    new run is nested under that run, in its experiment. ``EndRun`` raised inside ends the run
    with its status, then propagates. ``status_tags`` maps a final status (FINISHED, FAILED,
    KILLED) to tags set just before.
    """
    from .sink import RunSink

    status_tags = status_tags or {}

    def end(status: str, extra: dict[str, str] | None = None) -> None:
        tags_now = status_tags.get(status, {}) | (extra or {})
        with contextlib.suppress(Exception):
            if tags_now:
                sink.set_tags(tags_now)
        sink.end(status)

    client = MlflowClient()
    run_id = resume_run_id or (attached_run_id() if attach else None)
    if run_id is None:
        # Created through the client: ``mlflow.start_run()`` without a run id would pick up
        # ``$MLFLOW_RUN_ID`` even when this run must be a new one (a trial under ``mlflow run``).
        all_tags = dict(tags or {})
        if parent_run_id is not None:
            experiment_id = client.get_run(parent_run_id).info.experiment_id
            all_tags[MLFLOW_PARENT_RUN_ID] = parent_run_id
        else:
            experiment_id = experiment_id_for(experiment)
        run_id = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        tags = None
    elif run_name:
        client.set_tag(run_id, MLFLOW_RUN_NAME, run_name)
    run = mlflow.start_run(run_id=run_id, tags=tags, nested=mlflow.active_run() is not None)
    sink = RunSink(run.info.run_id, mlflow.get_tracking_uri())
    sink.run = run
    try:
        yield sink
    except EndRun as stop:
        end(stop.status, stop.tags)
        raise
    except (KeyboardInterrupt, Interrupted):
        end("KILLED")
        raise
    except BaseException as exc:
        end("FAILED", {"error": f"{type(exc).__name__}: {exc}"[:5000]})
        raise
    else:
        end("FINISHED")


def experiment_id_for(name: str) -> str:
    """The id of experiment ``name``, created if absent; the process's own (``mlflow run``'s
    ``$MLFLOW_EXPERIMENT_ID``) is not switched globally."""
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except mlflow.exceptions.MlflowException:
        # Another worker created it between the two calls.
        return client.get_experiment_by_name(name).experiment_id


def log_params(run_id: str, params: dict[str, str], client: MlflowClient | None = None) -> None:
    """Log ``params``, skipping those the run already has with an equal value.

    A param already present with a different value (``mlflow run -P device=auto`` when the run
    resolved ``cpu``) keeps MLflow's value; the resolved one goes to tag ``resolved.<key>``.
    """
    client = client or MlflowClient()
    existing = client.get_run(run_id).data.params
    new, tags = [], []
    for key, value in params.items():
        if key not in existing:
            new.append(Param(key, value))
        elif not params_equal(key, existing[key], value):
            tags.append(RunTag(f"resolved.{key}", value))
    for start in range(0, len(new), 100):  # MLflow takes at most 100 params per batch
        client.log_batch(run_id, params=new[start : start + 100])
    if tags:
        client.log_batch(run_id, tags=tags)


class EpochLogger:
    """An ``on_epoch`` hook: one ``log_batch`` per epoch through ``sink``, step = epoch."""

    def __init__(self, sink, echo=None):
        self.sink = sink
        self.echo = echo

    def __call__(self, epoch: int, metrics: dict[str, float]) -> None:
        self.sink.log_metrics(metrics, step=epoch)
        if self.echo is not None:
            self.echo(epoch, metrics)


def log_run_metrics(run_id: str, metrics: dict[str, float]) -> None:
    ts = int(time.time() * 1000)
    MlflowClient().log_batch(
        run_id, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()]
    )


def log_datasets(splits, sink) -> None:
    """Record the train / val / test data as MLflow dataset inputs, in one call."""
    from mlflow.data import from_numpy
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    contexts = [
        ("training", splits.train_x, splits.train_y),
        ("testing", splits.test_x, splits.test_y),
        ("validation", splits.val_x, splits.val_y),
    ]
    inputs = []
    for context, x, y in contexts:
        if y is None:
            continue
        with warnings.catch_warnings():
            # MLflow registers the local-file source twice and warns that it had to pick one.
            warnings.simplefilter("ignore", UserWarning)
            dataset = from_numpy(
                features=x.numpy(),
                targets=y.numpy(),
                source=str(Path(splits.source).resolve()),
                name=f"mnist-{context}",
            )
        tags = [InputTag(MLFLOW_DATASET_CONTEXT, context)]
        inputs.append(DatasetInput(dataset._to_mlflow_entity(), tags=tags))
    sink.log_inputs(inputs)


def pip_requirements() -> list[str]:
    """What a loaded model needs; given explicitly so logging skips requirement inference."""
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
    ]


def log_model(
    model: torch.nn.Module,
    example: torch.Tensor,
    register: str | None = None,
    run_id: str | None = None,
):
    """Log ``model`` as the ``model`` artifact of ``run_id`` (default: the active run):
    [0, 1] pixels (N, 1, 28, 28) -> logits (N, 10).

    Saved as ``pt2`` (torch.export, no pickle). The input example has two images so that the
    exported program keeps the batch dimension dynamic.
    """
    from mlflow.models import infer_signature

    cpu_model = copy.deepcopy(model).to("cpu").float().eval()
    example = example[:2].to("cpu").float()
    with torch.inference_mode():
        logits = cpu_model(example)
    signature = infer_signature(example.numpy(), logits.numpy())
    return mlflow.pytorch.log_model(
        cpu_model,
        name=MODEL_ARTIFACT,
        serialization_format="pt2",
        input_example=example.numpy(),
        signature=signature,
        pip_requirements=pip_requirements(),
        registered_model_name=register,
        run_id=run_id,
    )


def log_config_artifact(config: TrainConfig, sink) -> None:
    """The full config as JSON, so a run can be rebuilt from its artifacts alone."""
    sink.log_dict(config.to_dict(), "config.json")


# ---------------------------------------------------------------------------------------------
# Outages: fail fast at the start, keep training and keep what could not be sent


class TrackingUnavailable(Exception):
    """The tracking server does not answer (or refuses the credentials) at the start."""


_UNREACHABLE = (
    "Max retries exceeded",
    "Failed to establish a new connection",
    "Connection refused",
    "Connection aborted",
    "Read timed out",
    "RemoteDisconnected",
    "NameResolutionError",
)


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the server could not be reached (not that it refused a call)."""
    import requests

    if isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout):
        return True
    return isinstance(exc, mlflow.exceptions.MlflowException) and any(
        marker in str(exc) for marker in _UNREACHABLE
    )


def check_reachable(uri: str, timeout_s: int = 5) -> None:
    """Raise TrackingUnavailable within about ``timeout_s`` when an HTTP tracking server does
    not answer or refuses the credentials. Local stores always pass."""
    if not uri.startswith(("http://", "https://")):
        return
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    try:
        with env_vars(quick):
            MlflowClient(uri).search_experiments(max_results=1)
    except Exception as exc:
        reason = scrub(" ".join(str(exc).split())[:200], uri)
        if is_unreachable(exc):
            raise TrackingUnavailable(
                f"tracking server {redact(uri)} is not reachable ({reason}); start it, or pass "
                "another --tracking-uri"
            ) from exc
        raise TrackingUnavailable(
            f"tracking server {redact(uri)} refused the request ({reason}); check "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        ) from exc


@contextlib.contextmanager
def env_vars(env: dict[str, str], override: bool = True):
    """Environment variables set to ``env`` inside the block, restored after; with
    ``override=False`` those the user set are left alone. MLflow reads its settings (e.g.
    ``MLFLOW_HTTP_REQUEST_*``) at each call, so this scopes them to a few calls."""
    saved = {k: os.environ.get(k) for k in env}
    for key, value in env.items():
        if override or key not in os.environ:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
