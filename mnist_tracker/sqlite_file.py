"""Reading a SQLite file without changing it: a tracking store's or a study's, checked before
anything opens it for writing (SQLite and SQLAlchemy create a missing file, and MLflow and
Optuna write their tables into whatever they open)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path


def _connect(path: Path, mode: str, timeout_s: float) -> sqlite3.Connection:
    """A connection to the existing file at ``path`` in SQLite's URI ``mode`` ("ro", "rw"),
    which never creates it, waiting up to ``timeout_s`` for another connection's lock."""
    return sqlite3.connect(f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=timeout_s)


def table_names(path: Path, timeout_s: float = 5.0) -> set[str]:
    """The names in the schema of the SQLite file at ``path`` (tables, indexes), read-only:
    the file is neither created nor changed. Raises ``sqlite3.DatabaseError`` (a file locked
    for longer than ``timeout_s`` too); ``is_no_database`` tells the one error that means the
    file is not SQLite at all."""
    with contextlib.closing(_connect(path, "ro", timeout_s)) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master")}


def is_no_database(exc: sqlite3.DatabaseError) -> bool:
    """Whether ``exc`` says the file is no SQLite database. Other errors (a locked file, or a
    hot journal a killed writer left, which a read-only reader cannot roll back) are the
    owner's to recover: MLflow and Optuna open such a file themselves."""
    return "not a database" in str(exc)


def write_lock_free(path: Path, timeout_s: float) -> bool:
    """Whether the SQLite file at ``path``'s write lock could be taken within ``timeout_s``
    seconds (False: another connection holds it, a long transaction or a writer that hangs).
    Says nothing of whether a write would then succeed (a read-only file passes). Takes the
    lock and gives it back at once, writing nothing; the file must exist. Raises
    ``sqlite3.Error`` for anything but a lock."""
    db = _connect(path, "rw", timeout_s)  # rw, not rwc: a file that is not there stays so
    db.isolation_level = None  # explicit transactions: BEGIN IMMEDIATE is the lock alone
    try:
        db.execute("BEGIN IMMEDIATE")
        db.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as exc:
        if exc.sqlite_errorcode & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return False
        raise
    finally:
        db.close()
