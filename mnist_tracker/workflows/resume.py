"""Continuing a stopped run: ``resume(run_id, options) -> TrainOutcome``.

Contracts:
- ``check_resumable`` refuses (ResumeError, before anything is touched) a run the store does
  not have, a deleted one, a FINISHED one, and a diverged one (it would diverge again).
- ``find_checkpoint`` takes the newest readable checkpoint: the local copy, or the run's
  artifact when that one is newer (the run went on elsewhere) or the local one is damaged
  (truncated, empty); it must cover every epoch the server holds (else ResumeError, and a
  downloaded copy is not kept). Both unreadable: ResumeError naming both.
- The data is read from ``--data-dir``, else ``$MNIST_DATA_DIR``, else the folder the run
  trained on (its training dataset's source) when it is on this machine, else ``./data``: a
  run started with ``--data-dir X`` resumes without repeating it (the resume hints leave it
  out), where it looked in ``./data`` and, offline, failed. Data other than the run's (a
  dataset's digest differs from the one the run logged for that context: see
  ``check_same_data``) is refused (ResumeError) before the run trains again, and before a
  downloaded checkpoint is kept: the resumed epochs would train on other images.
- The run's lease is held throughout (a second ``--resume``, or one of a run still training,
  gets RunLocked). A pending outbox of the run is sent first (only checkpoint uploads may
  stay refused: the local checkpoint is what resumes), then the run continues in place:
  metric steps go on from the next epoch, and the results equal those of a run never stopped.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import TrainConfig
from ..data import ENV_DATA_DIR, FILES, locate
from ..errors import InvalidQuery, ResumeError, clip
from ..paths import checkpoint_path, ensure_home, outbox_dir, run_dir
from ..tracking import artifacts, lease, outbox, records, store
from ..training import checkpoint
from .data import prepare_data
from .train import Resume, TrainOptions, TrainOutcome, train

if TYPE_CHECKING:
    from mlflow.entities import Run


def check_resumable(run_id: str) -> Run:
    """The run ``run_id`` if it can be resumed; else ResumeError saying why and what to do."""
    try:
        run = store.existing_run(run_id)  # StoreError when the store cannot say: not "no run"
    except InvalidQuery as exc:  # MLflow checks an id's form before it asks the store
        raise ResumeError(
            f"{run_id!r} is not a run id ({exc}); copy it from the line `train` printed or "
            "from the run's page in the MLflow UI"
        ) from None
    if run is None:
        raise ResumeError(
            f"run {run_id} is not in this tracking store; pass the --tracking-uri it was logged to"
        )
    if run.info.lifecycle_stage == "deleted":
        raise ResumeError(f"run {run_id} is deleted; restore it in the MLflow UI first")
    if run.info.status == "FINISHED":
        raise ResumeError(f"run {run_id} already FINISHED; there is nothing to resume")
    if "diverged_epoch" in run.data.tags:
        raise ResumeError(
            f"run {run_id} diverged ({run.data.tags.get('diverged_reason', '')}) and would "
            "again from its checkpoint; start a new run with a lower --lr"
        )
    return run


def _read(path: Path) -> tuple[dict | None, str]:
    """The checkpoint at ``path`` and "", or None and why it cannot be read."""
    try:
        state = checkpoint.load(path)
    except Exception as exc:  # truncated, empty (EOFError: click's "Aborted."), not a checkpoint
        return None, f"{path.name}: {type(exc).__name__}: {clip(str(exc), 120)}"
    if not isinstance(state, dict) or "epoch" not in state:
        return None, f"{path.name}: not a checkpoint"
    return state, ""


def _remote_checkpoint(run_id: str) -> tuple[dict | None, str]:
    """The run's ``artifacts.CHECKPOINT`` and "", or None and why there is none."""
    with tempfile.TemporaryDirectory() as tmp:
        path = store.download_artifact(run_id, artifacts.CHECKPOINT, tmp)
        if path is None:
            return None, "the run has no checkpoint artifact"
        state, problem = _read(Path(path))
        return state, problem and f"artifact {artifacts.CHECKPOINT} unreadable ({problem})"


def find_checkpoint(run_id: str) -> tuple[dict, str]:
    """The newest checkpoint of ``run_id`` (see the module's contract), and "" when it is the
    local copy, else why the run's uploaded one was taken (for the user: the local copy may be
    damaged). ResumeError when there is none readable, or none recent enough. A downloaded
    checkpoint is not saved here: the caller keeps it once the resume goes ahead."""
    logged = max(store.logged_steps(run_id, "train_loss"), default=0)
    local = checkpoint_path(run_id)
    state, local_problem = _read(local) if local.is_file() else (None, "")
    downloaded = ""
    if state is None or state["epoch"] < logged:
        remote, remote_problem = _remote_checkpoint(run_id)
        if remote is not None and (state is None or remote["epoch"] > state["epoch"]):
            if local_problem:
                why = f"the local one is damaged ({local_problem})"
            else:
                why = (
                    "none here" if state is None else f"the local one is of epoch {state['epoch']}"
                )
            downloaded = f"from the checkpoint in the run's artifacts ({why})"
            state = remote
        elif state is None and local_problem:
            raise ResumeError(
                f"run {run_id}: the local checkpoint {local} is damaged ({local_problem}) and "
                f"{remote_problem}; start a new run instead"
            )
    if state is None:
        raise ResumeError(
            f"run {run_id} has no checkpoint (it stopped before its first epoch ended, or "
            "was a search trial); start a new run instead"
        )
    if state["epoch"] < logged:
        raise ResumeError(
            f"run {run_id} logged {logged} epochs but its newest checkpoint is from epoch "
            f"{state['epoch']}; resume it on the machine that ran it last"
        )
    return state, downloaded


