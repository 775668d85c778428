"""Who holds a run, and whether it is still alive: a lock file here, tags on the run.

MLflow has no heartbeat (its issue 7078): a process killed by SIGKILL, the OOM killer or a
power cut leaves its run RUNNING forever. So every process that trains, resumes or syncs a
run holds its lease.

Contracts:
- ``hold(run_id)`` takes the run's lock file (``<run dir>/lock``, ``flock``, never waiting):
  a second process on this machine gets RunLocked at once, naming the holder. When the run's
  ``HOLDER_TAG`` names a process on another machine whose ``HEARTBEAT_TAG`` is younger than
  ``STALE_AFTER_S``, RunLocked too. Otherwise the lease is this process's: the two tags are
  set (best effort: an unreachable server costs a heartbeat, not the run). A process holds a
  run's lease once however often it calls ``hold`` (resume holds it, then its run).
- ``Lease.beating()`` sets ``HEARTBEAT_TAG`` every ``heartbeat_every_s()`` seconds from a
  daemon thread until ``release``; ``release`` (idempotent) stops it and unlocks.
- ``is_stale(run, older_than_s)``: a RUNNING run whose last heartbeat (its start, if it has
  none) is older, and which is not waiting for ``sync`` (``PENDING_TAG``).
- ``reap(run, older_than_s)`` ends such a run FAILED with ``REAPED_TAG`` saying why and, when
  the run has a checkpoint, how to resume it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mlflow
from mlflow.entities import RunTag

from ..errors import RunLocked
from ..paths import checkpoint_path, run_dir
from ..uris import redact
from . import artifacts
from .client import client, env_vars

if TYPE_CHECKING:
    from mlflow.entities import Run

STALE_AFTER_S = 600.0  # `runs reap`'s default: 20 missed heartbeats
ENV_HEARTBEAT = "MNIST_TRACKER_HEARTBEAT_S"


def heartbeat_every_s() -> float:
    """Seconds between heartbeats: ``$MNIST_TRACKER_HEARTBEAT_S``, else 30."""
    return float(os.environ.get(ENV_HEARTBEAT) or 30.0)


def holder_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def now_tag() -> str:
    """The heartbeat value: UTC, ISO 8601, readable in the MLflow UI."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def live_tags() -> dict[str, str]:
    """The tags a new run is created with: its holder, and a first heartbeat."""
    return {artifacts.HOLDER_TAG: holder_id(), artifacts.HEARTBEAT_TAG: now_tag()}


# The tags ``is_stale`` reads: a reader that fetches only some tags of a run fetches these.
STALE_TAGS = (artifacts.PENDING_TAG, artifacts.HOLDER_TAG, artifacts.HEARTBEAT_TAG)


def heartbeat_age_s(run: Run) -> float:
    """Seconds since the run's last heartbeat (since its start when it has none)."""
    beat = run.data.tags.get(artifacts.HEARTBEAT_TAG)
    with contextlib.suppress(ValueError, TypeError):
        return time.time() - dt.datetime.fromisoformat(beat).timestamp()
    return time.time() - run.info.start_time / 1000


@dataclass
class Lease:
    """This process's hold on one run (see the module's contract)."""

    run_id: str
    _fd: int
    _count: int = 1
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def beat(self) -> None:
        with contextlib.suppress(Exception):  # offline: the run goes on without
            client().set_tag(self.run_id, artifacts.HEARTBEAT_TAG, now_tag())

    def beating(self) -> Lease:
        """Start the heartbeat thread (once); returns the lease."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._beat_until_stopped, name=f"heartbeat-{self.run_id[:8]}", daemon=True
            )
            self._thread.start()
        return self

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(heartbeat_every_s()):
            self.beat()

    def release(self) -> None:
        """Give the lease up (the outermost ``hold`` of this process does)."""
        self._count -= 1
        if self._count > 0:
            return
        self._stop.set()
        _held.pop(self.run_id, None)
        folder = run_dir(self.run_id)
        # Unlinked while still locked: a process that opened the old file meanwhile fails
        # its non-blocking lock (and says "in use"); one that opens later makes a new file.
        with contextlib.suppress(OSError):
            (folder / "lock").unlink()
        with contextlib.suppress(OSError):
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
        with contextlib.suppress(OSError):  # kept while it holds a checkpoint or an outbox
            folder.rmdir()


_held: dict[str, Lease] = {}


def hold(
    run_id: str,
    run: Run | None = None,
    *,
    announce: bool = True,
    stale_after_s: float = STALE_AFTER_S,
) -> Lease:
    """This process's lease on ``run_id`` (see the module's contract); ``run``: its entity,
    when the caller has just read it. ``announce=False`` takes the lock without setting the
    holder and heartbeat tags (``runs reap``, which must not make a zombie look alive);
    ``stale_after_s``: how old another machine's heartbeat must be to count as dead."""
    if run_id in _held:
        _held[run_id]._count += 1
        return _held[run_id]
    fd = _lock_file(run_id)
    try:
        _refuse_remote_holder(run_id, run, stale_after_s)
        if announce:
            with contextlib.suppress(Exception):  # best effort, as every heartbeat
                _set_live_tags(run_id)
    except BaseException:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
        raise
    lease = _held[run_id] = Lease(run_id, fd)
    return lease


