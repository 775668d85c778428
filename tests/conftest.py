"""Shared fixtures: the committed MNIST subset, a real `mlflow server`, isolated stores."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
SUBSET = TESTS / "data" / "mnist"
REPO = TESTS.parent
BIN = Path(sys.executable).parent
# Full MNIST for CI-only tests, read before the autouse fixture points MNIST_DATA_DIR at the subset.
FULL_DATA_DIR = os.environ.get("MNIST_DATA_DIR")
# For every process the suite starts: no MLflow server spawns its 7 job-runner processes
# (GenAI jobs, unused here: seconds of CPU per server start on 2 cores), and no process posts
# usage telemetry (the machine is offline), as deploy/mlflow-server.sh and the CLI do too.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# A suite started in the background of a script (`bash .ci/run &`, no job control) inherits
# SIGINT ignored, and so does every process it starts: Python then never raises
# KeyboardInterrupt, and the tests that press Ctrl-C on a command (tune, a store being made)
# failed as if it ignored Ctrl-C. A handler here is reset to the default in each child.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The machine's temporary directory, for what must live outside the session's (see _session_tmp).
SYSTEM_TMP = tempfile.gettempdir()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skipped test fails, wherever the skip is written: CI has every service
    and file the suite needs, so a skip there hides a test that did not run. The one exception
    is hardware: a test marked ``gpu`` may skip where torch sees no CUDA device (CI's machine
    has none), and the summary says so."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.get_closest_marker("gpu") and not _cuda_available():
        return
    if IN_CI and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """The same for a whole module skipped as it is collected (``pytest.importorskip``,
    ``pytest.skip(allow_module_level=True)``): under CI=true it is a collection error, with no
    exception for ``gpu`` (a module skipped while importing has no marks to read): GPU tests
    skip one by one, as tests/test_gpu.py does."""
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true, which must run every test: {reason}"


# Seconds each module took on one worker in `make test` (CI=true, full MNIST, 2-core machine,
# 2026-12-05): the modules start longest first, the unlisted (each under 2 s) after them in
# file order. With --dist loadfile a worker takes a whole module, the next when its current
# one is nearly done; in file order one worker ended 20 s after the other, alone on
# test_tune.py. Longest first (LPT) leaves the short modules to even the two out.
MODULE_SECONDS = {
    "test_accuracy.py": 164, "test_performance.py": 109, "test_resilience.py": 67,
    "test_deploy.py": 60, "test_leases.py": 60, "test_tune.py": 53, "test_faults.py": 51,
    "test_tracking.py": 41, "test_compare.py": 30, "test_mlflow_ui.py": 29, "test_cli.py": 23,
    "test_suite.py": 19, "test_checkpoint.py": 12, "test_report.py": 11, "test_models.py": 9,
    "test_mlproject.py": 9, "test_features.py": 8, "test_engine.py": 8,
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    """Longest modules first (a stable sort: tests keep their order within a module)."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))


# Heavy packages no test module may import at collection, where every worker imports every
# module: Lightning (the peer benchmark's extra), which `import mlflow.pytorch` pulls in
# wherever it is installed: 2.4 s of each worker's start (use mnist_tracker's
# import_mlflow_pytorch). Checked by test_ci_guard.py.
NOT_AT_COLLECTION = ("lightning", "pytorch_lightning", "torchmetrics")
imported_at_collection: list[str] = []


def pytest_collection_finish(session):
    imported_at_collection[:] = [name for name in NOT_AT_COLLECTION if name in sys.modules]


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def wait_for_running_trial(storage: str, study_name: str, proc, deadline: float) -> int:
    """The number of a RUNNING trial of the study whose MLflow run exists, polled from the
    storage (the caller makes sure ``proc`` is the only worker so far); fails the test if
    ``proc`` exits or ``deadline`` passes first."""
    import optuna
    from optuna.trial import TrialState

    while time.monotonic() < deadline:
        assert proc.poll() is None, "the worker ended before it could be killed mid-trial"
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:  # the study is not created yet
            time.sleep(0.05)
            continue
        for trial in study.get_trials(states=(TrialState.RUNNING,)):
            if "mlflow_run_id" in trial.user_attrs:
                return trial.number
        time.sleep(0.05)
    raise AssertionError("no trial started in time")


@pytest.fixture(scope="session")
def subset_dir() -> Path:
    return SUBSET


