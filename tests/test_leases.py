"""Run leases: one process per run, zombies found by their heartbeat and reaped, checkpoints
that survive a damaged copy or a full disk (issue 11).

Runs are tiny (64 images, the cnn, the CPU). Stopped runs are made in this process (a callback
stops the fit after epoch 1, KILLED, with its checkpoint kept and uploaded); a process that
must die by SIGKILL, or hold a lease while the CLI runs, is a subprocess. The CLI's own
commands run in this process (``CliRunner``): refusals are read from its stderr. The races
are two real CLI subprocesses started at the same moment.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from mnist_tracker.paths import checkpoint_path, outbox_dir, run_dir
from mnist_tracker.tracking import artifacts
from mnist_tracker.tracking.outbox import Outbox

from .conftest import BIN, SUBSET, _needs_service
from .faultproxy import FaultProxy
from .test_cli import invoke, one_error_line
from .test_resilience import Cli, history

pytestmark = pytest.mark.slow

API = "/api/2.0/mlflow"
TINY = ["--limit-train", "64", "--limit-test", "64", "--device", "cpu", "--no-system-metrics"]


def iso_ago(minutes: float) -> str:
    """A heartbeat tag value ``minutes`` ago (as ``lease.now_tag`` writes it)."""
    when = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=minutes)
    return when.isoformat(timespec="seconds")


def stopped_run(experiment: str, epochs: int = 3) -> str:
    """A run stopped KILLED after epoch 1 of ``epochs``, its checkpoint local and uploaded."""
    from mnist_tracker.config import resolve_config
    from mnist_tracker.training import OnEpoch, Stop
    from mnist_tracker.workflows.train import TrainOptions, train

    config = resolve_config("cnn", epochs=epochs, limit_train=64, limit_test=64, device="cpu")
    stop = OnEpoch(lambda epoch, _metrics: Stop("KILLED") if epoch == 1 else None)
    options = TrainOptions(experiment=experiment, system_metrics=False, callbacks=[stop])
    run_id = train(config, options).run_id
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "KILLED"
    assert checkpoint_path(run_id).is_file()
    logged = [a.path for a in client.list_artifacts(run_id, artifacts.CHECKPOINT_DIR)]
    assert logged == [artifacts.CHECKPOINT]
    return run_id


def steps(run_id: str, key: str = "train_loss") -> list[int]:
    """The steps of ``key``, in order, duplicates kept."""
    return [step for step, _ in history(MlflowClient(), run_id, key)]


def resume_ok(run_id: str, epochs: int) -> str:
    """``train --resume run_id`` succeeds: FINISHED, one train_loss point per epoch."""
    result = invoke("train", "--resume", run_id, "--no-system-metrics")
    assert result.exit_code == 0, result.output[-3000:]
    assert MlflowClient().get_run(run_id).info.status == "FINISHED"
    assert steps(run_id) == list(range(1, epochs + 1))
    return result.stderr


def refused_resume(run_id: str, *parts: str) -> str:
    """``train --resume run_id`` refused: exit 2, one Error line (naming the run and
    ``parts``) after the start line, no traceback."""
    result = invoke("train", "--resume", run_id, "--no-system-metrics")
    return one_error_line(result, f"run {run_id}", *parts, alone=False)


def set_tags(run_id: str, tags: dict[str, str]) -> None:
    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def wait_until(condition, what: str, timeout: float = 60.0, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc is None or proc.poll() is None, f"the process ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.02)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


def start_holder(run_id: str, env: dict[str, str]) -> subprocess.Popen:
    """A process holding ``run_id``'s lease (beating), as a training run does; returns once
    it holds it."""
    code = (
        "from mnist_tracker.tracking import lease; "
        f"lease.hold({run_id!r}).beating(); print('held', flush=True); "
        "import time; time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    lines: list[str] = []
    while not lines or lines[-1].strip() != "held":
        line = holder.stdout.readline()
        if not line:
            kill(holder)
            raise AssertionError(f"the holder ended before holding the lease:\n{''.join(lines)}")
        lines.append(line)
    return holder


# ---------------------------------------------------------------------------------------------
# One process per run


def test_second_resume_of_a_run_in_use_is_refused(sqlite_uri, experiment_name, cli_env):
    run_id = stopped_run(experiment_name)
    box = Outbox(outbox_dir(run_id))
    op = {"op": "log_batch", "run_id": run_id, "metrics": [], "params": {},
          "tags": {"queued": "yes"}}  # fmt: skip
    box.add(op, meta={"run_id": run_id, "tracking_uri": sqlite_uri})
    env = dict(cli_env, MLFLOW_TRACKING_URI=sqlite_uri, MNIST_TRACKER_HEARTBEAT_S="1")
    holder = start_holder(run_id, env)
    try:
        client = MlflowClient()
        tags = client.get_run(run_id).data.tags
        assert tags[artifacts.HOLDER_TAG] == f"{socket.gethostname()}:{holder.pid}"
        first_beat = tags[artifacts.HEARTBEAT_TAG]
        wait_until(
            lambda: client.get_run(run_id).data.tags[artifacts.HEARTBEAT_TAG] != first_beat,
            "heartbeat from the holder (every 1 s)",
            timeout=15,
            proc=holder,
        )

        refused_resume(run_id, "in use", f"pid {holder.pid}")
        synced = invoke("sync", str(run_dir(run_id)))
        one_error_line(synced, f"run {run_id}", "in use", f"pid {holder.pid}", alone=False)
        assert len(box.pending()) == 1, "the refused sync sent nothing"
        run = client.get_run(run_id)
        assert run.info.status == "KILLED" and "queued" not in run.data.tags
        assert steps(run_id) == [1]
    finally:
        kill(holder)

    resume_ok(run_id, epochs=3)
    assert client.get_run(run_id).data.tags["queued"] == "yes", "the resume sent the outbox"
    assert not box.pending()


def test_resume_sends_the_outbox_before_any_epoch(sqlite_uri, experiment_name):
    """`--resume` sends the run's pending outbox before it trains: an outbox that ends the run
    FINISHED leaves nothing to resume (refused, still epoch 1 only), and one the store
    refuses stops the resume before any epoch, with the sync command to run."""
    meta = {"tracking_uri": sqlite_uri}
    ended = stopped_run(experiment_name)
    finish = {"op": "set_terminated", "run_id": ended, "status": "FINISHED",
              "end_time": int(time.time() * 1000)}  # fmt: skip
    Outbox(outbox_dir(ended)).add(finish, meta={"run_id": ended, **meta})
    refused_resume(ended, "already FINISHED", "nothing to resume")
    assert MlflowClient().get_run(ended).info.status == "FINISHED", "the outbox was sent"
    assert steps(ended) == [1], "and nothing trained"
    assert not Outbox(outbox_dir(ended)).pending()

    refused = stopped_run(experiment_name)
    box = Outbox(outbox_dir(refused))
    # MLflow refuses to change a logged param: an operation the store does not take.
    change = {"op": "log_batch", "run_id": refused, "metrics": [], "params": {"lr": "0.5"},
              "tags": {}}  # fmt: skip
    box.add(change, meta={"run_id": refused, **meta})
    refused_resume(
        refused, "outbox the server did not take", f"mnist-tracker sync {run_dir(refused)}"
    )
    run = MlflowClient().get_run(refused)
    assert run.info.status == "KILLED" and run.data.params["lr"] == "0.001"
    assert steps(refused) == [1], "no epoch trained after the refused outbox"
    assert len(box.pending()) == 1


def test_a_live_holder_on_another_machine_is_refused_and_a_stale_one_is_not(
    sqlite_uri, experiment_name
):
    run_id = stopped_run(experiment_name)
    client = MlflowClient()
    client.update_run(run_id, status="RUNNING")
    set_tags(run_id, {artifacts.HOLDER_TAG: "other-host:123", artifacts.HEARTBEAT_TAG: iso_ago(0)})

    refused_resume(run_id, "other-host:123")
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags[artifacts.HOLDER_TAG] == "other-host:123", "refused: nothing changed"
    assert steps(run_id) == [1]

    set_tags(run_id, {artifacts.HEARTBEAT_TAG: iso_ago(20)})
    resume_ok(run_id, epochs=3)
    holder = client.get_run(run_id).data.tags[artifacts.HOLDER_TAG]
    assert holder.startswith(f"{socket.gethostname()}:")


# ---------------------------------------------------------------------------------------------
# Races: two real processes started at the same moment


class Racer:
    """A `mnist-tracker` subprocess whose stdout and stderr go to files (nothing can block)."""

    def __init__(self, args: list[str], env: dict[str, str], folder: Path, name: str):
        self.stdout_path, self.stderr_path = folder / f"{name}.out", folder / f"{name}.err"
        with open(self.stdout_path, "w") as out, open(self.stderr_path, "w") as err:
            self.proc = subprocess.Popen([str(BIN / "mnist-tracker"), *args], stdout=out,
                                         stderr=err, env=env)  # fmt: skip
        self.started = time.monotonic()
        self.code: int | None = None
        self.ended = 0.0
        self.others_running = 0  # how many other racers were still running when this one ended

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


def race(args: list[str], env: dict[str, str], folder: Path, timeout: float = 120):
    """Two ``mnist-tracker ARGS`` started back to back and waited for together: (winner,
    loser), the winner the one that exited 0; each end is timed and polled as it comes."""
    racers = [Racer(args, env, folder, name) for name in ("a", "b")]
    deadline = time.monotonic() + timeout
    try:
        while any(r.code is None for r in racers):
            assert time.monotonic() < deadline, f"the racers ran over {timeout:.0f} s"
            for racer in racers:
                if racer.code is None and racer.proc.poll() is not None:
                    racer.code, racer.ended = racer.proc.returncode, time.monotonic()
                    racer.others_running = sum(o.proc.poll() is None for o in racers)
            time.sleep(0.01)
    finally:
        for racer in racers:
            kill(racer.proc)
    assert abs(racers[0].started - racers[1].started) < 0.5, "not started at the same moment"
    codes = sorted(r.code for r in racers)
    assert codes == [0, 2], [(r.code, r.stdout[-1500:], r.stderr[-3000:]) for r in racers]
    winner, loser = sorted(racers, key=lambda r: r.code)
    assert loser.others_running == 1 and loser.ended < winner.ended, (
        "the loser ended after the winner: the two did not overlap"
    )
    return winner, loser


def refused_in_use(loser: Racer, run_id: str, winner: Racer) -> str:
    """The loser's stderr: one ``Error:`` line, the last, naming the run, "in use" and the
    winner's pid (the lock it met was the winner's, held while it ran); no traceback."""
    err = loser.stderr
    assert "Traceback" not in err + loser.stdout, err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], err
    for part in (f"run {run_id}", "in use", f"pid {winner.proc.pid}"):
        assert part in errors[0], errors[0]
    return errors[0]


def logged_models(run_id: str) -> list:
    client = MlflowClient()
    experiment_id = client.get_run(run_id).info.experiment_id
    return client.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")


def test_two_resumes_started_at_once_one_wins(sqlite_uri, experiment_name, cli_env, tmp_path):
    """Case 3: two real `train --resume RUN` at the same moment; one trains, one is refused."""
    run_id = stopped_run(experiment_name, epochs=3)
    env = dict(cli_env, MLFLOW_TRACKING_URI=sqlite_uri, MNIST_TRACKER_HEARTBEAT_S="1")
    winner, loser = race(["train", "--resume", run_id, "--no-system-metrics"], env, tmp_path)

    refused_in_use(loser, run_id, winner)
    assert f"run {run_id}: resuming after epoch 1 of 3" in winner.stderr, winner.stderr
    assert "Traceback" not in winner.stderr
    client = MlflowClient()
    assert client.get_run(run_id).info.status == "FINISHED"
    assert steps(run_id) == [1, 2, 3]
    assert len(logged_models(run_id)) == 1
    assert not checkpoint_path(run_id).exists()


def test_two_syncs_of_one_run_at_once_send_each_operation_once(
    server_uri, experiment_name, cli_env, tmp_path
):
    """Case 4: two real `sync RUN_FOLDER` at the same moment on an outbox of 42 operations;
    the artifact upload is slowed 6 s at the proxy, so the winner is sending while the other
    asks for the run. Every request is counted at the proxy: none is made twice."""
    client = MlflowClient(server_uri)
    experiment_id = client.create_experiment(experiment_name)
    run_id = client.create_run(experiment_id).info.run_id
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    box = Outbox(outbox_dir(run_id))
    with FaultProxy(server_uri) as proxy:
        meta = {"run_id": run_id, "tracking_uri": proxy.url}
        for step in range(1, 41):
            metric = {"key": "train_loss", "value": 1.0 / step, "timestamp": 1000 + step,
                      "step": step}  # fmt: skip
            params = {"model": "cnn"} if step == 1 else {}
            box.add({"op": "log_batch", "run_id": run_id, "metrics": [metric], "params": params,
                     "tags": {}}, meta=meta)  # fmt: skip
            if step == 20:
                box.add({"op": "log_artifact", "run_id": run_id, "name": "big.bin",
                         "artifact_path": "plots"}, files={"big.bin": big})  # fmt: skip
        box.add({"op": "set_terminated", "run_id": run_id, "status": "FINISHED",
                 "end_time": int(time.time() * 1000)})  # fmt: skip
        assert len(box.pending()) == 42
        proxy.add("PUT", "/artifacts/.*/plots/big.bin$", "slow", times=None, delay_s=6.0)
        proxy.add("POST", f"{API}/runs/log-batch$", "slow", times=None)  # counted, not slowed
        proxy.add("POST", f"{API}/runs/update$", "slow", times=None)  # the end, counted
        env = dict(cli_env, MLFLOW_TRACKING_URI=proxy.url)
        winner, loser = race(["sync", str(run_dir(run_id))], env, tmp_path)

        refused_in_use(loser, run_id, winner)
        assert f"run {run_id}: sent 42 operation(s)" in winner.stdout, winner.stdout
        assert "run ended FINISHED" in winner.stdout, winner.stdout
        # Each request once: the 40 batches (+1, the winner's holder tags), one upload, one end.
        assert proxy.hit("slow", "plots/big.bin") == 1, proxy.hits
        assert proxy.hit("slow", "runs/log-batch") == 41, proxy.hits
        assert proxy.hit("slow", "runs/update") == 1, proxy.hits

    # The server drops a repeated identical metric, so the counts above are the real proof.
    assert steps(run_id) == list(range(1, 41))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"model": "cnn"}
    assert [a.path for a in client.list_artifacts(run_id)] == ["plots"]
    (uploaded,) = client.list_artifacts(run_id, "plots")
    assert (uploaded.path, uploaded.file_size) == ("plots/big.bin", 2 * 1024 * 1024)
    assert not box.folder.exists() and not run_dir(run_id).exists()


# ---------------------------------------------------------------------------------------------
# Zombies: a heartbeat that stopped, `compare` and `runs reap`


def statuses(experiment: str) -> dict[str, str]:
    """run id -> the Status column of `compare --include-unfinished --runs all --format csv`."""
    result = invoke("compare", "--experiment", experiment, "--include-unfinished",
                    "--runs", "all", "--format", "csv")  # fmt: skip
    assert result.exit_code == 0, result.output
    return {row["run_id"]: row["status"] for row in csv.DictReader(io.StringIO(result.stdout))}


def reap(*args: str) -> tuple[list[str], str]:
    """`runs reap ARGS`: its stdout lines and its stderr."""
    result = invoke("runs", "reap", *args)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    return result.stdout.strip().splitlines(), result.stderr


def training_cli(args: list[str], sqlite_uri: str, experiment: str, env: dict[str, str]) -> Cli:
    return Cli(["train", "--model", "cnn", *args, "--device", "cpu", "--no-system-metrics",
                "--data-dir", str(SUBSET), "--tracking-uri", sqlite_uri,
                "--experiment", experiment], env)  # fmt: skip


def live_run(experiment: str, tags: dict[str, str]) -> str:
    """A RUNNING run with ``tags``, as another process left it."""
    client = MlflowClient()
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    run = client.create_run(experiment_id, tags={"mlflow.runName": "other"} | tags)
    client.log_param(run.info.run_id, "model", "cnn")
    return run.info.run_id


def test_a_killed_run_is_stale_then_reaped_with_how_to_resume(sqlite_uri, experiment_name, cli_env):
    env = dict(cli_env, MNIST_TRACKER_HEARTBEAT_S="1")
    cli = training_cli(["--epochs", "3", "--limit-train", "64", "--limit-test", "64"],
                       sqlite_uri, experiment_name, env)  # fmt: skip
    try:
        cli.wait_for("epoch 1/3", timeout=120)
    finally:
        kill(cli.proc)
    client = MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
    run_id = run.info.run_id
    assert run.info.status == "RUNNING", cli.text[-3000:]
    assert run.data.tags[artifacts.HOLDER_TAG] == f"{socket.gethostname()}:{cli.proc.pid}"
    assert checkpoint_path(run_id).is_file()
    assert statuses(experiment_name)[run_id] == "RUNNING", "its heartbeat is still recent"

    fresh = live_run(experiment_name, {artifacts.HOLDER_TAG: "other-host:1",
                                       artifacts.HEARTBEAT_TAG: iso_ago(0)})  # fmt: skip
    pending = live_run(experiment_name, {artifacts.HOLDER_TAG: "other-host:2",
                                         artifacts.HEARTBEAT_TAG: iso_ago(60),
                                         artifacts.PENDING_TAG: "3 operations"})  # fmt: skip
    old_beat = iso_ago(20)
    set_tags(run_id, {artifacts.HEARTBEAT_TAG: old_beat})
    assert statuses(experiment_name) == {run_id: "STALE", fresh: "RUNNING", pending: "RUNNING"}

    listed, err = reap("--dry-run")
    assert len(listed) == 1 and listed[0].startswith(f"would end run {run_id} "), listed
    assert "1 stale run(s) found" in err
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert run.data.tags[artifacts.HEARTBEAT_TAG] == old_beat, "a dry run changes nothing"
    assert run.data.tags[artifacts.HOLDER_TAG] == f"{socket.gethostname()}:{cli.proc.pid}"

    ended, err = reap("--experiment", experiment_name)
    assert len(ended) == 1 and ended[0].startswith(f"ended FAILED run {run_id} "), ended
    assert "1 stale run(s) ended" in err
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    reason = run.data.tags[artifacts.REAPED_TAG]
    assert f"train --resume {run_id} --tracking-uri {sqlite_uri}" in reason, reason
    assert f":{cli.proc.pid}" in reason, reason
    assert "(more than 10 min)" in reason, reason  # --older-than's default, as a person reads it
    for other in (fresh, pending):
        assert client.get_run(other).info.status == "RUNNING"

    again, err = reap()
    assert again == [] and "0 stale run(s) ended" in err

    resume_ok(run_id, epochs=3)
    # Alive again and FINISHED: the reaper's "the process died; resume it" no longer holds.
    assert artifacts.REAPED_TAG not in client.get_run(run_id).data.tags


def test_zombie_before_first_checkpoint_is_reaped_without_resume_hint(
    sqlite_uri, experiment_name, cli_env, tmp_path
):
    # The whole subset: the first epoch takes long enough to kill the run before it ends.
    cli = training_cli(["--epochs", "1", "--limit-train", "1000", "--limit-test", "64"],
                       sqlite_uri, experiment_name, cli_env)  # fmt: skip
    runs = Path(os.environ["MNIST_TRACKER_HOME"]) / "runs"
    try:
        wait_until(lambda: any(runs.glob("*/lock")), "run folder", timeout=120, proc=cli.proc)
    finally:
        kill(cli.proc)
    (lock,) = runs.glob("*/lock")
    run_id = lock.parent.name
    client = MlflowClient()
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"
    assert not checkpoint_path(run_id).exists(), "killed too late: epoch 1 had ended"
    assert client.list_artifacts(run_id, artifacts.CHECKPOINT_DIR) == []

    set_tags(run_id, {artifacts.HEARTBEAT_TAG: iso_ago(20)})
    ended, _ = reap()
    assert len(ended) == 1 and run_id in ended[0], ended
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    reason = run.data.tags[artifacts.REAPED_TAG]
    assert "no heartbeat" in reason and "--resume" not in reason, reason
    refused_resume(run_id, "no checkpoint")


# ---------------------------------------------------------------------------------------------
# Checkpoints: a damaged local copy, a full disk


def artifact_file(run_id: str, path: str) -> Path:
    """Where a local artifact store keeps ``path`` of ``run_id``."""
    uri = MlflowClient().get_run(run_id).info.artifact_uri
    root = urllib.parse.urlparse(uri).path if uri.startswith("file:") else uri
    return Path(root) / path


def test_damaged_local_checkpoint_falls_back_to_the_artifact(sqlite_uri, experiment_name):
    for damage in ("half", "empty"):
        run_id = stopped_run(experiment_name, epochs=2)
        local = checkpoint_path(run_id)
        data = local.read_bytes()
        local.write_bytes(data[: len(data) // 2] if damage == "half" else b"")
        err = resume_ok(run_id, epochs=2)
        said = (
            f"run {run_id}: resuming after epoch 1 of 2, from the checkpoint in the run's "
            f"artifacts (the local one is damaged ({local.name}: "
        )
        assert said in err, (damage, err)
        assert "Aborted" not in err

    run_id = stopped_run(experiment_name, epochs=2)
    local = checkpoint_path(run_id)
    local.write_bytes(b"")
    remote = artifact_file(run_id, artifacts.CHECKPOINT)
    assert remote.is_file(), remote
    remote.write_bytes(b"not a checkpoint " + uuid.uuid4().bytes)
    line = refused_resume(run_id, str(local), "damaged")
    assert "Aborted" not in line
    assert MlflowClient().get_run(run_id).info.status == "KILLED"
    assert steps(run_id) == [1]


def test_resume_on_another_machine_downloads_the_checkpoint_artifact(server_uri, experiment_name):
    """README "Never losing a run": with no run folder here at all (the run trained on another
    machine), `train --resume` downloads `checkpoints/checkpoint.pt` from the run's artifacts
    on the server and continues: epoch 1 is not sent again, epoch 2 equals that of the same
    run never stopped, and the run ends FINISHED without its checkpoint, local or uploaded."""
    from mnist_tracker.config import resolve_config
    from mnist_tracker.workflows.train import TrainOptions, train

    run_id = stopped_run(experiment_name, epochs=2)
    client = MlflowClient()
    (epoch_1,) = history(client, run_id, "train_loss")
    shutil.rmtree(run_dir(run_id))  # the other machine has no local copy, nor a lock file

    err = resume_ok(run_id, epochs=2)
    said = f"run {run_id}: resuming after epoch 1 of 2, from the checkpoint in the run's artifacts"
    assert f"{said} (none here)" in err, err
    resumed = history(client, run_id, "train_loss")
    assert resumed[0] == epoch_1, "epoch 1 came from the checkpoint, not trained again"
    assert client.list_artifacts(run_id, artifacts.CHECKPOINT_DIR) == []
    assert not run_dir(run_id).exists(), "a finished run drops the downloaded copy"

    config = resolve_config("cnn", epochs=2, limit_train=64, limit_test=64, device="cpu")
    options = TrainOptions(experiment=experiment_name, system_metrics=False,
                           log_artifacts=False, checkpoints=False)  # fmt: skip
    never_stopped = train(config, options).run_id
    for key in ("train_loss", "test_loss", "test_accuracy"):
        expected = history(client, never_stopped, key)
        got = history(client, run_id, key)
        assert [s for s, _ in got] == [s for s, _ in expected] == [1, 2], key
        for (_, value), (_, want) in zip(got, expected, strict=True):
            assert value == pytest.approx(want, abs=1e-6), key


def test_resume_refuses_a_checkpoint_older_than_the_epochs_the_server_holds(
    server_uri, experiment_name, tmp_path
):
    """README: the checkpoint `--resume` takes "must cover every epoch the server holds". The
    run went on elsewhere (epoch 2 reached the server, its checkpoint did not) and this machine
    has no copy: the artifact (epoch 1) is refused in one line, exit 2, and nothing changes:
    the run stays KILLED with its two epochs and its epoch-1 artifact, and no run folder (no
    downloaded copy) is left here."""
    from mnist_tracker.training import checkpoint

    run_id = stopped_run(experiment_name, epochs=3)
    client = MlflowClient()
    client.log_metric(run_id, "train_loss", 0.5, step=2)
    shutil.rmtree(run_dir(run_id))

    line = refused_resume(run_id, "logged 2 epochs", "newest checkpoint is from epoch 1",
                          "resume it on the machine that ran it last")  # fmt: skip
    assert "Traceback" not in line
    run = client.get_run(run_id)
    assert run.info.status == "KILLED"
    assert steps(run_id) == [1, 2]
    assert [a.path for a in client.list_artifacts(run_id, artifacts.CHECKPOINT_DIR)] == [
        artifacts.CHECKPOINT
    ]
    kept = client.download_artifacts(run_id, artifacts.CHECKPOINT, str(tmp_path))
    assert checkpoint.load(Path(kept))["epoch"] == 1
    assert not run_dir(run_id).exists(), "the refused artifact was not kept here"


def test_checkpoints_over_the_limit_are_uploaded_only_when_the_run_stops_early(
    sqlite_uri, experiment_name, monkeypatch
):
    """README: checkpoints up to 64 MiB are uploaded after every epoch, bigger ones only when
    the run stops early. With the limit lowered to 1 MiB, below the cnn's (about 5 MB): a run
    that finishes uploads none after its epochs, and one that diverges uploads its last good
    epoch's checkpoint as it ends FAILED."""
    from mnist_tracker import errors
    from mnist_tracker.config import resolve_config
    from mnist_tracker.training import OnEpoch, checkpoint
    from mnist_tracker.workflows import callbacks as run_callbacks
    from mnist_tracker.workflows.train import TrainOptions, train

    assert run_callbacks.UPLOAD_EVERY_EPOCH_MAX_BYTES == 64 * 2**20, "the README's 64 MiB"
    monkeypatch.setattr(run_callbacks, "UPLOAD_EVERY_EPOCH_MAX_BYTES", 2**20)
    client = MlflowClient()
    started: list[str] = []
    seen: list[tuple[int, int, list[str]]] = []  # after each epoch: local size, uploads

    def look(epoch, _metrics):
        run_id = started[-1]
        uploaded = [a.path for a in client.list_artifacts(run_id, artifacts.CHECKPOINT_DIR)]
        seen.append((epoch, checkpoint_path(run_id).stat().st_size, uploaded))

    def options(**kwargs):
        return TrainOptions(
            experiment=experiment_name,
            system_metrics=False,
            callbacks=[OnEpoch(look)],
            on_run_start=started.append,
            **kwargs,
        )

    finishing = resolve_config("cnn", epochs=2, limit_train=64, limit_test=64, device="cpu")
    train(finishing, options(log_artifacts=False))
    assert [(epoch, uploads) for epoch, _, uploads in seen] == [(1, []), (2, [])]
    assert all(size > 2**20 for _, size, _ in seen), seen
    assert client.get_run(started[-1]).info.status == "FINISHED"

    seen.clear()
    diverging = resolve_config("cnn", epochs=6, optimizer="sgd", lr=5.0, scheduler="onecycle",
                               limit_train=200, limit_test=100, device="cpu")  # fmt: skip
    with pytest.raises(errors.Diverged) as info:
        train(diverging, options())
    run_id, last_good = started[-1], info.value.epoch - 1
    assert last_good >= 1, "this recipe diverges after a good first epoch"
    assert [uploads for _, _, uploads in seen] == [[]] * last_good, seen
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["diverged_epoch"] == str(last_good + 1)
    uploaded = client.list_artifacts(run_id, artifacts.CHECKPOINT_DIR)
    assert [a.path for a in uploaded] == [artifacts.CHECKPOINT]
    assert uploaded[0].file_size == seen[-1][1] > 2**20
    assert checkpoint.load(artifact_file(run_id, artifacts.CHECKPOINT))["epoch"] == last_good


