"""Optuna search against a real MLflow server on the committed subset."""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import time
import warnings
from dataclasses import replace

import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from mnist_tracker import data, tracking
from mnist_tracker.paths import run_dir
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


# A trial the real pruners must stop: at a 20x smaller lr, with a quarter of the optimizer
# steps, its first epoch stays near chance (about 0.13 here) while the strong ones reach about
# 0.57 on 400 images. Every parameter is fixed, so the sampler (unseeded with a storage) draws
# nothing, and training is seeded: each run repeats the same accuracies.
STRONG = dict(
    lr=2e-3, weight_decay=1e-6, batch_size=32, optimizer="adam", dropout_conv=0.0, dropout_fc=0.1
)
HOPELESS = dict(STRONG, lr=1e-4, batch_size=128)
PRUNE_TINY = dict(TINY, limit_train=400)  # 200 images: 7 steps an epoch, too few to learn


def _tune_enqueued(pruner: str, enqueued: list[dict], experiment_name, tmp_path):
    """``tune`` with the real ``pruner`` (``TuneSettings.pruner``, built by the product) on a
    journal study whose trials are ``enqueued`` in that order."""
    journal = tmp_path / "study.journal"
    study_name = f"prune-{pruner}"
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    for params in enqueued:
        study.enqueue_trial(params)
    settings = TuneSettings(
        "cnn", trials=len(enqueued), pruner=pruner, final=False, storage=f"journal:{journal}",
        study_name=study_name, experiment=experiment_name, **PRUNE_TINY,
    )  # fmt: skip
    return tune(settings, data_dir=SUBSET)


def _assert_only_last_pruned(outcome, n_trials: int) -> None:
    """The last trial (the hopeless one) is PRUNED after its first epoch of the two, its child
    run KILLED and tagged; the others COMPLETE with both epochs, their runs FINISHED."""
    epochs = PRUNE_TINY["epochs"]
    trials = sorted(outcome.study.get_trials(), key=lambda t: t.number)
    values = {t.number: t.intermediate_values for t in trials}
    assert [t.state for t in trials] == [TrialState.COMPLETE] * (n_trials - 1) + [
        TrialState.PRUNED
    ], values
    pruned = trials[-1]
    assert sorted(pruned.intermediate_values) == [1], "pruned after fewer epochs than the max"
    assert len(pruned.intermediate_values) < epochs
    for trial in trials[:-1]:
        assert sorted(trial.intermediate_values) == list(range(1, epochs + 1))
    assert outcome.counts == {"complete": n_trials - 1, "pruned": 1, "failed": 0}

    client = MlflowClient()
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in _children(outcome.parent_run_id)}
    assert sorted(runs) == list(range(n_trials))
    killed = runs[pruned.number]
    assert killed.info.status == "KILLED"
    assert killed.data.tags["optuna.state"] == "PRUNED"
    assert killed.info.run_id == pruned.user_attrs["mlflow_run_id"]
    steps = [m.step for m in client.get_metric_history(killed.info.run_id, "val_accuracy")]
    assert steps == [1], "the pruned run logged fewer epochs than the max"
    for number in range(n_trials - 1):
        assert runs[number].info.status == "FINISHED"
        assert runs[number].data.tags["optuna.state"] == "COMPLETE"
    parent = client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["n_pruned"] == 1
    assert parent.data.metrics["n_complete"] == n_trials - 1


def test_median_pruner_prunes_a_hopeless_trial(server_uri, experiment_name, tmp_path):
    """``--pruner median`` as the product builds it (3 startup trials, no warm-up): the
    fourth trial, hopeless, is below the median of the first three at epoch 1."""
    outcome = _tune_enqueued("median", [STRONG] * 3 + [HOPELESS], experiment_name, tmp_path)
    assert type(outcome.study.pruner) is optuna.pruners.MedianPruner
    _assert_only_last_pruned(outcome, 4)


def test_hyperband_pruner_prunes_a_hopeless_trial(server_uri, experiment_name, tmp_path):
    """``--pruner hyperband`` as the product builds it (min_resource 1, max_resource the
    epochs): with 2 epochs it has one bracket, whose first rung is epoch 1; a trial is
    promoted past it only if it is the best there so far, which the hopeless second is not."""
    outcome = _tune_enqueued("hyperband", [STRONG, HOPELESS], experiment_name, tmp_path)
    assert type(outcome.study.pruner) is optuna.pruners.HyperbandPruner
    _assert_only_last_pruned(outcome, 2)


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
        "--limit-train", "128", "--val-size", "100", "--pruner", "none", "--no-final",
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
    assert study.user_attrs["mlflow_tracking_uri"] == server_uri, "where the parent is"
    children = _children(parent_id)
    numbers = sorted(int(r.data.tags["optuna.trial_number"]) for r in children)
    assert numbers == list(range(6)), "one child run per trial, no duplicates"
    exp = MlflowClient().get_experiment_by_name(experiment_name)
    parents = MlflowClient().search_runs([exp.experiment_id], "tags.`mnist_tracker.role` = 'study'")
    assert [p.info.run_id for p in parents] == [parent_id]
    assert parents[0].info.status == "FINISHED"
    assert parents[0].data.metrics["n_complete"] == 6
    # Both workers ran trials, and point to the study's parent run in the UI.
    assert all("trial " in err for _, err in outputs)
    view = f"View it: {server_uri}/#/experiments/{exp.experiment_id}/runs/{parent_id}?workflowType="
    assert all(view in err for _, err in outputs), outputs[0][1][-2000:]


