"""The local outbox: tracking calls a run could not send, kept in order for ``sync``.

Contracts:
- An outbox is a folder (``<run dir>/outbox``): ``ops.jsonl`` holds one JSON object per
  operation, in the order the run made them, each with an ``id`` (0, 1, ...), ``op`` and
  ``run_id``; ``files/<id>/`` holds the files an operation uploads; ``done.txt`` lists the ids
  already replayed; ``meta.json`` says which run and tracking URI (password removed) it is for.
- ``add`` appends and fsyncs, so an operation written is kept even if the process dies next.
- ``replay`` sends the pending operations in order and records each one done as soon as the
  server took it: running it twice sends nothing twice, and a replay cut short goes on from
  where it stopped. An operation the server refuses is reported (``ReplayResult.failed``) and
  the ones after it are still sent: metrics are not held hostage by an artifact. The run's
  end (``set_terminated``) is sent only once everything before it was; until then the run
  stays RUNNING with ``artifacts.PENDING_TAG`` saying what waits, and where. A server that
  stops answering mid-replay raises (what was sent is recorded).
- Checkpoint uploads older than the newest are skipped, and all of them when the outbox ends
  the run FINISHED: a finished run is never resumed. For the same reason, sending a FINISHED
  end deletes the checkpoint the run uploaded before it lost the server (best effort, as
  ``client.delete_run_artifacts``). A fully sent outbox is removed.
- A damaged ``ops.jsonl`` or ``done.txt`` raises SyncError naming the file and line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import json_format
from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.protos.service_pb2 import DatasetInput as DatasetInputProto
from mlflow.tracking import MlflowClient

from ..errors import SyncError
from ..paths import home
from . import artifacts
from . import model as model_mod
from .client import answered, delete_run_artifacts, is_unreachable, one_line
from .client import client as make_client

# What each operation ``apply`` performs reads, besides its ``id``, ``op`` and ``run_id``.
_FIELDS = {
    "log_batch": ("metrics", "params", "tags"),
    "log_inputs": ("datasets",),
    "log_artifact": ("files", "name", "artifact_path"),
    "log_image": ("files", "key", "step", "timestamp"),
    "log_model": ("files",),
    "set_terminated": ("status", "end_time"),
}


def _is_operation(op) -> bool:
    """Whether ``op`` is an operation ``apply`` can perform, or one of a kind it does not
    know (which it refuses, naming it); not a half-edited line that would be a KeyError."""
    return (
        isinstance(op, dict)
        and isinstance(op.get("id"), int)
        and isinstance(op.get("op"), str)
        and isinstance(op.get("run_id"), str)
        and all(key in op for key in _FIELDS.get(op["op"], ()))
    )


class Outbox:
    """The pending tracking operations of one run."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    ops_path = property(lambda self: self.folder / "ops.jsonl")
    done_path = property(lambda self: self.folder / "done.txt")
    meta_path = property(lambda self: self.folder / "meta.json")

    def exists(self) -> bool:
        return self.ops_path.is_file()

    def meta(self) -> dict:
        """Which run and tracking URI the outbox is for; {} when the file is missing or
        unreadable (the run id is then its folder's name, the URI the one sync is given)."""
        try:
            meta = json.loads(self.meta_path.read_bytes())
        except (OSError, ValueError):  # missing, empty, cut short, not UTF-8
            return {}
        return meta if isinstance(meta, dict) else {}

    def operations(self) -> list[dict]:
        """Every operation kept, in order; SyncError when a complete line is not one."""
        if not self.exists():
            return []
        ops = []
        with open(self.ops_path, "rb") as fh:
            for number, line in enumerate(fh, start=1):
                if not line.endswith(b"\n"):
                    break  # a write cut short by a crash: that operation was never kept
                if line.strip():
                    ops.append(self._parse(line, number))
        return ops

    def _parse(self, line: bytes, number: int) -> dict:
        try:
            op = json.loads(line)  # UTF-8 or a ValueError
            if _is_operation(op):
                return op
        except ValueError:
            pass
        shown = line.strip()[:60].decode("utf-8", "backslashreplace")
        raise SyncError(
            f"{self.ops_path} line {number} is not an outbox operation ({shown!r}); "
            "restore the file or remove that line (its operation is then lost)"
        )

    def done(self) -> set[int]:
        """The ids already sent; SyncError when ``done.txt`` holds anything else."""
        if not self.done_path.is_file():
            return set()
        ids = set()
        for number, word in enumerate(self.done_path.read_text().splitlines(), start=1):
            if not word.strip():
                continue
            if not word.strip().isdigit():
                raise SyncError(
                    f"{self.done_path} line {number} is not an operation id ({word[:40]!r}); "
                    "remove that line (its operation is then sent again, which is safe)"
                )
            ids.add(int(word))
        return ids

    def pending(self) -> list[dict]:
        done = self.done()
        return [op for op in self.operations() if op["id"] not in done]

    def add(self, op: dict, files: dict[str, Path] | None = None, meta: dict | None = None) -> dict:
        """Append ``op``; ``files`` maps names to local files kept with it (hard-linked when
        possible: a checkpoint can be gigabytes)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if meta is not None and not self.meta_path.is_file():
            # Whole or not at all: a crash while writing it left an empty file.
            staged = self.meta_path.with_name(f".meta.{os.getpid()}.json")
            staged.write_text(json.dumps(meta, indent=2))
            os.replace(staged, self.meta_path)
        data = self.ops_path.read_bytes() if self.ops_path.is_file() else b""
        if data and not data.endswith(b"\n"):  # drop a line a crash cut short
            data = data[: data.rfind(b"\n") + 1]
            self.ops_path.write_bytes(data)
        op = dict(op, id=data.count(b"\n"))  # one complete line per operation
        if files:
            target = self.folder / "files" / str(op["id"])
            target.mkdir(parents=True, exist_ok=True)
            for name, source in files.items():
                _link_or_copy(Path(source), target / name)
            op["files"] = str(target.relative_to(self.folder))
        with open(self.ops_path, "a") as fh:
            fh.write(json.dumps(op) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        return op

    def supersede_end(self) -> None:
        """Drop a pending end (a run resumed after its outbox said KILLED trains again)."""
        for op in self.pending():
            if op["op"] == "set_terminated":
                self.mark_done(op["id"])

    def remove(self) -> None:
        """Delete the outbox (everything was sent), and its run folder if that is empty."""
        shutil.rmtree(self.folder, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.folder.parent.rmdir()

    def mark_done(self, op_id: int) -> None:
        with open(self.done_path, "a") as fh:
            fh.write(f"{op_id}\n")
            fh.flush()
            os.fsync(fh.fileno())


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def encode_inputs(inputs: list[DatasetInput]) -> list[dict]:
    """Dataset inputs as JSON-able dicts (their protobuf form)."""
    return [json_format.MessageToDict(i.to_proto()) for i in inputs]


def decode_inputs(encoded: list[dict]) -> list[DatasetInput]:
    return [DatasetInput.from_proto(json_format.ParseDict(d, DatasetInputProto())) for d in encoded]


def apply(client: MlflowClient, op: dict, folder: Path) -> None:
    """Perform one outbox operation against the current tracking server."""
    kind, run_id = op["op"], op["run_id"]
    files = folder / op["files"] if "files" in op else None
    if kind == "log_batch":
        client.log_batch(
            run_id,
            metrics=[Metric(**m) for m in op["metrics"]],
            params=[Param(k, v) for k, v in op["params"].items()],
            tags=[RunTag(k, v) for k, v in op["tags"].items()],
        )
    elif kind == "log_inputs":
        client.log_inputs(run_id, datasets=decode_inputs(op["datasets"]))
    elif kind == "log_artifact":
        client.log_artifact(run_id, str(files / op["name"]), op["artifact_path"])
    elif kind == "log_image":
        import PIL.Image

        _drop_earlier_copies(client, run_id, op)
        with PIL.Image.open(files / "image.png") as image:
            client.log_image(
                run_id,
                image.copy(),
                key=op["key"],
                step=op["step"],
                timestamp=op["timestamp"],
                synchronous=True,
            )
    elif kind == "log_model":
        model_mod.log_saved(files, run_id, op.get("register"), op.get("step", 0))
    elif kind == "set_terminated":
        client.set_terminated(run_id, op["status"], end_time=op["end_time"])
    else:
        raise ValueError(f"unknown outbox operation {kind!r} (id {op['id']})")


def _drop_earlier_copies(client: MlflowClient, run_id: str, op: dict) -> None:
    """Delete the files an earlier try of image ``op`` left. MLflow writes an image's two
    files (under a random id) before the tag that marks the run as having images: that tag
    refused, or its answer lost, the operation waits in the outbox with its files already on
    the server, and each replay added a copy to the run's Images view. The files are named by
    key, step and timestamp (the op's own, fixed when it was first tried). Best effort: a
    store that cannot delete keeps them."""
    key = op["key"].replace("/", "~")
    prefixes = tuple(  # MLflow 3.18's separator, and the one before it
        f"{key}{sep}step{sep}{op['step']}{sep}timestamp{sep}{op['timestamp']}{sep}"
        for sep in ("+", "%")
    )
    for item in client.list_artifacts(run_id, "images"):
        if item.path.rsplit("/", 1)[-1].startswith(prefixes):
            delete_run_artifacts(client, run_id, item.path)


@dataclass(frozen=True)
class Failure:
    """An operation the server did not take, and its answer (one line, password hidden)."""

    op_id: int
    op: str
    reason: str


@dataclass
class ReplayResult:
    """What one ``replay`` did. ``ended``: the status it set, or None when the end waits."""

    sent: int
    already_done: int
    skipped: int = 0
    failed: list[Failure] = field(default_factory=list)
    ended: str | None = None

    @property
    def complete(self) -> bool:
        return not self.failed


def is_checkpoint_upload(op: dict) -> bool:
    return op["op"] == "log_artifact" and op.get("artifact_path") == artifacts.CHECKPOINT_DIR


def replay(outbox: Outbox, client: MlflowClient | None = None) -> ReplayResult:
    """Send ``outbox``'s pending operations (see the module's contract)."""
    client = client or make_client()
    ops, done = outbox.operations(), outbox.done()
    finishing = any(op["op"] == "set_terminated" and op["status"] == "FINISHED" for op in ops)
    # Each checkpoint replaces the one before: only the newest upload is worth sending.
    newest = max((op["id"] for op in ops if is_checkpoint_upload(op)), default=None)
    result = ReplayResult(sent=0, already_done=len(done))
    run_ids = []
    for op in ops:
        if op["id"] in done:
            continue
        run_ids.append(op["run_id"])
        if op["op"] == "set_terminated" and result.failed:
            continue  # the run must not end while something before its end is missing
        if is_checkpoint_upload(op) and (finishing or op["id"] != newest):
            outbox.mark_done(op["id"])
            result.skipped += 1
            continue
        try:
            if op["op"] == "set_terminated":
                _clear_pending_tag(client, op["run_id"])
            apply(client, op, outbox.folder)
        except Exception as exc:
            if is_unreachable(exc) and not answered(exc):
                raise  # gone again: nothing later can pass either
            reason = one_line(exc, client.tracking_uri, 300)
            result.failed.append(Failure(op["id"], op["op"], reason))
            continue
        outbox.mark_done(op["id"])
        result.sent += 1
        if op["op"] == "set_terminated":
            result.ended = op["status"]
            if op["status"] == "FINISHED":  # never resumed: its uploaded checkpoint goes
                delete_run_artifacts(client, op["run_id"], artifacts.CHECKPOINT_DIR)
    if result.failed:
        _tag_pending(client, run_ids[0], outbox, result.failed)
    elif outbox.exists() and not outbox.pending():
        outbox.remove()
    return result


def pending_note(outbox: Outbox, count: int) -> str:
    """The ``PENDING_TAG`` value: how much waits, where, and the command that sends it."""
    return (
        f"{count} tracking operation(s) not on the server yet, kept in {outbox.folder} on the "
        f"machine that ran it; send them with: mnist-tracker sync {outbox.folder.parent}"
    )


def _tag_pending(client: MlflowClient, run_id: str, outbox: Outbox, failed) -> None:
    """Say on the run what is missing (best effort: the server just refused something)."""
    kinds = sorted({f.op for f in failed})
    note = pending_note(outbox, len(outbox.pending())) + f" (refused: {', '.join(kinds)})"
    with contextlib.suppress(Exception):
        client.set_tag(run_id, artifacts.PENDING_TAG, note)


def _clear_pending_tag(client: MlflowClient, run_id: str) -> None:
    """Before the end lands: nothing is pending any more, and a run `runs reap` took for dead
    while its outbox waited here was not."""
    tags = client.get_run(run_id).data.tags
    for key in (artifacts.PENDING_TAG, artifacts.REAPED_TAG):
        if key in tags:
            client.delete_tag(run_id, key)


def find(path: str | os.PathLike | None = None) -> list[Outbox]:
    """The outboxes under ``path``: an outbox, a run folder, or a folder of run folders
    (default: every run under ``checkpoint.home()``)."""
    root = Path(path) if path else home() / "runs"
    if (root / "ops.jsonl").is_file():
        return [Outbox(root)]
    if (root / "outbox" / "ops.jsonl").is_file():
        return [Outbox(root / "outbox")]
    return [Outbox(p.parent) for p in sorted(root.glob("*/outbox/ops.jsonl"))]
