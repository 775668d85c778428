"""``train`` and ``sync``: one tracked training run, and sending what an outage kept back."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

import click

from .. import __version__
from ..uris import redact, store_noun
from .errors import fail, hinting, sigterm_as_interrupt
from .options import (
    CUDA_GRAPHS_HELP,
    check_run_name,
    check_tracking_uri,
    connect,
    data_dir_option,
    flag,
    option,
    tracking_options,
    training_options,
)


def echo_err(line: str) -> None:
    click.echo(line, err=True)


@click.command()
@option("--model", "model_name", default=None, help="Model name; see `mnist-tracker models`.")
@option(
    "--resume",
    "resume_run_id",
    default=None,
    metavar="RUN_ID",
    help="Continue a stopped run from its last finished epoch, with its own settings.",
)
@training_options(
    "epochs", "batch_size", "lr", "weight_decay", "optimizer", "scheduler", "image_size"
)
@flag("pretrained", "Start from ImageNet weights (vgg16, alexnet) [default: yes for those].")
@flag("freeze", "Freeze the pretrained features (vgg16, alexnet) [default: yes for those].")
@training_options(
    "recipe", "precision", "feature_cache", "limit_train", "limit_test", "val_size", "seed",
    "device",
)  # fmt: skip
@flag("cuda_graphs", CUDA_GRAPHS_HELP)
@data_dir_option
@option(
    "--run-name",
    default=None,
    callback=check_run_name,
    help="MLflow run name [default: <model>-<recipe>-<epochs>ep-<id>].",
)
@option("--register", default=None, help="Register the model under this name in the registry.")
@flag("system_metrics", "Sample CPU, memory and GPU into the run's System metrics.", default=True)
@tracking_options
def train(model_name, resume_run_id, data_dir, experiment, run_name, tracking_uri, register,
          system_metrics, **overrides) -> None:  # fmt: skip
    """Train one model and log the run (params, curves, model, plots) to MLflow.

    After each epoch a checkpoint is kept: a run stopped by Ctrl-C, SIGTERM or a crash goes on
    with `--resume RUN_ID`, in the same run. If the tracking server goes away mid-run,
    training goes on and what could not be sent waits in a local outbox for `sync`.
    """
    from ..config import resolve_config

    if resume_run_id is not None:
        given = [k for k, v in overrides.items() if v is not None]
        given += [n for n, v in (("model", model_name), ("run-name", run_name),
                                 ("register", register)) if v is not None]  # fmt: skip
        # --experiment has a default, so only its source tells that it was given.
        source = click.get_current_context().get_parameter_source("experiment")
        if source is not click.core.ParameterSource.DEFAULT:
            given.append("experiment")
        if given:
            names = ", ".join("--" + n.replace("_", "-") for n in given)
            fail(f"--resume continues a run with its own settings; drop {names}")
        what = f"resuming run {resume_run_id}"
        start = functools.partial(_resume, resume_run_id)
    elif model_name is None:
        fail("missing --model; pass one of `mnist-tracker models`, or --resume RUN_ID")
    else:
        config = resolve_config(model_name, **overrides)
        what = f"training {config.model} for {config.epochs} epoch(s)"
        start = functools.partial(_train, config)
    options = dict(
        data_dir=data_dir,
        experiment=experiment,
        run_name=run_name,
        register=register,
        progress=sys.stderr.isatty(),
        echo=echo_err,
        system_metrics=system_metrics,
    )
    _run(start, what, options, tracking_uri, resume_run_id)


def _train(config, options):
    from ..workflows.train import train

    return train(config, options=options)


def _resume(run_id: str, options):
    from ..workflows.resume import resume

    return resume(run_id, options)


def _run(start, what: str, options: dict, tracking_uri: str | None, run_id: str | None) -> None:
    """``start(options)`` (a new run, or the resumed ``run_id``) and report how it went.
    The server is asked first: the workflows import torch (seconds), which a refused start
    need not wait for."""
    uri = connect(tracking_uri)
    from ..workflows.train import TrainOptions

    options = TrainOptions(**options)
    started: list[str] = [run_id] if run_id else []

    def announce(new_run_id: str) -> None:
        # Once the run exists: bad input (data, config, weights) is refused before that, with
        # its one Error line alone on stderr.
        started.append(new_run_id)
        run = "" if new_run_id == run_id else f" as run {new_run_id}"
        echo_err(f"mnist-tracker {__version__}: {what}{run}; tracking to {redact(uri)}")

    options = dataclasses.replace(options, on_run_start=announce)
    with sigterm_as_interrupt(), hinting(lambda exc: _stop_hint(exc, started, tracking_uri, uri)):
        outcome = start(options)
    final = outcome.result.final
    click.echo(
        f"run {outcome.run_id}: test accuracy {final['test_accuracy']:.2%}, "
        f"macro F1 {final['test_f1_macro']:.4f}, training time {final['training_time_s']:.1f}s "
        f"({final['train_throughput_img_s']:.0f} img/s on {outcome.result.device}, "
        f"{outcome.result.precision})"
    )
    if outcome.offline_reason:
        sync = f"mnist-tracker sync {outcome.outbox.parent}"
        if redact(uri) != uri:  # its password is not written down: sync needs it again
            sync += f" --tracking-uri {redact(uri)} (its password for ***)"
        echo_err(
            f"The {store_noun(uri)} did not get everything ({outcome.offline_reason}). Training "
            f"finished; what could not be sent is kept in {outcome.outbox}, and the run shows "
            f"RUNNING until it is sent with: {sync}"
        )
        return
    echo_err(ui_hint(uri, outcome.experiment_id, outcome.run_id))


def _ended_how(run_id: str, status: str) -> str:
    """What happened to the run, told truthfully when the server was away at its end."""
    from ..paths import outbox_dir, run_dir
    from ..tracking.outbox import Outbox

    if Outbox(outbox_dir(run_id)).pending():
        return (f"The run ends {status} once the tracking server has it: send its outbox "
                f"with `mnist-tracker sync {run_dir(run_id)}`.")  # fmt: skip
    return f"The run was marked {status}."


def _stop_hint(exc: BaseException, started: list[str], tracking_uri, uri: str) -> str:
    """The hint ``cli.errors`` prints after a run stopped: its state and how to go on."""
    from ..errors import Diverged, Interrupted
    from ..paths import checkpoint_path

    if not started:
        return ""
    run_id = started[0]
    if isinstance(exc, Diverged):
        kept = " Its last good epoch's checkpoint was kept." if exc.epoch > 1 else ""
        return f"{_ended_how(run_id, 'FAILED')}{kept} Start a new run with a lower --lr."
    if not isinstance(exc, KeyboardInterrupt | Interrupted):
        return ""
    message = _ended_how(run_id, "KILLED")
    if checkpoint_path(run_id).is_file():
        uri_option = f" --tracking-uri {redact(uri)}" if tracking_uri else ""
        message += f" Continue it with: mnist-tracker train --resume {run_id}{uri_option}"
    else:
        message += (
            " It stopped before its first epoch ended, so it has no checkpoint to resume "
            "from: start a new run."
        )
    return message


# MLflow's UI (3.x) opens in its GenAI view (traces, evaluations), where an experiment's page
# shows no runs; this parameter opens its Model training view: the runs, their models, the
# registry. The UI keeps it while one navigates.
UI_VIEW = "?workflowType=machine_learning"


def ui_hint(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where to see a run (or, without ``run_id``, the experiment's runs): the server's page,
    or how to start the UI on a local store."""
    run = f"/runs/{run_id}" if run_id else ""
    page = f"#/experiments/{experiment_id}{run}{UI_VIEW}"
    if uri.startswith(("http://", "https://")):
        return f"View it: {redact(uri).rstrip('/')}/{page}"
    shown = redact(uri)  # a database's password is not printed: the user puts it back
    hidden = "the password hidden: type it for ***; " if shown != uri else ""
    return (
        f"View it: mlflow ui --backend-store-uri {shown}  ({hidden}then open "
        f"http://127.0.0.1:5000/{page})"
    )