def _set_live_tags(run_id: str) -> None:
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    with env_vars(quick, override=False):
        client().log_batch(run_id, tags=[RunTag(k, v) for k, v in live_tags().items()])


def _lock_file(run_id: str) -> int:
    """The run's lock file, locked; RunLocked when another process here holds it."""
    folder = run_dir(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        # The holder writes its pid just after it took the lock: give it that moment.
        for _ in range(20):
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            if holder:
                break
            time.sleep(0.01)
        holder = holder or "another process"
        os.close(fd)
        raise RunLocked(
            f"run {run_id} is in use by {holder} (training, resuming or syncing it); wait "
            "until it ends, or stop it first"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"mnist-tracker pid {os.getpid()}\n".encode(), 0)
    return fd


def _refuse_remote_holder(run_id: str, run: Run | None, stale_after_s: float) -> None:
    """RunLocked when a live process on another machine holds the run."""
    if run is None:
        with contextlib.suppress(Exception):
            run = client().get_run(run_id)
    if run is None or run.info.status != "RUNNING":
        return
    holder = run.data.tags.get(artifacts.HOLDER_TAG, "")
    host = holder.rsplit(":", 1)[0]
    if not holder or host == socket.gethostname():
        return  # here: the lock file decides, and this process has it (the holder is gone)
    age = heartbeat_age_s(run)
    if age < stale_after_s:
        raise RunLocked(
            f"run {run_id} is held by {holder} (heartbeat {age:.0f} s ago); wait until it "
            f"ends, or, if that machine is gone, run `mnist-tracker runs reap` after "
            f"{stale_after_s / 60:.0f} minutes without heartbeat"
        )


def is_stale(run: Run, older_than_s: float = STALE_AFTER_S) -> bool:
    """Whether ``run`` is a zombie (see the module's contract)."""
    return (
        run.info.status == "RUNNING"
        and artifacts.PENDING_TAG not in run.data.tags
        and artifacts.HOLDER_TAG in run.data.tags
        and heartbeat_age_s(run) > older_than_s
    )


def reap(run: Run, older_than_s: float) -> str:
    """End the stale ``run`` FAILED with the reason tagged; return the reason."""
    run_id = run.info.run_id
    holder = run.data.tags.get(artifacts.HOLDER_TAG, "its process")
    reason = (
        f"no heartbeat from {holder} for {_duration(heartbeat_age_s(run))} (more than "
        f"{_duration(older_than_s)}): the process died without ending the run (or lost the "
        "server and keeps the rest in its outbox: `mnist-tracker sync` there finishes it)"
    )
    c = client()
    if checkpoint_path(run_id).is_file() or _has_checkpoint_artifact(c, run_id):
        # The store too: the hint is read in the UI, far from the shell that ran the run.
        store = redact(mlflow.get_tracking_uri())
        reason += (
            f"; continue it with: mnist-tracker train --resume {run_id} --tracking-uri {store}"
        )
    c.set_tag(run_id, artifacts.REAPED_TAG, reason)
    if run.data.tags.get(artifacts.OPTUNA_STATE_TAG) == "RUNNING":  # a trial's: as its worker would
        c.set_tag(run_id, artifacts.OPTUNA_STATE_TAG, "FAIL")
    c.set_terminated(run_id, "FAILED")
    return reason


def _duration(seconds: float) -> str:
    """``40 s``, ``12 min``, ``3.5 h``: how long, in the unit a person reads it in (a
    ``--older-than 10s`` was "0.166667 min")."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _has_checkpoint_artifact(c, run_id: str) -> bool:
    with contextlib.suppress(Exception):
        return any(
            a.path == artifacts.CHECKPOINT
            for a in c.list_artifacts(run_id, artifacts.CHECKPOINT_DIR)
        )
    return False
