"""`mlflow run . --env-manager local` end to end: one complete run, no second one; a refused
one says why on its run.

The plumbing (declared and undeclared parameters, the run `mlflow run` creates) is the same
for every model, so it runs on the cnn: an alexnet run writes a ~230 MB model and a ~650 MB
checkpoint for no more proof. alexnet's own path is tested in-process (test_features.py,
test_models.py)."""

from __future__ import annotations

import subprocess

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from .conftest import BIN, REPO, SUBSET

pytestmark = pytest.mark.slow


def test_mlflow_run_main_entry_point(server_uri, experiment_name, cli_env, tmp_path):
    cli_env["MLFLOW_TRACKING_URI"] = server_uri
    cli_env["MNIST_DATA_DIR"] = str(SUBSET)
    proc = subprocess.run(
        [
            str(BIN / "mlflow"),
            "run",
            str(REPO),
            "--env-manager",
            "local",
            "--experiment-name",
            experiment_name,
            "-P",
            "model=cnn",
            "-P",
            "seed=7",
            "-P",
            "epochs=1",
            "-P",
            "limit_train=128",
            "-P",
            "limit_test=64",
            "-P",
            "batch_size=32",
            "-P",
            "lr=0.002",
            "-P",
            "pretrained=false",
        ],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "the command logs into the run `mlflow run` created"
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "main"
    assert run.data.tags["mlflow.source.type"] == "PROJECT", "MLflow's own, not overwritten"
    params = run.data.params
    expected = {
        "model": "cnn",
        "seed": "7",  # declared, not its default: the value given reaches the command
        "epochs": "1",
        "limit_train": "128",
        "limit_test": "64",
        "batch_size": "32",
        "lr": "0.002",
        "pretrained": "false",
        "freeze": "false",
        "optimizer": "adam",
        "train_size": "128",
        "test_size": "64",
    }
    for key, value in expected.items():
        assert params[key] == value, key
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    assert [m.step for m in history] == [1]
    assert run.data.metrics["training_time_s"] > 0
    models = mlflow.search_logged_models(experiment_ids=[exp.experiment_id], output_format="list")
    assert [m.source_run_id for m in models] == [run.info.run_id]


def test_mlflow_run_refused_says_why_on_its_run(server_uri, experiment_name, cli_env, tmp_path):
    """MLflow ends the run it created FAILED when the command exits 2; the refusal's line is
    that run's description, so the UI says why (it held only the parameters)."""
    cli_env["MLFLOW_TRACKING_URI"] = server_uri
    command = [str(BIN / "mlflow"), "run", str(REPO), "--env-manager", "local",
               "--experiment-name", experiment_name, "-P", "model=nope"]  # fmt: skip
    proc = subprocess.run(
        command, capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=600
    )
    assert proc.returncode != 0
    assert "Error: unknown model 'nope'" in proc.stderr, proc.stderr[-3000:]
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert run.info.status == "FAILED"
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("Stopped with exit code 2: unknown model 'nope'"), note
    assert note.removeprefix("Stopped with exit code 2: ") in proc.stderr