BAD = [
    (["--trials", "0"], "trials must be at least 1"),
    (["--timeout", "0"], "timeout must be positive"),
    (["--sampler", "grid"], "'grid' is not one of"),
    (["--pruner", "sometimes"], "'sometimes' is not one of"),
    (["--val-size", "1000"], "not smaller than the training set"),
    (["--storage", "journal:/no/such/dir/j.log", "--val-size", "100"], "folder /no/such/dir"),
    (["--heartbeat-interval", "5", "--grace-period", "6"], "pass --grace-period 10 or more"),
    (["--storage", "mysql://u:pw-7@127.0.0.1:9/o"], "mysql://u:***@127.0.0.1:9/o: mysql has no"),
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


def test_a_storage_that_cannot_be_a_study_s_is_refused_before_a_file_is_made(sqlite_uri, tmp_path):
    """The MLflow tracking store as --storage got Optuna's thirteen tables written into it,
    then a misleading refusal; a folder or /dev/null as a journal left lock files beside it
    or a traceback; a file that is no database a lock file (a hostile test's finds, stop 36).
    Each is now one line, exit 2, and nothing is written."""
    import sqlite3

    from click.testing import CliRunner

    from mnist_tracker.cli import main

    from .test_cli import assert_no_runs

    tracking = tmp_path / "mlflow.db"
    assert sqlite_uri.endswith(str(tracking))
    MlflowClient(sqlite_uri).search_experiments()  # the store exists, with MLflow's tables
    folder = tmp_path / "journals"
    folder.mkdir()
    text = tmp_path / "notes.txt"
    text.write_text("not a database")
    cases = [
        (f"sqlite:///{tracking}", "is an MLflow tracking store; give the study a database"),
        (f"journal:{folder}", f"{folder} is a folder; pass the path of a journal file"),
        ("journal:/dev/null", "/dev/null is no file"),
        (f"sqlite:///{text}", f"{text} is not a SQLite database"),
        (f"journal:{text}", f"{text} is no Optuna journal"),  # the review of stop 36
    ]
    before = sorted(p.name for p in tmp_path.iterdir())
    for storage, message in cases:
        args = ["--val-size", "100", "--tracking-uri", sqlite_uri, "--storage", storage]
        result = CliRunner().invoke(main, ["tune", "--model", "cnn", *args])
        assert result.exit_code == 2, (storage, result.output)
        (line,) = result.stderr.strip().splitlines()
        assert message in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "no lock files, no journal"
    with contextlib.closing(sqlite3.connect(tracking)) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "studies" not in tables and "runs" in tables
    assert_no_runs(sqlite_uri)

    # The tracking store not made yet, named the same by both (the review of stop 36: Optuna
    # made its tables first, and every later run failed in MLflow's migration).
    from mnist_tracker import errors
    from mnist_tracker.workflows.study import StudyLock

    fresh = tmp_path / "sub" / ".." / "fresh.db"
    with pytest.raises(errors.TuneError, match="is an MLflow tracking store"):
        StudyLock.open(f"sqlite:///{fresh}", "s", f"sqlite:///{tmp_path / 'fresh.db'}")
    assert not (tmp_path / "fresh.db").exists() and not (tmp_path / "fresh.db.lock").exists()
    StudyLock.open(f"sqlite:///{tmp_path / 'own.db'}", "s", sqlite_uri).close()  # its own: fine


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


@pytest.mark.parametrize("kind", ["sqlite", "journal"])
def test_killed_worker_trial_is_failed_and_retried(
    kind, server_uri, experiment_name, cli_env, tmp_path
):
    """SIGKILL one worker mid-trial: its trial goes FAIL (by heartbeat; on a journal, which has
    none, by the worker's lock file, freed by the kernel: before, it stayed RUNNING for ever and
    the study never ended), another worker retries it, the study still ends with its total,
    and no MLflow run is left RUNNING."""
    if kind == "sqlite":
        storage = f"sqlite:///{tmp_path / 'optuna.db'}"
        opened = storage
    else:
        storage = f"journal:{tmp_path / 'study.journal'}"
        opened = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(tmp_path / "study.journal"))
        )
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
    dead_number = wait_for_running_trial(opened, "hb", victim, deadline=time.monotonic() + 180)
    victim.kill()
    victim.wait(timeout=30)
    study = optuna.load_study(study_name="hb", storage=opened)
    running = [t.number for t in study.get_trials() if t.state == TrialState.RUNNING]
    assert running == [dead_number], "the victim was killed inside the trial it was running"
    survivor = subprocess.run(command, capture_output=True, text=True, env=cli_env, timeout=600)
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    assert "its worker stopped without ending run" in survivor.stderr
    if kind == "journal":
        assert f"trial {dead_number}: its worker died; it goes back" in survivor.stderr
        assert list((tmp_path / "study.journal.workers").iterdir()) == [], "files cleaned up"

    study = optuna.load_study(study_name="hb", storage=opened)
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


def test_journal_study_lock_leaves_the_backend_its_own_lock(tmp_path):
    """The workers' study lock on a journal is not the journal backend's lock file
    (``PATH.lock``, a symlink): sharing it made every worker's first write wait 30 s, then
    delete the study lock's file, after which two workers could hold the lock at once."""
    import fcntl

    from mnist_tracker.workflows.study import StudyLock, open_storage

    url = f"journal:{tmp_path / 'study.journal'}"
    first = StudyLock.open(url, "s")
    second = None
    try:
        first.acquire()
        start = time.monotonic()
        optuna.create_study(study_name="s", storage=open_storage(TuneSettings("cnn", storage=url)))
        assert time.monotonic() - start < 5, "the journal backend waited on the study lock"
        second = StudyLock.open(url, "s")  # a worker that starts now
        with pytest.raises(BlockingIOError):  # the same lock: it has to wait
            fcntl.flock(second._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        first.close()
        if second is not None:
            second.close()


def test_storage_and_study_name_come_from_the_environment(sqlite_uri, tmp_path, monkeypatch):
    """``--storage`` defaults to ``$MNIST_TRACKER_STORAGE`` and ``--study-name`` to
    ``$MNIST_TRACKER_STUDY`` (the README's way to keep a storage password off the command line,
    and how the compose file's tuners, whose command names neither, meet on one study); an
    option given on the command line wins over its variable."""
    from click.testing import CliRunner

    from mnist_tracker.cli import main

    env_db, option_db = tmp_path / "env.db", tmp_path / "option.db"
    monkeypatch.setenv("MNIST_TRACKER_STORAGE", f"sqlite:///{env_db}")
    monkeypatch.setenv("MNIST_TRACKER_STUDY", "from-env")
    args = ["tune", "--model", "cnn", "--trials", "1", "--epochs", "1", "--limit-train",
            "200", "--val-size", "100", "--pruner", "none", "--no-final", "--data-dir",
            str(SUBSET)]  # fmt: skip

    given = ["--storage", f"sqlite:///{option_db}", "--study-name", "from-option"]
    result = CliRunner().invoke(main, [*args, *given])
    assert result.exit_code == 0, result.output
    assert not env_db.exists(), "the variable's storage was opened though --storage was given"
    assert optuna.get_all_study_names(f"sqlite:///{option_db}") == ["from-option"]

    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"storage sqlite:///{env_db}" in result.stderr
    assert result.stdout.startswith("study from-env: best val_accuracy ")
    storage = f"sqlite:///{env_db}"
    assert optuna.get_all_study_names(storage) == ["from-env"]
    study = optuna.load_study(study_name="from-env", storage=storage)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE]
    parent = MlflowClient().get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.run_name == "from-env"
    assert len(_children(parent.info.run_id)) == 1
    other = optuna.load_study(study_name="from-option", storage=f"sqlite:///{option_db}")
    assert len(other.get_trials()) == 1, "the run without options joined the option's study"


