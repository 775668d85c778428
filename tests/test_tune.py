"""Optuna search against a real MLflow server on the committed subset."""

from __future__ import annotations

import shutil
import subprocess
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from mnist_tracker import data, tracking
from mnist_tracker.workflows.study import TuneSettings
from mnist_tracker.workflows.tune import tune

from .conftest import BIN, REPO, SUBSET, wait_for_running_trial

pytestmark = pytest.mark.slow

TINY = dict(epochs=2, limit_train=200, val_size=100, limit_test=100)


def _children(parent_run_id: str):
    client = MlflowClient()
    parent = client.get_run(parent_run_id)
    return client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"
    )


def test_four_trial_study(server_uri, experiment_name):
    settings = TuneSettings(
        "cnn", trials=4, pruner="none", sampler="random", experiment=experiment_name, **TINY
    )
    outcome = tune(settings, data_dir=SUBSET)
    client = MlflowClient()
    parent = client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name == outcome.study.study_name
    assert parent.data.params["trials"] == "4" and parent.data.params["sampler"] == "random"
    assert parent.data.metrics["n_complete"] == 4
    assert parent.data.metrics["n_pruned"] == 0 and parent.data.metrics["n_failed"] == 0

    children = _children(outcome.parent_run_id)
    assert len(children) == 4
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == [0, 1, 2, 3]
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.state"] == "COMPLETE"
        assert run.data.tags["optuna.study_name"] == outcome.study.study_name
        assert "test_accuracy" not in run.data.metrics, "trials never see the test set"
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [
            1,
            2,
        ]
    best_child = max(children, key=lambda r: r.data.metrics["val_accuracy"])
    assert parent.data.metrics["best_value"] == pytest.approx(
        best_child.data.metrics["val_accuracy"]
    )
    assert outcome.best_value == pytest.approx(parent.data.metrics["best_value"])
    for name, value in outcome.best_params.items():
        assert parent.data.params[f"best_{name}"] == tracking_format(value)
        assert best_child.data.params.get(name, best_child.data.params.get(f"model.{name}")) == (
            tracking_format(value)
        )
    artifacts = {a.path for a in client.list_artifacts(outcome.parent_run_id, "optuna")}
    assert artifacts == {
        f"optuna/{n}.png"
        for n in (
            "optimization_history",
            "param_importances",
            "parallel_coordinate",
            "intermediate_values",
        )
    }
    final = client.get_run(outcome.final_run_id)
    assert final.data.tags["mnist_tracker.role"] == "study_result"
    assert final.data.params["val_size"] == "0"
    assert 0 <= final.data.metrics["test_accuracy"] <= 1
    assert parent.data.tags.get("final_run_id") in (None, outcome.final_run_id)
    assert client.get_run(outcome.parent_run_id).data.tags["final_run_id"] == outcome.final_run_id


def tracking_format(value) -> str:
    from mnist_tracker.config import format_param

    return format_param(value)


def test_eager_pruner_kills_and_tags(server_uri, experiment_name):
    settings = TuneSettings("cnn", trials=2, final=False, experiment=experiment_name, **TINY)
    # Any validation accuracy is below 1.01: every trial is pruned at its first report.
    outcome = tune(settings, data_dir=SUBSET, pruner=optuna.pruners.ThresholdPruner(lower=1.01))
    children = _children(outcome.parent_run_id)
    assert len(children) == 2
    for run in children:
        assert run.info.status == "KILLED"
        assert run.data.tags["optuna.state"] == "PRUNED"
        assert len(MlflowClient().get_metric_history(run.info.run_id, "val_accuracy")) == 1
    assert outcome.counts == {"complete": 0, "pruned": 2, "failed": 0}
    assert outcome.final_run_id is None