def test_a_full_disk_costs_the_checkpoint_not_the_run(
    sqlite_uri, experiment_name, tmp_path, monkeypatch
):
    small = tmp_path / "small-disk"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        _needs_service(f"cannot mount a 256 KiB tmpfs: {mounted.stderr.strip()[-200:]}")
    try:
        monkeypatch.setenv("MNIST_TRACKER_HOME", str(small))
        result = invoke("train", "--model", "cnn", "--epochs", "2", *TINY,
                        "--experiment", experiment_name)  # fmt: skip
        assert result.exit_code == 0, result.output[-3000:]
        warnings = [line for line in result.stderr.splitlines() if "warning:" in line]
        assert len(warnings) == 1, result.stderr
        assert warnings[0].startswith("warning: cannot write checkpoints"), warnings
        client = MlflowClient()
        (run,) = client.search_runs([client.get_experiment_by_name(experiment_name).experiment_id])
        assert run.info.status == "FINISHED"
        assert steps(run.info.run_id) == [1, 2]
        left = sorted(p.name for p in small.rglob("*") if p.is_file())
        assert not [name for name in left if "checkpoint" in name], left
    finally:
        subprocess.run(["umount", str(small)], check=False)


def test_reap_leaves_a_run_whose_lock_a_live_local_process_holds(
    sqlite_uri, experiment_name, cli_env
):
    """Case 7: a RUNNING run whose heartbeat is 20 min old but whose lock a live process here
    holds (as a training run that lost its server would) is not reaped; once that process is
    SIGKILLed, the same reap ends it. So the skip came from the lock, nothing else."""
    from mnist_tracker.tracking import lease

    client = MlflowClient()
    client.create_experiment(experiment_name)
    run_id = live_run(experiment_name, {})
    # Its next heartbeat is an hour away: the heartbeat tag stays where the test puts it.
    env = dict(cli_env, MLFLOW_TRACKING_URI=sqlite_uri, MNIST_TRACKER_HEARTBEAT_S="3600")
    holder = start_holder(run_id, env)
    lock = run_dir(run_id) / "lock"
    try:
        held_by = f"{socket.gethostname()}:{holder.pid}"
        assert client.get_run(run_id).data.tags[artifacts.HOLDER_TAG] == held_by
        assert lock.read_text().strip() == f"mnist-tracker pid {holder.pid}"
        old_beat = iso_ago(20)
        set_tags(run_id, {artifacts.HEARTBEAT_TAG: old_beat})
        assert lease.is_stale(client.get_run(run_id)), "by its tags alone it is a zombie"

        ended, err = reap("--experiment", experiment_name)
        assert ended == [] and "0 stale run(s) ended" in err, (ended, err)
        assert holder.poll() is None, "the holder was alive during the reap"
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING"
        assert artifacts.REAPED_TAG not in run.data.tags
        assert run.data.tags[artifacts.HOLDER_TAG] == held_by
        assert run.data.tags[artifacts.HEARTBEAT_TAG] == old_beat, "the reap set no tag"
        assert lock.read_text().strip() == f"mnist-tracker pid {holder.pid}", "lock untouched"
    finally:
        kill(holder)

    ended, err = reap("--experiment", experiment_name)
    assert len(ended) == 1 and ended[0].startswith(f"ended FAILED run {run_id} "), (ended, err)
    assert "1 stale run(s) ended" in err
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert f"no heartbeat from {held_by}" in run.data.tags[artifacts.REAPED_TAG]


