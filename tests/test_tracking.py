"""Training runs logged to a real `mlflow server` (SQLite backend, served artifacts)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from mnist_tracker import errors, tracking, uris
from mnist_tracker.config import resolve_config
from mnist_tracker.serving import import_mlflow_pytorch
from mnist_tracker.training.runtime import cpu_has_fast_bf16
from mnist_tracker.workflows.train import TrainOptions, train

from .conftest import BIN, REPO, SUBSET

pytestmark = pytest.mark.slow

EPOCH_METRICS = [
    "train_loss",
    "train_accuracy",
    "test_loss",
    "test_accuracy",
    "test_f1_macro",
    "epoch_time_s",
    "lr",
    "val_loss",
    "val_accuracy",
    "val_f1_macro",
]
# What the default precision "auto" resolves to on this CPU (test_engine pins cpu_has_fast_bf16
# to /proc/cpuinfo's AVX512-bf16 / AMX flags).
AUTO_PRECISION = "bf16" if cpu_has_fast_bf16() else "fp32"
RUN_METRICS = ["training_time_s", "total_time_s", "train_throughput_img_s"]


def _runs(experiment_name: str):
    exp = MlflowClient().get_experiment_by_name(experiment_name)
    return [] if exp is None else MlflowClient().search_runs([exp.experiment_id])


def test_cli_run_logs_params_metrics_artifacts(server_uri, experiment_name, cli_env):
    proc = subprocess.run(
        [
            str(BIN / "mnist-tracker"),
            "train",
            "--model",
            "cnn",
            "--epochs",
            "2",
            "--limit-train",
            "300",
            "--limit-test",
            "100",
            "--val-size",
            "100",
            "--data-dir",
            str(SUBSET),
            "--tracking-uri",
            server_uri,
            "--experiment",
            experiment_name,
            "--run-name",
            "cli-run",
            "--register",
            experiment_name,
        ],
        capture_output=True,
        text=True,
        env=cli_env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "epoch 2/2" in proc.stderr and "test accuracy" in proc.stdout
    (run,) = _runs(experiment_name)
    client = MlflowClient()
    assert run.info.status == "FINISHED" and run.info.run_name == "cli-run"

    params = run.data.params
    # Stated, not computed by the code under test: the lab cnn recipe with the CLI's options,
    # device / precision / feature cache as they ran (auto resolved; the cnn has no backbone).
    expected = {
        "model": "cnn", "epochs": "2", "batch_size": "64", "optimizer": "adam", "lr": "0.001",
        "weight_decay": "1e-05", "scheduler": "none", "image_size": "28", "pretrained": "false",
        "freeze": "false", "precision": AUTO_PRECISION, "seed": "42", "device": "cpu",
        "limit_train": "300", "limit_test": "100", "val_size": "100", "recipe": "lab",
        "feature_cache": "off", "cuda_graphs": "false",
    }  # fmt: skip
    for key, value in expected.items():
        assert params[key] == value, key
    assert params["n_params"] == "422474" and params["n_trainable_params"] == "422474"
    assert params["train_size"] == "300" and params["test_size"] == "100"

    for key in EPOCH_METRICS:
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [1, 2], key
    for key in RUN_METRICS:
        assert run.data.metrics[key] > 0
    for key in ("train_accuracy", "test_accuracy", "test_f1_macro", "val_accuracy"):
        assert 0 <= run.data.metrics[key] <= 1

    for tag in ("mnist_tracker.version", "torch.version", "mlflow.version", "device_name"):
        assert run.data.tags[tag]
    contexts = {i.tags[0].value for i in run.inputs.dataset_inputs}
    assert contexts == {"training", "testing", "validation"}

    local = client.download_artifacts(run.info.run_id, "")
    import pathlib

    root = pathlib.Path(local)
    for name in (
        "plots/learning_curves.png",
        "plots/confusion_matrix.png",
        "reports/confusion_matrix.json",
        "reports/classification_report.json",
        "config.json",
    ):
        assert (root / name).is_file(), name
    report = json.loads((root / "reports/classification_report.json").read_text())
    assert report["accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])
    assert (root / "plots/learning_curves.png").read_bytes().startswith(b"\x89PNG")
    matrix = json.loads((root / "reports/confusion_matrix.json").read_text())["matrix"]
    assert sum(map(sum, matrix)) == 100  # every test image, once

    versions = client.search_model_versions(f"name='{experiment_name}'")
    assert len(versions) == 1 and versions[0].run_id == run.info.run_id


@pytest.mark.parametrize(
    ("model", "overrides"),
    [
        ("cnn", {}),
        ("vit", {}),
        ("alexnet", {"pretrained": False, "image_size": 63}),
    ],
)
def test_logged_model_predicts_like_the_trained_one(server_uri, experiment_name, model, overrides):
    config = resolve_config(model, epochs=1, limit_train=128, limit_test=64, **overrides)
    outcome = train(config, TrainOptions(data_dir=SUBSET, experiment=experiment_name))
    loaded = mlflow.pyfunc.load_model(f"runs:/{outcome.run_id}/{model}")  # named after it
    network_uri = f"runs:/{outcome.run_id}/{model}/artifacts/network"
    network = import_mlflow_pytorch().load_model(network_uri)
    images = torch.from_numpy(np.random.default_rng(0).random((7, 1, 28, 28), dtype=np.float32))
    trained = outcome.model.to("cpu").eval()
    for n in (1, 7):
        batch = images[:n]
        served = loaded.predict(batch.numpy())
        assert list(served.columns) == ["label", "probability", *(f"prob_{d}" for d in range(10))]
        with torch.inference_mode():
            expected = trained(batch).numpy()
            logits = network(batch).numpy()
        assert logits.shape == (n, 10)
        probs = torch.softmax(torch.from_numpy(expected), 1).numpy()
        np.testing.assert_array_equal(served["label"], expected.argmax(1))
        np.testing.assert_allclose(served.iloc[:, 2:].to_numpy(), probs, rtol=1e-3, atol=1e-5)
        np.testing.assert_allclose(served["probability"], probs.max(1), rtol=1e-3, atol=1e-5)
        np.testing.assert_array_equal(logits.argmax(1), expected.argmax(1))
        np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-4)


def test_failure_marks_the_run_failed(server_uri, experiment_name):
    config = resolve_config("cnn", epochs=3, limit_train=64, limit_test=32)

    def explode(line):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        train(config, TrainOptions(data_dir=SUBSET, experiment=experiment_name, echo=explode))
    (run,) = _runs(experiment_name)
    assert run.info.status == "FAILED"
    assert "disk on fire" in run.data.tags["error"]
    assert mlflow.active_run() is None


@pytest.mark.parametrize(
    ("sig", "status", "nohup"),
    [(signal.SIGINT, 130, False), (signal.SIGHUP, 129, False), (signal.SIGHUP, 130, True)],
    ids=["SIGINT", "SIGHUP", "SIGHUP-under-nohup"],
)
def test_ctrl_c_marks_the_run_killed(sig, status, nohup, server_uri, experiment_name, cli_env):
    """SIGINT (Ctrl-C): exit 130, KILLED, no traceback. SIGTERM takes the same path and is
    tested through to the resume in test_resilience.py. SIGHUP (the terminal closed, an SSH
    session dropped) too: it used to end the process at once and leave the run RUNNING. Under
    ``nohup`` (SIGHUP ignored) the run goes on, as asked, until a Ctrl-C."""

    def as_in_a_terminal():
        # A shell starts background jobs (pytest under `cmd &` in a script) with SIGINT
        # ignored, and a child keeps an ignored SIGINT.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN if nohup else signal.SIG_DFL)

    proc = subprocess.Popen(
        [
            str(BIN / "mnist-tracker"),
            "train",
            "--model",
            "cnn",
            "--epochs",
            "200",
            "--limit-train",
            "200",
            "--limit-test",
            "50",
            "--data-dir",
            str(SUBSET),
            "--tracking-uri",
            server_uri,
            "--experiment",
            experiment_name,
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env,
        preexec_fn=as_in_a_terminal,
    )

    def wait_for(epoch: str) -> None:
        deadline = time.monotonic() + 120
        for line in proc.stderr:
            if line.startswith(epoch) or time.monotonic() > deadline:
                break

    wait_for("epoch 1/200")
    proc.send_signal(sig)
    if nohup:
        wait_for("epoch 3/200")  # still training after the hangup
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == status, err
    assert "KILLED" in err and "Traceback" not in err
    assert re.search(r"train --resume \w+", err), err  # the way back, as after SIGTERM
    (run,) = _runs(experiment_name)
    assert run.info.status == "KILLED"
    assert len(MlflowClient().get_metric_history(run.info.run_id, "test_accuracy")) >= 1


def test_log_records_are_scrubbed_whoever_logs_them(monkeypatch):
    """MLflow's and urllib3's warnings quote request URLs: once the scrubber is installed, no
    handler (one added later, on a child logger, or logging's last resort) sees a password."""
    import logging

    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "env-secret-77")
    uris.install_log_scrubber()
    uris.install_log_scrubber()  # idempotent: one factory, not two
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(self.format(record))

    logger = logging.getLogger("mlflow.system_metrics.child")
    handler = Keep()
    logger.addHandler(handler)
    try:
        logger.warning("Failed to get mlflow run: %s.", "API request to http://u:pw-41@h:5000/x")
        try:
            raise ValueError("token env-secret-77 at postgresql://db:pg-9@db/m")
        except ValueError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(seen)
    assert "http://u:***@h:5000/x" in text and "postgresql://db:***@db/m" in text
    assert "ValueError" in text and "Traceback" in text
    for secret in ("pw-41", "pg-9", "env-secret-77"):
        assert secret not in text


