"""The team stack, natively: PostgreSQL, the authenticated tracking server started with the
compose file's own command, tuning workers on a PostgreSQL study, and the compose file."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from .conftest import (
    BIN,
    REPO,
    SUBSET,
    SYSTEM_TMP,
    _needs_service,
    free_port,
    running_server,
    wait_for_running_trial,
)

# `make test` runs each module on one xdist worker (--dist loadfile): these tests share one
# authenticated server (a session fixture) on .ci/run's PostgreSQL, and two servers migrating
# the same databases at once race ("alembic_version already exists").
pytestmark = pytest.mark.slow


# ---------------------------------------------------------------------------------------------
# PostgreSQL and the authenticated tracking server (the team stack, run natively). Here, not in
# conftest.py: .ci/run starts one PostgreSQL with one set of databases, and only the tests of
# this module, which `make test` keeps on one worker, may use them.


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL with the stack's databases: ``.ci/run``'s (TEST_POSTGRES_PORT), else one
    started here with deploy/local-postgres.sh. Yields a dict of host, port, passwords."""
    import tempfile

    info = {
        "host": "127.0.0.1",
        "mlflow_password": os.environ.get("TEST_MLFLOW_DB_PASSWORD", "mlflow-test-pw"),
        "optuna_password": os.environ.get("TEST_OPTUNA_DB_PASSWORD", "optuna-test-pw"),
    }
    if os.environ.get("TEST_POSTGRES_PORT"):
        info["port"] = int(os.environ["TEST_POSTGRES_PORT"])
        yield info
        return
    # Not under the pytest tmp dir: its parents are private to root and the server runs as
    # the postgres user.
    root = tempfile.mkdtemp(prefix="mnist-tracker-pg-", dir=SYSTEM_TMP)
    os.chmod(root, 0o755)
    data_dir = os.path.join(root, "data")
    env = dict(os.environ, MLFLOW_DB_PASSWORD=info["mlflow_password"],
               OPTUNA_DB_PASSWORD=info["optuna_password"])  # fmt: skip
    info["port"] = free_port()
    script = str(REPO / "deploy" / "local-postgres.sh")
    proc = subprocess.run(["sh", script, "start", data_dir, str(info["port"])], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if proc.returncode != 0:
        _needs_service(f"PostgreSQL could not be started: {proc.stderr.strip()[-300:]}")
    yield info
    subprocess.run(["sh", script, "stop", data_dir], env=env, capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def pg_url(postgres: dict, user: str, database: str) -> str:
    password = postgres[f"{user}_password"]
    return f"postgresql://{user}:{password}@{postgres['host']}:{postgres['port']}/{database}"


@pytest.mark.parametrize("driver", ["", "+psycopg"], ids=["postgresql", "postgresql+psycopg"])
def test_the_cli_opens_a_postgresql_tracking_store_and_refuses_a_wrong_password(postgres, driver):
    """The store check before a command (``client._check_database``) passes a working
    PostgreSQL store, with or without the driver named; with a wrong password it refuses in
    one line, the password hidden, where MLflow retried for minutes into a traceback."""
    from click.testing import CliRunner

    from mnist_tracker.cli import main

    uri = pg_url(postgres, "mlflow", "mlflow").replace("postgresql:", f"postgresql{driver}:")
    done = CliRunner().invoke(main, ["runs", "reap", "--dry-run", "--tracking-uri", uri])
    assert done.exit_code == 0, done.output
    assert "stale run(s) found" in done.stderr

    wrong = uri.replace(postgres["mlflow_password"], "Wrong-pw-5d2e")
    refused = CliRunner().invoke(main, ["runs", "reap", "--dry-run", "--tracking-uri", wrong])
    assert refused.exit_code == 2, refused.output
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("Error: tracking database postgresql") and "mlflow:***@" in line
    assert "password authentication failed" in line and "Wrong-pw" not in refused.output

    # The same database as a study's storage: refused before Optuna writes its tables there.
    args = ["--model", "cnn", "--val-size", "100", "--tracking-uri", uri, "--storage", uri]
    tune = CliRunner().invoke(main, ["tune", *args])
    assert tune.exit_code == 2, tune.output
    assert "is an MLflow tracking store; give the study a database" in tune.stderr
    import sqlalchemy

    engine = sqlalchemy.create_engine(uri)
    try:
        tables = set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert "runs" in tables and "studies" not in tables


@pytest.fixture(scope="session")
def auth_server(postgres, tmp_path_factory):
    """deploy/mlflow-server.sh (the compose command) on the PostgreSQL above: served artifacts,
    basic auth. Yields dict(uri, username, password)."""
    import uuid as _uuid

    root = tmp_path_factory.mktemp("auth_server")

    port = free_port()
    # Fixed: the admin is created on the first start against an empty auth database only.
    creds = {
        "username": "admin",
        "password": os.environ.get("TEST_MLFLOW_ADMIN_PASSWORD", "admin-test-pw-1234"),
    }
    env = dict(os.environ)
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        MLFLOW_BACKEND_STORE_URI=pg_url(postgres, "mlflow", "mlflow"),
        MLFLOW_AUTH_DATABASE_URI=pg_url(postgres, "mlflow", "mlflow_auth"),
        MLFLOW_ARTIFACTS_DESTINATION=str(root / "artifacts"),
        MLFLOW_AUTH_ADMIN_USERNAME=creds["username"],
        MLFLOW_AUTH_ADMIN_PASSWORD=creds["password"],
        MLFLOW_FLASK_SERVER_SECRET_KEY=_uuid.uuid4().hex,
        MLFLOW_HOST="127.0.0.1",
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="2",
    )
    for var in ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(var, None)
    command = ["sh", str(REPO / "deploy" / "mlflow-server.sh")]
    with running_server(command, root, port, env) as uri:
        yield {"uri": uri, **creds}


@pytest.fixture
def logged_in(auth_server, monkeypatch):
    """Point MLflow (this process and subprocesses) at the authenticated server."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server["uri"])
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", auth_server["username"])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", auth_server["password"])
    mlflow.set_tracking_uri(auth_server["uri"])
    return auth_server


def _status(url: str, user: str | None = None, password: str | None = None) -> int:
    request = urllib.request.Request(url)
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_login_is_required(auth_server):
    url = f"{auth_server['uri']}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(url) == 401
    assert _status(url, auth_server["username"], "wrong-password") == 401
    assert _status(url, "nobody", auth_server["password"]) == 401
    assert _status(url, auth_server["username"], auth_server["password"]) == 200


def _run_tiny(experiment: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    """`mnist-tracker train` of a one-epoch cnn on 200 images, through the server ``env``
    logs in to, into ``experiment``."""
    return subprocess.run(
        [str(BIN / "mnist-tracker"), "train", "--model", "cnn", "--epochs", "1",
         "--limit-train", "200", "--limit-test", "100", "--data-dir", str(SUBSET),
         "--experiment", experiment],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip


def _train_tiny(experiment: str, env: dict[str, str]):
    """``_run_tiny``, which must succeed: the command's output (``proc.stdout +
    proc.stderr``) and the experiment's one run, FINISHED."""
    proc = _run_tiny(experiment, env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = MlflowClient().get_experiment_by_name(experiment)
    (run,) = MlflowClient().search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    return proc.stdout + proc.stderr, run


def test_training_run_through_the_authenticated_server(logged_in, experiment_name, cli_env):
    output, run = _train_tiny(experiment_name, cli_env)
    paths = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "plots/learning_curves.png" in paths, "artifacts went through the served store"
    assert logged_in["password"] not in output


def _api(uri: str, method: str, path: str, user: str, password: str, body: dict | None = None):
    """One REST call to ``/api/2.0/mlflow/<path>`` as ``user``: (HTTP status, JSON answer)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{uri}/api/2.0/mlflow/{path}", data=data, method=method)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as err:
        text = err.read().decode(errors="replace")
        try:
            return err.code, json.loads(text or "{}")
        except ValueError:  # not MLflow's JSON error: kept to be shown by a failing assert
            return err.code, {"body": text[:500]}


def test_a_login_per_person_reads_every_run_and_writes_only_its_own(
    logged_in, experiment_name, cli_env
):
    """README: "Create a login per person with MLflow's auth API
    (`mlflow.server.get_app_client("basic-auth", tracking_uri=...)`) rather than sharing the
    admin"; deploy/mlflow-server.sh gives every login `default_permission = READ`. A person so
    created logs in with their own password only, reads the admin's experiment and run, is
    refused every write to them (403, the auth app's "Permission denied"), which leaves them
    as they were, and trains with `mnist-tracker train` into an experiment of their own."""
    from mlflow.server import get_app_client

    uri, client = logged_in["uri"], MlflowClient()
    admin_experiment = client.create_experiment(experiment_name)
    admin_run = client.create_run(admin_experiment).info.run_id
    client.log_metric(admin_run, "test_accuracy", 0.5, step=1)

    person, password = f"person-{experiment_name}", "person-pw-5c1e0b"
    get_app_client("basic-auth", tracking_uri=uri).create_user(person, password)
    search = f"{uri}/api/2.0/mlflow/experiments/search?max_results=1"
    assert _status(search, person, "wrong-password") == 401
    assert _status(search, person, logged_in["password"]) == 401, "the admin's password is not it"

    status, answer = _api(uri, "GET", f"runs/get?run_id={admin_run}", person, password)
    assert status == 200, answer
    assert [(m["key"], m["value"]) for m in answer["run"]["data"]["metrics"]] == [
        ("test_accuracy", 0.5)
    ]
    status, answer = _api(
        uri, "GET", f"experiments/get?experiment_id={admin_experiment}", person, password
    )
    assert status == 200 and answer["experiment"]["name"] == experiment_name, answer

    now = int(time.time() * 1000)
    writes = {
        "runs/log-metric": {"run_id": admin_run, "key": "test_accuracy", "value": 0.1,
                            "timestamp": now, "step": 2},
        "runs/set-tag": {"run_id": admin_run, "key": "written_by", "value": person},
        "runs/update": {"run_id": admin_run, "status": "FAILED", "end_time": now},
        "runs/create": {"experiment_id": admin_experiment, "start_time": now},
        "experiments/set-experiment-tag": {"experiment_id": admin_experiment,
                                           "key": "written_by", "value": person},
    }  # fmt: skip
    for path, body in writes.items():
        status, answer = _api(uri, "POST", path, person, password, body)
        assert (status, answer) == (403, {"body": "Permission denied"}), path
    run = client.get_run(admin_run)
    assert run.info.status == "RUNNING" and "written_by" not in run.data.tags
    assert [m.value for m in client.get_metric_history(admin_run, "test_accuracy")] == [0.5]
    assert len(client.search_runs([admin_experiment])) == 1
    assert "written_by" not in client.get_experiment(admin_experiment).tags

    env = dict(cli_env, MLFLOW_TRACKING_USERNAME=person, MLFLOW_TRACKING_PASSWORD=password)
    output, trained = _train_tiny(f"{experiment_name}-own", env)
    assert "test_accuracy" in trained.data.metrics
    assert password not in output

    # Training into the admin's experiment: one line naming the login and the fix, exit 2.
    proc = _run_tiny(experiment_name, env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    assert errors == proc.stderr.strip().splitlines()[-1:], proc.stderr[-2000:]
    assert f"refused '{person}' a write (403 Permission denied)" in errors[0]
    assert "ask its admin for EDIT" in errors[0] and "Traceback" not in proc.stderr
    assert password not in proc.stdout + proc.stderr
    assert len(client.search_runs([admin_experiment])) == 1, "no run was created"


def _tune_command(postgres, experiment_name, study, trials, extra=(), limit_train=128):
    """A tuning worker on the team stack: 128 training images (the least the cnn's search
    space allows: batches of up to 128) unless a test needs its trials to last (a worker
    killed mid-trial)."""
    return [
        str(BIN / "mnist-tracker"), "tune", "--model", "cnn", "--trials", str(trials),
        "--epochs", "1", "--limit-train", str(limit_train), "--val-size", "100", "--pruner", "none",
        "--no-final", "--storage", pg_url(postgres, "optuna", "optuna"),
        "--study-name", study, "--data-dir", str(SUBSET), "--experiment", experiment_name,
        *extra,
    ]  # fmt: skip


def _study(postgres, name):
    return optuna.load_study(study_name=name, storage=pg_url(postgres, "optuna", "optuna"))


def _children(parent_run_id):
    client = MlflowClient()
    exp_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs([exp_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


def _waiting_on_study_lock(storage: str, study_name: str) -> int:
    """How many sessions wait on the study's advisory lock (``StudyLock``'s key)."""
    import sqlalchemy

    from mnist_tracker.workflows.study import StudyLock

    key = StudyLock(None, study_name)._key
    engine = sqlalchemy.create_engine(storage)
    try:
        with engine.connect() as conn:
            return conn.execute(
                sqlalchemy.text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND classid = :hi AND objid = :lo AND objsubid = 1"
                ),
                {"hi": key >> 32, "lo": key & 0xFFFFFFFF},
            ).scalar_one()
    finally:
        engine.dispose()


def test_two_workers_on_a_postgres_study(postgres, logged_in, experiment_name, cli_env):
    """Two workers share one study: each runs trials of it (its child runs' holder tag names
    its pid), no trial number twice, 8 in all. The test holds the study lock until both wait
    on it, past their start-up and data loading, so neither can run the study alone."""
    from mnist_tracker.tracking.artifacts import HOLDER_TAG
    from mnist_tracker.workflows.study import StudyLock

    study_name = f"pg-{experiment_name}"
    storage = pg_url(postgres, "optuna", "optuna")
    command = _tune_command(postgres, experiment_name, study_name, 8)
    gate = StudyLock.open(storage, study_name)
    workers, started = [], False
    try:
        gate.acquire()
        workers = [
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=cli_env)
            for _ in range(2)
        ]  # fmt: skip
        deadline = time.monotonic() + 300
        while _waiting_on_study_lock(storage, study_name) < 2:
            exited = [w.args for w in workers if w.poll() is not None]
            assert not exited, "a worker ended before it reached the study lock"
            assert time.monotonic() < deadline, "the workers did not reach the study lock"
            time.sleep(0.2)
        started = True
    finally:
        gate.close()  # both start the study together
        if not started:
            for w in workers:
                w.kill()
                w.communicate()
    outputs = [w.communicate(timeout=900) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-3000:]
        assert postgres["optuna_password"] not in err, "storage URLs are printed redacted"
    study = _study(postgres, study_name)
    trials = study.get_trials()
    assert len(trials) == 8 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(8))
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    children = _children(parent_id)
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in children) == list(range(8))
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == {r.info.run_id for r in children}
    # Which worker ran which trial: the holder tag of its child run is "host:pid".
    by_worker: dict[int, list[int]] = {w.pid: [] for w in workers}
    for run in children:
        host, pid = run.data.tags[HOLDER_TAG].rsplit(":", 1)
        assert host == socket.gethostname()
        assert int(pid) in by_worker, f"{run.data.tags[HOLDER_TAG]} is neither worker"
        by_worker[int(pid)].append(int(run.data.tags["optuna.trial_number"]))
    assert all(by_worker.values()), f"a worker ran no trial: {by_worker}"
    numbers = [n for ran in by_worker.values() for n in ran]
    assert len(numbers) == len(set(numbers)) == 8, f"trials run twice or missing: {by_worker}"
    parent = MlflowClient().get_run(parent_id)
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.metrics["n_complete"] == 8
    assert postgres["optuna_password"] not in parent.data.params["storage"]
    assert "***" in parent.data.params["storage"]


def test_killed_worker_on_postgres(postgres, logged_in, experiment_name, cli_env):
    """Two workers; one is SIGKILLed mid-trial. Its trial is failed by heartbeat, retried by
    the other, and the study still reaches its total."""
    study_name = f"pg-kill-{experiment_name}"
    extra = ("--heartbeat-interval", "1", "--grace-period", "4", "--epochs", "2")
    command = _tune_command(postgres, experiment_name, study_name, 4, extra, limit_train=200)
    victim = subprocess.Popen(command, stderr=subprocess.DEVNULL, text=True, env=cli_env)
    # Kill the victim inside a trial of its own, found from the study rather than by a sleep;
    # the survivor starts then, so that it cannot own that trial.
    storage = pg_url(postgres, "optuna", "optuna")
    dead = wait_for_running_trial(storage, study_name, victim, time.monotonic() + 180)
    survivor = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, env=cli_env)  # fmt: skip
    victim.kill()
    victim.wait(timeout=30)
    _, err = survivor.communicate(timeout=900)
    assert survivor.returncode == 0, err[-3000:]
    study = _study(postgres, study_name)
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in failed] == [dead] and len(complete) == 4
    assert any(t.system_attrs.get("failed_trial") == dead for t in complete)
    children = _children(study.user_attrs["mlflow_parent_run_id"])
    assert not [r for r in children if r.info.status == "RUNNING"]
    assert sorted(r.info.status for r in children).count("FAILED") == 1


# ---------------------------------------------------------------------------------------------
# docker-compose.yml, checked without Docker


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_services_and_dependencies(compose):
    services = compose["services"]
    assert {"postgres", "object-store", "create-bucket", "mlflow", "trainer", "tuner"} <= set(
        services
    )
    mlflow_deps = services["mlflow"]["depends_on"]
    assert mlflow_deps["postgres"]["condition"] == "service_healthy"
    assert mlflow_deps["create-bucket"]["condition"] == "service_completed_successfully"
    assert services["create-bucket"]["depends_on"]["object-store"]["condition"] == (
        "service_healthy"
    )
    for name in ("trainer", "tuner"):
        assert services[name]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    for name in ("postgres", "object-store", "mlflow"):
        assert services[name]["healthcheck"]["test"], name
    tuner_env = services["tuner"]["environment"]
    assert tuner_env["MNIST_TRACKER_STORAGE"].startswith("postgresql://optuna:")
    assert (
        "mnist-tracker" in services["tuner"]["command"] and "tune" in services["tuner"]["command"]
    )
    volumes = " ".join(services["trainer"]["volumes"])
    assert "mnist-data:/data" in volumes and "torch-hub:/torch" in volumes


def test_compose_publishes_only_the_ui_on_loopback(compose):
    published = {name: s["ports"] for name, s in compose["services"].items() if "ports" in s}
    assert list(published) == ["mlflow"]
    (port,) = published["mlflow"]
    assert port.startswith("${MLFLOW_UI_BIND:-127.0.0.1}:")


def test_compose_has_no_literal_secrets(compose):
    secret_words = re.compile(r"PASSWORD|SECRET|ACCESS_KEY", re.I)

    def values(node, path=""):
        if isinstance(node, dict):
            for key, value in node.items():
                yield from values(value, f"{path}.{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from values(value, f"{path}[{i}]")
        else:
            yield path, str(node)

    for path, value in values(compose["services"]):
        if secret_words.search(path.rsplit(".", 1)[-1]):
            assert re.fullmatch(r"\$\{[A-Z0-9_]+(:\?[^}]*)?\}", value), f"{path} = {value!r}"
        # URLs that embed a password take it from the environment too.
        for password in re.findall(r"://[^:/@]+:([^@]+)@", value):
            assert password.startswith("${"), f"{path} embeds a literal password"
    env_example = (REPO / ".env.example").read_text()
    for var in set(re.findall(r"\$\{([A-Z0-9_]+):\?", (REPO / "docker-compose.yml").read_text())):
        assert f"{var}=" in env_example, f"{var} missing from .env.example"
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_compose_runs_the_shared_mlflow_command(compose):
    mlflow = compose["services"]["mlflow"]
    assert mlflow["command"] == ["/app/deploy/mlflow-server.sh"]
    dockerfile = (REPO / "deploy" / "mlflow.Dockerfile").read_text()
    assert "COPY deploy/mlflow-server.sh /app/deploy/mlflow-server.sh" in dockerfile
    script = (REPO / "deploy" / "mlflow-server.sh").read_text()
    for flag in ("--serve-artifacts", "--app-name basic-auth", "--allowed-hosts"):
        assert flag in script
    # Read by `mlflow server` from MLFLOW_BACKEND_STORE_URI / MLFLOW_ARTIFACTS_DESTINATION.
    for flag in ("--artifacts-destination", "--backend-store-uri"):
        assert flag not in script, f"{flag} puts a secret where `ps` shows it"
    assert "COPY deploy/refuse-example-secrets.sh /app/deploy/" in dockerfile
    assert "mlflow" in mlflow["environment"]["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")


# ---------------------------------------------------------------------------------------------
# Secrets: off command lines, no auth config left behind, example passwords refused

SERVER_SCRIPT = REPO / "deploy" / "mlflow-server.sh"
GUARD = REPO / "deploy" / "refuse-example-secrets.sh"
GUARD_IN_CONTAINER = "/mnist-tracker/refuse-example-secrets.sh"
FIX = (
    "replace it with a long random value: "
    "python -c 'import secrets; print(secrets.token_urlsafe(24))'"
)


def _read_proc(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as fh:
        return fh.read()


def _processes() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process this user can see."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            argv = _read_proc(pid, "cmdline").decode(errors="replace").split("\0")[:-1]
            stat = _read_proc(pid, "stat").decode(errors="replace")
        except OSError:  # gone, or not ours to read
            continue
        found[pid] = (int(stat.rsplit(")", 1)[1].split()[1]), argv)
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = _read_proc(pid, "environ").decode(errors="replace")
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def _server_tree(key: str, value: str) -> tuple[dict[int, list[str]], dict[str, str]]:
    """The running server started (by deploy/mlflow-server.sh) with ``key=value`` in its
    environment: the topmost process so started and every process below it (pid -> argv),
    and the environment it was given."""
    procs = _processes()
    started = {pid for pid in procs if _environ(pid).get(key) == value}
    roots = [pid for pid in started if procs[pid][0] not in started]
    assert len(roots) == 1, f"one server with {key}={value} expected: {roots}"
    root = roots[0]
    tree = {root}
    while grown := {pid for pid, (ppid, _) in procs.items() if ppid in tree} - tree:
        tree |= grown
    return {pid: procs[pid][1] for pid in tree}, _environ(root)


def _alive(pid: int) -> bool:
    try:
        state = _read_proc(pid, "stat").decode().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port(uri: str) -> str:
    return uri.rsplit(":", 1)[1]


def test_server_command_lines_hold_no_secret(auth_server, postgres):
    """`ps` shows every user each process's arguments: the server's shell, `mlflow server`,
    its uvicorn supervisor and workers must not carry a password or a store URL there."""
    tree, env = _server_tree("MLFLOW_PORT", _port(auth_server["uri"]))
    commands = [" ".join(argv) for argv in tree.values()]
    assert any(re.search(r"/mlflow server\b", c) for c in commands), commands
    assert any("uvicorn" in c for c in commands), f"the workers were not looked at: {commands}"
    assert len(tree) >= 5, f"shell, mlflow, uvicorn and two workers expected: {commands}"
    secrets = {  # named, so that a failure does not print them
        "database password": postgres["mlflow_password"],
        "admin password": auth_server["password"],
        "session key": env["MLFLOW_FLASK_SERVER_SECRET_KEY"],
        "store URL": "postgresql://",
    }
    for argv in tree.values():
        leaked = [name for name, secret in secrets.items() if secret in " ".join(argv)]
        assert not leaked, f"on the command line of {argv[:3]}"
    assert any(str(SERVER_SCRIPT) in c for c in commands), "the script's shell stays the parent"


def test_stopped_server_leaves_no_auth_config(auth_server, tmp_path):
    """The same script and environment as the session's server, on another port with a private
    TMPDIR: while it runs, its basic_auth.ini (auth database password) is there, private to
    this user; terminated as `docker compose stop` and the fixtures do, it stops promptly,
    takes its workers with it and removes the file."""
    _, env = _server_tree("MLFLOW_PORT", _port(auth_server["uri"]))
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    port = free_port()
    env.update(TMPDIR=str(private_tmp), MLFLOW_PORT=str(port), MLFLOW_WORKERS="1")
    with running_server(["sh", str(SERVER_SCRIPT)], tmp_path, port, env):
        (config,) = private_tmp.glob("*/basic_auth.ini")
        assert "mlflow_auth" in config.read_text()
        assert config.stat().st_mode & 0o077 == 0
        assert config.parent.stat().st_mode & 0o077 == 0
        pids = set(_server_tree("TMPDIR", str(private_tmp))[0])
        stopping = time.monotonic()
    assert time.monotonic() - stopping < 15, "not stopped by SIGTERM (killed after 20 s)"
    assert not config.parent.exists(), "basic_auth.ini was left behind"
    # uvicorn gives its workers time to finish requests; on a loaded 2-core machine that
    # has taken over 10 s.
    deadline = time.monotonic() + 40
    while (left := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, f"processes outlived the server: {left}"


@pytest.fixture
def fake_mlflow(tmp_path):
    """A bin folder whose `mlflow` (and `psql`) records its argv, environment and whether the
    auth config exists, then exits 99, or with FAKE_WAIT_FOR_TERM set waits for SIGTERM and
    exits 0: the deploy scripts run against it start no server."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    log = tmp_path / "fake-log"
    log.mkdir()
    script = f"""#!/bin/sh
printf '%s\\n' "$0" "$@" > {log}/argv
env > {log}/env
[ -f "${{MLFLOW_AUTH_CONFIG_PATH:-/nonexistent}}" ] && echo yes > {log}/config-existed
[ -n "${{FAKE_WAIT_FOR_TERM:-}}" ] || exit 99
trap 'echo term > {log}/term; exit 0' TERM
echo started > {log}/started
while :; do sleep 0.05; done
"""
    for name in ("mlflow", "psql"):
        (bin_dir / name).write_text(script)
        (bin_dir / name).chmod(0o755)
    return {"bin": bin_dir, "log": log}


def _script_env(fake_mlflow, tmp_path, **overrides) -> dict[str, str]:
    """A complete, valid environment for the deploy scripts, fake `mlflow`/`psql` first on
    PATH, a private TMPDIR; ``overrides`` replace (or, as None, remove) variables."""
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = {
        "PATH": f"{fake_mlflow['bin']}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "TMPDIR": str(tmp_path / "tmp"),
        "MLFLOW_BACKEND_STORE_URI": "postgresql://mlflow:Db-pw-4e9f1c@127.0.0.1:9/mlflow",
        "MLFLOW_AUTH_DATABASE_URI": "postgresql://mlflow:Db-pw-4e9f1c@127.0.0.1:9/mlflow_auth",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path / "artifacts"),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "Admin-pw-77d2a0",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "Flask-key-0b5e3d",
        "MLFLOW_DB_PASSWORD": "Db-pw-4e9f1c",
        "OPTUNA_DB_PASSWORD": "Optuna-pw-19ac6e",
        "PGHOST": "/nonexistent",
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def _refusal(command: list[str], env: dict[str, str]) -> list[str]:
    """Run a deploy entry point expected to refuse its environment: it exits 1 within seconds,
    starting nothing; returns its stderr lines."""
    started = time.monotonic()
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert time.monotonic() - started < 5
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    for line in lines:
        assert line.startswith("refusing to start: ") and line.endswith(FIX), line
        assert "change-me" not in line, "the refused value is not printed"
    return lines


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("MLFLOW_AUTH_ADMIN_PASSWORD", "change-me-mlflow-admin", "MLFLOW_AUTH_ADMIN_PASSWORD is"),
        ("MLFLOW_FLASK_SERVER_SECRET_KEY", "change-me-flask-session-key",
         "MLFLOW_FLASK_SERVER_SECRET_KEY is"),
        ("MLFLOW_BACKEND_STORE_URI", "postgresql://mlflow:change-me-mlflow-db@postgres:5432/mlflow",
         "the password in MLFLOW_BACKEND_STORE_URI is"),
        ("MLFLOW_AUTH_DATABASE_URI",
         "postgresql://mlflow:change-me-mlflow-db@postgres:5432/mlflow_auth",
         "the password in MLFLOW_AUTH_DATABASE_URI is"),
        ("AWS_SECRET_ACCESS_KEY", "change-me-s3-secret-key", "AWS_SECRET_ACCESS_KEY is"),
    ],
)  # fmt: skip
def test_server_script_refuses_example_secrets(fake_mlflow, tmp_path, name, value, says):
    env = _script_env(fake_mlflow, tmp_path, **{name: value})
    (line,) = _refusal(["sh", str(SERVER_SCRIPT)], env)
    assert says in line
    assert not (fake_mlflow["log"] / "argv").exists(), "mlflow was started"
    assert not list((tmp_path / "tmp").iterdir()), "no auth config was written"