@pytest.mark.fast
@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10, "10 s"), (119, "119 s"), (600, "10 min"), (5400, "90 min"), (9000, "2.5 h")],
)
def test_a_reap_reason_gives_durations_in_the_unit_a_person_reads(seconds, text):
    """`runs reap --older-than 10s` wrote "(more than 0.166667 min)"."""
    from mnist_tracker.tracking.lease import _duration

    assert _duration(seconds) == text


def test_a_reaped_trial_run_says_its_trial_failed(sqlite_uri, experiment_name):
    """A tuner's trial run ended by the reaper kept optuna.state=RUNNING beside FAILED."""
    client = MlflowClient()
    stale = {artifacts.HOLDER_TAG: "pid 1 on gone", artifacts.HEARTBEAT_TAG: iso_ago(20)}
    experiment = client.create_experiment(experiment_name)
    trial = client.create_run(experiment, tags=stale | {"optuna.state": "RUNNING"}).info.run_id
    plain = client.create_run(experiment, tags=stale).info.run_id
    ended, _ = reap("--experiment", experiment_name)
    assert len(ended) == 2, ended
    assert client.get_run(trial).data.tags["optuna.state"] == "FAIL"
    assert "optuna.state" not in client.get_run(plain).data.tags


def test_a_resume_reads_the_run_s_own_data_folder_only_while_it_holds_mnist(tmp_path):
    """`own_data_dir`: the training dataset's folder, if it is here with the IDX files in it;
    a folder the files were moved out of was chosen over ./data, then failed to download (a
    review's find, stop 36); the test and validation sets' folders are never taken."""
    import json

    from mlflow.entities import Dataset, DatasetInput, InputTag, Run, RunData, RunInfo, RunInputs

    from mnist_tracker.workflows.resume import own_data_dir

    from .conftest import copy_subset

    def run_on(folders: dict[str, Path]) -> Run:
        inputs = [
            DatasetInput(
                Dataset(f"mnist-{context}", "d", "local", json.dumps({"uri": str(folder)})),
                tags=[InputTag("mlflow.data.context", context)],
            )
            for context, folder in folders.items()
        ]
        info = RunInfo("r", "0", "u", "KILLED", 0, None, "active")
        return Run(info, RunData(), RunInputs(dataset_inputs=inputs))

    full = copy_subset(tmp_path / "full")
    emptied = tmp_path / "emptied"
    emptied.mkdir()
    assert own_data_dir(run_on({"testing": emptied, "training": full})) == str(full)
    assert own_data_dir(run_on({"training": emptied, "testing": full})) is None
    assert own_data_dir(run_on({"training": tmp_path / "gone"})) is None
    assert own_data_dir(run_on({"testing": full})) is None


