"""`suite`: models trained one after another, one failing for real (ImageNet weights offline)
while the other is still logged; bad input stops it before anything trains."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from mnist_tracker.cli import main
from mnist_tracker.cli.compare import suite_cmd
from mnist_tracker.config import ConfigError, resolve_config
from mnist_tracker.data import load_mnist
from mnist_tracker.models.transfer import weights_cache_path
from mnist_tracker.workflows import suite

from .conftest import BIN, REPO, SUBSET
from .test_cli import assert_no_runs

main.add_command(suite_cmd)  # what cli.py does; a no-op once it does

TINY = ["--epochs", "1", "--limit-train", "128", "--limit-test", "64", "--data-dir", str(SUBSET)]


def invoke(*args: str):
    return CliRunner().invoke(main, ["suite", *args])


def offline(monkeypatch) -> None:
    """HTTPS downloads fail at once: a proxy on a closed port (TORCH_HOME is an empty tmp dir).

    The MLflow server is plain HTTP on loopback, so it stays reachable."""
    for var in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")


def runs_of(experiment: str):
    client = MlflowClient()
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id])


@pytest.mark.slow
def test_a_failing_model_does_not_stop_the_others(server_uri, experiment_name):
    """alexnet fails for real: its file in the torch hub cache is not its weights (the suite
    checks before training only that the file is there, as reading it takes seconds)."""
    cached = Path(weights_cache_path("alexnet"))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a state dict")
    result = invoke(
        "--models",
        "alexnet,cnn",
        "--image-size",
        "63",
        *TINY,
        "--experiment",
        experiment_name,
        "--tracking-uri",
        server_uri,
    )
    assert result.exit_code == 1, result.output
    (run,) = runs_of(experiment_name)  # alexnet failed before creating a run
    assert run.info.status == "FINISHED" and run.data.params["model"] == "cnn"
    suite_id = run.data.tags[suite.SUITE_TAG]
    assert run.info.run_name == f"cnn-suite-{suite_id[:8]}"

    lines = result.stdout.splitlines()
    alexnet_line = next(line for line in lines if line.startswith("alexnet"))
    assert "FAILED" in alexnet_line and "ModelError" in alexnet_line
    assert "alexnet-owt-7be5be79.pth" in alexnet_line
    assert f"cnn       finished  run {run.info.run_id}" in lines
    assert f"suite {suite_id}: 1 of 2 model(s) finished, 1 failed" in lines
    view = f"View it: {server_uri}/#/experiments/{run.info.experiment_id}?workflowType="
    assert view in result.stderr, result.stderr[-2000:]  # the experiment's runs, in the UI

    table = lines[lines.index("") + 1 :]  # the compare table of this suite
    assert table[0].startswith("Model") and len(table) == 3
    assert table[2].startswith("CNN") and run.info.run_id in table[2]
    accuracy = run.data.metrics["test_accuracy"] * 100
    assert f"{accuracy:.2f}" in table[2]


def test_an_experiment_in_the_trash_stops_the_suite_before_anything_trains(sqlite_uri):
    """Each model failed on it in turn, exit 1 (a review's find); `train` already refused it."""
    client = MlflowClient()
    gone = client.create_experiment("suite-gone")
    client.delete_experiment(gone)
    result = invoke("--models", "cnn,vit", *TINY, "--tracking-uri", sqlite_uri,
                    "--experiment", "suite-gone")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.output
    assert "experiment 'suite-gone' is in MLflow's trash" in result.stderr
    assert client.search_runs([gone], run_view_type=3) == []  # ViewType.ALL


def test_imagenet_weights_unavailable_offline_stop_the_suite_before_anything_trains(
    sqlite_uri, monkeypatch
):
    """The README lists them as bad input, checked before anything trains: offline, the suite
    trained cnn first and then failed alexnet, exit 1."""
    offline(monkeypatch)
    result = invoke("--models", "cnn,alexnet", "--image-size", "63", *TINY,
                    "--tracking-uri", sqlite_uri, "--experiment", "suite-offline")  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.stdout == "" and result.stderr.count("\n") == 1, result.output
    assert result.stderr.startswith("Error: ImageNet weights for alexnet are not in the torch")
    assert runs_of("suite-offline") == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "cnn,resnet"], "unknown model 'resnet'"),
        (["--models", " , "], "--models is empty"),
        (["--models", "cnn,alexnet", "--image-size", "40"], "alexnet: image size 40"),
        (["--models", "cnn", "--epochs", "0"], "cnn: epochs must be at least 1"),
        (["--models", "cnn", "--limit-train", "0"], "--limit-train must be at least 1"),
        (["--models", "cnn", "--data-dir", "/no/such/dir"], "data dir /no/such/dir does not"),
        (["--models", "vgg16", "--pretrained", "--no-pretrained"], "contradict"),
        (["--models", "cnn", "--precision", "fp8"], "'fp8' is not one of"),
    ],
    ids=[
        "unknown-model",
        "no-models",
        "image-size",
        "epochs",
        "limit",
        "data-dir",
        "contradiction",
        "precision",
    ],
)
def test_bad_input_is_one_line_exit_2_and_trains_nothing(args, message, sqlite_uri):
    result = invoke(*args, "--tracking-uri", sqlite_uri, "--experiment", "suite-bad")
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("Error: ")
    assert message in result.stderr
    assert runs_of("suite-bad") == []