def test_server_script_passes_secrets_by_environment(fake_mlflow, tmp_path):
    """With real secrets the script starts `mlflow server`, with no secret among its arguments
    (MLflow reads them from the environment), the auth config present while it runs and gone
    after, and exits with mlflow's status."""
    env = _script_env(fake_mlflow, tmp_path)
    proc = subprocess.run(["sh", str(SERVER_SCRIPT)], env=env, capture_output=True, text=True,
                          timeout=30)  # fmt: skip
    assert proc.returncode == 99, proc.stderr
    argv = (fake_mlflow["log"] / "argv").read_text().splitlines()
    assert argv[1] == "server" and "--serve-artifacts" in argv and "basic-auth" in argv
    for secret in ("Db-pw-4e9f1c", "Admin-pw-77d2a0", "Flask-key-0b5e3d", "postgresql://"):
        assert not [arg for arg in argv if secret in arg], argv
    seen = dict(
        line.split("=", 1) for line in (fake_mlflow["log"] / "env").read_text().splitlines()
        if "=" in line
    )  # fmt: skip
    assert seen["MLFLOW_BACKEND_STORE_URI"] == env["MLFLOW_BACKEND_STORE_URI"]
    assert seen["MLFLOW_ARTIFACTS_DESTINATION"] == env["MLFLOW_ARTIFACTS_DESTINATION"]
    assert (fake_mlflow["log"] / "config-existed").exists()
    assert not list((tmp_path / "tmp").iterdir()), "the auth config folder was left behind"


