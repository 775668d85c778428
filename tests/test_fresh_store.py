"""A new SQLite store is a copy of a template MLflow made, and MLflow cannot tell it apart."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from mnist_tracker.tracking import client as make_client
from mnist_tracker.tracking import fresh_store


def schema(db) -> list[tuple]:
    """Every table, index and trigger with the lines of its SQL, and the schema revision.

    The lines of one statement are compared as a set: MLflow's own migrations write a table's
    CHECK constraints in an order that changes from process to process (two stores MLflow
    created in two processes differ so), which SQLite does not care about."""
    with contextlib.closing(sqlite3.connect(db)) as con:
        objects = con.execute("SELECT type, name, sql FROM sqlite_master ORDER BY type, name")
        revision = con.execute("SELECT version_num FROM alembic_version").fetchall()
        lines = [
            (kind, name, sorted(line.strip().rstrip(",") for line in (sql or "").splitlines()))
            for kind, name, sql in objects.fetchall()
        ]
        return [*lines, ("revision", revision)]


def contents(uri: str) -> dict:
    """What a user of the store sees after the same first steps."""
    c = MlflowClient(uri)
    default = c.get_experiment("0")
    experiment = c.create_experiment("x")
    run = c.create_run(experiment)
    c.log_metric(run.info.run_id, "m", 1.5, step=1)
    return {
        "experiments": [(e.experiment_id, e.name) for e in c.search_experiments()],
        "default": (default.name, default.artifact_location, default.lifecycle_stage),
        "new experiment": experiment,
        "metric": [(m.step, m.value) for m in c.get_metric_history(run.info.run_id, "m")],
    }


def test_a_copied_store_is_what_mlflow_would_have_created(tmp_path):
    native, copied = tmp_path / "native.db", tmp_path / "copied.db"
    MlflowClient(f"sqlite:///{native}").search_experiments()  # MLflow's migrations
    assert fresh_store.materialize(f"sqlite:///{copied}")  # builds the template first
    assert schema(copied) == schema(native)
    with contextlib.closing(sqlite3.connect(copied)) as con:  # Default comes from MLflow
        assert con.execute("SELECT COUNT(*) FROM experiments").fetchone() == (0,)
    seen = contents(f"sqlite:///{copied}")
    assert seen == contents(f"sqlite:///{native}")
    assert seen["default"] == ("Default", str(tmp_path / "mlruns" / "0"), "active")
    assert seen["experiments"] == [("1", "x"), ("0", "Default")]


@pytest.mark.fast
def test_later_stores_are_copies_made_in_well_under_a_second(tmp_path):
    assert fresh_store.materialize(f"sqlite:///{tmp_path / 'first.db'}")
    start = time.perf_counter()
    assert fresh_store.materialize(f"sqlite:///{tmp_path / 'sub' / 'dir' / 'second.db'}")
    assert time.perf_counter() - start < 1.0
    assert schema(tmp_path / "sub" / "dir" / "second.db") == schema(tmp_path / "first.db")
    assert not list((tmp_path / "sub" / "dir").glob(".*")), "no staged file is left behind"


@pytest.mark.fast
def test_existing_files_and_other_stores_are_left_alone(tmp_path):
    existing = tmp_path / "existing.db"
    existing.write_bytes(b"not touched")
    assert not fresh_store.materialize(f"sqlite:///{existing}")
    assert existing.read_bytes() == b"not touched"
    for uri in ("http://127.0.0.1:5000", "sqlite://", "sqlite:///:memory:", "postgresql://x/y"):
        assert not fresh_store.materialize(uri), uri
    assert fresh_store.sqlite_path("sqlite:///rel/m.db") == fresh_store.Path("rel/m.db")
    assert fresh_store.sqlite_path("sqlite:////abs/m.db?x=1") == fresh_store.Path("/abs/m.db")


def test_a_cache_that_cannot_be_written_has_mlflow_migrate_a_staged_file(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(fresh_store.ENV_CACHE, str(blocker / "cache"))  # under a file: no folder
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert fresh_store.materialize(uri)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "m.db"], "nothing staged left"
    make_client(uri).create_experiment("works")
    assert [e.name for e in MlflowClient(uri).search_experiments()] == ["works", "Default"]
    assert MlflowClient(uri).get_experiment("0").artifact_location == str(tmp_path / "mlruns" / "0")


def test_a_ctrl_c_while_a_store_is_made_leaves_no_half_made_store(tmp_path):
    """Without a template, MLflow migrates a new store for seconds. Interrupted in place, it
    left a half-migrated file that every later run failed on ("table _alembic_tmp_endpoints
    already exists"); made in a staged file, the store appears whole or not at all."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    store = tmp_path / "stores"
    store.mkdir()
    env = {**os.environ, fresh_store.ENV_CACHE: str(blocker / "cache")}
    code = (
        "from mnist_tracker.tracking import client; "  # as every command opens its store
        f"client('sqlite:///{store / 'm.db'}').search_experiments()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    # Interrupted once the migration has written something (the file grows from empty).
    while not any(p.stat().st_size > 0 for p in store.iterdir() if p.is_file()):
        assert proc.poll() is None and time.monotonic() < deadline, "the store was never begun"
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert b"KeyboardInterrupt" in err, "interrupted while the store was being made"
    assert list(store.iterdir()) == [], "no half-made store, nothing staged left"


def test_a_staged_file_a_kill_left_is_removed_by_the_next_creation(tmp_path):
    """SIGKILL while a store is staged leaves ``.m.db.PID.HEX`` beside it (the store itself
    is fine). The next creation removes it once it is old and its process gone; a young one
    (being staged now) or a live process's is kept, and so is another file."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    old = time.time() - fresh_store.STALE_STAGED_S - 60
    left = {
        "killed": tmp_path / f".m.db.{dead.pid}.0123abcd",
        "young": tmp_path / f".m.db.{dead.pid}.89abcdef",
        "live": tmp_path / f".m.db.{os.getpid()}.00ff00ff",
        "other": tmp_path / ".m.db.notes",
    }
    for name, path in left.items():
        path.write_bytes(b"half")
        if name != "young":
            os.utime(path, (old, old))
    assert fresh_store.materialize(f"sqlite:///{tmp_path / 'm.db'}")
    kept = {name for name, path in left.items() if path.exists()}
    assert kept == {"young", "live", "other"}
