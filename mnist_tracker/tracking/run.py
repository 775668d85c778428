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
  no "View run at URL" line with a password in it. Creation is exactly-once: a lost answer
  (a 500 after the server made the run, a dropped connection) is looked up by the run's
  ``CREATE_KEY_TAG`` before it is asked again, so no orphan RUNNING run is left.
- ``tracked_run`` holds the run's lease (``lease.py``: lock file, holder and heartbeat tags)
  from before it touches the run until after it ended it; a run held elsewhere is refused
  (RunLocked) before anything changes.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME

from ..errors import ExperimentDeleted, Interrupted
from ..uris import install_log_scrubber, scrub
from . import lease as lease_mod
from .artifacts import CREATE_KEY_TAG, DEFAULT_EXPERIMENT, REAPED_TAG
from .client import (
    attached_run_id,
    client,
    database_trouble,
    env_vars,
    is_unreachable,
    set_tracking_uri,
)
from .sink import SINK_HTTP, RunSink

T = TypeVar("T")

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
    lease: lease_mod.Lease | None = None

    def rename(self, name: str) -> None:
        """Give the run the display name ``name``."""
        self.sink.set_tags({MLFLOW_RUN_NAME: name})
        self.run_name = name

    def end_as(self, status: str, tags: dict[str, str] | None = None) -> None:
        """End the run with ``status`` (and ``tags``) when the block exits normally."""
        self.status, self.end_tags = status, dict(tags or {})


def experiment_id_for(name: str, tries: int = 4) -> str:
    """The id of experiment ``name``, created if absent; the process's own (``mlflow run``'s
    ``$MLFLOW_EXPERIMENT_ID``) is not switched globally. ExperimentDeleted when ``name`` is in
    MLflow's trash (MLflow would refuse the run with a traceback; the name stays taken).
    Created once (``made_once``: the name is unique, so a look-up tells whether a failed
    create made it, or another worker did)."""
    mlflow_client = client()
    experiment = mlflow_client.get_experiment_by_name(name)
    _refuse_deleted(name, experiment)
    if experiment is not None:
        return experiment.experiment_id
    return made_once(
        lambda: mlflow_client.create_experiment(name),
        lambda: getattr(mlflow_client.get_experiment_by_name(name), "experiment_id", None),
        tries,
    )


def check_experiment(name: str) -> None:
    """ExperimentDeleted when experiment ``name`` is in MLflow's trash: for a command that
    checks before it trains (``suite``), as ``experiment_id_for`` refuses it when a run starts."""
    _refuse_deleted(name, client().get_experiment_by_name(name))


def _refuse_deleted(name: str, experiment) -> None:
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        raise ExperimentDeleted(
            f"experiment {name!r} is in MLflow's trash; restore it (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}) or pass another --experiment"
        )