def test_a_retry_that_dies_again_is_retried_not_counted():
    """Optuna's ``failed_trial`` names the first attempt only; a retry that failed too (its
    worker died again) was counted as a failure, and the study ended a trial short."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from mnist_tracker.workflows.study import study_state

    study = optuna.create_study(direction="maximize")
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}

    def add(state, history):
        attrs = {"failed_trial": history[0], "retry_history": history} if history else {}
        study.add_trial(create_trial(state=state, params={"lr": 1e-3}, distributions=space,
                                     system_attrs=attrs))  # fmt: skip

    add(TrialState.FAIL, [])  # trial 0: its worker died
    add(TrialState.FAIL, [0])  # trial 1, its retry: died too
    add(TrialState.WAITING, [0, 1])  # trial 2, the retry of the retry
    state = study_state(study)
    assert (state.counted, state.failed, state.waiting) == (1, 0, 1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_worker_gives_its_trial_back(sig, server_uri, experiment_name, cli_env, tmp_path):
    """Ctrl-C or SIGTERM mid-trial: the trial goes back to the study (FAIL, queued again with
    its params, not counted), so the next worker runs it and the study reaches its total.
    Before, SIGTERM left it RUNNING (a journal study, with no heartbeats, then waited for it
    for ever) and Ctrl-C failed it for good, with Optuna's traceback."""
    journal = tmp_path / "study.journal"
    command = [
        str(BIN / "mnist-tracker"), "tune", "--model", "cnn", "--trials", "2", "--epochs", "3",
        "--limit-train", "800", "--val-size", "100", "--pruner", "none", "--no-final",
        "--storage", f"journal:{journal}", "--study-name", "stop", "--data-dir", str(SUBSET),
        "--tracking-uri", server_uri, "--experiment", experiment_name,
    ]  # fmt: skip
    victim = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=cli_env)  # fmt: skip
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))
    )
    # Trials of 3 epochs: the signal lands mid-trial even on a loaded machine (one landing
    # after the trial's result keeps that result instead: a test of its own).
    number = wait_for_running_trial(storage, "stop", victim, deadline=time.monotonic() + 180)
    victim.send_signal(sig)
    _, err = victim.communicate(timeout=120)
    assert victim.returncode == 128 + sig, err[-3000:]
    assert f"trial {number}: stopped; it goes back to the study" in err, err[-3000:]
    assert "Traceback" not in err
    trials = optuna.load_study(study_name="stop", storage=storage).get_trials()
    assert trials[number].state == TrialState.FAIL
    (queued,) = [t for t in trials if t.state == TrialState.WAITING]
    assert queued.params == trials[number].params

    survivor = subprocess.run(command, capture_output=True, text=True, env=cli_env, timeout=600)
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    study = optuna.load_study(study_name="stop", storage=storage)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) == 2, "the study reaches its total without the stopped attempt"
    assert [t.system_attrs.get("failed_trial") for t in complete].count(number) == 1
    children = _children(study.user_attrs["mlflow_parent_run_id"])
    by_status = sorted((r.info.status, r.data.tags["optuna.state"]) for r in children)
    # The stopped attempt's run: KILLED by its worker, or, where the signal kept the worker from
    # ending it, FAILED by the next one (``_close_dead_trial_runs``); never left RUNNING.
    (stopped,) = [s for s in by_status if s != ("FINISHED", "COMPLETE")]
    assert len(by_status) == 3 and stopped in (("KILLED", "FAIL"), ("FAILED", "FAIL")), by_status
    parent = MlflowClient().get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert (parent.data.metrics["n_complete"], parent.data.metrics["n_failed"]) == (2, 0)


def _refused(sqlite_uri, *args):
    """``tune`` refused in one line, exit 2, nothing tracked: that line."""
    from click.testing import CliRunner

    from mnist_tracker.cli import main

    result = CliRunner().invoke(
        main, ["tune", "--model", "cnn", "--tracking-uri", sqlite_uri, "--val-size", "100",
               "--data-dir", str(SUBSET), *args],
    )  # fmt: skip
    assert result.exit_code == 2, result.output[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def test_a_study_made_to_minimize_is_refused(sqlite_uri, tmp_path):
    """Adopted as it was, its sampler searched for low accuracy and "best" was the worst."""
    from .test_cli import assert_no_runs

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="low", storage=storage, direction="minimize")
    line = _refused(sqlite_uri, "--storage", storage, "--study-name", "low")
    assert "was created to minimize, not to maximize validation accuracy" in line
    assert_no_runs(sqlite_uri)


@pytest.mark.parametrize("deleted_for_good", [False, True], ids=["trash", "gone"])
def test_a_study_whose_parent_run_was_deleted_is_refused(deleted_for_good, sqlite_uri, tmp_path):
    """Its trials nested under a run in the trash, or (deleted for good) each failed at once."""
    from mnist_tracker.workflows.study import PARENT_ATTR

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    client = MlflowClient(sqlite_uri)
    run = client.create_run(client.create_experiment("tune-deleted"))
    client.delete_run(run.info.run_id)
    parent = "0" * 32 if deleted_for_good else run.info.run_id
    study.set_user_attr(PARENT_ATTR, parent)
    line = _refused(sqlite_uri, "--storage", storage, "--study-name", "s")
    assert f"its parent run {parent}" in line
    if deleted_for_good:
        assert f"is not in tracking store {sqlite_uri} (deleted for good, or in another" in line
        assert line.endswith("pass the --tracking-uri of its first worker, or a new --study-name")
    else:
        assert f"is in MLflow's trash; restore it (mlflow runs restore --run-id {parent})" in line
    assert optuna.load_study(study_name="s", storage=storage).trials == []


def test_a_worker_on_another_tracking_store_is_told_the_study_s(sqlite_uri, tmp_path):
    """A worker given another --tracking-uri than the study's first was told that the parent
    run "no longer exists in MLflow" (a hostile test's find, stop 36): it names the store."""
    from mnist_tracker.workflows.study import PARENT_ATTR, STORE_ATTR

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    first = f"sqlite:///{tmp_path / 'first.db'}"
    MlflowClient(sqlite_uri).search_experiments()  # this worker's store exists, as theirs does
    study.set_user_attr(PARENT_ATTR, "0" * 32)
    study.set_user_attr(STORE_ATTR, first)
    line = _refused(sqlite_uri, "--storage", storage, "--study-name", "s")
    assert f"is in tracking store {first}, not in {sqlite_uri}" in line
    assert line.endswith(f"pass --tracking-uri {first}, or a new --study-name")


