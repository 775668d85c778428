"""The CLI: bad input is one line, exit 2, and no MLflow run; the small commands work."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from mnist_tracker.cli import main

from .conftest import BIN, SUBSET, copy_subset


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def assert_no_runs(uri: str) -> None:
    from mlflow.tracking import MlflowClient

    path = uri.removeprefix("sqlite:///")
    if not os.path.exists(path):
        return  # nothing was even created
    client = MlflowClient(uri)
    ids = [e.experiment_id for e in client.search_experiments()]
    assert client.search_runs(ids) == []


def _corrupt_dir(tmp_path):
    folder = copy_subset(tmp_path / "corrupt")
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-30])
    return str(folder)


BAD = [
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--model", "cnn", "--epochs", "0"], "epochs must be at least 1"),
    (["--model", "cnn", "--lr", "0"], "lr must be a positive number"),
    (["--model", "cnn", "--lr", "-0.1"], "lr must be a positive number"),
    (["--model", "cnn", "--batch-size", "0"], "batch size must be at least 1"),
    (["--model", "vgg16", "--image-size", "16"], "below vgg16's minimum of 32"),
    (["--model", "alexnet", "--image-size", "62", "--no-pretrained"], "minimum of 63"),
    (["--model", "cnn", "--limit-train", "0"], "--limit-train must be at least 1"),
    (["--model", "cnn", "--limit-test", "0"], "--limit-test must be at least 1"),
    (["--model", "cnn", "--epochs", "two"], "'two' is not a valid integer"),
    (["--model", "cnn", "--pretrained", "maybe"], "'maybe' is not a boolean"),
    (["--model", "cnn", "--data-dir", "/no/such/dir"], "data dir /no/such/dir does not exist"),
    (["--model", "cnn", "--val-size", "1000"], "not smaller than the training set"),
    (["--model", "alexnet", "--pretrained", "--no-pretrained"], "contradict"),
]


@pytest.mark.parametrize(("args", "message"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_no_run(args, message, sqlite_uri):
    result = invoke("train", *args, "--tracking-uri", sqlite_uri)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.output
    assert not any(line.startswith("Error") for line in lines[:-1])
    assert_no_runs(sqlite_uri)


def test_corrupt_data_is_exit_2_no_run(tmp_path, sqlite_uri):
    folder = _corrupt_dir(tmp_path)
    result = invoke("train", "--model", "cnn", "--data-dir", folder, "--tracking-uri", sqlite_uri)
    assert result.exit_code == 2
    assert "t10k-labels-idx1-ubyte.gz" in result.stderr and "corrupt" in result.stderr
    assert_no_runs(sqlite_uri)


def test_missing_weights_offline_is_exit_2_no_run(monkeypatch, sqlite_uri):
    for var in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    result = invoke(
        "train",
        "--model",
        "alexnet",
        "--image-size",
        "63",
        "--epochs",
        "1",
        "--tracking-uri",
        sqlite_uri,
    )
    assert result.exit_code == 2
    assert "alexnet-owt-7be5be79.pth" in result.stderr and "--no-pretrained" in result.stderr
    assert_no_runs(sqlite_uri)


def test_models_lists_recipes_and_counts():
    result = invoke("models")
    assert result.exit_code == 0
    fast = result.output.split("--recipe fast", 1)[1]
    assert "cnn" in fast and "scheduler=onecycle" in fast and "vit" not in fast
    for text in (
        "cnn",
        "deep_cnn",
        "vgg16",
        "alexnet",
        "vit",
        "422,474",
        "2,331,338",
        "134,301,514",
        "119,586,826",
        "57,044,810",
        "adamw",
        "cosine",
    ):
        assert text in result.output


def test_data_check_prints_counts():
    result = invoke("data", "check", "--data-dir", str(SUBSET))
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    assert "1000 images; per digit 0-9: " + " ".join(["100"] * 10) in result.output


def test_data_check_on_corrupt_data(tmp_path):
    result = invoke("data", "check", "--data-dir", _corrupt_dir(tmp_path))
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


def test_unknown_command_is_one_line():
    result = invoke("trian")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1


def test_compare_refuses_a_sqlite_store_that_does_not_exist(tmp_path):
    missing = tmp_path / "typo.db"
    result = invoke("compare", "--tracking-uri", f"sqlite:///{missing}")
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"Error: no tracking store at {missing} (from sqlite:///{missing}); pass the "
        "--tracking-uri your runs were logged to"
    ]
    assert not missing.exists(), "MLflow would have created an empty store"


def test_listing_models_needs_no_torch_and_a_new_store_prints_no_mlflow_info(tmp_path):
    """`models` answers from the catalogue (no torch, no MLflow imported: under a second
    here); MLflow's 'Creating initial MLflow database tables' INFO lines are not shown."""
    code = (
        "import sys, time; t = time.perf_counter(); from mnist_tracker.cli import main; "
        "from click.testing import CliRunner; r = CliRunner().invoke(main, ['models']); "
        "print(r.exit_code, time.perf_counter() - t, sorted(m for m in ('torch', 'mlflow', "
        "'torchvision') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    code_, seconds, loaded = out.stdout.split(" ", 2)
    assert code_ == "0" and loaded.strip() == "[]", out.stdout + out.stderr
    assert float(seconds) < 1.0, f"models took {seconds} s"
    store = tmp_path / "new.db"
    store.touch()
    proc = subprocess.run(
        [str(BIN / "mnist-tracker"), "compare", "--tracking-uri", f"sqlite:///{store}"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert (proc.returncode == 2 and "no experiments" in proc.stderr) or "not found" in proc.stderr
    assert "Creating initial MLflow database tables" not in proc.stderr + proc.stdout