def open_run(spec: RunSpec, live: bool = False) -> TrackedRun:
    """Create, attach to or resume the run ``spec`` names (its tags set), without ending it:
    ``tracked_run`` ends what it opens; a run that outlives one process (a study's parent)
    is ended by whoever finishes it, through ``RunSink.end``. ``live``: hold the run's lease
    (a trained run; refused with RunLocked when another process holds it)."""
    uri = set_tracking_uri(None)
    mlflow_client = client(uri)
    run_id = spec.resume_run_id or (attached_run_id() if spec.attach else None)
    if run_id is None:
        from .records import context_tags  # torch's module: loaded by a run that trains anyway

        tags = context_tags() | dict(spec.tags) | (lease_mod.live_tags() if live else {})
        if spec.parent_run_id is not None:
            experiment_id = mlflow_client.get_run(spec.parent_run_id).info.experiment_id
            tags[MLFLOW_PARENT_RUN_ID] = spec.parent_run_id
        else:
            experiment_id = experiment_id_for(spec.experiment)
        run = create_run_once(experiment_id, spec.run_name, tags)
        run_id = run.info.run_id
        # Created with its holder and heartbeat tags: the lease need not set them again.
        lease = lease_mod.hold(run_id, run, announce=False) if live else None
        sink = RunSink(run_id, uri)
        return TrackedRun(run_id, experiment_id, run.info.run_name, sink, lease=lease)
    run = mlflow_client.get_run(run_id)
    lease = lease_mod.hold(run_id, run) if live else None
    reopened = False
    try:
        sink = RunSink(run_id, uri)
        if spec.resume_run_id is not None:
            if run.info.status != "RUNNING":
                reopened = True  # before the call: its answer may be lost after it landed
                mlflow_client.update_run(run_id, status="RUNNING")
            if REAPED_TAG in run.data.tags:  # taken for dead by `runs reap`: alive again
                mlflow_client.delete_tag(run_id, REAPED_TAG)
        tags = dict(spec.tags) | ({MLFLOW_RUN_NAME: spec.run_name} if spec.run_name else {})
        if tags:
            sink.set_tags(tags)
        if spec.resume_run_id is not None:
            # It trains again: an old queued end must not land. Only now, so that a resume
            # refused above leaves that end to `sync`, which still ends the run with it.
            sink.outbox.supersede_end()
    except BaseException:
        if reopened:  # not resumed after all: as it was (KILLED, FAILED), not RUNNING forever
            with contextlib.suppress(Exception):
                mlflow_client.update_run(run_id, status=run.info.status)
        if lease is not None:
            lease.release()
        raise
    name = spec.run_name or run.info.run_name
    return TrackedRun(run_id, run.info.experiment_id, name, sink, lease=lease)


def create_run_once(experiment_id: str, run_name: str | None, tags: dict[str, str], tries=4):
    """``create_run`` exactly once (see the module's contract), found again by its
    ``CREATE_KEY_TAG``; MLflow's own retries are off for it, as a retry after a lost answer
    is what makes the orphan."""
    mlflow_client = client()
    key = uuid.uuid4().hex
    tags = tags | {CREATE_KEY_TAG: key}

    def create():
        with env_vars({"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}):
            return mlflow_client.create_run(experiment_id, run_name=run_name, tags=tags)

    def find():
        found = mlflow_client.search_runs(
            [experiment_id], filter_string=f"tags.`{CREATE_KEY_TAG}` = '{key}'"
        )
        return found[0] if found else None

    return made_once(create, find, tries)


def made_once(create: Callable[[], T], find: Callable[[], T | None], tries: int = 4) -> T:
    """What ``create()`` makes, made once though an answer may be lost: after a failed try,
    ``find()`` (None: not there) tells whether the store made it anyway (a 500 after the
    write, a dropped connection) or another process did. Not made, a transient failure (the
    server away, or a 5xx: MLflow 3.18 does not send such a write again) is tried again, with
    a pause, ``tries`` times in all (twice for a database locked or away: MLflow waited 20 s
    on each try already); any other failure is raised."""
    for attempt in range(tries):
        try:
            return create()
        except Exception as exc:
            transient = is_unreachable(exc)
            last = min(tries, 2) - 1 if database_trouble(exc) else tries - 1
            if transient:
                time.sleep(0.5 * 2**attempt)
            found = None
            with contextlib.suppress(Exception):  # still away: asked again on the next try
                found = find()
            if found is not None:
                return found
            if not transient or attempt >= last:
                raise
    raise AssertionError("unreachable")  # the loop returns or raises


@contextlib.contextmanager
def tracked_run(spec: RunSpec) -> Iterator[TrackedRun]:
    """The run ``spec`` names, ended with the right status whatever happens (see above).

    Every MLflow call inside the block, the heartbeat's and the system-metrics sampler's
    threads included, uses the sink's few HTTP retries (``SINK_HTTP``, the user's values
    win): set once here, for the whole run, so that no thread changes the environment under
    another's feet."""
    install_log_scrubber()
    with env_vars(SINK_HTTP, override=False):
        yield from _tracked(spec)


def _tracked(spec: RunSpec) -> Iterator[TrackedRun]:
    run = open_run(spec, live=True)
    if run.lease is not None:
        run.lease.beating()

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
    finally:
        if run.lease is not None:
            run.lease.release()