def test_a_sqlite_url_with_a_driver_gets_the_study_lock(tmp_path):
    """``sqlite+pysqlite:///`` had no lock: two workers made two parent runs."""
    from mnist_tracker.workflows.study import StudyLock

    lock = StudyLock.open(f"sqlite+pysqlite:///{tmp_path / 'o.db'}", "s")
    try:
        with lock.held():
            assert (tmp_path / "o.db.lock").is_file()
    finally:
        lock.close()


def test_an_in_memory_study_ends_at_its_timeout(server_uri, experiment_name):
    """No other worker shares it: the timeout ends the study, results logged, parent FINISHED
    (it stayed RUNNING for ever)."""
    settings = TuneSettings("cnn", trials=5, timeout=0.1, pruner="none", final=False,
                            experiment=experiment_name, **TINY)  # fmt: skip
    outcome = tune(settings, data_dir=SUBSET)
    assert outcome.counts == {"complete": 1, "pruned": 0, "failed": 0}
    parent = MlflowClient().get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED" and parent.data.metrics["n_complete"] == 1


@pytest.mark.parametrize(
    ("checked", "in_memory"),
    [(True, False), (False, False), (True, True)],
    ids=["before-a-trial", "inside-a-trial", "in-memory"],
)
def test_a_server_gone_stops_the_worker_without_burning_trials(
    checked, in_memory, tmp_path, monkeypatch
):
    """The tracking server dies during trial 0: the trial ends into its outbox (its value
    counts, the line says how to send it), and the worker stops in one error instead of
    failing every remaining trial (each counted, some after minutes of retries). Found
    before a trial starts (``check_reachable``), or, when it dies between that check and the
    trial's run, inside it: then the trial goes back to the study. An in-memory study ends
    with the process: it said "start this worker again" and left its parent RUNNING until
    reaped; the parent's FAILED end waits in its outbox, and the line says to start tune."""
    from mnist_tracker import errors
    from mnist_tracker.workflows import tune as tune_mod

    from .conftest import free_port
    from .test_resilience import KillableServer

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    lines: list[str] = []
    server = KillableServer(tmp_path, free_port())

    def kill_in_trial_0(trial, epoch, metrics):
        if trial.number == 0 and epoch == 1:
            server.kill()

    settings = TuneSettings("cnn", trials=3, pruner="none", final=False,
                            storage=None if in_memory else storage, study_name="away",
                            **TINY)  # fmt: skip
    server.start()
    try:  # the server never outlives the test, whatever fails
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # inside a trial: no minutes
        tracking.set_tracking_uri(server.uri)
        if not checked:  # the server passes the check, then is gone when the trial starts
            monkeypatch.setattr(tune_mod, "check_reachable", lambda uri: None)
        with pytest.raises(errors.TuneError) as caught:
            tune(settings, data_dir=SUBSET, echo=lines.append, epoch_hook=kill_in_trial_0)
    finally:
        if server.proc.poll() is None:
            server.kill()
    message = str(caught.value)
    assert message.startswith(f"the tracking server {server.uri} went away"), message
    assert any(line.startswith("trial 0: the tracking server went away") for line in lines)
    if in_memory:
        assert "; this in-memory study ends here; " in message, message
        assert "send the runs it kept (2) with `mnist-tracker sync`" in message  # and the parent
        assert message.endswith("start tune again once the server is back")
        (parent_id,) = [line.split()[-1] for line in lines if ": parent run " in line]
        ops = [json.loads(op) for op in (run_dir(parent_id) / "outbox" / "ops.jsonl").open()]
        assert ops[-1]["op"] == "set_terminated" and ops[-1]["status"] == "FAILED"
        return
    assert "send the runs it kept (1) with `mnist-tracker sync`" in message
    assert message.endswith("start this worker again once the server is back")
    trials = optuna.load_study(study_name="away", storage=storage).get_trials()
    assert trials[0].state == TrialState.COMPLETE  # its value counts; its run waits for sync
    if checked:
        assert len(trials) == 1, "no trial was started against a server known to be gone"
    else:
        assert "; trial 1 went back to the study;" in message
        assert [t.state for t in trials[1:]] == [TrialState.FAIL, TrialState.WAITING]
        assert trials[2].params == trials[1].params


def test_optunas_error_after_a_lost_database_is_traced_to_the_database():
    """Optuna, failing to read a trial back after a failed write, raises UnboundLocalError:
    the database is found behind it."""
    import sqlalchemy

    from mnist_tracker.workflows.study import storage_error

    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed"))
    try:
        try:
            try:
                raise lost
            except sqlalchemy.exc.OperationalError as cause:
                message = "An exception is raised during the commit... exceeding max length."
                raise optuna.exceptions.StorageInternalError(message) from cause
        except optuna.exceptions.StorageInternalError:
            raise UnboundLocalError("cannot access local variable 'updated_state'") from None
    except UnboundLocalError as exc:
        assert storage_error(exc) is lost  # the database's words, not Optuna's wrapper's
    assert storage_error(RuntimeError("GPU fell off the bus")) is None


def test_the_tracking_store_s_database_errors_are_not_the_study_s(sqlite_uri, tmp_path):
    """A SQLite tracking store locked mid-search raised MLflow's error from SQLAlchemy's
    OperationalError, and the worker said the *study's* storage was out of reach (with
    in-memory storage: "storage  is out of reach"). Behind MLflow's error, or ours about the
    tracking store, a database error is the tracking store's."""
    import sqlite3

    from mnist_tracker.errors import StoreError
    from mnist_tracker.tracking import client
    from mnist_tracker.workflows.study import storage_error

    c = client(sqlite_uri)
    holder = sqlite3.connect(tmp_path / "mlflow.db", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(Exception) as locked:  # MLflow's, after its 20 s busy wait
            c.create_experiment("locked")
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert storage_error(locked.value) is None
    try:
        try:
            raise locked.value
        except Exception:
            raise StoreError("cannot query the tracking store") from None
    except StoreError as ours:
        assert storage_error(ours) is None


def test_a_database_lost_mid_search_is_one_error(
    server_uri, experiment_name, tmp_path, monkeypatch
):
    """Not hundreds of lines of tracebacks and exit 1: one error naming the storage and what
    to do."""
    import sqlalchemy

    from mnist_tracker import errors
    from mnist_tracker.workflows import tune as tune_mod

    calls = {"n": 0}
    real = tune_mod.study_state

    def flaky(study):
        calls["n"] += 1
        if calls["n"] == 2:  # after the first trial
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("connection refused"))
        return real(study)

    monkeypatch.setattr(tune_mod, "study_state", flaky)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    settings = TuneSettings("cnn", trials=3, pruner="none", final=False, storage=storage,
                            study_name="lost", experiment=experiment_name, **TINY)  # fmt: skip
    with pytest.raises(errors.TuneError) as caught:
        tune(settings, data_dir=SUBSET)
    message = str(caught.value)
    assert message.startswith(f"storage {storage} is out of reach (OperationalError:"), message
    assert message.endswith("start this worker again once the database is back")


