"""``tune``: one worker of an Optuna study; many with the same --storage share it."""

from __future__ import annotations

import click

from .. import __version__
from ..constants import PRUNERS, SAMPLERS
from ..uris import redact
from .errors import sigterm_as_interrupt
from .options import connect, data_dir_option, flag, option, tracking_options, training_options
from .train import echo_err, echo_view_hint


@click.command()
@option("--model", "model_name", required=True, help="Model name; see `mnist-tracker models`.")
@option(
    "--trials", type=int, default=20, show_default=True, help="Trials in the study (all workers)."
)
@option("--timeout", type=float, default=None, help="Stop this worker after S seconds.")
@training_options("epochs", epochs={"help": "Epochs per trial [default: the model's recipe]."})
@option("--sampler", type=click.Choice(SAMPLERS), default="tpe", show_default=True)
@option(
    "--pruner",
    type=click.Choice(PRUNERS),
    default="median",
    show_default=True,
    help="Stops hopeless trials early, judged on validation accuracy per epoch.",
)
@training_options(
    "val_size",
    "seed",
    val_size={"default": 5000, "show_default": True, "help": "Validation hold-out."},
    seed={"default": 42, "show_default": True, "help": "Random seed."},
)
@option(
    "--storage",
    default=None,
    envvar="MNIST_TRACKER_STORAGE",
    help="Shared study storage: postgresql://..., sqlite:///..., or journal:PATH (one machine). "
    "Default: $MNIST_TRACKER_STORAGE, else in memory (this process only).",
)
@option(
    "--study-name",
    default=None,
    envvar="MNIST_TRACKER_STUDY",
    help="Workers with the same name share the study [$MNIST_TRACKER_STUDY].",
)
@flag("final", "Train the best config on the full training set and test it.", default=True)
@training_options(
    "limit_train",
    "limit_test",
    "image_size",
    "device",
    "precision",
    limit_test={"help": "Test images for the final run."},
)
@option(
    "--heartbeat-interval",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Seconds between a running trial's heartbeats (database storages).",
)
@option(
    "--grace-period",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Seconds without heartbeat after which a trial is failed and retried.",
)
@data_dir_option
@tracking_options
def tune(model_name, data_dir, tracking_uri, **settings) -> None:
    """Search hyper-parameters with Optuna on a validation split; one MLflow child run a trial.

    Several processes (or machines) given the same --storage and --study-name share one
    study: --trials is the study's total, and the child runs of all workers nest under one
    parent run.
    """
    uri = connect(tracking_uri)  # first: a refused start need not wait for torch and Optuna
    import optuna

    from ..workflows.study import TuneSettings
    from ..workflows.tune import format_params
    from ..workflows.tune import tune as run_tune

    # Our own line per trial suffices: Optuna's warning for a failed trial adds its traceback
    # (tens of lines a trial, and for Ctrl-C too).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    settings = TuneSettings(model=model_name, **settings)
    banner = [
        f"mnist-tracker {__version__}: tuning {model_name}, {settings.trials} trial(s), "
        f"storage {redact(settings.storage) or 'in memory'}, tracking to {redact(uri)}"
    ]

    def say(line: str) -> None:
        # The banner comes with the first line the study says, once its input was accepted:
        # a refused tune prints its Error line alone.
        if banner:
            echo_err(banner.pop())
        echo_err(line)

    with sigterm_as_interrupt():  # the running trial's run ends KILLED, as on Ctrl-C
        outcome = run_tune(settings, data_dir=data_dir, echo=say)
    counts = ", ".join(f"{v} {k}" for k, v in outcome.counts.items())
    if outcome.best_value is None:
        click.echo(f"study {outcome.study.study_name}: no trial completed ({counts})")
        return
    params = format_params(outcome.best_params)
    click.echo(
        f"study {outcome.study.study_name}: best val_accuracy {outcome.best_value:.4f} "
        f"({counts}); best params: {params}"
    )
    if outcome.final_run_id:
        click.echo(f"final run {outcome.final_run_id} (parent run {outcome.parent_run_id})")
    _view_hint(uri, outcome.parent_run_id)


def _view_hint(uri: str, parent_run_id: str) -> None:
    """The UI's page of the study's parent run, whose trials nest under it."""
    from ..tracking import client

    def locate() -> tuple[str, str]:
        return client().get_run(parent_run_id).info.experiment_id, parent_run_id

    echo_view_hint(uri, locate)
