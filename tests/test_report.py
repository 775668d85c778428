"""The HTML report: the figures it embeds hold the runs' numbers, and it renders offline in a
real headless browser (Debian's chromium) with no console errors."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pytest
from click.testing import CliRunner
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient
from PIL import Image
from sklearn.metrics import confusion_matrix

from mnist_tracker.cli import main
from mnist_tracker.cli.compare import compare_cmd
from mnist_tracker.config import resolve_config
from mnist_tracker.data import load_mnist
from mnist_tracker.reporting import report
from mnist_tracker.tracking import artifacts
from mnist_tracker.training.metrics import confusion
from mnist_tracker.workflows.train import TrainOptions, train

from .conftest import IN_CI, SUBSET

main.add_command(compare_cmd)  # what cli.py does; a no-op once it does

VIT_HISTORY = {
    "train_loss": [2.1, 1.7, 1.4],
    "test_loss": [2.2, 1.9, 1.6],
    "train_accuracy": [0.2, 0.35, 0.45],
    "test_accuracy": [0.25, 0.38, 0.4321],
}
VIT_MATRIX = (np.eye(10, dtype=int) * 40 + 1).tolist()


@pytest.fixture(scope="module")
def report_runs(mlflow_server):
    """A real tiny cnn run (artifacts from the train workflow) and a synthetic vit run with a known
    history and a ``reports/confusion_matrix.json`` artifact."""
    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    experiment = f"report-{uuid.uuid4().hex[:8]}"
    config = resolve_config("cnn", epochs=2, limit_train=200, limit_test=100)
    options = TrainOptions(data_dir=SUBSET, experiment=experiment, run_name="cnn-real")
    cnn = train(config, options)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    vit = client.create_run(experiment_id, run_name="vit-synthetic").info.run_id
    ts = int(time.time() * 1000)
    metrics = [
        Metric(key, value, ts + step, step)
        for key, values in VIT_HISTORY.items()
        for step, value in enumerate(values, start=1)
    ]
    metrics += [Metric("test_f1_macro", 0.42, ts, 3), Metric("training_time_s", 123.4, ts, 0)]
    params = {"model": "vit", "epochs": "3", "batch_size": "64", "lr": "0.001"}
    client.log_batch(vit, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
    client.log_dict(
        vit, {"labels": list(range(10)), "matrix": VIT_MATRIX}, artifacts.CONFUSION_MATRIX
    )
    client.set_terminated(vit)
    return SimpleNamespace(experiment=experiment, cnn=cnn.run_id, vit=vit, client=client)


def write_report(experiment: str, path: Path, *extra: str):
    result = CliRunner().invoke(
        main, ["compare", "--experiment", experiment, "--report", str(path), *extra]
    )
    assert result.exit_code == 0, result.output
    return result


def embedded_figures(page: str) -> dict[str, dict]:
    """Every ``Plotly.newPlot(id, data, layout, ...)`` call in the page: id -> data, layout."""
    decoder = json.JSONDecoder()
    figures = {}
    for match in re.finditer(r"Plotly\.newPlot\(\s*", page):
        values, pos = [], match.end()
        for _ in range(3):
            value, pos = decoder.raw_decode(page, pos)
            values.append(value)
            pos = re.compile(r"\s*,\s*").match(page, pos).end()
        div_id, data, layout = values
        figures[div_id] = {"data": data, "layout": layout}
    return figures


def traces(figure: dict) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for trace in figure["data"]:
        found.setdefault(trace["name"], []).append(trace)
    return found


@pytest.mark.slow
def test_report_figures_hold_the_runs_numbers(server_uri, report_runs, tmp_path):
    path = tmp_path / "report.html"
    result = write_report(report_runs.experiment, path, "--data-dir", str(SUBSET))
    page = path.read_text(encoding="utf-8")
    client = report_runs.client
    cnn, vit = client.get_run(report_runs.cnn), client.get_run(report_runs.vit)
    order = sorted([("CNN", cnn), ("ViT", vit)], key=lambda p: -p[1].data.metrics["test_accuracy"])
    labels = [label for label, _ in order]

    # Self-contained: plotly.js once, inline; nothing loaded from the network.
    assert page.count("<script") == page.count("Plotly.newPlot(") + 1
    assert not re.search(r"<script[^>]*\ssrc=", page)  # no script loaded from elsewhere
    assert len(re.findall(r"plotly\.js v\d", page)) == 1

    figures = embedded_figures(page)
    assert set(figures) == {
        "fig-comparison",
        "fig-curves",
        "fig-cost",
        "fig-samples",
        "fig-confusion",
    }

    bars = traces(figures["fig-comparison"])
    for name, key, scale in (
        ("Accuracy (%)", "test_accuracy", 100.0),
        ("F1", "test_f1_macro", 1.0),
        ("Training Time (s)", "training_time_s", 1.0),
    ):
        (trace,) = bars[name]
        assert trace["type"] == "bar" and trace["x"] == labels
        assert trace["y"] == [run.data.metrics[key] * scale for _, run in order]

    # The three panels start at 0 (accuracy on 0-100 %, F1 on 0-1, time up to the longest run),
    # with room above the tallest bar for its value label, which is never clipped.
    layout = figures["fig-comparison"]["layout"]
    longest = max(run.data.metrics["training_time_s"] for _, run in order)
    for axis, name, top in (
        ("yaxis", "Accuracy (%)", 100.0),
        ("yaxis2", "F1", 1.0),
        ("yaxis3", "Training Time (s)", longest),
    ):
        low, high = layout[axis]["range"]
        assert low == 0, axis
        assert top <= high < 1.2 * top, axis  # the whole scale, and not much more
        (trace,) = bars[name]
        assert high - max(trace["y"]) >= 0.08 * high, axis  # headroom for the label
        assert trace["textposition"] == "outside" and trace["cliponaxis"] is False
        assert all(trace["text"]), axis  # every bar carries its value

    curves = traces(figures["fig-curves"])
    for label, run in order:
        for split in ("train", "test"):
            loss, accuracy = curves[f"{label} {split}"]  # the loss panel, then accuracy
            for trace, key, scale in ((loss, "loss", 1.0), (accuracy, "accuracy", 100.0)):
                history = client.get_metric_history(run.info.run_id, f"{split}_{key}")
                assert trace["x"] == [m.step for m in history]
                assert trace["y"] == pytest.approx([m.value * scale for m in history], rel=1e-12)
    assert curves["ViT test"][1]["y"] == pytest.approx([25.0, 38.0, 43.21])

    cost = traces(figures["fig-cost"])
    for label, run in order:
        (trace,) = cost[label]
        assert trace["x"] == [run.data.metrics["training_time_s"]]
        assert trace["y"] == [run.data.metrics["test_accuracy"] * 100]

    mnist = load_mnist(SUBSET)
    digits = figures["fig-samples"]["data"]
    assert [t["name"] for t in digits] == [f"label {y}" for y in mnist.train_y[:20].tolist()]
    assert digits[0]["z"] == mnist.train_x[0].tolist()

    matrices = traces(figures["fig-confusion"])
    assert matrices["ViT"][0]["z"] == VIT_MATRIX
    cnn_matrix = np.array(matrices["CNN"][0]["z"])
    logged = json.loads(
        Path(
            client.download_artifacts(
                report_runs.cnn, "reports/classification_report.json", str(tmp_path)
            )
        ).read_text()
    )
    for digit in range(10):  # rows are the true digits: support and recall as logged
        assert cnn_matrix[digit].sum() == logged[str(digit)]["support"]
        assert cnn_matrix[digit, digit] / cnn_matrix[digit].sum() == pytest.approx(
            logged[str(digit)]["recall"]
        )
    assert cnn_matrix.trace() / cnn_matrix.sum() == pytest.approx(cnn.data.metrics["test_accuracy"])

    assert "The lab&#x27;s own results" in page or "The lab's own results" in page
    assert "99.38" in page and "996.34" in page  # the lab's reference values
    # The lab's model_comparison.png beside the page, always (matplotlib: no browser needed).
    png = path.with_suffix(".png")
    assert f"note: wrote {png}" in result.stderr
    assert "wrote" not in page and str(path.parent) not in page  # the writer's terminal note only
    with Image.open(png) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[1] >= 1000 and pixels.std() > 20
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # bars, labels: a drawn figure


@pytest.mark.slow
def test_report_without_mnist_leaves_the_digits_out(server_uri, report_runs, tmp_path):
    empty = tmp_path / "no-mnist"
    empty.mkdir()
    path = tmp_path / "report.html"
    result = write_report(report_runs.experiment, path, "--data-dir", str(empty))
    assert "Sample digits left out" in result.stderr
    page = path.read_text(encoding="utf-8")
    assert "fig-samples" not in embedded_figures(page)
    assert "Sample digits left out" in page


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


# Runs first in the page: records uncaught errors, failed resource loads, rejected promises
# and console.error calls; after load, writes them and each plot's rendered SVG count into
# the DOM, which --dump-dom prints.
PROBE = """<script>
window.__problems = [];
window.addEventListener('error', function (e) {
  window.__problems.push('error: ' + (e.message || (e.target && (e.target.src || e.target.href))));
}, true);
window.addEventListener('unhandledrejection', function (e) {
  window.__problems.push('unhandled rejection: ' + e.reason);
});
var __consoleError = console.error;
console.error = function () {
  window.__problems.push('console.error: ' + Array.prototype.join.call(arguments, ' '));
  __consoleError.apply(console, arguments);
};
window.addEventListener('load', function () { setTimeout(function () {
  var plots = Array.prototype.map.call(document.querySelectorAll('.plotly-graph-div'),
    function (d) { return {id: d.id, svg: d.querySelectorAll('.main-svg').length,
                           traces: (d.data || []).length}; });
  var out = document.createElement('pre');
  out.id = 'probe';
  out.textContent = JSON.stringify({problems: window.__problems, plots: plots});
  document.body.appendChild(out);
}, 500); });
</script>"""


@pytest.mark.slow
def test_report_renders_in_headless_chromium(server_uri, report_runs, tmp_path):
    browser = chromium()
    if browser is None:
        reason = "chromium not installed (apt-get install chromium)"
        if IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    path = tmp_path / "report.html"
    write_report(report_runs.experiment, path, "--data-dir", str(SUBSET))
    page = path.read_text(encoding="utf-8")
    probed = tmp_path / "probed.html"
    probed.write_text(page.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    proc = subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--proxy-server=127.0.0.1:9",  # offline: any network request would fail
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            "--virtual-time-budget=15000",
            "--dump-dom",
            probed.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"the page did not finish loading: {proc.stderr[-2000:]}"
    probe = json.loads(html.unescape(match.group(1)))
    assert probe["problems"] == []
    assert "Uncaught" not in proc.stderr
    rendered = {p["id"]: p for p in probe["plots"]}
    expected = set(embedded_figures(page))
    assert set(rendered) == expected
    for plot in rendered.values():
        assert plot["svg"] >= 1 and plot["traces"] >= 1, plot


# ---------------------------------------------------------------------------------------------
# The confusion matrix as data: what a run writes is what the report reads


def test_confusion_artifact_round_trips_sklearns_matrix():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    payload = json.loads(json.dumps(artifacts.confusion_payload(confusion(labels, predictions))))
    assert payload["labels"] == list(range(10))
    assert artifacts.read_confusion(payload) == confusion_matrix(labels, predictions).tolist()
    with pytest.raises(ValueError, match="10x10"):
        artifacts.confusion_payload(np.zeros((9, 9), dtype=np.int64))
    for broken in ({}, {"matrix": [[1, 2]]}, {"matrix": [[0] * 10] * 9}, []):
        with pytest.raises(ValueError, match="10x10"):
            artifacts.read_confusion(broken)


# Test accuracies the runs log, in creation order: shuffled, so neither the order the runs were
# made in nor its reverse is the ranking; 15 runs, so the report details 12 and leaves 3 out.
DETAIL_ACCURACIES = [p / 100 for p in (31, 97, 12, 88, 55, 93, 5, 76, 64, 99, 42, 81, 20, 70, 90)]


def test_report_reads_details_of_the_best_runs_only(sqlite_uri, tmp_path, monkeypatch):
    assert len(DETAIL_ACCURACIES) == report.MAX_DETAILED_RUNS + 3
    client = MlflowClient(sqlite_uri)
    experiment_id = client.create_experiment("many")
    accuracy_of: dict[str, float] = {}
    for i, accuracy in enumerate(DETAIL_ACCURACIES):
        run_id = client.create_run(experiment_id, run_name=f"r{i}").info.run_id
        metrics = {"test_accuracy": accuracy, "test_f1_macro": 0.1, "training_time_s": 1.0}
        client.log_batch(run_id, metrics=[Metric(k, v, 0, 1) for k, v in metrics.items()])
        client.log_batch(run_id, params=[Param("model", "cnn")])
        client.set_terminated(run_id)
        accuracy_of[run_id] = accuracy
    # The report ranks by --metric (default test_accuracy, highest first) and details the
    # first MAX_DETAILED_RUNS: the known best 12, never the 3 worst (0.05, 0.12, 0.2).
    ranked = sorted(accuracy_of, key=accuracy_of.get, reverse=True)
    best = set(ranked[: report.MAX_DETAILED_RUNS])
    worst = set(ranked[report.MAX_DETAILED_RUNS :])
    assert sorted(accuracy_of[r] for r in worst) == [0.05, 0.12, 0.2]

    histories: list[tuple[str, str]] = []
    downloads: list[str] = []
    original_history = MlflowClient.get_metric_history
    original_download = MlflowClient.download_artifacts

    def history_spy(self, run_id, key):
        histories.append((run_id, key))
        return original_history(self, run_id, key)

    def download_spy(self, run_id, path, *args, **kwargs):
        downloads.append(run_id)
        return original_download(self, run_id, path, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "get_metric_history", history_spy)
    monkeypatch.setattr(MlflowClient, "download_artifacts", download_spy)
    result = write_report("many", tmp_path / "r.html", "--runs", "all", "--format", "json")
    rows = json.loads(result.stdout)
    assert {r["run_id"] for r in rows} == set(accuracy_of)  # every run shown in the table
    # Curves: every curve metric of each best run, nothing of any other run.
    assert set(histories) == {(r, key) for r in best for key in report.CURVE_METRICS}
    # Confusion matrices: looked up for each best run, for no other run.
    assert set(downloads) == best
    assert "of the first 12 of 15 shown runs only" in result.stderr