def test_a_worker_with_other_settings_is_refused(server_uri, experiment_name, tmp_path):
    """Its trials would not compare with the study's (another --epochs, hold-out, seed), or
    it would count to another total: a finished study given a larger --trials ran the trials
    but never logged their results."""
    from mnist_tracker import errors

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = TuneSettings("cnn", trials=1, pruner="none", final=False, storage=storage,
                         study_name="s", experiment=experiment_name, **TINY)  # fmt: skip
    assert tune(first, data_dir=SUBSET).counts["complete"] == 1
    others = [
        ({"trials": 2}, "--trials 1"),
        ({"epochs": 1, "val_size": 50}, "--epochs 2, --val-size 100"),
    ]
    for changes, says in others:
        with pytest.raises(errors.TuneError) as caught:
            tune(replace(first, **changes), data_dir=SUBSET)
        assert str(caught.value) == (
            f"study 's' was started with {says}; pass the same to add a worker to it, or a new "
            "--study-name"
        )
    study = optuna.load_study(study_name="s", storage=storage)
    assert len(study.trials) == 1
    assert tune(first, data_dir=SUBSET).counts["complete"] == 1  # the same settings: welcome


def test_a_trial_taken_over_by_another_worker_is_recognised():
    """Its worker finished it after another had failed and queued it (late heartbeats):
    Optuna refuses the result, and the worker goes on instead of crashing."""
    from mnist_tracker.workflows.tune import _taken_over

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    refused = ValueError("Cannot tell a FAIL trial.")
    assert not _taken_over(study, trial, refused)  # still RUNNING: not that
    study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    assert _taken_over(study, trial, refused)
    assert not _taken_over(study, trial, RuntimeError("other"))


def test_a_stopped_final_run_says_how_to_resume_it(server_uri, experiment_name, monkeypatch):
    """It was KILLED with a checkpoint, but nothing said so, and a rerun skips the final."""
    from mnist_tracker.workflows import tune as tune_mod

    real = tune_mod.train

    def stopped_final(config, options, **kwargs):
        if options.run_name and options.run_name.endswith("-best"):
            options.on_run_start("f" * 32)
            raise KeyboardInterrupt
        return real(config, options, **kwargs)

    monkeypatch.setattr(tune_mod, "train", stopped_final)
    lines: list[str] = []
    settings = TuneSettings("cnn", trials=1, pruner="none", experiment=experiment_name, **TINY)
    with pytest.raises(KeyboardInterrupt):
        tune(settings, data_dir=SUBSET, echo=lines.append)
    resume = f"mnist-tracker train --resume {'f' * 32} --tracking-uri {server_uri}"
    assert lines[-1] == f"final: stopped; continue it with: {resume} --data-dir {SUBSET}"
    parents = MlflowClient().search_runs(
        [MlflowClient().get_experiment_by_name(experiment_name).experiment_id],
        "tags.`mnist_tracker.role` = 'study'",
    )
    assert parents[0].data.tags["final_run_id"] == "f" * 32


def test_a_signal_while_optuna_records_a_result_keeps_the_result(
    server_uri, experiment_name, tmp_path, monkeypatch
):
    """Ctrl-C or SIGTERM just as a trial ends lands inside Optuna's recording of its value,
    which then raised UnboundLocalError (exit 1, a traceback) and left the trial RUNNING for
    ever, its run FINISHED: a journal study could never end. The value is recorded now."""
    from optuna.study import _optimize

    real = _optimize._tell_with_warning
    told = {"n": 0}

    def signal_while_telling(*args, **kwargs):
        told["n"] += 1
        if told["n"] == 1:
            raise KeyboardInterrupt  # as a Ctrl-C there would
        return real(*args, **kwargs)

    monkeypatch.setattr(_optimize, "_tell_with_warning", signal_while_telling)
    storage = f"journal:{tmp_path / 'j.log'}"
    settings = TuneSettings("cnn", trials=2, pruner="none", final=False, storage=storage,
                            study_name="end", experiment=experiment_name, **TINY)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        tune(settings, data_dir=SUBSET)
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log"))
    )
    (trial,) = optuna.load_study(study_name="end", storage=journal).get_trials()
    assert trial.state == TrialState.COMPLETE and trial.value is not None
    assert tune(settings, data_dir=SUBSET).counts["complete"] == 2  # the study can end


def test_an_in_memory_study_stopped_ends_its_parent(server_uri, experiment_name):
    """No other worker can end it: its parent stayed RUNNING for ever."""

    def stop(trial, epoch, metrics):
        if trial.number == 1:
            raise KeyboardInterrupt

    settings = TuneSettings("cnn", trials=3, pruner="none", final=False,
                            experiment=experiment_name, **TINY)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        tune(settings, data_dir=SUBSET, epoch_hook=stop)
    client = MlflowClient()
    experiment = client.get_experiment_by_name(experiment_name).experiment_id
    (parent,) = client.search_runs([experiment], "tags.`mnist_tracker.role` = 'study'")
    assert parent.info.status == "KILLED" and parent.data.metrics["n_complete"] == 1