def echo_view_hint(uri: str, locate: Callable[[], tuple[str, str | None]]) -> None:
    """``ui_hint`` for what ``locate()`` asks the server for (the experiment id, and a run id
    or None), printed when it answers at once: the work is done and the server may be gone,
    and with MLflow's own retries it held the exit for about 4 minutes."""
    from ..tracking.client import env_vars, quick

    with env_vars(quick(5, retries=0)), contextlib.suppress(Exception):
        echo_err(ui_hint(uri, *locate()))


@click.command("sync")
@click.argument("path", required=False)
@option(
    "--tracking-uri",
    default=None,
    callback=check_tracking_uri,
    help="Server to send to [default: $MLFLOW_TRACKING_URI, else the URI the run used].",
)
def sync_cmd(path, tracking_uri) -> None:
    """Send what runs kept in their outbox while the tracking server was away.

    PATH is a run's folder (as `train` printed it) or a folder of runs [default: every run
    under $MNIST_TRACKER_HOME, else ~/.mnist-tracker]. Safe to run again: what was sent is
    not sent twice.
    """
    from ..errors import SyncError
    from ..paths import home
    from ..tracking import outbox

    boxes = outbox.find(path)
    # A run folder under the home that is gone was removed once everything was sent.
    sent_and_removed = path and Path(path).resolve().parent == (home() / "runs").resolve()
    if path and not boxes and not Path(path).is_dir() and not sent_and_removed:
        fail(f"no outbox under {path}; pass the folder `train` printed, or no PATH for all runs")
    pending, damaged = [], []
    for box in boxes:  # a damaged one is reported after the others are sent, not instead
        try:
            if box.pending():
                pending.append(box)
        except SyncError as exc:
            damaged.append(str(exc))
    if not pending and not damaged:
        click.echo(f"nothing to send: {len(boxes)} outbox(es), all sent")
        return
    refused = []
    for box in pending:
        meta = box.meta()
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or meta.get("tracking_uri")
        if not uri:
            fail(f"{box.meta_path} is missing or damaged, so the tracking server of the run "
                 f"is unknown; pass --tracking-uri")  # fmt: skip
        if "***" in uri:  # a password in the URI, which the outbox never keeps
            fail(f"the run was logged to {uri}, whose password is not kept on disk; pass that "
                 "URI with its password as --tracking-uri (or $MLFLOW_TRACKING_URI)")  # fmt: skip
        uri = connect(uri)
        run_id = meta.get("run_id", box.folder.parent.name)
        refused += _sync_one(box, run_id, uri)
    if refused:
        raise SyncError(
            f"{refused[0]}; the rest was sent and the run stays RUNNING; run sync again once "
            f"that is fixed" + (f" ({len(refused)} runs refused)" if len(refused) > 1 else "")
        )
    if damaged:
        others = f" ({len(damaged)} outboxes damaged)" if len(damaged) > 1 else ""
        sent = "; the other outboxes were sent" if pending else ""
        raise SyncError(f"{damaged[0]}{others}{sent}")


