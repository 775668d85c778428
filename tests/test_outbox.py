"""The outbox and the sink's offline switch, in process: no server, a real SQLite store.

The server that goes away is a closed loopback port (connection refused at once); the one that
comes back is a SQLite store the sink is pointed at, standing in for the same server back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from mlflow.entities import Metric

from mnist_tracker.errors import SyncError
from mnist_tracker.tracking import artifacts, client, outbox
from mnist_tracker.tracking import sink as sink_mod
from mnist_tracker.tracking.sink import RunSink

pytestmark = pytest.mark.fast

DEAD = "http://127.0.0.1:9"  # the discard port: nothing listens, refused at once


@pytest.fixture
def store(sqlite_uri):
    """A run in a fresh SQLite store: (MlflowClient, run_id)."""
    c = client(sqlite_uri)
    experiment = c.create_experiment("outbox")
    return c, c.create_run(experiment).info.run_id


def _metric_steps(c, run_id, key="loss"):
    return [
        (m.step, m.value) for m in sorted(c.get_metric_history(run_id, key), key=lambda m: m.step)
    ]


def test_add_numbers_operations_and_drops_a_line_cut_short(tmp_path):
    box = outbox.Outbox(tmp_path / "outbox")
    box.add({"op": "log_batch", "metrics": [], "params": {}, "tags": {"a": "1"}, "run_id": "r"})
    with open(box.ops_path, "a") as fh:
        fh.write('{"op": "log_batch", "trunc')  # a crash in the middle of a write
    assert [op["id"] for op in box.operations()] == [0]
    second = box.add({"op": "set_terminated", "status": "FINISHED", "end_time": 1, "run_id": "r"})
    assert second["id"] == 1
    assert [op["op"] for op in box.operations()] == ["log_batch", "set_terminated"]
    assert all(line.endswith("}") for line in box.ops_path.read_text().splitlines())


def test_files_are_kept_with_their_operation(tmp_path):
    source = tmp_path / "plot.html"
    source.write_text("<html>1</html>")
    box = outbox.Outbox(tmp_path / "outbox")
    op = box.add({"op": "log_artifact", "name": "plot.html", "artifact_path": "plots"},
                 files={"plot.html": source})  # fmt: skip
    source.unlink()  # the run's temporary file is gone by the time sync runs
    kept = box.folder / op["files"] / "plot.html"
    assert kept.is_file()
    assert outbox.find(tmp_path / "outbox")[0].folder == box.folder
    assert outbox.find(tmp_path)[0].folder == box.folder


def test_replay_sends_in_order_once_and_goes_on_after_a_cut(store, tmp_path):
    c, run_id = store
    box = outbox.Outbox(tmp_path / "outbox")
    for step in (1, 2, 3):
        metric = {"key": "loss", "value": float(step), "timestamp": step, "step": step}
        box.add(
            {"op": "log_batch", "run_id": run_id, "params": {}, "tags": {}, "metrics": [metric]}
        )
    box.add({"op": "set_terminated", "run_id": run_id, "status": "FINISHED", "end_time": 9})
    box.mark_done(0)  # a replay cut short after its first operation
    result = outbox.replay(box, c)
    assert (result.sent, result.already_done) == (3, 1)
    assert _metric_steps(c, run_id) == [(2, 2.0), (3, 3.0)]  # step 1 was "sent before"
    assert c.get_run(run_id).info.status == "FINISHED"
    assert not box.folder.exists(), "a fully sent outbox is removed"
    again = outbox.replay(box, c)
    assert (again.sent, again.already_done) == (0, 0)
    assert _metric_steps(c, run_id) == [(2, 2.0), (3, 3.0)]


def test_replay_goes_past_a_refused_operation_and_holds_the_end_back(store, tmp_path):
    c, run_id = store
    box = outbox.Outbox(tmp_path / "outbox")
    box.add({"op": "log_batch", "run_id": run_id, "params": {"p": "1"}, "tags": {}, "metrics": []})
    box.add({"op": "teleport", "run_id": run_id})
    metric = {"key": "loss", "value": 0.5, "timestamp": 1, "step": 1}
    box.add({"op": "log_batch", "run_id": run_id, "params": {}, "tags": {}, "metrics": [metric]})
    box.add({"op": "set_terminated", "run_id": run_id, "status": "FINISHED", "end_time": 9})
    result = outbox.replay(box, c)
    assert [(f.op_id, f.op) for f in result.failed] == [(1, "teleport")]
    assert "unknown outbox operation 'teleport'" in result.failed[0].reason
    assert result.sent == 2 and result.ended is None
    assert box.done() == {0, 2} and [op["id"] for op in box.pending()] == [1, 3]
    run = c.get_run(run_id)
    assert run.data.params == {"p": "1"} and _metric_steps(c, run_id) == [(1, 0.5)]
    assert run.info.status == "RUNNING", "never FINISHED with an operation missing"
    pending = run.data.tags[artifacts.PENDING_TAG]
    assert str(box.folder) in pending and "teleport" in pending and "mnist-tracker sync" in pending

    # Meanwhile `runs reap` took the silent run for dead; the end corrects that.
    c.set_tag(run_id, artifacts.REAPED_TAG, "no heartbeat")
    # Fixed (here: the operation removed from the file); the next replay ends the run.
    lines = box.ops_path.read_text().splitlines()
    box.ops_path.write_text("\n".join(line for line in lines if "teleport" not in line) + "\n")
    again = outbox.replay(box, c)
    assert again.ended == "FINISHED" and again.complete
    run = c.get_run(run_id)
    assert run.info.status == "FINISHED" and artifacts.PENDING_TAG not in run.data.tags
    assert artifacts.REAPED_TAG not in run.data.tags


def _checkpoint_op(box, tmp_path, epoch, run_id):
    source = tmp_path / f"checkpoint-{epoch}.pt"
    source.write_bytes(b"x" * epoch)
    return box.add(
        {"op": "log_artifact", "name": "checkpoint.pt", "artifact_path": "checkpoints",
         "run_id": run_id},
        files={"checkpoint.pt": source},
    )  # fmt: skip


def test_old_checkpoint_uploads_are_skipped_and_all_when_the_run_finished(store, tmp_path):
    """And a FINISHED end deletes the checkpoint already on the server."""
    c, run_id = store
    box = outbox.Outbox(tmp_path / "outbox")
    for epoch in (1, 2, 3):
        _checkpoint_op(box, tmp_path, epoch, run_id)
    result = outbox.replay(box, c)
    assert (result.sent, result.skipped) == (1, 2)
    back = c.download_artifacts(run_id, "checkpoints/checkpoint.pt", str(tmp_path / "dl"))
    assert Path(back).read_bytes() == b"xxx", "the newest checkpoint is the one sent"

    finished = outbox.Outbox(tmp_path / "finished")
    _checkpoint_op(finished, tmp_path, 4, run_id)
    finished.add({"op": "set_terminated", "run_id": run_id, "status": "FINISHED", "end_time": 9})
    assert c.list_artifacts(run_id, "checkpoints"), "uploaded before the run lost its server"
    result = outbox.replay(finished, c)
    assert (result.sent, result.skipped, result.ended) == (1, 1, "FINISHED")
    # A finished run is never resumed: the checkpoint it uploaded before goes with the end.
    assert c.list_artifacts(run_id, "checkpoints") == []


BATCH = '{"op": "log_batch", "id": 0, "run_id": "r", "metrics": [], "params": {}, "tags": {}}'


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("ops.jsonl", BATCH + "\nnot json\n", "ops.jsonl line 2"),
        ("ops.jsonl", '["a list"]\n', "ops.jsonl line 1"),
        ("done.txt", "0\nzero\n", "done.txt line 2"),
        # A hostile test's finds (stop 36): each was a traceback from sync, KeyError or
        # UnicodeDecodeError, which stopped a plain `sync` before the other runs' outboxes.
        ("ops.jsonl", BATCH + "\n" + BATCH.replace('"r"', "7") + "\n", "ops.jsonl line 2"),
        ("ops.jsonl", '{"op": "set_terminated", "id": 0, "run_id": "r"}\n', "ops.jsonl line 1"),
        ("ops.jsonl", BATCH.encode() + b"\n\xff\xfe\n", "ops.jsonl line 2"),
    ],
)
def test_a_damaged_outbox_file_is_one_sync_error_naming_it(tmp_path, name, content, message):
    box = outbox.Outbox(tmp_path / "outbox")
    box.add({"op": "log_batch", "metrics": [], "params": {}, "tags": {}, "run_id": "r"})
    path = box.folder / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    with pytest.raises(SyncError, match=message):
        box.pending()


def test_sink_turns_offline_keeps_every_call_in_order_then_replays(store, monkeypatch):
    c, run_id = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    sink = RunSink(run_id, DEAD)
    started = time.monotonic()
    sink.log_metrics({"loss": 1.0}, step=1)
    assert sink.offline and "127.0.0.1:9" in sink.offline_reason
    sink.log_metrics({"loss": 2.0}, step=2)  # no probe within RECONNECT_EVERY_S: straight in
    sink.set_tags({"after": "outage"})
    assert time.monotonic() - started < 10, "a dead server must cost seconds, not minutes"
    ops = sink.outbox.pending()
    assert [op["op"] for op in ops] == ["log_batch"] * 3
    assert [m["step"] for op in ops for m in op["metrics"]] == [1, 2]
    meta = json.loads(sink.outbox.meta_path.read_text())
    assert meta == {"run_id": run_id, "tracking_uri": DEAD}

    # The server is back (here: the store it stands for); the next call probes and replays.
    monkeypatch.setattr(sink_mod, "RECONNECT_EVERY_S", 0.0)
    sink.uri, sink.client = c.tracking_uri, c
    sink.log_metrics({"loss": 3.0}, step=3)
    assert not sink.offline and not sink.outbox.pending()
    assert _metric_steps(c, run_id) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert c.get_run(run_id).data.tags["after"] == "outage"


def test_sink_end_while_offline_leaves_the_run_running_with_its_end_in_the_outbox(
    store, monkeypatch
):
    c, run_id = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    sink = RunSink(run_id, DEAD)
    sink.log_batch(metrics=[Metric("loss", 0.5, 1, 1)])
    sink.end("FINISHED")
    assert [op["op"] for op in sink.outbox.pending()] == ["log_batch", "set_terminated"]
    assert c.get_run(run_id).info.status == "RUNNING"  # never FINISHED with data missing
    outbox.replay(sink.outbox, c)
    assert c.get_run(run_id).info.status == "FINISHED"


def test_a_refused_call_raises_instead_of_going_to_the_outbox(store):
    c, run_id = store
    sink = RunSink(run_id, c.tracking_uri)
    sink.log_params({"p": "1"})
    with pytest.raises(Exception, match=r"(?i)param"):
        sink.log_batch(params={"p": "2"})  # MLflow refuses to change a param
    assert not sink.offline and not sink.outbox.exists()


def test_an_image_kept_offline_is_logged_with_its_key_and_step(store, monkeypatch, tmp_path):
    c, run_id = store
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    sink = RunSink(run_id, DEAD)
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    image[10:20, 5:25] = (200, 30, 30)
    sink.log_image(image, "misclassified", step=3)
    (op,) = sink.outbox.pending()
    assert (op["op"], op["key"], op["step"]) == ("log_image", "misclassified", 3)
    outbox.replay(sink.outbox, c)
    logged = [a.path for a in c.list_artifacts(run_id, "images")]
    png = [p for p in logged if p.startswith("images/misclassified+step+3+") and p.endswith(".png")]
    assert len(png) == 1, logged
    back = np.asarray(PIL.Image.open(c.download_artifacts(run_id, png[0], str(tmp_path))))
    np.testing.assert_array_equal(back[..., :3], image)


def test_a_model_logging_cut_short_leaves_one_ready_model(store, tmp_path):
    """Case 4: a sync or train killed while the model was logged left a PENDING model (and
    a FAILED one from an attempt MLflow marked so); logging again leaves exactly one model,
    READY, and logging once more adds none."""
    import torch
    from mlflow.entities import LoggedModelStatus

    from mnist_tracker.config import resolve_config
    from mnist_tracker.models import create_model
    from mnist_tracker.tracking import artifacts
    from mnist_tracker.tracking import model as model_mod

    c, run_id = store
    experiment_id = c.get_run(run_id).info.experiment_id
    leftover = c.create_logged_model(experiment_id, name="cnn", source_run_id=run_id)
    failed = c.create_logged_model(experiment_id, name="cnn", source_run_id=run_id)
    c.finalize_logged_model(failed.model_id, LoggedModelStatus.FAILED)
    network = create_model(resolve_config("cnn", device="cpu"))
    example = torch.rand(2, 1, 28, 28)
    uri = model_mod.log_model(network, example, run_id, "cnn")
    again = model_mod.log_model(network, example, run_id, "cnn")

    found = c.search_logged_models([experiment_id], filter_string=f"source_run_id = '{run_id}'")
    assert [m.status for m in found] == [LoggedModelStatus.READY]
    assert uri == again == f"models:/{found[0].model_id}"
    assert leftover.model_id != found[0].model_id != failed.model_id
    assert c.get_run(run_id).data.tags[artifacts.MODEL_URI_TAG] == uri


def test_sync_of_a_damaged_outbox_is_one_line_exit_2(tmp_path, monkeypatch, sqlite_uri):
    """Case 9: a corrupt ops.jsonl gets one line naming it, exit 2, no traceback."""
    from click.testing import CliRunner

    from mnist_tracker.cli import main

    box = outbox.Outbox(tmp_path / "runs" / "r1" / "outbox")
    box.add({"op": "log_batch", "metrics": [], "params": {}, "tags": {}, "run_id": "r1"},
            meta={"run_id": "r1", "tracking_uri": sqlite_uri})  # fmt: skip
    with open(box.ops_path, "a") as fh:
        fh.write("{not json\n")
    result = CliRunner().invoke(main, ["sync", str(box.folder.parent)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "ops.jsonl line 2" in lines[0]


def test_sync_of_an_outbox_whose_meta_is_damaged_needs_only_the_tracking_uri(
    tmp_path, monkeypatch, sqlite_uri
):
    """An empty meta.json (a crash while it was written, before it was written whole) stopped
    sync with a JSONDecodeError, a missing one with a KeyError. The run is the folder's; the
    server is asked for in one line, and with it the outbox is sent."""
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from mnist_tracker.cli import main

    client = MlflowClient(sqlite_uri)
    run_id = client.create_run(client.create_experiment("m")).info.run_id
    box = outbox.Outbox(tmp_path / "runs" / run_id / "outbox")
    box.add({"op": "log_batch", "metrics": [], "params": {"p": "1"}, "tags": {}, "run_id": run_id},
            meta={"run_id": run_id, "tracking_uri": sqlite_uri})  # fmt: skip
    assert [p.name for p in box.folder.iterdir() if p.name.startswith(".")] == [], "no staged"
    assert box.meta()["run_id"] == run_id
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    for damage in (b"", b'{"run_id": "', b"\xff", None):
        if damage is None:
            box.meta_path.unlink()
        else:
            box.meta_path.write_bytes(damage)
        result = CliRunner().invoke(main, ["sync", str(box.folder.parent)])
        assert result.exit_code == 2, result.output
        (line,) = result.output.strip().splitlines()
        assert "meta.json is missing or damaged" in line and "pass --tracking-uri" in line
    given = ["sync", str(box.folder.parent), "--tracking-uri", sqlite_uri]
    result = CliRunner().invoke(main, given)
    assert result.exit_code == 0, result.output
    assert client.get_run(run_id).data.params == {"p": "1"}


def test_sync_of_a_run_logged_with_a_password_asks_for_the_uri(tmp_path, monkeypatch):
    """The outbox keeps the store's URI without its password: `sync` said to pass
    --tracking-uri "(credentials from MLFLOW_TRACKING_USERNAME / PASSWORD)", which a
    postgresql:// store (its password in the URI) does not read. It asks for the URI with
    its password, and never prints one."""
    from click.testing import CliRunner

    from mnist_tracker.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_id = "a" * 32
    box = outbox.Outbox(tmp_path / "runs" / run_id / "outbox")
    hidden = "postgresql://u:***@db:5432/mlflow"
    box.add({"op": "log_batch", "metrics": [], "params": {"p": "1"}, "tags": {}, "run_id": run_id},
            meta={"run_id": run_id, "tracking_uri": hidden})  # fmt: skip
    result = CliRunner().invoke(main, ["sync", str(box.folder.parent)])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert f"{hidden}, whose password is not kept on disk" in line
    assert "with its password as --tracking-uri" in line and "USERNAME" not in line


def test_a_damaged_outbox_does_not_keep_the_others_from_being_sent(
    tmp_path, monkeypatch, sqlite_uri
):
    """A plain `sync` read every outbox before it sent any: one damaged outbox stopped them
    all, with a traceback before stop 36 and with its one line after (the review of stop 36).
    The others are sent, then the damaged one is named."""
    from click.testing import CliRunner
    from mlflow.tracking import MlflowClient

    from mnist_tracker.cli import main

    monkeypatch.setenv("MNIST_TRACKER_HOME", str(tmp_path / "home"))
    client = MlflowClient(sqlite_uri)
    experiment = client.create_experiment("m")
    good = [client.create_run(experiment).info.run_id for _ in range(2)]
    for run_id in good:
        box = outbox.Outbox(tmp_path / "home" / "runs" / run_id / "outbox")
        op = {"op": "log_batch", "metrics": [], "params": {"p": "1"}, "tags": {}, "run_id": run_id}
        box.add(op, meta={"run_id": run_id, "tracking_uri": sqlite_uri})
    bad = outbox.Outbox(tmp_path / "home" / "runs" / "0badbad" / "outbox")
    bad.folder.mkdir(parents=True)
    bad.ops_path.write_text('{"id": 0, "op": "set_terminated", "run_id": "0badbad"}\n')
    result = CliRunner().invoke(main, ["sync"])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert f"{bad.ops_path} line 1 is not an outbox operation" in line
    assert line.endswith("; the other outboxes were sent")
    for run_id in good:
        assert client.get_run(run_id).data.params == {"p": "1"}
