"""A run's lifecycle: create (or attach to, or resume) it, and always end it truthfully.

Contracts:
- ``tracked_run(spec)`` yields a ``TrackedRun`` whose ``sink`` carries every later call (so a
  server that goes away mid-run costs no data) and ends the run on the way out: with the
  status the body chose (``end_as``; FINISHED by default), KILLED on Ctrl-C / SIGTERM, FAILED
  with an ``error`` tag (password hidden) on any other exception, which then propagates.
- With ``spec.attach`` and ``$MLFLOW_RUN_ID`` set (``mlflow run``), that run is used;
  ``spec.resume_run_id`` continues a stopped run; ``spec.parent_run_id`` nests a new run
  under that one, in its experiment.
- Runs are created through the client, never the fluent API: no process-wide active run, and
  no "View run at URL" line with a password in it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import mlflow
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from ..errors import Interrupted
from ..uris import scrub
from .artifacts import DEFAULT_EXPERIMENT
from .client import client, set_tracking_uri
from .sink import RunSink

ERROR_TAG_MAX = 5000


@dataclass(frozen=True)
class RunSpec:
    """Which run to track into, and how. ``status_tags`` maps a final status (FINISHED,
    FAILED, KILLED) to tags set just before the run ends with it."""

    experiment: str = DEFAULT_EXPERIMENT
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    attach: bool = True
    resume_run_id: str | None = None
    status_tags: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class TrackedRun:
    """A run being tracked: its ids, its sink, and the status it will end with."""

    run_id: str
    experiment_id: str
    run_name: str
    sink: RunSink
    status: str = "FINISHED"
    end_tags: dict[str, str] = field(default_factory=dict)

    def rename(self, name: str) -> None:
        """Give the run the display name ``name``."""
        self.sink.set_tags({MLFLOW_RUN_NAME: name})
        self.run_name = name

    def end_as(self, status: str, tags: dict[str, str] | None = None) -> None:
        """End the run with ``status`` (and ``tags``) when the block exits normally."""
        self.status, self.end_tags = status, dict(tags or {})


def attached_run_id() -> str | None:
    """The run ``mlflow run`` created for this process, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def experiment_id_for(name: str) -> str:
    """The id of experiment ``name``, created if absent; the process's own (``mlflow run``'s
    ``$MLFLOW_EXPERIMENT_ID``) is not switched globally."""
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return mlflow_client.create_experiment(name)
    except mlflow.exceptions.MlflowException:
        # Another worker created it between the two calls.
        return mlflow_client.get_experiment_by_name(name).experiment_id


def open_run(spec: RunSpec) -> TrackedRun:
    """Create, attach to or resume the run ``spec`` names (its tags set), without ending it:
    ``tracked_run`` ends what it opens; a run that outlives one process (a study's parent)
    is ended by whoever finishes it, through ``RunSink.end``."""
    uri = set_tracking_uri(None)
    mlflow_client = client(uri)
    run_id = spec.resume_run_id or (attached_run_id() if spec.attach else None)
    if run_id is None:
        tags = dict(spec.tags)
        if spec.parent_run_id is not None:
            experiment_id = mlflow_client.get_run(spec.parent_run_id).info.experiment_id
            tags[MLFLOW_PARENT_RUN_ID] = spec.parent_run_id
        else:
            experiment_id = experiment_id_for(spec.experiment)
        run = mlflow_client.create_run(experiment_id, run_name=spec.run_name, tags=tags)
        run_id = run.info.run_id
        return TrackedRun(run_id, experiment_id, run.info.run_name, RunSink(run_id, uri))
    run = mlflow_client.get_run(run_id)
    if spec.resume_run_id is not None and run.info.status != "RUNNING":
        mlflow_client.update_run(run_id, status="RUNNING")  # it trains again
    sink = RunSink(run_id, uri)
    tags = dict(spec.tags) | ({MLFLOW_RUN_NAME: spec.run_name} if spec.run_name else {})
    if tags:
        sink.set_tags(tags)
    return TrackedRun(run_id, run.info.experiment_id, spec.run_name or run.info.run_name, sink)


@contextlib.contextmanager
def tracked_run(spec: RunSpec) -> Iterator[TrackedRun]:
    """The run ``spec`` names, ended with the right status whatever happens (see above)."""
    run = open_run(spec)

    def end(status: str, extra: dict[str, str] | None = None) -> None:
        tags = spec.status_tags.get(status, {}) | (extra or {})
        with contextlib.suppress(Exception):  # the end matters more than these tags
            if tags:
                run.sink.set_tags(tags)
        run.sink.end(status)

    try:
        yield run
    except (KeyboardInterrupt, Interrupted):
        end("KILLED")
        raise
    except BaseException as exc:
        error = scrub(f"{type(exc).__name__}: {exc}", run.sink.uri)[:ERROR_TAG_MAX]
        end("FAILED", {"error": error})
        raise
    else:
        end(run.status, run.end_tags)