def test_failing_trial_is_failed_and_the_study_goes_on(server_uri, experiment_name):
    def explode(trial, epoch, metrics):
        if trial.number == 1:
            raise RuntimeError("GPU fell off the bus")

    settings = TuneSettings(
        "cnn", trials=3, pruner="none", final=False, experiment=experiment_name, **TINY
    )
    outcome = tune(settings, data_dir=SUBSET, epoch_hook=explode)
    assert outcome.counts == {"complete": 2, "pruned": 0, "failed": 1}
    by_number = {
        int(r.data.tags["optuna.trial_number"]): r for r in _children(outcome.parent_run_id)
    }
    assert sorted(by_number) == [0, 1, 2]
    failed = by_number[1]
    assert failed.info.status == "FAILED" and failed.data.tags["optuna.state"] == "FAIL"
    assert "GPU fell off the bus" in failed.data.tags["error"]
    assert {by_number[0].info.status, by_number[2].info.status} == {"FINISHED"}


def test_search_never_reads_the_test_set(server_uri, experiment_name, tmp_path):
    """The test files are absent: the search still runs, so it cannot have used them."""
    for spec in data.FILES.values():
        if spec.key.startswith("train"):
            shutil.copy(SUBSET / f"{spec.name}.gz", tmp_path / f"{spec.name}.gz")
    shutil.copy(SUBSET / data.MANIFEST_NAME, tmp_path / data.MANIFEST_NAME)
    settings = TuneSettings(
        "cnn", trials=2, pruner="none", final=False, experiment=experiment_name, **TINY
    )
    outcome = tune(settings, data_dir=tmp_path)
    assert outcome.counts["complete"] == 2
    with pytest.raises(data.DataError, match="t10k-images-idx3-ubyte not found"):
        data.load_mnist(tmp_path, download_missing=False)


def test_two_workers_share_one_journal_study(server_uri, experiment_name, cli_env, tmp_path):
    journal = tmp_path / "study.journal"
    command = [
        str(BIN / "mnist-tracker"), "tune", "--model", "cnn", "--trials", "6", "--epochs", "1",
        "--limit-train", "150", "--val-size", "100", "--pruner", "none", "--no-final",
        "--storage", f"journal:{journal}", "--study-name", "shared",
        "--data-dir", str(SUBSET), "--tracking-uri", server_uri, "--experiment", experiment_name,
    ]  # fmt: skip
    workers = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=cli_env)
        for _ in range(2)
    ]  # fmt: skip
    outputs = [w.communicate(timeout=600) for w in workers]
    for worker, (_, err) in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, err[-2000:]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.load_study(study_name="shared", storage=storage)
    trials = study.get_trials()
    assert len(trials) == 6 and all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(6))
    parent_id = study.user_attrs["mlflow_parent_run_id"]
    children = _children(parent_id)
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == list(range(6)), "one child run per trial, no duplicates"
    exp = MlflowClient().get_experiment_by_name(experiment_name)
    parents = MlflowClient().search_runs([exp.experiment_id], "tags.`mnist_tracker.role` = 'study'")
    assert [p.info.run_id for p in parents] == [parent_id]
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["n_complete"] == 6
    # Both workers ran trials.
    assert all("trial " in err for _, err in outputs)