def test_options_go_to_the_models_they_fit():
    cnn, alexnet = suite.suite_configs(
        ["cnn", "alexnet"], image_size=64, pretrained=False, epochs=2, batch_size=None
    )
    assert (cnn.image_size, cnn.pretrained, cnn.epochs, cnn.batch_size) == (28, False, 2, 64)
    assert (alexnet.image_size, alexnet.pretrained, alexnet.freeze) == (64, False, False)
    assert alexnet.lr == 1e-4  # the recipe where nothing overrides it
    assert suite.suite_filter("abc") == "tags.`mnist_tracker.suite_id` = 'abc'"
    assert suite.parse_models("vit, cnn,vit") == ["vit", "cnn"]
    with pytest.raises(ConfigError, match="vgg16: image size 16"):
        suite.suite_configs(["vgg16"], image_size=16)


@pytest.mark.fast
def test_no_pretrained_freeze_freezes_the_transfer_models_only(monkeypatch, sqlite_uri):
    """`suite --no-pretrained --freeze` (the GPU suite's transfer models: frozen random
    backbones) reaches vgg16's and alexnet's configs, not the cnn's, which has no backbone
    (`train --model cnn --freeze` refuses it). The suite itself is replaced: only its configs."""
    seen = []

    def record(configs, mnist, **kwargs):
        seen.extend(configs)
        return suite.SuiteResult("x" * 32, kwargs["experiment"])

    monkeypatch.setattr(suite, "run_suite", record)
    options = ["--no-pretrained", "--freeze", "--image-size", "63", "--data-dir", str(SUBSET)]
    result = invoke("--models", "cnn,vgg16,alexnet", *options, "--tracking-uri", sqlite_uri)
    assert result.exit_code == 0, result.output
    assert [(c.model, c.pretrained, c.freeze, c.image_size) for c in seen] == [
        ("cnn", False, False, 28),
        ("vgg16", False, True, 63),
        ("alexnet", False, True, 63),
    ]
    without = suite.suite_configs(["alexnet"], pretrained=False)  # freeze follows pretrained
    assert (without[0].pretrained, without[0].freeze) == (False, False)


@pytest.mark.fast
def test_cuda_graphs_without_cuda_is_refused_before_any_model_trains(sqlite_uri):
    """`suite --cuda-graphs` where no model could run it: one line, exit 2, no run, not one
    failure per model."""
    result = invoke("--models", "cnn,vit", "--cuda-graphs", "--device", "cpu", *TINY,
                    "--tracking-uri", sqlite_uri)  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --cuda-graphs needs a CUDA device")
    assert_no_runs(sqlite_uri)


@pytest.mark.slow
def test_mlflow_run_suite_nests_the_models(server_uri, experiment_name, cli_env, tmp_path):
    """Under `mlflow run`, each model is a child run of the run it created."""
    cli_env["MLFLOW_TRACKING_URI"] = server_uri
    proc = subprocess.run(
        [
            str(BIN / "mlflow"),
            "run",
            str(REPO),
            "-e",
            "suite",
            "--env-manager",
            "local",
            "--experiment-name",
            experiment_name,
            "-P",
            "models=cnn",
            "-P",
            "epochs=1",
            "-P",
            "limit_train=128",
            "-P",
            "limit_test=64",
            "-P",
            f"data_dir={SUBSET}",
        ],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = {
        r.data.tags.get("mlflow.project.entryPoint", "child"): r for r in runs_of(experiment_name)
    }
    assert set(runs) == {"suite", "child"}
    parent, child = runs["suite"], runs["child"]
    assert parent.info.status == "FINISHED" and child.info.status == "FINISHED"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.data.params["model"] == "cnn" and child.data.params["epochs"] == "1"
    assert suite.SUITE_TAG in child.data.tags
    assert child.info.run_id in proc.stdout and "1 of 1 model(s) finished" in proc.stdout


@pytest.mark.slow
def test_a_model_that_fails_while_training_does_not_stop_the_others(server_uri, experiment_name):
    """The first model diverges in its first epoch, inside its run (FAILED, tagged); the next
    one still trains and finishes; the summary says which failed and why."""
    mnist = load_mnist(SUBSET, download_missing=False)
    diverging = resolve_config(
        "cnn", epochs=2, batch_size=2, optimizer="sgd", lr=1e4, limit_train=200, limit_test=64
    )
    fine = resolve_config("cnn", epochs=1, limit_train=128, limit_test=64)
    result = suite.run_suite([diverging, fine], mnist, experiment=experiment_name)
    failed, finished = result.outcomes
    assert not failed.ok and "training diverged in epoch 1" in failed.error
    assert finished.ok
    runs = {r.info.run_id: r for r in runs_of(experiment_name)}
    assert runs[finished.run_id].info.status == "FINISHED"
    (broken,) = [r for r in runs.values() if r.info.run_id != finished.run_id]
    assert broken.info.status == "FAILED" and broken.data.tags["diverged_epoch"] == "1"
    assert suite.SUITE_TAG in broken.data.tags
    assert "1 of 2 model(s) finished, 1 failed" in suite.summary_lines(result)[-1]