@pytest.mark.parametrize("where", ["train", "lookup"])
def test_a_final_stopped_before_its_run_exists_is_trained_by_the_next_worker(
    where, server_uri, experiment_name, tmp_path, monkeypatch
):
    """SIGTERM as the final began left nothing to resume, and every later worker skipped it:
    in ``train`` before the run, or as early as the experiment's lookup."""
    from mnist_tracker.workflows import tune as tune_mod

    real, lookup = tune_mod.train, tune_mod.store.run_experiment_name

    def stopped_at_start(config, options, **kwargs):
        if where == "train" and options.run_name and options.run_name.endswith("-best"):
            raise KeyboardInterrupt  # before its run exists
        return real(config, options, **kwargs)

    def stopped_in_lookup(run_id):
        raise KeyboardInterrupt

    monkeypatch.setattr(tune_mod, "train", stopped_at_start)
    if where == "lookup":
        monkeypatch.setattr(tune_mod.store, "run_experiment_name", stopped_in_lookup)
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    settings = TuneSettings("cnn", trials=1, pruner="none", storage=storage, study_name="f",
                            experiment=experiment_name, **TINY)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        tune(settings, data_dir=SUBSET)
    monkeypatch.setattr(tune_mod, "train", real)
    monkeypatch.setattr(tune_mod.store, "run_experiment_name", lookup)
    outcome = tune(settings, data_dir=SUBSET)
    assert outcome.final_run_id is not None
    assert MlflowClient().get_run(outcome.final_run_id).info.status == "FINISHED"
    assert tune(settings, data_dir=SUBSET).final_run_id is None  # trained once, not again


def test_a_study_whose_experiment_was_deleted_is_refused(sqlite_uri, tmp_path):
    """Restoring the parent run, as the refusal said, left the experiment deleted: every trial
    then failed at once ("experiment must be in the 'active' state"), each counted."""
    from mnist_tracker.workflows.study import PARENT_ATTR

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("tune-deleted-experiment")
    study.set_user_attr(PARENT_ATTR, client.create_run(experiment).info.run_id)
    client.delete_experiment(experiment)
    line = _refused(sqlite_uri, "--storage", storage, "--study-name", "s")
    assert (
        "its experiment 'tune-deleted-experiment' is in MLflow's trash; restore it (mlflow "
        f"experiments restore --experiment-id {experiment})"
    ) in line


@pytest.mark.parametrize("mid_trial", [False, True], ids=["between-trials", "mid-trial"])
def test_a_run_the_server_refuses_stops_the_worker(mid_trial, server_uri, experiment_name,
                                                   tmp_path):  # fmt: skip
    """The experiment deleted mid-search: the server refuses each trial's run (or the running
    one's next call). Each trial failed and counted, burning the study; now the trial goes back
    and the worker stops in one error."""
    from mnist_tracker import errors

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    client = MlflowClient()

    def delete_experiment():
        client.delete_experiment(client.get_experiment_by_name(experiment_name).experiment_id)

    def after_trial_0(line):
        if not mid_trial and line.startswith("trial 0: val_accuracy"):  # its run has ended
            delete_experiment()

    def in_trial_0(trial, epoch, metrics):
        if mid_trial and trial.number == 0 and epoch == 1:
            delete_experiment()

    settings = TuneSettings("cnn", trials=3, pruner="none", final=False, storage=storage,
                            study_name="r", experiment=experiment_name, **TINY)  # fmt: skip
    with pytest.raises(errors.TuneError) as caught:
        tune(settings, data_dir=SUBSET, echo=after_trial_0, epoch_hook=in_trial_0)
    given_back = 0 if mid_trial else 1
    experiment = client.get_experiment_by_name(experiment_name).experiment_id
    assert "refused the trial's run" in str(caught.value)
    assert str(caught.value).endswith(
        f"; trial {given_back} went back to the study; its experiment {experiment_name!r} is in "
        f"MLflow's trash: restore it (mlflow experiments restore --experiment-id {experiment}) "
        "and start this worker again"
    )
    states = [t.state for t in optuna.load_study(study_name="r", storage=storage).trials]
    done = [] if mid_trial else [TrialState.COMPLETE]
    assert states == [*done, TrialState.FAIL, TrialState.WAITING]


def test_a_database_lost_inside_a_trial_gives_the_trial_back(server_uri, experiment_name, tmp_path):
    """The database out of reach past study.OUTAGE_S during a trial's epoch report: the trial
    was counted failed and the worker went on (n_failed=1, the study short of its total)."""
    import sqlalchemy

    from mnist_tracker import errors

    def database_gone(trial, epoch, metrics):
        if trial.number == 1:
            cause = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("connection refused"))
            raise optuna.exceptions.StorageInternalError("invalid data in the commit") from cause

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    settings = TuneSettings("cnn", trials=3, pruner="none", final=False, storage=storage,
                            study_name="gone", experiment=experiment_name, **TINY)  # fmt: skip
    with pytest.raises(errors.TuneError) as caught:
        tune(settings, data_dir=SUBSET, epoch_hook=database_gone)
    assert str(caught.value).startswith(f"storage {storage} is out of reach (OperationalError")
    states = [t.state for t in optuna.load_study(study_name="gone", storage=storage).trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]