def test_redact_hides_passwords():
    assert uris.redact("postgresql://u:secret@db:5432/x") == "postgresql://u:***@db:5432/x"
    assert uris.redact("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert uris.redact("http://user@h:5000/") == "http://user@h:5000/"
    assert uris.redact("sqlite:////tmp/a@b.db") == "sqlite:////tmp/a@b.db"


# SQLAlchemy reads each as user "u" and this password; urllib finds no password in the first
# three (it takes "u" for the host), so a redaction by urlsplit left them in clear.
ODD_PASSWORDS = ["Zq/s3cr3t+Xy", "a#b", "a?b=c", "pa:ss", "Zq/+x=="]


@pytest.mark.parametrize("secret", ODD_PASSWORDS)
def test_passwords_with_url_delimiters_are_hidden_too(secret):
    from sqlalchemy.engine import make_url

    url = f"postgresql://u:{secret}@db:5432/optuna"
    assert make_url(url).password == secret  # what the database is sent
    assert uris.password(url) == secret
    assert uris.redact(url) == "postgresql://u:***@db:5432/optuna"
    message = f"cannot connect to {url}: password authentication failed for {secret}"
    assert secret not in uris.scrub(message, url)
    assert secret not in uris.scrub(f"[SQL: ...] {url}")  # any URL in a message, uri unknown


@pytest.mark.parametrize("command", ["train", "tune"])
def test_unreachable_server_fails_fast_before_training(command, cli_env, tmp_path):
    uri = "http://trainer:pw-123@127.0.0.1:9"
    start = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "mnist-tracker"), command, "--model", "cnn", "--tracking-uri", uri,
         "--data-dir", str(SUBSET)],
        capture_output=True, text=True, env=cli_env, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - start
    assert proc.returncode == 2
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "Error: tracking server http://trainer:***@127.0.0.1:9 is not reachable"
    )
    assert "pw-123" not in proc.stderr and "epoch" not in proc.stderr
    # "Within seconds": the process starts, imports MLflow (not torch), is refused at once.
    assert elapsed < 7, f"{elapsed:.1f}s including the interpreter's start"


