"""Which RUNNING trials of a journal study lost their worker (Optuna's journal has no heartbeats).

Contracts:
- Every worker of a journal study holds an ``flock`` on a file of its own, in a folder beside
  the journal (``PATH.workers/``), for its lifetime (``WorkerFiles.open`` / ``close``), and
  names that file in each trial it runs (``mark``: the trial's system attribute
  ``WORKER_ATTR``, the file's name only, so that workers that reach the journal by other paths,
  relative ones or another mount, find the same file) before it lets go of the study lock.
- The kernel drops a process's locks when it dies, however it dies (``kill -9``, the OOM
  killer), so a trial whose file can be locked, or is gone, lost its worker: exact on the
  journal's one machine, with no clocks and no grace period. ``orphans`` lists them; the tuner
  gives them back to the study (``tune._give_back``).
- A RUNNING trial that names no file is left alone: it may be a worker's of an earlier version
  of mnist-tracker, alive. (A worker of this one killed in the instant between creating a trial
  and marking it leaves such a trial too, RUNNING, as before there were worker files.)
- A file only appears under its name already locked (written under a temporary name, locked,
  then renamed), so a file that can be locked is never a live worker's; those are deleted when
  found, and so are temporary files over a minute old (a worker killed while making its own).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
import uuid
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..errors import TuneError
from .study import journal_path

WORKER_ATTR = "mnist_tracker_worker"  # a journal trial's system attribute: its worker's file
_SUFFIX, _MAKING = ".lock", ".lock.new"


class WorkerFiles:
    """This worker's locked file beside a journal, and the liveness of the others'."""

    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(exist_ok=True)
        name = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
        making = folder / f".{name.removesuffix(_SUFFIX)}{_MAKING}"
        self._file = open(making, "w")  # noqa: SIM115 - held for the worker's lifetime
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX)
            making.rename(folder / name)
        except BaseException:
            self._file.close()
            with contextlib.suppress(OSError):
                making.unlink()
            raise
        self.name = name
        for other in folder.glob(f"*{_SUFFIX}"):
            if other.name != name:
                self.alive(other.name)  # a killed worker's: deleted
        for left in folder.glob(f".*{_MAKING}"):  # a worker's for microseconds, else a leftover
            with contextlib.suppress(OSError):
                if time.time() - left.stat().st_mtime > 60:
                    left.unlink()

    @classmethod
    def open(cls, storage_url: str | None) -> WorkerFiles | None:
        """This worker's file for a ``journal:PATH`` storage (None for any other storage), or
        TuneError when its folder cannot be made there."""
        journal = journal_path(storage_url) if storage_url else None
        if journal is None:
            return None
        folder = journal.with_name(journal.name + ".workers")
        try:
            return cls(folder)
        except OSError as exc:
            raise TuneError(
                f"cannot keep this worker's file in {folder} ({exc.strerror or exc}); the "
                "journal's folder must be writable, with nothing else named so"
            ) from None

    def mark(self, storage: optuna.storages.BaseStorage, trial_id: int) -> None:
        """Name this worker as the one running trial ``trial_id``."""
        storage.set_trial_system_attr(trial_id, WORKER_ATTR, self.name)

    def orphans(self, study: optuna.Study) -> list[FrozenTrial]:
        """The study's RUNNING trials whose worker is gone. Call with the study lock held."""
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [
            t for t in running if WORKER_ATTR in t.system_attrs
            and not self.alive(t.system_attrs[WORKER_ATTR])
        ]  # fmt: skip

    def alive(self, name: str) -> bool:
        """Whether the worker whose file is called ``name`` (in this folder) still runs: its
        file is locked. A dead worker's file is deleted. A file that cannot be read, or a name
        that is not a plain file name, counts as alive: never a live worker's trial taken for
        dead, nor a file outside this folder touched."""
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(_SUFFIX):
            return True
        path = self.folder / name
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
                path.unlink()
            return False
        finally:
            os.close(fd)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            (self.folder / self.name).unlink()
        self._file.close()  # the lock goes with it
