"""What a run records besides metrics and artifacts: params, dataset inputs, run tags.

Contracts:
- ``log_params`` never tries to change a param MLflow already holds (``mlflow run`` logs the
  entry point's parameters first): equal values are skipped, a different one keeps MLflow's
  value and goes to the tag ``resolved.<key>``.
- ``dataset_inputs(splits)`` are the train / test (/ validation) sets as MLflow dataset inputs;
  ``logged_datasets(run)`` the datasets a run logged, by context (``training``, ...).
- ``run_tags(device)``: package, torch and MLflow versions, device and its name, git commit.
- ``context_tags()``: MLflow's own tags of who and what made a run (user, source, commit),
  which its UI shows as "Created by" and "Source"; for runs this package creates (``mlflow
  run`` sets its own on the runs it creates).
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import subprocess
import warnings
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Param, RunTag, SourceType
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import (
    MLFLOW_DATASET_CONTEXT,
    MLFLOW_GIT_COMMIT,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
    MLFLOW_USER,
)

from .. import __version__
from ..config import params_equal
from ..training.runtime import device_name

MAX_PARAMS_PER_BATCH = 100  # MLflow's limit


def log_params(client: MlflowClient, run_id: str, params: dict[str, str]) -> None:
    """Log ``params`` to ``run_id``, skipping those the run already has (see the contract)."""
    existing = client.get_run(run_id).data.params
    new, tags = [], []
    for key, value in params.items():
        if key not in existing:
            new.append(Param(key, value))
        elif not params_equal(key, existing[key], value):
            tags.append(RunTag(f"resolved.{key}", value))
    for start in range(0, len(new), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=new[start : start + MAX_PARAMS_PER_BATCH])
    if tags:
        client.log_batch(run_id, tags=tags)


def dataset_inputs(splits) -> list:
    """The train / test / validation data of ``splits`` as MLflow ``DatasetInput``s."""
    from mlflow.data import from_numpy
    from mlflow.entities import DatasetInput, InputTag

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
    return inputs


def dataset_context(entry) -> str | None:
    """The context (``training``, ``testing``, ``validation``) a ``DatasetInput`` was for."""
    return next((t.value for t in entry.tags if t.key == MLFLOW_DATASET_CONTEXT), None)


def logged_datasets(run) -> dict[str | None, object]:
    """The ``Dataset``s ``run`` logged, by context (the first of each)."""
    logged: dict[str | None, object] = {}
    for entry in run.inputs.dataset_inputs if run.inputs else []:
        logged.setdefault(dataset_context(entry), entry.dataset)
    return logged


@functools.cache
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


def run_tags(device: str) -> dict[str, str]:
    """The tags every training run carries: versions, device, git commit."""
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


def context_tags() -> dict[str, str]:
    """``mlflow.user``, ``mlflow.source.name`` / ``.type`` and ``mlflow.source.git.commit``:
    what MLflow's fluent API sets on a run it starts, and the client API, which this package
    uses, does not; without them the UI showed "Created by" and "Source" empty."""
    tags = {
        MLFLOW_SOURCE_NAME: "mnist-tracker",
        MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.LOCAL),
    }
    with contextlib.suppress(Exception):  # no user name for this uid (a bare container)
        tags[MLFLOW_USER] = getpass.getuser()
    commit = git_commit()
    if commit:
        tags[MLFLOW_GIT_COMMIT] = commit
    return tags
