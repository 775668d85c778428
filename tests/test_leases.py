"""Run leases: one process per run, zombies found by their heartbeat and reaped, checkpoints
that survive a damaged copy or a full disk (issue 11).

Runs are tiny (64 images, the cnn, the CPU). Stopped runs are made in this process (a callback
stops the fit after epoch 1, KILLED, with its checkpoint kept and uploaded); a process that
must die by SIGKILL, or hold a lease while the CLI runs, is a subprocess. The CLI's own
commands run in this process (``CliRunner``): refusals are read from its stderr.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
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

from .conftest import SUBSET, _needs_service
from .test_cli import invoke, one_error_line
from .test_resilience import Cli, history

pytestmark = pytest.mark.slow

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


# ---------------------------------------------------------------------------------------------
# One process per run


def test_second_resume_of_a_run_in_use_is_refused(sqlite_uri, experiment_name, cli_env):
    run_id = stopped_run(experiment_name)
    box = Outbox(outbox_dir(run_id))
    op = {"op": "log_batch", "run_id": run_id, "metrics": [], "params": {},
          "tags": {"queued": "yes"}}  # fmt: skip
    box.add(op, meta={"run_id": run_id, "tracking_uri": sqlite_uri})
    code = (
        "from mnist_tracker.tracking import lease; "
        f"lease.hold({run_id!r}).beating(); print('held', flush=True); "
        "import time; time.sleep(60)"
    )
    env = dict(cli_env, MLFLOW_TRACKING_URI=sqlite_uri, MNIST_TRACKER_HEARTBEAT_S="1")
    holder = subprocess.Popen([sys.executable, "-c", code], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        lines = []
        while not lines or lines[-1].strip() != "held":
            line = holder.stdout.readline()
            assert line, f"the holder ended before holding the lease:\n{''.join(lines)}"
            lines.append(line)
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
    assert f"train --resume {run_id}" in reason and f":{cli.proc.pid}" in reason, reason
    for other in (fresh, pending):
        assert client.get_run(other).info.status == "RUNNING"

    again, err = reap()
    assert again == [] and "0 stale run(s) ended" in err

    resume_ok(run_id, epochs=3)


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
        assert f"run {run_id}: resuming after epoch 1 of 2" in err, (damage, err)
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
