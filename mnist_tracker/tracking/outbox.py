"""The local outbox: tracking calls a run could not send, kept in order for ``sync``.

Contracts:
- An outbox is a folder (``<run dir>/outbox``): ``ops.jsonl`` holds one JSON object per
  operation, in the order the run made them, each with an ``id`` (0, 1, ...), ``op`` and
  ``run_id``; ``files/<id>/`` holds the files an operation uploads; ``done.txt`` lists the ids
  already replayed; ``meta.json`` says which run and tracking URI (password removed) it is for.
- ``add`` appends and fsyncs, so an operation written is kept even if the process dies next.
- ``replay`` sends the pending operations in order and records each one done as soon as the
  server took it: running it twice sends nothing twice, and a replay cut short goes on from
  where it stopped. It raises on the first operation the server does not take.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import json_format
from mlflow.entities import DatasetInput, Metric, Param, RunTag
from mlflow.protos.service_pb2 import DatasetInput as DatasetInputProto
from mlflow.tracking import MlflowClient

from ..paths import home
from . import model as model_mod
from .client import client as make_client


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
        return json.loads(self.meta_path.read_text()) if self.meta_path.is_file() else {}

    def operations(self) -> list[dict]:
        if not self.exists():
            return []
        ops = []
        with open(self.ops_path) as fh:
            for line in fh:
                if not line.endswith("\n"):
                    break  # a write cut short by a crash: that operation was never kept
                if line.strip():
                    ops.append(json.loads(line))
        return ops

    def done(self) -> set[int]:
        if not self.done_path.is_file():
            return set()
        return {int(x) for x in self.done_path.read_text().split()}

    def pending(self) -> list[dict]:
        done = self.done()
        return [op for op in self.operations() if op["id"] not in done]

    def add(self, op: dict, files: dict[str, Path] | None = None, meta: dict | None = None) -> dict:
        """Append ``op``; ``files`` maps names to local files kept with it (hard-linked when
        possible: a checkpoint can be gigabytes)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if meta is not None and not self.meta_path.is_file():
            self.meta_path.write_text(json.dumps(meta, indent=2))
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


@dataclass
class ReplayResult:
    sent: int
    already_done: int


def replay(outbox: Outbox, client: MlflowClient | None = None) -> ReplayResult:
    """Send ``outbox``'s pending operations in order (see the module's contract)."""
    client = client or make_client()
    done = outbox.done()
    sent = 0
    for op in outbox.operations():
        if op["id"] in done:
            continue
        apply(client, op, outbox.folder)
        outbox.mark_done(op["id"])
        sent += 1
    return ReplayResult(sent=sent, already_done=len(done))


def find(path: str | os.PathLike | None = None) -> list[Outbox]:
    """The outboxes under ``path``: an outbox, a run folder, or a folder of run folders
    (default: every run under ``checkpoint.home()``)."""
    root = Path(path) if path else home() / "runs"
    if (root / "ops.jsonl").is_file():
        return [Outbox(root)]
    if (root / "outbox" / "ops.jsonl").is_file():
        return [Outbox(root / "outbox")]
    return [Outbox(p.parent) for p in sorted(root.glob("*/outbox/ops.jsonl"))]