@pytest.fixture(scope="session")
def full_data_dir() -> Path:
    """Full MNIST from $MNIST_DATA_DIR: required under CI, skipped elsewhere without it."""
    if not FULL_DATA_DIR:
        reason = "full MNIST not available: set MNIST_DATA_DIR to the folder with the IDX files"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    return Path(FULL_DATA_DIR)


@pytest.fixture(scope="session")
def _session_cache(tmp_path_factory) -> Path:
    """One cache for the whole session (the SQLite store template: built once, not per test)."""
    return tmp_path_factory.mktemp("mnist_tracker_cache")


@pytest.fixture(scope="session", autouse=True)
def _session_tmp(tmp_path_factory):
    """The session's processes (this one and all it starts) put their temporary files under
    pytest's base folder, which pytest prunes (the last 3 sessions are kept), not in the
    machine's: MLflow's downloads of a model (mlflow.pyfunc.load_model, download_artifacts)
    are never removed, and the suite used to leave ~0.5 GB of them in /tmp per run. What the
    package itself leaves is a test's business (test_mlflow_ui.py's predict)."""
    folder = tmp_path_factory.mktemp("tmp")
    saved = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = tempfile.tempdir = str(folder)
    yield folder
    tempfile.tempdir = saved[1]
    if saved[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved[0]


@pytest.fixture(scope="session", autouse=True)
def _session_cwd(tmp_path_factory):
    """The session's working folder, outside the checkout. Module fixtures (a finished run to
    promote, the UI's run, a resume's reference run) are set up before each test's own
    folder: MLflow puts a new store's artifacts under ./mlruns, which was the checkout's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path_factory.mktemp("cwd"))
        yield


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch, tmp_path, _session_cache):
    """No test reads the developer's MLflow store, MNIST folder, torch hub cache, run folders
    (checkpoints, outboxes) or cache."""
    for var in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_RUN_ID",
        "MLFLOW_EXPERIMENT_ID",
        "MLFLOW_EXPERIMENT_NAME",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("MNIST_DATA_DIR", str(SUBSET))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("MNIST_TRACKER_HOME", str(tmp_path / "mnist_tracker_home"))
    monkeypatch.setenv("MNIST_TRACKER_CACHE", str(_session_cache))
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.chdir(tmp_path)
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)


@pytest.fixture
def sqlite_uri(tmp_path, monkeypatch) -> str:
    """A fresh SQLite tracking store, set as the tracking URI for the test."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    return uri


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` (SQLite backend, served artifacts) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    command = [
        str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    with running_server(command, root, port, dict(os.environ)) as uri:
        yield uri


@contextlib.contextmanager
def running_server(command: list[str], root: Path, port: int, env: dict[str, str]):
    """Run ``command`` (a server on ``port``) until the block ends; yields its base URL once
    ``/health`` answers. Its output goes to ``root/server.log``, quoted if it fails to start."""
    log = open(root / "server.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_http(f"{uri}/health", timeout=180, proc=proc)
        except Exception:
            proc.kill()
            raise RuntimeError((root / "server.log").read_text()[-3000:]) from None
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def server_uri(mlflow_server, monkeypatch) -> str:
    """The session's MLflow server, set as this test's tracking URI."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    mlflow.set_tracking_uri(mlflow_server)
    return mlflow_server


@pytest.fixture
def experiment_name() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def cli_env(tmp_path) -> dict[str, str]:
    """Environment for running `mnist-tracker` / `mlflow` as subprocesses."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def copy_subset(dest: Path, layout: str = "torchvision", gz: bool = True) -> Path:
    """Copy the subset into ``dest`` under another naming layout, gzipped or not."""
    import gzip
    import json

    from mnist_tracker import data

    folder = dest / "MNIST" / "raw" if layout == "torchvision-raw" else dest
    folder.mkdir(parents=True, exist_ok=True)
    for spec in data.FILES.values():
        name = spec.kaggle_name if layout == "kaggle" else spec.name
        src = SUBSET / f"{spec.name}.gz"
        if gz:
            shutil.copy(src, folder / f"{name}.gz")
        else:
            with gzip.open(src) as fh:
                (folder / name).write_bytes(fh.read())
    manifest = json.loads((SUBSET / data.MANIFEST_NAME).read_text())
    (folder / data.MANIFEST_NAME).write_text(json.dumps(manifest))
    return folder


# ---------------------------------------------------------------------------------------------
# Services the suite cannot start here (PostgreSQL: tests/test_deploy.py; a tmpfs mount)


def _needs_service(reason: str):
    """Fail under CI (which must provide it), skip elsewhere, with the reason."""
    if IN_CI:
        pytest.fail(reason)
    pytest.skip(reason)
