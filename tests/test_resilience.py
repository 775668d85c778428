"""Never lose a run: signals and --resume, divergence, a tracking server that goes away.

Everything here runs against real `mlflow server` processes, which the tests start, kill and
restart on the same store; `mnist-tracker` runs as a subprocess wherever a test signals or
kills it, and in-process (CliRunner) where nothing needs a process of its own.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow.tracking import MlflowClient

from mnist_tracker.paths import run_dir
from mnist_tracker.tracking import artifacts
from mnist_tracker.training import checkpoint

from .conftest import BIN, SUBSET, free_port, wait_http

pytestmark = pytest.mark.slow

# A run small enough for CI, big enough (the whole 1,000-image subset) that an epoch takes a
# noticeable time; on the CPU, where a resumed run must reproduce the uninterrupted one.
RUN = ["train", "--model", "cnn", "--epochs", "3", "--limit-test", "200", "--device", "cpu",
       "--data-dir", str(SUBSET)]  # fmt: skip
EPOCH_KEYS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "test_f1_macro")
# Same seed, same CPU: a resumed or replayed run computes the very same numbers.
TOLERANCE = 1e-6
API = "/api/2.0/mlflow"


class Cli:
    """A `mnist-tracker` subprocess whose stderr is read as it comes (so it never blocks)."""

    def __init__(self, args: list[str], env: dict[str, str]):
        self.proc = subprocess.Popen(
            [str(BIN / "mnist-tracker"), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, prefix: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(line.startswith(prefix) for line in self.lines):
            assert self.proc.poll() is None, f"exited before {prefix!r}:\n{self.text[-3000:]}"
            assert time.monotonic() < deadline, f"no {prefix!r} in time:\n{self.text[-3000:]}"
            time.sleep(0.05)

    def wait(self, timeout: float = 600) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def invoke(args: list[str], env: dict[str, str | None] | None = None):
    """`mnist-tracker ARGS` in this process (click's CliRunner): for tests that need no
    process of their own (no signal, no kill), seconds of interpreter start-up cheaper.
    ``env`` sets (None: unsets) environment variables for the call only."""
    from click.testing import CliRunner

    from mnist_tracker.cli import main

    return CliRunner().invoke(main, args, env=env)


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def logged_steps(client: MlflowClient, run_id: str, key: str = "train_loss") -> list[int]:
    """The steps of ``key`` in order, a step logged twice listed twice."""
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def assert_same_epochs(client, run_id: str, reference: dict[str, list[tuple[int, float]]]):
    """One point per epoch 1..3 for every epoch metric, equal to the reference run's."""
    for key in EPOCH_KEYS:
        got = history(client, run_id, key)
        assert [step for step, _ in got] == [1, 2, 3], (key, got)
        for (_, value), (_, expected) in zip(got, reference[key], strict=True):
            assert value == pytest.approx(expected, abs=TOLERANCE), key


@pytest.fixture(scope="module")
def reference(mlflow_server, tmp_path_factory):
    """The metric histories of the same run never interrupted."""
    # Module-scoped, so set up before the autouse isolation: isolate it by hand.
    env = {k: None for k in os.environ if k.startswith("MLFLOW_")}
    env["MNIST_TRACKER_HOME"] = str(tmp_path_factory.mktemp("home"))
    done = invoke([*RUN, "--tracking-uri", mlflow_server, "--experiment", "reference"], env)
    assert done.exit_code == 0, done.output[-3000:]
    run_id = re.search(r"^run (\w+):", done.output, re.M).group(1)
    client = MlflowClient(mlflow_server)
    return {key: history(client, run_id, key) for key in EPOCH_KEYS}


def test_sigterm_then_resume_gives_the_uninterrupted_run(
    server_uri, experiment_name, cli_env, reference, tmp_path, monkeypatch
):
    """SIGTERM (what schedulers and `docker stop` send); SIGINT takes the same path, and its
    exit code and KILLED status are checked in test_tracking.py. The resume is given no data
    folder, as its hint says: it reads the one the run trained on (not ./data, which would
    download, or offline fail)."""
    cli = Cli([*RUN, "--tracking-uri", server_uri, "--experiment", experiment_name], cli_env)
    cli.wait_for("epoch 1/3")
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.wait() == 143, cli.text[-3000:]
    assert "The run was marked KILLED." in cli.text and "Traceback" not in cli.text
    run_id = re.search(r"train --resume (\w+)", cli.text).group(1)
    assert f"training cnn for 3 epoch(s) as run {run_id}; tracking to {server_uri}" in cli.text

    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    steps = [step for step, _ in history(client, run_id, "train_loss")]
    assert steps and steps == list(range(1, len(steps) + 1)) and len(steps) < 3
    logged = [a.path for a in client.list_artifacts(run_id, artifacts.CHECKPOINT_DIR)]
    assert logged == [artifacts.CHECKPOINT]
    local = run_dir(run_id) / checkpoint.FILENAME
    saved = checkpoint.load(local)["epoch"]
    # The checkpoint is written just before its epoch's metrics: a signal in between leaves
    # it one epoch ahead, and the resume sends that epoch's metrics.
    assert len(steps) <= saved <= len(steps) + 1

    monkeypatch.chdir(tmp_path)  # no ./data here
    resumed = invoke(
        ["train", "--resume", run_id, "--tracking-uri", server_uri], {"MNIST_DATA_DIR": None}
    )
    assert resumed.exit_code == 0, resumed.output[-3000:]
    assert f"reading MNIST from {SUBSET.resolve()}, the folder it trained on" in resumed.stderr
    assert f"resuming after epoch {saved} of 3" in resumed.output
    assert f": resuming run {run_id}; tracking to {server_uri}" in resumed.stderr
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert_same_epochs(client, run_id, reference)
    assert not local.exists(), "a finished run drops its local checkpoint"
    loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/cnn")
    assert loaded.predict(torch.zeros(2, 1, 28, 28).numpy()).shape == (2, 12)


def test_resume_refuses_a_finished_run_and_settings(server_uri, experiment_name):
    """In-process (CliRunner): the refusals need no process of their own."""
    done = invoke(["train", "--model", "cnn", "--epochs", "1", "--limit-train", "100",
                   "--limit-test", "100", "--data-dir", str(SUBSET), "--tracking-uri", server_uri,
                   "--experiment", experiment_name])  # fmt: skip
    assert done.exit_code == 0, done.output[-3000:]
    run_id = re.search(r"^run (\w+):", done.output, re.M).group(1)
    again = invoke(["train", "--resume", run_id, "--tracking-uri", server_uri])
    assert again.exit_code == 2
    assert again.stderr.strip().splitlines() == [  # the Error line alone: no start line
        f"Error: run {run_id} already FINISHED; there is nothing to resume"
    ]
    assert "Traceback" not in again.output
    mixed = invoke(["train", "--resume", run_id, "--epochs", "5"])
    assert mixed.exit_code == 2
    assert "--resume continues a run with its own settings; drop --epochs" in mixed.stderr


def test_divergence_fails_the_run_with_a_tag_and_keeps_the_last_good_checkpoint(
    server_uri, experiment_name, tmp_path
):
    """SGD at lr 5 on a one-cycle schedule: epoch 1 is fine, a later one blows up (here: 2).
    In this process (no signal is sent): the exit code and output are the command's."""
    result = invoke(["train", "--model", "cnn", "--epochs", "6", "--optimizer", "sgd", "--lr",
                     "5", "--scheduler", "onecycle", "--limit-train", "200", "--limit-test",
                     "100", "--device", "cpu", "--data-dir", str(SUBSET), "--tracking-uri",
                     server_uri, "--experiment", experiment_name])  # fmt: skip
    # SystemExit: the command chose exit code 1; an exception escaping it gives 1 as well.
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output[-3000:]
    text = result.output
    assert "Traceback" not in text
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    assert run.info.status == "FAILED"
    epoch = int(run.data.tags["diverged_epoch"])
    assert epoch >= 2, "this recipe diverges after a good first epoch"
    assert run.data.tags["diverged_reason"].startswith(f"epoch {epoch}: ")
    assert (
        "not finite" in run.data.tags["diverged_reason"]
        or "nan" in run.data.tags["diverged_reason"]
    )
    assert f"Error: training diverged in epoch {epoch} (" in text
    assert "The run was marked FAILED. Its last good epoch's checkpoint was kept." in text
    steps = [step for step, _ in history(client, run.info.run_id, "train_loss")]
    assert steps == list(range(1, epoch))
    path = client.download_artifacts(run.info.run_id, artifacts.CHECKPOINT, str(tmp_path))
    state = checkpoint.load(Path(path))
    assert state["epoch"] == epoch - 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    again = invoke(["train", "--resume", run.info.run_id, "--tracking-uri", server_uri])
    assert again.exit_code == 2
    assert "diverged" in again.stderr.strip().splitlines()[-1]


def test_unwritable_run_folder_is_refused_before_the_run(sqlite_uri, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("MNIST_TRACKER_HOME", str(blocker))
    refused = invoke(["train", "--model", "cnn", "--epochs", "1", "--limit-train", "100",
                      "--tracking-uri", sqlite_uri])  # fmt: skip
    assert refused.exit_code == 2, refused.output[-3000:]
    last = refused.stderr.strip().splitlines()[-1]
    assert "Traceback" not in refused.output
    assert last.startswith("Error: cannot write run files") and "MNIST_TRACKER_HOME" in last
    from .test_cli import assert_no_runs

    assert_no_runs(sqlite_uri)


class KillableServer:
    """`mlflow server` on a fixed store and port, killed with SIGKILL (all its processes)."""

    def __init__(self, root: Path, port: int):
        self.root, self.port = root, port
        self.uri = f"http://127.0.0.1:{port}"
        self.proc = None

    def start(self) -> None:
        command = [
            str(BIN / "mlflow"), "server", "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}", "--artifacts-destination",
            str(self.root / "artifacts"), "--serve-artifacts", "--host", "127.0.0.1",
            "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        log = open(self.root / "server.log", "a")  # noqa: SIM115 - the server owns it
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, cwd=self.root, start_new_session=True
        )
        wait_http(f"{self.uri}/health", timeout=180, proc=self.proc)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def test_server_outage_mid_run_then_sync(tmp_path, cli_env, reference, monkeypatch):
    """Also: the system-metrics sampler and the heartbeat (every second here) lose the server
    with the run: the run still ends within seconds of its last epoch, their samples wait in
    the outbox, and no warning of theirs prints the password in the tracking URI."""
    server = KillableServer(tmp_path, free_port())
    server.start()
    secret = "pw-outage-2931"
    login_uri = server.uri.replace("http://", f"http://alice:{secret}@")
    cli_env = cli_env | {
        "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1",
        "MNIST_TRACKER_HEARTBEAT_S": "1",
    }
    try:
        cli = Cli([*RUN, "--tracking-uri", login_uri, "--experiment", "outage"], cli_env)
        cli.wait_for("epoch 1/3")
        server.kill()
        killed_at = time.monotonic()
        assert cli.wait() == 0, cli.text[-3000:]
        # Epochs 2 and 3 take seconds; MLflow's own monitor kept the process for minutes.
        assert time.monotonic() - killed_at < 90, cli.text[-3000:]
        assert secret not in cli.text, cli.text[-3000:]
        assert "The tracking server did not get everything" in cli.text
        run_id = re.search(r"^run (\w+):", cli.text, re.M).group(1)
        folder = run_dir(run_id)
        assert f"mnist-tracker sync {folder}" in cli.text
        # The outbox keeps no password: the command names the URI to pass, password hidden.
        from mnist_tracker.uris import redact

        assert f"--tracking-uri {redact(login_uri)} (its password for ***)" in cli.text
        kept = (folder / "outbox" / "ops.jsonl").read_text()
        assert '"op": "log_model"' in kept and '"op": "set_terminated"' in kept

        server.start()  # the same store, the same port
        client = MlflowClient(server.uri)
        assert client.get_run(run_id).info.status == "RUNNING"
        assert len(history(client, run_id, "train_loss")) < 3

        synced = invoke(["sync", str(folder), "--tracking-uri", server.uri])
        assert synced.exit_code == 0, synced.output[-3000:]
        assert re.search(rf"run {run_id}: sent \d+ operation", synced.output)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert_same_epochs(client, run_id, reference)
        samples = history(client, run_id, "system/cpu_utilization_percentage")
        steps = [step for step, _ in samples]
        assert len(steps) >= 2 and steps == list(range(len(steps))), steps  # each sent once
        paths = {a.path for a in client.list_artifacts(run_id, "plots")}
        assert paths == {"plots/learning_curves.png", "plots/confusion_matrix.png"}
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        mlflow.set_tracking_uri(server.uri)
        loaded = mlflow.pyfunc.load_model(f"runs:/{run_id}/cnn")
        assert loaded.predict(torch.zeros(2, 1, 28, 28).numpy()).shape == (2, 12)

        before = {key: history(client, run_id, key) for key in EPOCH_KEYS}
        models = mlflow.search_logged_models(
            experiment_ids=[run.info.experiment_id], output_format="list"
        )
        again = invoke(["sync", str(folder), "--tracking-uri", server.uri])
        assert again.exit_code == 0, again.output[-3000:]
        assert "nothing to send" in again.output
        assert {key: history(client, run_id, key) for key in EPOCH_KEYS} == before
        assert len(
            mlflow.search_logged_models(
                experiment_ids=[run.info.experiment_id], output_format="list"
            )
        ) == len(models)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def test_sink_sends_its_outbox_when_the_server_returns_before_the_run_ends(tmp_path, monkeypatch):
    """A server back within the reconnect interval still gets every call before the end."""
    from mnist_tracker import tracking

    server = KillableServer(tmp_path, free_port())
    server.start()
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
        mlflow.set_tracking_uri(server.uri)
        with tracking.tracked_run(tracking.RunSpec("sink-test", "blip")) as run:
            sink = run.sink
            sink.log_metrics({"a": 1.0}, step=1)
            server.kill()
            sink.log_metrics({"a": 2.0}, step=2)
            sink.set_tags({"after": "outage"})
            assert sink.offline and len(sink.outbox.pending()) == 2
            server.start()
        assert not sink.offline and not sink.outbox.pending()
        assert mlflow.active_run() is None
        client = MlflowClient(server.uri)
        run = client.get_run(sink.run_id)
        assert run.info.status == "FINISHED"
        assert history(client, sink.run_id, "a") == [(1, 1.0), (2, 2.0)]
        assert run.data.tags["after"] == "outage"
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()


def test_a_run_empties_its_outbox_itself_once_the_server_is_back_before_it_ends(
    tmp_path, monkeypatch
):
    """README "Server gone mid-run": the run "retries the server every 30 s and empties the
    outbox itself if it comes back". A real training run (interval cut to 1 s): the server is
    killed after epoch 1, so epoch 2's calls go to the outbox, and restarted on the same
    store; by the end of epoch 3, with the run still open, the outbox is empty and the server
    holds every epoch in order (epoch 2 from the outbox). The end-of-run flush is not
    needed for that: the run is still RUNNING, without its model."""
    from mnist_tracker.config import resolve_config
    from mnist_tracker.paths import outbox_dir
    from mnist_tracker.tracking import outbox
    from mnist_tracker.tracking import sink as sink_mod
    from mnist_tracker.training import OnEpoch
    from mnist_tracker.workflows.train import TrainOptions, train

    assert sink_mod.RECONNECT_EVERY_S == 30.0, "README: the sink retries every 30 s"
    monkeypatch.setattr(sink_mod, "RECONNECT_EVERY_S", 1.0)
    server = KillableServer(tmp_path, free_port())
    server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    mlflow.set_tracking_uri(server.uri)
    client = MlflowClient(server.uri)
    started: list[str] = []
    computed: list[float] = []
    seen: dict[int, dict] = {}

    def during(epoch, metrics):
        computed.append(metrics["train_loss"])
        box = outbox.Outbox(outbox_dir(started[0]))
        pending = [op["op"] for op in box.pending()] if box.exists() else []
        if epoch == 1:
            server.kill()
        elif epoch == 2:
            seen[2] = {"pending": pending}
            server.start()  # the same store, the same port
        else:
            run = client.get_run(started[0])
            seen[3] = {
                "pending": pending,
                "status": run.info.status,
                "train_loss": history(client, started[0], "train_loss"),
                "model": run.data.tags.get(artifacts.MODEL_URI_TAG),
            }

    config = resolve_config("cnn", epochs=3, limit_train=64, limit_test=64, device="cpu")
    options = TrainOptions(experiment="reconnect", system_metrics=False,
                           callbacks=[OnEpoch(during)], on_run_start=started.append)  # fmt: skip
    try:
        outcome = train(config, options)
    finally:
        if server.proc is not None and server.proc.poll() is None:
            server.kill()
    run_id = outcome.run_id
    # Epoch 2's checkpoint upload, metrics and misclassified digits waited in the outbox.
    assert seen[2]["pending"] == ["log_artifact", "log_batch", "log_image"], seen
    assert seen[3]["pending"] == [], "the run sent its outbox itself, mid-run"
    assert seen[3]["status"] == "RUNNING" and seen[3]["model"] is None, seen
    assert seen[3]["train_loss"] == [(1, computed[0]), (2, computed[1]), (3, computed[2])]
    assert outcome.offline_reason is None and outcome.outbox is None
    assert not outbox_dir(run_id).exists()


def test_sync_with_no_path_sends_every_outbox_and_after_a_cut_only_the_rest(
    mlflow_server, tmp_path
):
    """README: `mnist-tracker sync` with no RUN_FOLDER sends every run's outbox, to the URI
    each run used. Two runs' outboxes wait under $MNIST_TRACKER_HOME for a server on a fixed
    port. While nothing listens there: one line naming it, exit 2, nothing sent or lost. Back
    (a fault proxy on that port, in front of a real server) but dropping one upload: the
    first run is sent and its outbox removed, the second stops at the upload (exit 2).
    Then `sync` again sends only the second run's rest: each request is counted at the
    proxy, none is made twice, and a third `sync` has nothing to send."""
    from mnist_tracker.paths import outbox_dir
    from mnist_tracker.tracking.outbox import Outbox

    from .faultproxy import FaultProxy
    from .test_cli import invoke, one_error_line

    port = free_port()
    uri = f"http://127.0.0.1:{port}"  # the server the runs logged to, down for now
    client = MlflowClient(mlflow_server)
    experiment_id = client.create_experiment(f"sync-all-{port}")
    first, second = sorted(client.create_run(experiment_id).info.run_id for _ in range(2))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(256 * 1024))

    def batch(run_id: str, step: int) -> dict:
        metric = {"key": "train_loss", "value": 1.0 / step, "timestamp": 1000 + step,
                  "step": step}  # fmt: skip
        return {"op": "log_batch", "run_id": run_id, "metrics": [metric], "params": {},
                "tags": {}}  # fmt: skip

    def end(run_id: str) -> dict:
        return {"op": "set_terminated", "run_id": run_id, "status": "FINISHED", "end_time": 9}

    boxes = {run_id: Outbox(outbox_dir(run_id)) for run_id in (first, second)}
    for step in (1, 2, 3):
        boxes[first].add(batch(first, step), meta={"run_id": first, "tracking_uri": uri})
    boxes[first].add(end(first))
    boxes[second].add(batch(second, 1), meta={"run_id": second, "tracking_uri": uri})
    boxes[second].add(batch(second, 2))
    boxes[second].add({"op": "log_artifact", "run_id": second, "name": "big.bin",
                       "artifact_path": "plots"}, files={"big.bin": big})  # fmt: skip
    boxes[second].add(batch(second, 3))
    boxes[second].add(end(second))

    down = invoke("sync")
    one_error_line(down, uri, "not reachable")
    assert [len(boxes[r].pending()) for r in (first, second)] == [4, 5], "nothing lost"
    assert boxes[first].done() == boxes[second].done() == set()
    for run_id in (first, second):
        assert client.get_metric_history(run_id, "train_loss") == []
        assert client.get_run(run_id).info.status == "RUNNING"

    with FaultProxy(mlflow_server, port=port) as proxy:
        drop = proxy.add("PUT", "/artifacts/.*/plots/big.bin$", "drop", times=None)
        proxy.add("PUT", "/artifacts/.*/plots/big.bin$", "slow", times=None)  # counted
        proxy.add("POST", f"{API}/runs/log-batch$", "slow", times=None)
        proxy.add("POST", f"{API}/runs/update$", "slow", times=None)

        cut = invoke("sync")
        one_error_line(cut, f"run {second}", "server went away during sync", alone=False)
        assert f"run {first}: sent 4 operation(s) to {uri}; run ended FINISHED" in cut.stdout
        assert second not in cut.stdout, cut.stdout
        assert not boxes[first].folder.exists(), "a fully sent outbox is removed"
        assert boxes[second].done() == {0, 1}
        assert [op["id"] for op in boxes[second].pending()] == [2, 3, 4]
        assert logged_steps(client, second) == [1, 2]
        assert client.get_run(second).info.status == "RUNNING"
        assert proxy.hit("drop", "big.bin") >= 1
        # Holder tags (the lease) + 3 batches for the first run; tags + 2 for the second.
        assert (proxy.hit("slow", "log-batch"), proxy.hit("slow", "update")) == (4 + 3, 1)

        drop.times = 0  # the server takes the upload now
        proxy.hits.clear()
        rest = invoke("sync")
        assert rest.exit_code == 0, rest.output
        assert rest.stdout.strip() == (
            f"run {second}: sent 3 operation(s) to {uri} (2 sent before); run ended FINISHED"
        )
        # Only the rest: the lease's tags and step 3, the upload, the end; nothing twice.
        assert proxy.hit("slow", "log-batch") == 2, proxy.hits
        assert proxy.hit("slow", "big.bin") == 1 and proxy.hit("slow", "update") == 1
        assert proxy.hit("drop") == 0

        proxy.hits.clear()
        again = invoke("sync")
        assert again.exit_code == 0, again.output
        assert again.stdout.strip() == "nothing to send: 0 outbox(es), all sent"
        assert proxy.hits == []

    for run_id in (first, second):
        assert logged_steps(client, run_id) == [1, 2, 3]
        assert client.get_run(run_id).info.status == "FINISHED"
        assert not run_dir(run_id).exists()
    (uploaded,) = client.list_artifacts(second, "plots")
    assert (uploaded.path, uploaded.file_size) == ("plots/big.bin", 256 * 1024)