def test_a_run_left_running_by_a_given_back_trial_is_ended(server_uri, experiment_name, tmp_path):
    """A signal while the server created a trial's run: the worker never got its id, and the
    run stayed RUNNING for ever under a FINISHED parent. The next worker ends it, on a journal
    storage too (no heartbeats)."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from mnist_tracker.workflows.study import PARENT_ATTR

    storage = f"journal:{tmp_path / 'j.log'}"
    settings = TuneSettings("cnn", trials=1, pruner="none", final=False, storage=storage,
                            study_name="o", experiment=experiment_name, **TINY)  # fmt: skip
    tune(settings, data_dir=SUBSET)
    journal = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "j.log"))
    )
    study = optuna.load_study(study_name="o", storage=journal)
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 1e-3}, distributions=space))
    client = MlflowClient()
    parent = client.get_run(study.user_attrs[PARENT_ATTR])
    tags = {"mlflow.parentRunId": parent.info.run_id, "optuna.trial_number": "1"}
    orphan = client.create_run(parent.info.experiment_id, tags=tags).info.run_id
    tune(settings, data_dir=SUBSET)
    assert client.get_run(orphan).info.status == "FAILED"


def _silent_trial_study(tmp_path, **settings):
    """A study on a fresh SQLite file (heartbeats 1 s apart, grace 2 s) holding one RUNNING
    trial with params and no heartbeat: a worker stopped between creating it and its first
    heartbeat."""
    from mnist_tracker.workflows.study import open_storage, suggest_config

    settings = TuneSettings("cnn", storage=f"sqlite:///{tmp_path / 'optuna.db'}",
                            study_name="silent", heartbeat_interval=1, grace_period=2,
                            **settings)  # fmt: skip
    study = optuna.create_study(
        study_name="silent", storage=open_storage(settings), direction="maximize"
    )
    with warnings.catch_warnings():  # "heartbeats are meant for Study.optimize": not here
        warnings.simplefilter("ignore", UserWarning)
        suggest_config(study.ask(), settings.base_config())  # the silent trial, params drawn
    return settings, study


def test_a_trial_that_never_sent_a_heartbeat_is_taken_for_dead(tmp_path):
    """Optuna takes only trials with a late heartbeat for dead, so one that never sent any
    stayed RUNNING for ever, and the study waited for it. Seen silent for the grace period, it
    is failed and queued again with its params; a live trial beside it is left alone."""
    _, study = _silent_trial_study(tmp_path)
    storage = study._storage
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # heartbeats outside Study.optimize
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        live = study.ask()
        storage.record_heartbeat(live._trial_id)
        optuna.storages.fail_stale_trials(study)  # first seen silent: not yet
        assert [t.state for t in study.get_trials()] == [TrialState.RUNNING] * 2
        until = time.monotonic() + 2.2  # past the grace period, the live trial beating
        while time.monotonic() < until:
            storage.record_heartbeat(live._trial_id)
            time.sleep(0.25)
        optuna.storages.fail_stale_trials(study)
    silent, still_live, retry = study.get_trials()
    assert (silent.state, still_live.state, retry.state) == (
        TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING,
    )  # fmt: skip
    assert retry.params == silent.params and retry.system_attrs["failed_trial"] == 0


def test_a_worker_runs_a_silent_trial_again_instead_of_waiting_for_it(
    server_uri, experiment_name, tmp_path
):
    """The worker that finds a silent trial in its study reaches the total: it would have
    waited for the trial until its --timeout, the study unfinished."""
    settings, _ = _silent_trial_study(
        tmp_path, trials=2, pruner="none", final=False, experiment=experiment_name,
        timeout=90, **TINY,
    )  # fmt: skip
    outcome = tune(settings, data_dir=SUBSET)
    assert outcome.counts == {"complete": 2, "pruned": 0, "failed": 0}
    silent, *others = outcome.study.get_trials()
    assert silent.state == TrialState.FAIL
    assert [t.state for t in others] == [TrialState.COMPLETE] * 2
    retry = next(t for t in others if t.system_attrs.get("failed_trial") == 0)
    assert retry.params == silent.params


def _journal(path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def test_a_journal_worker_is_alive_while_its_process_is(tmp_path, monkeypatch):
    """A worker's file is locked for as long as its process lives, whatever kills it; a trial
    that names a dead worker's file is an orphan, and the file is deleted once seen. This
    worker's own trials, and trials that name no file (a worker of an earlier version, maybe
    alive), are not. Workers that reach the journal by other paths (relative, another mount)
    find each other's files: a trial names the file, not its path."""
    import sys

    from mnist_tracker.workflows.liveness import WORKER_ATTR, WorkerFiles

    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from mnist_tracker.workflows.liveness import "
         "WorkerFiles; w = WorkerFiles.open('journal:../j.log'); print(w.name, flush=True); "
         "time.sleep(60)"],
        stdout=subprocess.PIPE, text=True, cwd=tmp_path / "a",
    )  # fmt: skip
    try:
        theirs_name = holder.stdout.readline().strip()
        workers = WorkerFiles.open(f"journal:{tmp_path / 'j.log'}")  # the same, absolute
        assert theirs_name and workers.alive(theirs_name) and workers.alive(workers.name)
    finally:
        holder.kill()  # SIGKILL: no clean-up of its own
        holder.wait()
    journal = _journal(tmp_path / "j.log")
    study = optuna.create_study(study_name="s", storage=journal)
    theirs, mine, unmarked = study.ask(), study.ask(), study.ask()
    journal.set_trial_system_attr(theirs._trial_id, WORKER_ATTR, theirs_name)
    workers.mark(journal, mine._trial_id)
    assert [t.number for t in workers.orphans(study)] == [theirs.number]
    assert not (tmp_path / "j.log.workers" / theirs_name).exists(), "deleted once seen dead"
    assert unmarked.number not in [t.number for t in workers.orphans(study)]
    journal.set_trial_system_attr(mine._trial_id, WORKER_ATTR, "../../etc/passwd")
    assert workers.alive("../../etc/passwd"), "a name that is no file of the folder: untouched"
    workers.close()
    assert list((tmp_path / "j.log.workers").iterdir()) == []


def test_a_journal_worker_that_cannot_keep_its_file_says_so(tmp_path):
    from mnist_tracker.errors import TuneError
    from mnist_tracker.workflows.liveness import WorkerFiles

    (tmp_path / "j.log.workers").write_text("in the way")
    with pytest.raises(TuneError, match=r"cannot keep this worker's file in .*j\.log\.workers"):
        WorkerFiles.open(f"journal:{tmp_path / 'j.log'}")


def test_only_dead_workers_use_up_a_trials_retries():
    """A trial given back by a signal or an outage is always queued again; one whose worker
    died is, STALE_RETRIES times. Optuna's callback counted every retry, so a trial preempted
    (SIGTERM) three times was not retried after its first kill."""
    from mnist_tracker.workflows.study import STALE_RETRIES, queue_retry, study_state

    study = optuna.create_study(direction="maximize")

    def attempt(died: bool) -> bool:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            trial = study.ask()  # pops the queued retry, if any
        trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        frozen = study._storage.get_trial(trial._trial_id)
        queued = queue_retry(study, frozen, died)  # while RUNNING, as the objective does
        study.tell(trial, state=TrialState.FAIL)
        return queued

    assert all(attempt(died=False) for _ in range(5))
    last = study.get_trials()[-1]  # the retry queued for the fifth
    assert queue_retry(study, study.get_trials()[-2], died=False) and study.get_trials()[-1] == last

    assert [attempt(died=True) for _ in range(STALE_RETRIES + 1)] == [True] * STALE_RETRIES + [
        False
    ]
    trials = study.get_trials()
    assert len({t.params["lr"] for t in trials}) == 1, "every retry has the first one's params"
    state = study_state(study)
    assert (state.counted, state.failed, state.waiting) == (1, 1, 0)


def test_a_stopped_trials_retry_waits_before_the_trial_fails(server_uri, experiment_name, tmp_path,
                                                              monkeypatch):  # fmt: skip
    """Ctrl-C inside a trial: its retry is queued before Optuna records the trial FAIL. In the
    other order, a worker counting the study in between found it full, this trial failed,
    and logged the study's results without it."""
    from optuna.study import _optimize

    real = _optimize._tell_with_warning
    seen = []

    def tell(study, trial, *args, **kwargs):
        seen.append([t.state for t in study.get_trials()])  # as a worker counting now would
        return real(study, trial, *args, **kwargs)

    def stop(trial, epoch, metrics):
        raise KeyboardInterrupt

    monkeypatch.setattr(_optimize, "_tell_with_warning", tell)
    settings = TuneSettings("cnn", trials=1, pruner="none", final=False, study_name="q",
                            storage=f"journal:{tmp_path / 'j.log'}", experiment=experiment_name,
                            **TINY)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        tune(settings, data_dir=SUBSET, epoch_hook=stop)
    assert seen == [[TrialState.RUNNING, TrialState.WAITING]]
    trials = optuna.load_study(study_name="q", storage=_journal(tmp_path / "j.log")).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]