def test_reachability_check_answers_within_10_seconds():
    start = time.monotonic()
    with pytest.raises(errors.TrackingUnavailable, match="not reachable"):
        tracking.check_reachable("http://127.0.0.1:9")
    assert time.monotonic() - start < 10


def test_logged_model_has_its_signature_and_input_example(server_uri, experiment_name, tmp_path):
    """README "What a run logs": the model takes float32 `(N, 1, 28, 28)` pixels in [0, 1],
    any batch size, "with signature and input example". Read back with MLflow: the pyfunc's
    and the network's signatures (dtype, shape with a free batch dimension, output columns),
    and the saved input example (two test digits scaled to [0, 1]), which the model
    predicts; an input of the wrong shape is refused by the signature."""
    from mlflow.models import Model, get_model_info

    from mnist_tracker import data
    from mnist_tracker.workflows.data import splits_for

    config = resolve_config("cnn", epochs=1, limit_train=64, limit_test=64, device="cpu")
    outcome = train(config, TrainOptions(experiment=experiment_name, system_metrics=False))
    uri = f"runs:/{outcome.run_id}/cnn"

    info = get_model_info(uri)
    (pixels,) = info.signature.inputs.inputs
    assert (pixels.type, pixels.shape) == (np.dtype("float32"), (-1, 1, 28, 28))
    outputs = info.signature.outputs.input_names()
    assert outputs == ["label", "probability", *(f"prob_{d}" for d in range(10))]
    network = get_model_info(f"{uri}/artifacts/network").signature
    (net_in,), (logits,) = network.inputs.inputs, network.outputs.inputs
    assert (net_in.type, net_in.shape) == (np.dtype("float32"), (-1, 1, 28, 28))
    assert (logits.type, logits.shape) == (np.dtype("float32"), (-1, 10))

    assert info.saved_input_example_info["artifact_path"] == "input_example.json"
    local = mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path))
    example = Model.load(local).load_input_example(local)
    assert example.shape == (2, 1, 28, 28) and example.dtype == np.float32
    splits = splits_for(outcome.config, data.load_mnist(SUBSET))
    digits = splits.test_x[:2].unsqueeze(1).float().div(255.0).numpy()
    np.testing.assert_allclose(example, digits, rtol=0, atol=1e-7)
    assert example.min() >= 0.0 and example.max() == pytest.approx(1.0)

    loaded = mlflow.pyfunc.load_model(uri)
    served = loaded.predict(example)
    with torch.inference_mode():
        expected = outcome.model.to("cpu").eval()(torch.from_numpy(example)).argmax(1)
    assert served["label"].tolist() == expected.tolist()
    assert loaded.predict(np.concatenate([example] * 3)).shape == (6, 12), "any batch size"
    with pytest.raises(mlflow.exceptions.MlflowException, match=r"(?i)shape"):
        loaded.predict(example.reshape(2, 28, 28))

    # As `mlflow models serve` answers 0-255 pixels: the reason alone, not after MLflow's
    # dump of every pixel sent (4 KB a digit; a newcomer's find, stop 35).
    from mlflow.pyfunc.scoring_server import invocations

    body = json.dumps({"inputs": (np.concatenate([example] * 16) * 255).round().tolist()})
    with pytest.raises(mlflow.exceptions.MlflowException) as refused:
        invocations(body, "application/json", loaded, loaded.metadata.get_input_schema())
    answer = json.loads(refused.value.serialize_as_json())
    assert answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert answer["message"].startswith("pixels must be floats in [0, 1] (got values from 0 to")
    assert "divide 0-255 pixels by 255" in answer["message"] and len(answer["message"]) < 200


