"""Which RUNNING trials of a journal study lost their worker (Optuna's journal has no heartbeats).

Contracts:
- Every worker of a journal study holds an ``flock`` on a file of its own, in a folder beside
  the journal (``PATH.workers/``), for its lifetime (``WorkerFiles.open`` / ``close``), and
  names that file in each trial it runs (``mark``: the trial's system attribute
  ``WORKER_ATTR``) before it lets go of the study lock.
- The kernel drops a process's locks when it dies, however it dies (``kill -9``, the OOM
  killer), so a trial whose file can be locked, or is gone, lost its worker: exact on the
  journal's one machine, with no clocks and no grace period. A RUNNING trial that names no
  file, seen under the study lock, lost its worker between creating the trial and marking it
  (workers create trials under that lock only). ``orphans`` lists them; the tuner gives them
  back to the study (``tune._give_back``).
- A file only appears under its name already locked (written under a temporary name, locked,
  then renamed), so a file that can be locked is never a live worker's; those are deleted when
  found.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import uuid
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from .study import journal_path

WORKER_ATTR = "mnist_tracker_worker"  # a journal trial's system attribute: its worker's file


class WorkerFiles:
    """This worker's locked file beside a journal, and the liveness of the others'."""

    def __init__(self, folder: Path):
        folder.mkdir(exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        temporary = folder / f".{name}.new"
        self._file = open(temporary, "w")  # noqa: SIM115 - held for the worker's lifetime
        fcntl.flock(self._file, fcntl.LOCK_EX)
        self.path = folder / name
        temporary.rename(self.path)
        for other in folder.glob("*.lock"):  # what killed workers left: deleted once seen dead
            if other != self.path:
                alive(str(other))

    @classmethod
    def open(cls, storage_url: str | None) -> WorkerFiles | None:
        """This worker's file for a ``journal:PATH`` storage; None for any other storage."""
        journal = journal_path(storage_url) if storage_url else None
        return None if journal is None else cls(journal.with_name(journal.name + ".workers"))

    def mark(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        """Name this worker as the one running trial ``trial_id``."""
        storage.set_trial_system_attr(trial_id, WORKER_ATTR, str(self.path))

    def orphans(self, study: optuna.Study) -> list[FrozenTrial]:
        """The study's RUNNING trials whose worker is gone. Call with the study lock held."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [t for t in running if not alive(t.system_attrs.get(WORKER_ATTR))]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.path.unlink()
        self._file.close()  # the lock goes with it


def alive(path: str | None) -> bool:
    """Whether the worker whose file is ``path`` still runs (its file is locked). A dead
    worker's file is deleted; a file that cannot be read counts as alive (never a live
    worker's trial taken for dead)."""
    if path is None:
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: locked, by a live worker
        return True
    else:
        with contextlib.suppress(OSError):  # another worker may have deleted it just now
            os.unlink(path)
        return False
    finally:
        os.close(fd)