def _send_outbox(run_id: str) -> None:
    """Send the run's pending outbox; ResumeError if the server refuses more than old
    checkpoint uploads (those the local checkpoint makes unneeded)."""
    pending = outbox.Outbox(outbox_dir(run_id))
    if not pending.pending():
        return
    result = outbox.replay(pending)
    ops = {op["id"]: op for op in pending.operations()}
    blocking = [f for f in result.failed if not outbox.is_checkpoint_upload(ops[f.op_id])]
    if blocking:
        raise ResumeError(
            f"run {run_id} has an outbox the server did not take ({blocking[0].op}: "
            f"{blocking[0].reason}); send it with `mnist-tracker sync {run_dir(run_id)}` first"
        )


def resume(run_id: str, options: TrainOptions | None = None) -> TrainOutcome:
    """Continue stopped run ``run_id`` from its newest checkpoint, in the same run.

    ``options`` supplies data_dir, progress and echo; the run's own settings (config, model
    registry name) come from its checkpoint. Raises ResumeError (and the errors of ``train``)
    before the run is touched when it cannot be resumed.
    """
    options = options or TrainOptions()
    check_resumable(run_id)
    ensure_home()  # HomeError in one line: the lease, the checkpoint and the outbox live there
    held = lease.hold(run_id)
    try:
        return _resume_held(run_id, options)
    finally:
        held.release()


def own_data_dir(run: Run) -> str | None:
    """The folder ``run`` read its training data from, if this machine has it with the MNIST
    files in it; else None."""
    folder = _local_folder(records.logged_datasets(run).get("training"))
    # The files too: a folder they were moved out of would be chosen over ./data.
    if folder and all(locate(Path(folder), spec) for spec in FILES.values()):
        return folder
    return None


def _local_folder(dataset) -> str | None:
    """The folder of a dataset read from local files, else None."""
    if dataset is None or dataset.source_type != "local":
        return None
    try:
        return json.loads(dataset.source)["uri"]
    except (ValueError, KeyError, TypeError):
        return None


def check_same_data(run: Run, splits) -> None:
    """ResumeError when ``splits`` are not the data ``run`` logged, by MLflow's dataset digest
    per context (training, testing, validation). That digest covers the shapes and the first
    10,000 values of the images and of the labels: another subset, order or split differs
    there; a change after the first dozen images does not show. Contexts the run did not log
    (its outbox never sent) pass."""
    logged = records.logged_datasets(run)
    for entry in records.dataset_inputs(splits):
        context = records.dataset_context(entry)
        before = logged.get(context)
        if before is None or before.digest == entry.dataset.digest:
            continue
        folder = _local_folder(before)
        used = "trained" if context == "training" else "evaluated"
        what = (
            f"run {run.info.run_id} {used} on {context} data with digest {before.digest}, "
            f"but {splits.source} holds other data (digest {entry.dataset.digest})"
        )
        if folder and Path(folder).resolve() == Path(splits.source).resolve():
            raise ResumeError(
                f"{what}: its files changed since the run read them; put the run's files "
                "back, or start a new run"
            )
        raise ResumeError(f"{what}; pass --data-dir {folder or 'the folder it trained on'}")


def _resume_held(run_id: str, options: TrainOptions) -> TrainOutcome:
    _send_outbox(run_id)
    run = check_resumable(run_id)  # the outbox may have ended the run
    state, source = find_checkpoint(run_id)
    config = TrainConfig(**state["config"]).replace()  # validated
    echo = options.echo or (lambda _line: None)
    data_dir = options.data_dir
    if not data_dir and not os.environ.get(ENV_DATA_DIR):
        data_dir = own_data_dir(run)
        if data_dir:
            echo(f"run {run_id}: reading MNIST from {data_dir}, the folder it trained on")
    splits = prepare_data(config, data_dir)
    check_same_data(run, splits)
    if source:  # downloaded: kept locally while the run lives again; a refused one is not kept
        checkpoint.save(state, checkpoint_path(run_id))
    source = f", {source}" if source else ""
    if state["epoch"] >= config.epochs:
        echo(f"run {run_id}: all {config.epochs} epochs were done; finishing the run{source}")
    else:
        echo(f"run {run_id}: resuming after epoch {state['epoch']} of {config.epochs}{source}")
    options = TrainOptions(
        data_dir=data_dir,
        progress=options.progress,
        echo=options.echo,
        system_metrics=options.system_metrics,
        attach=False,
        register=state.get("register"),
        on_run_start=options.on_run_start,
    )
    return train(config, options, splits=splits, resume_from=Resume(run_id, state))