def _sync_one(box, run_id: str, uri: str) -> list[str]:
    """Replay ``box`` with the run's lease held; what the server refused (one line), if any."""
    from ..errors import SyncError
    from ..tracking import lease, outbox
    from ..tracking.client import is_unreachable, outage_reason

    held = lease.hold(run_id)
    try:
        result = outbox.replay(box)
    except SyncError:  # a damaged outbox file: its own line
        raise
    except Exception as exc:
        if not is_unreachable(exc):  # neither an outage nor a refusal: a bug, with traceback
            raise
        raise SyncError(
            f"run {run_id}: the {store_noun(uri, bare=True)} went away during sync "
            f"({outage_reason(exc, uri)}); what was sent is recorded, run sync again once it "
            "is back"
        ) from None
    finally:
        held.release()
    done = f" ({result.already_done} sent before)" if result.already_done else ""
    skipped = f", {result.skipped} obsolete checkpoint upload(s) skipped" if result.skipped else ""
    ended = f"; run ended {result.ended}" if result.ended else ""
    click.echo(
        f"run {run_id}: sent {result.sent} operation(s) to {redact(uri)}{done}{skipped}{ended}"
    )
    if not result.failed:
        return []
    first = result.failed[0]
    return [
        f"run {run_id}: the server refused {len(result.failed)} operation(s), first {first.op} "
        f"({first.reason})"
    ]