def test_a_journal_trial_whose_workers_keep_dying_fails_for_good(
    server_uri, experiment_name, tmp_path
):
    """A trial whose params kill each worker that runs them (out of memory) is retried
    STALE_RETRIES times, as a heartbeat-stale one is, then counts as failed: not retried for
    ever, killing every worker in turn."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import create_trial

    from mnist_tracker.workflows.liveness import WORKER_ATTR
    from mnist_tracker.workflows.study import DEATHS_ATTR, STALE_RETRIES

    storage = _journal(tmp_path / "j.log")
    study = optuna.create_study(study_name="oom", storage=storage, direction="maximize")
    space = {"lr": FloatDistribution(1e-4, 1e-1, log=True)}
    for number in range(STALE_RETRIES):  # the first attempt and its retries, each worker killed
        history = list(range(number))
        attrs = {"failed_trial": 0, "retry_history": history, DEATHS_ATTR: number}
        study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 1e-3},
                                     distributions=space, system_attrs=attrs))  # fmt: skip
    last = study.ask()  # the last retry, RUNNING, its worker killed
    attrs = {"failed_trial": 0, "retry_history": list(range(STALE_RETRIES)),
             DEATHS_ATTR: STALE_RETRIES, WORKER_ATTR: "killed-1-0.lock"}  # fmt: skip
    for key, value in attrs.items():
        storage.set_trial_system_attr(last._trial_id, key, value)
    lines = []
    settings = TuneSettings("cnn", trials=1, pruner="none", final=False, study_name="oom",
                            storage=f"journal:{tmp_path / 'j.log'}", experiment=experiment_name,
                            **TINY)  # fmt: skip
    outcome = tune(settings, data_dir=SUBSET, echo=lines.append)
    assert outcome.counts == {"complete": 0, "pruned": 0, "failed": 1}
    assert f"trial {STALE_RETRIES}: its worker died; it counts as failed" in lines
    assert [t.state for t in outcome.study.get_trials()] == [TrialState.FAIL] * (STALE_RETRIES + 1)


def test_a_signal_inside_the_write_of_the_trials_run_id_still_tags_its_run(
    server_uri, experiment_name, tmp_path, monkeypatch
):
    """Ctrl-C just after the trial's run id reached the storage, before Optuna's own copy of
    the trial had it (seen in CI with SIGTERM): the run ended KILLED but kept
    optuna.state=RUNNING, as if its trial still ran. The worker keeps the id itself."""
    real = optuna.trial.Trial.set_user_attr

    def interrupted(self, key, value):
        self.storage.set_trial_user_attr(self._trial_id, key, value)  # the write lands
        if key == "mlflow_run_id":
            raise KeyboardInterrupt  # before ``self._cached_frozen_trial`` is updated
        real(self, key, value)

    monkeypatch.setattr(optuna.trial.Trial, "set_user_attr", interrupted)
    settings = TuneSettings("cnn", trials=1, pruner="none", final=False, study_name="w",
                            storage=f"journal:{tmp_path / 'j.log'}", experiment=experiment_name,
                            **TINY)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        tune(settings, data_dir=SUBSET)
    (trial, _) = optuna.load_study(study_name="w", storage=_journal(tmp_path / "j.log")).trials
    run = MlflowClient().get_run(trial.user_attrs["mlflow_run_id"])
    assert (run.info.status, run.data.tags["optuna.state"]) == ("KILLED", "FAIL")


def test_a_signal_before_the_objective_knew_its_trial_gives_that_trial_back(
    server_uri, experiment_name, tmp_path, monkeypatch
):
    """Ctrl-C after Optuna created (or popped) a trial, before the objective got it: no worker
    knew it, a journal's worker files cannot tell (it names no worker), and it stayed RUNNING
    for ever, every later worker waiting for it."""
    real, calls = optuna.samplers.TPESampler.before_trial, {"n": 0}

    def interrupted(self, study, trial):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # the trial exists, RUNNING; the objective has not run
        return real(self, study, trial)

    monkeypatch.setattr(optuna.samplers.TPESampler, "before_trial", interrupted)
    settings = TuneSettings("cnn", trials=1, pruner="none", final=False, study_name="b",
                            storage=f"journal:{tmp_path / 'j.log'}", experiment=experiment_name,
                            **TINY)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        tune(settings, data_dir=SUBSET)
    trials = optuna.load_study(study_name="b", storage=_journal(tmp_path / "j.log")).trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert tune(settings, data_dir=SUBSET).counts == {"complete": 1, "pruned": 0, "failed": 0}


def test_a_trial_that_failed_on_its_own_counts_even_if_a_signal_follows(
    server_uri, experiment_name, tmp_path, monkeypatch
):
    """A signal while Optuna logs a trial's own failure: the trial counts as failed, as without
    the signal, instead of going back to the study to fail again."""
    from optuna.study import _optimize

    def broken(trial, epoch, metrics):
        raise RuntimeError("this config diverges")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # after Optuna recorded the trial FAIL

    monkeypatch.setattr(_optimize, "_log_failed_trial", interrupted)
    settings = TuneSettings("cnn", trials=1, pruner="none", final=False, study_name="f",
                            storage=f"journal:{tmp_path / 'j.log'}", experiment=experiment_name,
                            **TINY)  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        tune(settings, data_dir=SUBSET, epoch_hook=broken)
    trials = optuna.load_study(study_name="f", storage=_journal(tmp_path / "j.log")).trials
    assert [t.state for t in trials] == [TrialState.FAIL]


def test_the_closing_link_gives_up_at_once_on_a_server_gone(monkeypatch, capsys):
    """tune's "View it" line asks the server for the parent's experiment: with MLflow's own
    retries, a server gone at the end held the exit for 4 minutes (the review of stop 36)."""
    import mlflow

    from mnist_tracker.cli.tune import _view_hint

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    try:
        started = time.monotonic()
        _view_hint("http://127.0.0.1:9", "0" * 32)
        assert time.monotonic() - started < 20
    finally:
        mlflow.set_tracking_uri(None)
    assert "View it" not in capsys.readouterr().err