BAD = [
    (["--trials", "0"], "trials must be at least 1"),
    (["--timeout", "0"], "timeout must be positive"),
    (["--sampler", "grid"], "'grid' is not one of"),
    (["--pruner", "sometimes"], "'sometimes' is not one of"),
    (["--val-size", "1000"], "not smaller than the training set"),
    (["--storage", "journal:/no/such/dir/j.log", "--val-size", "100"], "folder /no/such/dir"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_tune_input(args, message, sqlite_uri):
    from click.testing import CliRunner

    from mnist_tracker.cli import main

    from .test_cli import assert_no_runs

    result = CliRunner().invoke(
        main, ["tune", "--model", "cnn", "--tracking-uri", sqlite_uri, *args]
    )
    assert result.exit_code == 2, result.output
    assert message in result.stderr.strip().splitlines()[-1]
    assert_no_runs(sqlite_uri)


def test_unreachable_storage_fails_fast_without_the_password(sqlite_uri):
    from click.testing import CliRunner

    from mnist_tracker.cli import main

    from .test_cli import assert_no_runs

    url = "postgresql://optuna:s3cret-pw@127.0.0.1:9/optuna"
    start = time.monotonic()
    result = CliRunner().invoke(
        main, ["tune", "--model", "cnn", "--storage", url, "--tracking-uri", sqlite_uri]
    )
    elapsed = time.monotonic() - start
    assert result.exit_code == 2
    assert elapsed < 10, f"took {elapsed:.1f}s"
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith("Error: cannot open storage postgresql://optuna:***@127.0.0.1:9/optuna")
    assert "s3cret-pw" not in result.output
    assert_no_runs(sqlite_uri)


def test_mlflow_run_tune_entry_point(server_uri, experiment_name, cli_env, tmp_path):
    cli_env["MLFLOW_TRACKING_URI"] = server_uri
    cli_env["MNIST_DATA_DIR"] = str(SUBSET)
    proc = subprocess.run(
        [str(BIN / "mlflow"), "run", str(REPO), "-e", "tune", "--env-manager", "local",
         "--experiment-name", experiment_name, "-P", "model=cnn", "-P", "trials=2",
         "-P", "epochs=1", "-P", "limit_train=150", "-P", "val_size=100", "-P", "limit_test=100"],
        capture_output=True, text=True, env=cli_env, cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    exp = client.get_experiment_by_name(experiment_name)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("mnist_tracker.role") == "study"]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["mlflow.project.entryPoint"] == "tune"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(children) == 2
    finals = [r for r in runs if r.data.tags.get("mnist_tracker.role") == "study_result"]
    assert len(finals) == 1 and finals[0].info.status == "FINISHED"
    assert parent.data.metrics["n_complete"] + parent.data.metrics["n_pruned"] == 2
    assert tracking.attached_run_id() is None


def test_killed_worker_trial_is_failed_by_heartbeat_and_retried(
    server_uri, experiment_name, cli_env, tmp_path
):
    """SIGKILL one worker mid-trial: its trial goes FAIL by heartbeat, another worker retries
    it, the study still ends with its total, and no MLflow run is left RUNNING."""
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    command = [
        str(BIN / "mnist-tracker"), "tune", "--model", "cnn", "--trials", "3", "--epochs", "2",
        "--limit-train", "400", "--val-size", "100", "--pruner", "none", "--no-final",
        "--storage", storage, "--study-name", "hb", "--heartbeat-interval", "1",
        "--grace-period", "3", "--data-dir", str(SUBSET), "--tracking-uri", server_uri,
        "--experiment", experiment_name,
    ]  # fmt: skip
    with open(tmp_path / "victim.log", "w") as log:
        victim = subprocess.Popen(command, stderr=log, stdout=log, env=cli_env)
    # Kill the victim while a trial of its own is mid-flight, found from the study itself
    # (RUNNING with its MLflow run created) rather than by a sleep: on a fast machine a
    # fixed delay can land after the first trial has already finished.
    dead_number = wait_for_running_trial(storage, "hb", victim, deadline=time.monotonic() + 180)
    victim.kill()
    victim.wait(timeout=30)
    study = optuna.load_study(study_name="hb", storage=storage)
    running = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert running == [dead_number], "the victim was killed inside the trial it was running"
    survivor = subprocess.run(command, capture_output=True, text=True, env=cli_env, timeout=600)
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    assert "its worker died" in survivor.stderr

    study = optuna.load_study(study_name="hb", storage=storage)
    trials = study.get_trials()
    failed = [t for t in trials if t.state == TrialState.FAIL]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert [t.number for t in failed] == [dead_number]
    assert len(complete) == 3, "the total is reached without counting the dead attempt"
    retries = [t for t in complete if t.system_attrs.get("failed_trial") == dead_number]
    assert len(retries) == 1 and retries[0].params == failed[0].params

    children = _children(study.user_attrs["mlflow_parent_run_id"])
    assert sorted(r.info.status for r in children) == ["FAILED", "FINISHED", "FINISHED", "FINISHED"]
    dead = next(r for r in children if r.info.status == "FAILED")
    assert dead.data.tags["optuna.trial_number"] == str(dead_number)
    assert dead.data.tags["optuna.state"] == "FAIL"