def test_a_resume_on_other_data_is_refused_before_the_run_trains_again(
    sqlite_uri, experiment_name, tmp_path, monkeypatch
):
    """The same files with the training images in another order (another subset, another
    source): the resumed epochs would have trained on other images under the same run. The
    dataset digest the run logged tells; the run keeps its epoch and its status, and a
    checkpoint downloaded for the resume is not kept. The run's own folder with its files
    changed in place is told as such (not "pass --data-dir" the same folder)."""
    import gzip
    import json

    import numpy as np

    from mnist_tracker import data
    from mnist_tracker.data.idx import write_idx

    from .conftest import copy_subset

    own = copy_subset(tmp_path / "own")
    monkeypatch.setenv("MNIST_DATA_DIR", str(own))
    run_id = stopped_run(experiment_name)
    other = copy_subset(tmp_path / "other")
    manifest = json.loads((other / data.MANIFEST_NAME).read_text())
    for key in ("train_images", "train_labels"):
        path = other / f"{data.FILES[key].name}.gz"
        with gzip.open(path) as fh:
            raw = fh.read()
        header = 16 if key == "train_images" else 8
        items = np.frombuffer(raw, np.uint8, offset=header).reshape(1000, -1)[::-1]
        array = items.reshape(1000, 28, 28) if key == "train_images" else items.reshape(1000)
        manifest["files"][key]["sha256"] = write_idx(path, array)
    (other / data.MANIFEST_NAME).write_text(json.dumps(manifest))

    def refused(*args: str, parts: tuple[str, ...]) -> None:
        result = invoke("train", "--resume", run_id, "--no-system-metrics", *args)
        one_error_line(result, f"run {run_id}", "trained on training data with digest",
                       *parts, alone=False)  # fmt: skip
        assert MlflowClient().get_run(run_id).info.status == "KILLED"
        assert steps(run_id) == [1]

    # On another machine (no run folder): the checkpoint artifact is not kept either.
    shutil.rmtree(run_dir(run_id))
    refused("--data-dir", str(other), parts=(f"{other} holds other", f"--data-dir {own}"))
    assert not run_dir(run_id).exists()

    shutil.copytree(other, own, dirs_exist_ok=True)  # its own folder, other files in it
    refused(parts=(f"{own} holds other", "its files changed since the run read them"))
    copy_subset(own)
    resume_ok(run_id, 3)  # its own data again: it resumes
