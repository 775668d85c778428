"""The team stack, natively: PostgreSQL, the authenticated tracking server started with the
compose file's own command, tuning workers on a PostgreSQL study, and the compose file."""

from __future__ import annotations

import base64
import re
import subprocess
import time
import urllib.error
import urllib.request

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from .conftest import BIN, REPO, SUBSET, pg_url, wait_for_running_trial

pytestmark = pytest.mark.slow


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


def test_training_run_through_the_authenticated_server(logged_in, experiment_name, cli_env):
    proc = subprocess.run(
        [str(BIN / "mnist-tracker"), "train", "--model", "cnn", "--epochs", "1",
         "--limit-train", "200", "--limit-test", "100", "--data-dir", str(SUBSET),
         "--experiment", experiment_name],
        capture_output=True, text=True, env=cli_env, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    exp = MlflowClient().get_experiment_by_name(experiment_name)
    (run,) = MlflowClient().search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    paths = {a.path for a in MlflowClient().list_artifacts(run.info.run_id, "plots")}
    assert "plots/learning_curves.png" in paths, "artifacts went through the served store"
    assert logged_in["password"] not in proc.stderr + proc.stdout


def _tune_command(postgres, experiment_name, study, trials, extra=()):
    return [
        str(BIN / "mnist-tracker"), "tune", "--model", "cnn", "--trials", str(trials),
        "--epochs", "1", "--limit-train", "200", "--val-size", "100", "--pruner", "none",
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


def test_two_workers_on_a_postgres_study(postgres, logged_in, experiment_name, cli_env):
    study_name = f"pg-{experiment_name}"
    command = _tune_command(postgres, experiment_name, study_name, 8)
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=cli_env)
        for _ in range(2)
    ]  # fmt: skip
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
    command = _tune_command(postgres, experiment_name, study_name, 4, extra)
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
    for flag in ("--serve-artifacts", "--app-name basic-auth", "--allowed-hosts",
                 "--artifacts-destination", "--backend-store-uri"):  # fmt: skip
        assert flag in script
    assert "mlflow" in mlflow["environment"]["MLFLOW_ALLOWED_HOSTS"].split(",")
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    assert mlflow["environment"]["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://")