def test_server_script_forwards_sigterm_and_cleans_up(fake_mlflow, tmp_path):
    env = _script_env(fake_mlflow, tmp_path, FAKE_WAIT_FOR_TERM="1")
    with open(tmp_path / "stderr", "w") as stderr:
        proc = subprocess.Popen(["sh", str(SERVER_SCRIPT)], env=env, stderr=stderr)
    try:
        deadline = time.monotonic() + 10
        while not (fake_mlflow["log"] / "started").exists():
            assert proc.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "mlflow (fake) was not started"
            time.sleep(0.05)
        assert len(list((tmp_path / "tmp").glob("*/basic_auth.ini"))) == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0, "exits with mlflow's status"
    finally:
        proc.kill()
    assert (fake_mlflow["log"] / "term").read_text().strip() == "term", "SIGTERM forwarded"
    assert not list((tmp_path / "tmp").iterdir()), "the auth config folder was left behind"


def test_postgres_init_refuses_example_passwords(fake_mlflow, tmp_path):
    env = _script_env(fake_mlflow, tmp_path, MLFLOW_DB_PASSWORD="change-me-mlflow-db")
    (line,) = _refusal(["sh", str(REPO / "deploy" / "postgres-init.sh")], env)
    assert "MLFLOW_DB_PASSWORD is" in line
    assert not (fake_mlflow["log"] / "argv").exists(), "psql was run"
    # With real ones psql runs, the passwords in its environment, not among its arguments.
    env = _script_env(fake_mlflow, tmp_path)
    proc = subprocess.run(["sh", str(REPO / "deploy" / "postgres-init.sh")], env=env,
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert proc.returncode == 99, proc.stderr
    argv = (fake_mlflow["log"] / "argv").read_text()
    assert "Db-pw-4e9f1c" not in argv and "Optuna-pw-19ac6e" not in argv


def _example_env(service: dict) -> dict[str, str]:
    """A service's environment as compose builds it from an unedited copy of .env.example."""
    example = dict(
        line.split("=", 1)
        for line in (REPO / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )

    def value(match: re.Match) -> str:
        name, op, arg = match.groups()
        return example.get(name, arg if op == "-" else "")

    pattern = re.compile(r"\$\{([A-Z0-9_]+)(?::([?-])([^}]*))?\}")
    return {k: pattern.sub(value, str(v)) for k, v in service.get("environment", {}).items()}


def _holds_example(value: str) -> bool:
    return value.startswith("change-me") or bool(re.search(r"://[^:/@]+:change-me[^@]*@", value))


def test_compose_refuses_the_example_env(compose, fake_mlflow, tmp_path):
    """Every service that takes a secret refuses an unedited .env.example, naming each variable
    that holds a placeholder: its entry point is run here as compose would run it."""
    checked = set()
    for name, service in compose["services"].items():
        env = _example_env(service)
        placeholders = sorted(k for k, v in env.items() if _holds_example(v))
        if not placeholders:
            continue
        entrypoint = service.get("entrypoint") or []
        if entrypoint[1:2] == [GUARD_IN_CONTAINER]:
            assert f"./deploy/refuse-example-secrets.sh:{GUARD_IN_CONTAINER}:ro" in service.get(
                "volumes", []
            ), name
            command = ["sh", str(GUARD), *entrypoint[2 : entrypoint.index("--")]]
        elif service.get("command") == ["/app/deploy/mlflow-server.sh"]:
            command = ["sh", str(SERVER_SCRIPT)]
            env["PATH"] = _script_env(fake_mlflow, tmp_path)["PATH"]
        else:
            pytest.fail(f"{name} takes {placeholders} but does not refuse example values")
        lines = _refusal(command, env)
        named = sorted(
            k for k in placeholders if any(f" {k} is the example" in line for line in lines)
        )
        assert named == placeholders and len(lines) == len(placeholders), (name, lines)
        checked.add(name)
    assert {"postgres", "object-store", "create-bucket", "mlflow", "trainer", "tuner"} <= checked


@pytest.mark.parametrize(("given", "seen"), [(None, "false"), ("true", "true")])
def test_server_script_runs_no_job_runner_unless_asked(fake_mlflow, tmp_path, given, seen):
    """MLflow's job runner (GenAI jobs: 7 worker processes of ~260 MB) is off by default; a
    deployment that wants it sets MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true."""
    env = _script_env(fake_mlflow, tmp_path, MLFLOW_SERVER_ENABLE_JOB_EXECUTION=given)
    subprocess.run(["sh", str(SERVER_SCRIPT)], env=env, capture_output=True, timeout=30)
    lines = (fake_mlflow["log"] / "env").read_text().splitlines()
    assert f"MLFLOW_SERVER_ENABLE_JOB_EXECUTION={seen}" in lines


def test_the_study_lock_survives_a_lost_database_session(postgres, experiment_name):
    """PostgreSQL restarted (or failed over) under a worker: its lock's session is gone, and
    the worker died at its next lock with SQLAlchemy's traceback, exit 1. It now takes a new
    session, and the lock works as before: another session cannot take it while held."""
    import sqlalchemy

    from mnist_tracker.workflows.study import StudyLock

    storage = pg_url(postgres, "optuna", "optuna")
    lock = StudyLock.open(storage, experiment_name)
    other = sqlalchemy.create_engine(storage)
    try:
        with lock.held():
            pid = lock._pg.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one()
        with other.connect() as conn:  # what a restart does to the lock's session
            conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            conn.commit()
        with lock.held():
            new_pid = lock._pg.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one()
            with other.connect() as conn:
                taken = conn.execute(
                    sqlalchemy.text("SELECT pg_try_advisory_lock(:k)"), {"k": lock._key}
                ).scalar_one()
        assert new_pid != pid and taken is False
    finally:
        lock.close()
        other.dispose()


@contextlib.contextmanager
def private_postgres():
    """A PostgreSQL of the test's own (the session's serves other tests): yields (its
    connection info as ``postgres`` gives it, restart(seconds down))."""
    root = tempfile.mkdtemp(prefix="mnist-tracker-pg-restart-", dir=SYSTEM_TMP)
    os.chmod(root, 0o755)
    data_dir, port = os.path.join(root, "data"), free_port()
    env = dict(os.environ, MLFLOW_DB_PASSWORD="m-pw-restart", OPTUNA_DB_PASSWORD="o-pw-restart")
    script = ["sh", str(REPO / "deploy" / "local-postgres.sh")]
    postgres = {"host": "127.0.0.1", "port": port, "optuna_password": "o-pw-restart"}

    def run(*args):
        subprocess.run([*script, *args], env=env, check=True, capture_output=True)

    def restart(down_s: float, then=None) -> None:
        """Stop the database; start it again ``down_s`` later (in a thread when ``then``:
        ``then()`` runs meanwhile, with the database down)."""
        run("stop", data_dir)
        if then is None:
            time.sleep(down_s)
            run("start", data_dir, str(port))
            return
        starter = threading.Timer(down_s, run, args=("start", data_dir, str(port)))
        starter.start()
        try:
            then()
        finally:
            starter.join()

    try:
        run("start", data_dir, str(port))
        yield postgres, restart
    finally:
        subprocess.run([*script, "stop", data_dir], env=env, capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def test_the_study_lock_waits_for_a_restarting_database(experiment_name):
    """Between trials, a worker takes the study lock: a database restarting then ended the
    worker (one reconnect, at once); it now waits, as the trials do (study.OUTAGE_S)."""
    from mnist_tracker.workflows.study import StudyLock

    with private_postgres() as (postgres, restart):
        lock = StudyLock.open(pg_url(postgres, "optuna", "optuna"), experiment_name)
        waited = []

        def take_the_lock():
            start = time.monotonic()
            with lock.held():
                waited.append(time.monotonic() - start)

        try:
            with lock.held():
                pass
            restart(3.0, then=take_the_lock)  # the lock asked for with the database down
            assert waited and waited[0] > 1.0, f"took the lock after {waited} s, database down"
        finally:
            lock.close()


def test_a_postgres_restart_mid_trial_is_ridden_out(server_uri, experiment_name, cli_env):
    """A PostgreSQL of its own, restarted while a worker trains: the trial's reports, result
    and heartbeats wait for it (up to study.OUTAGE_S) and the study ends at its total. Before,
    the worker failed its trial and stopped (exit 2), and Optuna's heartbeat thread died with
    a traceback, leaving a live trial taken for dead. (The calls between trials are tested
    one by one below: a restart timed to land between two trials lands anywhere.)"""
    with private_postgres() as (postgres, restart):
        storage = pg_url(postgres, "optuna", "optuna")
        command = [*_tune_command(postgres, experiment_name, "restart", 2, limit_train=400),
                   "--epochs", "3", "--heartbeat-interval", "1", "--grace-period", "30",
                   "--tracking-uri", server_uri]  # fmt: skip
        worker = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env=cli_env)  # fmt: skip
        wait_for_running_trial(storage, "restart", worker, deadline=time.monotonic() + 180)
        restart(2.0)  # down for longer than a heartbeat and an epoch's report
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err[-3000:]
        assert "Traceback" not in err and "Exception in thread" not in err, err[-3000:]
        trials = optuna.load_study(study_name="restart", storage=storage).get_trials()
        assert [t.state for t in trials] == [TrialState.COMPLETE] * 2


def test_a_study_between_trials_waits_for_a_restarting_database(experiment_name):
    """What a worker asks the database between trials and as a study closes: the stale-trial
    check, a new trial's params, the study's own attributes (results_logged, the final's
    claim). Each gave up at once: a restart in that second stopped the worker, its trial
    counted failed, the parent RUNNING or no final. Each now waits (study.OUTAGE_S)."""
    from mnist_tracker.workflows.study import TuneSettings, open_storage

    with private_postgres() as (postgres, restart):
        url = pg_url(postgres, "optuna", "optuna")
        storage = open_storage(TuneSettings("cnn", storage=url))
        study = optuna.create_study(study_name=experiment_name, storage=storage)
        trial = study.ask()

        def between_trials():
            optuna.storages.fail_stale_trials(study)
            trial.suggest_float("lr", 1e-4, 1e-1, log=True)
            study.set_user_attr("results_logged", True)

        restart(3.0, then=between_trials)
        again = optuna.load_study(study_name=experiment_name, storage=url)
        assert again.user_attrs == {"results_logged": True}
        assert list(again.trials[0].params) == ["lr"]
