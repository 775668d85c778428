"""A new SQLite tracking store in a tenth of a second instead of seconds.

MLflow creates a SQLite store by running every one of its schema migrations (about 60, each
rebuilding tables): 2-4 s of every first run against a new ``sqlite:///`` file on the
development machine, more than the training of a short run. The migrated, empty schema is
the same every time for one MLflow version, so it is made once (by MLflow itself) into a
template and copied for every new store.

Contracts:
- ``materialize(uri)`` acts only on ``sqlite:///PATH`` whose file does not exist yet: it
  writes there a copy of the template for the installed MLflow version and returns True;
  anything else (another scheme, an in-memory database, an existing file) it leaves alone and
  returns False. It never replaces a file: when another process creates the store first, that
  store is kept.
- The template is what MLflow itself creates, minus the ``Default`` experiment (id 0): when
  MLflow opens the copy it finds its schema at the current revision and no experiment, and
  creates ``Default`` itself, with this store's artifact root and creation time. So a copied
  store is indistinguishable from one MLflow created.
- Templates live under ``cache_dir()`` (``$MNIST_TRACKER_CACHE``, else
  ``$XDG_CACHE_HOME/mnist-tracker``, else ``~/.cache/mnist-tracker``), one per MLflow
  version. Where no template can be kept (a read-only cache), MLflow migrates the new store
  in a staged file beside it instead, seconds as without this module.
- The store appears whole or not at all: it is made under a hidden name and linked into
  place. A store MLflow migrates in place is left half-made by a Ctrl-C in those seconds, and
  then every later run against it fails in MLflow's migration. Any other failure (a file
  system without hard links, a folder that cannot be written) is no error: MLflow then creates
  the store as it always does. A staged file a killed process left (SIGKILL in those
  seconds) is removed by the next creation of that store once it is ``STALE_STAGED_S`` old
  and its process is gone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import mlflow

from ..uris import sqlite_database

ENV_CACHE = "MNIST_TRACKER_CACHE"
# Staging takes seconds; a staged file this old whose process is gone was left by a kill.
STALE_STAGED_S = 600


def cache_dir() -> Path:
    """Where templates are kept (see the module's contract)."""
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mnist-tracker"


def sqlite_path(uri: str) -> Path | None:
    """The file of a ``sqlite:///PATH`` URI (relative or absolute), None for anything else."""
    if not uri.lower().startswith("sqlite://"):
        return None
    database = sqlite_database(uri)
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return Path(database)


def materialize(uri: str) -> bool:
    """Create the store of ``uri`` from the template when it is a SQLite file that does not
    exist yet; True when it did (see the module's contract)."""
    target = sqlite_path(uri)
    if target is None or target.exists():
        return False
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(Exception):  # housekeeping: never in the way of the store
            _remove_stale_staged(target)
        # A new file (the umask's mode, as MLflow's would have), linked into place only whole.
        staged = target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            _stage(staged)
            os.link(staged, target)  # fails if the file appeared meanwhile: never replace one
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(staged)
    except (OSError, sqlite3.Error, mlflow.exceptions.MlflowException):
        return False
    return True


def _remove_stale_staged(target: Path) -> None:
    """Remove the staged files of ``target`` (``.NAME.PID.HEX``) that killed processes left:
    older than ``STALE_STAGED_S`` and of a process not alive on this machine."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(\d{{1,9}})\.[0-9a-f]{{8}}")
    for path in target.parent.glob(f".{glob.escape(target.name)}.*"):
        found = pattern.fullmatch(path.name)
        if found is None or _alive(int(found.group(1))):
            continue
        with contextlib.suppress(OSError):
            if time.time() - path.stat().st_mtime > STALE_STAGED_S:
                path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _stage(staged: Path) -> None:
    """An empty store at ``staged``: the template's copy, else migrated there by MLflow."""
    try:
        template = _template()
    except (OSError, sqlite3.Error, mlflow.exceptions.MlflowException):
        with tempfile.TemporaryDirectory(prefix=".artifacts-", dir=staged.parent) as tmp:
            _build(staged, Path(tmp))
        return
    shutil.copyfile(template, staged)


def _template() -> Path:
    """The template for this MLflow version, built first if needed."""
    path = cache_dir() / f"sqlite-store-mlflow-{mlflow.__version__}.db"
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".template-", dir=path.parent) as tmp:
        built = Path(tmp) / "store.db"
        _build(built, Path(tmp) / "artifacts")
        os.replace(built, path)  # whole or not at all, also with a concurrent builder
    return path


def _build(db: Path, artifacts: Path) -> None:
    """An empty store migrated by MLflow, its ``Default`` experiment removed again."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{db}", str(artifacts))
    store.engine.dispose()
    with contextlib.closing(sqlite3.connect(db)) as con, con:
        con.execute("DELETE FROM experiment_tags WHERE experiment_id = 0")
        con.execute("DELETE FROM experiments WHERE experiment_id = 0")