def test_git_commit_tag_is_the_checkouts_head_and_absent_outside_a_git_tree(
    sqlite_uri, experiment_name, cli_env, tmp_path
):
    """README "What a run logs": tags include the git commit. A run of the package from this
    git checkout carries `git_commit` = `git rev-parse HEAD` of it; the same package copied
    outside any git tree (as a plain install is) runs as well, with no `git_commit` tag
    rather than a wrong or empty one (``records.git_commit``: "when it is a git checkout")."""
    import shutil
    import sys

    import mnist_tracker

    def head() -> str:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True)  # fmt: skip
        return out.stdout.strip()

    assert Path(mnist_tracker.__file__).resolve().is_relative_to(REPO.resolve())
    config = resolve_config("cnn", epochs=1, limit_train=64, limit_test=64, device="cpu")
    options = TrainOptions(experiment=experiment_name, system_metrics=False,
                           log_artifacts=False, checkpoints=False)  # fmt: skip
    before = head()
    run_id = train(config, options).run_id
    commits = {before, head()}  # others may commit to this checkout meanwhile
    tags = MlflowClient().get_run(run_id).data.tags
    assert len(tags["git_commit"]) == 40 and tags["git_commit"] in commits, (tags, commits)

    site = tmp_path / "site"
    shutil.copytree(Path(mnist_tracker.__file__).parent, site / "mnist_tracker",
                    ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    code = (
        "import json, mnist_tracker\n"
        "from mnist_tracker.config import resolve_config\n"
        "from mnist_tracker.workflows.train import TrainOptions, train\n"
        "config = resolve_config('cnn', epochs=1, limit_train=64, limit_test=64, device='cpu')\n"
        f"options = TrainOptions(experiment={experiment_name!r}, system_metrics=False,\n"
        "                       log_artifacts=False, checkpoints=False)\n"
        "run_id = train(config, options).run_id\n"
        "print(json.dumps({'file': mnist_tracker.__file__, 'run_id': run_id}))\n"
    )
    env = dict(cli_env, PYTHONPATH=str(site), MLFLOW_TRACKING_URI=sqlite_uri,
               GIT_CEILING_DIRECTORIES=str(tmp_path))  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    ran = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(ran["file"]).is_relative_to(site), "the copy ran, not the checkout"
    run = MlflowClient().get_run(ran["run_id"])
    assert run.info.status == "FINISHED"
    assert "git_commit" not in run.data.tags, run.data.tags
    assert run.data.tags["mnist_tracker.version"] == tags["mnist_tracker.version"]
