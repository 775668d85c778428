"""The ``mnist-tracker`` command line: parse options, build a config, call the library.

Bad input (unknown model, out-of-range numbers, missing or corrupt data, unavailable weights)
prints one line, ``Error: <what> ; <how to fix>``, and exits with code 2 before any MLflow run
exists. Ctrl-C exits 130, SIGTERM 143, with the run marked KILLED and its checkpoint kept for
``train --resume``; a diverged run (loss NaN / inf) exits 1, marked FAILED.
"""

from __future__ import annotations

import signal
import sys

import click

from . import __version__
from .cli_options import option

USAGE_EXIT = 2


class OneLineErrors(click.Group):
    """A group whose usage errors are one line on stderr (no usage dump), exit code 2."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        try:
            rv = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Aborted.", err=True)
            sys.exit(130)
        except click.ClickException as exc:
            message = " ".join(exc.format_message().split())
            click.echo(f"Error: {message}", err=True)
            sys.exit(USAGE_EXIT if isinstance(exc, click.UsageError) else exc.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)


def fail(message: str) -> None:
    """Raise a usage error (exit 2) with ``message``."""
    raise click.UsageError(message)


class OptionalBool(click.ParamType):
    """A boolean that may be given as ``--flag``, ``--flag true`` or ``--flag false``.

    ``mlflow run`` passes extra parameters as ``--name value``, so flags must take a value.
    """

    name = "boolean"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in ("true", "1", "yes", "y", "on"):
            return True
        if lowered in ("false", "0", "no", "n", "off"):
            return False
        self.fail(f"{value!r} is not a boolean; pass true or false", param, ctx)


def _flag(name: str, help_text: str):
    """``--name [BOOL]`` plus ``--no-name``; None when neither is given (recipe default)."""
    dashed = name.replace("_", "-")

    def decorate(fn):
        fn = click.option(
            f"--no-{dashed}",
            f"no_{name}",
            is_flag=True,
            default=False,
            help=f"Opposite of --{dashed}.",
        )(fn)
        return click.option(
            f"--{dashed}",
            name,
            type=OptionalBool(),
            is_flag=False,
            flag_value=True,
            default=None,
            help=help_text,
        )(fn)

    return decorate


def _tri(value: bool | None, negated: bool, name: str) -> bool | None:
    if negated and value:
        fail(f"--{name} and --no-{name} contradict each other; pass one of them")
    return False if negated else value


def _tracking_options(fn):
    fn = click.option(
        "--tracking-uri",
        "--tracking_uri",
        default=None,
        help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else MLflow's sqlite:///mlflow.db].",
    )(fn)
    return click.option(
        "--experiment", default="mnist", show_default=True, help="MLflow experiment name."
    )(fn)


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mnist-tracker")
def main() -> None:
    """Train MNIST classifiers (cnn, deep_cnn, vgg16, alexnet, vit) and track them in MLflow."""


@main.command()
@click.option("--model", "model_name", default=None, help="Model name; see `mnist-tracker models`.")
@option(
    "--resume",
    "resume_run_id",
    default=None,
    metavar="RUN_ID",
    help="Continue a stopped run from its last finished epoch, with its own settings.",
)
@option("--epochs", type=int, default=None, help="Epochs [default: the model's recipe].")
@option("--batch-size", type=int, default=None, help="Batch size [default: recipe; lab: 64].")
@option("--lr", type=float, default=None, help="Learning rate [default: the model's recipe].")
@option("--weight-decay", type=float, default=None, help="Weight decay [default: recipe].")
@option(
    "--optimizer",
    type=click.Choice(["adam", "adamw", "sgd"]),
    default=None,
    help="Optimizer [default: recipe].",
)
@option(
    "--scheduler",
    type=click.Choice(["none", "cosine", "onecycle"]),
    default=None,
    help="LR schedule [default: recipe].",
)
@option("--image-size", type=int, default=None, help="Input side for vgg16/alexnet [default: 224].")
@_flag("pretrained", "Start from ImageNet weights (vgg16, alexnet) [default: yes for those].")
@_flag("freeze", "Freeze the pretrained features (vgg16, alexnet) [default: yes for those].")
@option(
    "--recipe",
    type=click.Choice(["lab", "fast"]),
    default=None,
    help="Defaults to start from: the lab's, or the model's fast one (cnn) [default: lab].",
)
@option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default=None,
    help="Numeric precision; auto = bf16 where the hardware is fast at it "
    "[default: the recipe's: fp32 for lab, auto for fast].",
)
@option(
    "--feature-cache",
    type=click.Choice(["auto", "on", "off"]),
    default=None,
    help="Compute a frozen backbone's features once and train the head on them (vgg16, "
    "alexnet); auto = when they fit in memory [default: auto].",
)
@option("--limit-train", type=int, default=None, help="Use N training images (class-balanced).")
@option("--limit-test", type=int, default=None, help="Use N test images (class-balanced).")
@option("--val-size", type=int, default=None, help="Hold out N training images for validation [0].")
@option("--seed", type=int, default=None, help="Random seed [default: 42].")
@option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps [default: auto].")
@option(
    "--data-dir",
    default=None,
    help="Folder with the MNIST IDX files [default: $MNIST_DATA_DIR, else ./data].",
)
@option("--run-name", default=None, help="MLflow run name [default: MLflow's].")
@option("--register", default=None, help="Register the model under this name in the registry.")
@_tracking_options
def train(
    model_name,
    resume_run_id,
    pretrained,
    no_pretrained,
    freeze,
    no_freeze,
    data_dir,
    experiment,
    run_name,
    tracking_uri,
    register,
    **options,
) -> None:
    """Train one model and log the run (params, curves, model, plots) to MLflow.

    After each epoch a checkpoint is kept: a run stopped by Ctrl-C, SIGTERM or a crash goes on
    with `--resume RUN_ID`, in the same run. If the tracking server goes away mid-run,
    training goes on and what could not be sent waits in a local outbox for `sync`.
    """
    from .config import ConfigError, resolve_config

    pretrained = _tri(pretrained, no_pretrained, "pretrained")
    freeze = _tri(freeze, no_freeze, "freeze")
    if resume_run_id is not None:
        given = [k for k, v in options.items() if v is not None]
        given += [n for n, v in (("model", model_name), ("pretrained", pretrained),
                                 ("freeze", freeze), ("run-name", run_name),
                                 ("register", register)) if v is not None]  # fmt: skip
        if given:
            names = ", ".join("--" + n.replace("_", "-") for n in given)
            fail(f"--resume continues a run with its own settings; drop {names}")
        _run_training(None, data_dir, experiment, None, tracking_uri, None, resume_run_id)
        return
    if model_name is None:
        fail("missing --model; pass one of `mnist-tracker models`, or --resume RUN_ID")
    try:
        config = resolve_config(model_name, pretrained=pretrained, freeze=freeze, **options)
    except ConfigError as exc:
        fail(str(exc))
    _run_training(config, data_dir, experiment, run_name, tracking_uri, register)


def _run_training(
    config, data_dir, experiment, run_name, tracking_uri, register, resume_run_id=None
) -> None:
    """Train ``config`` (or resume ``resume_run_id``) and report; exits as the module says."""
    import mlflow

    from . import checkpoint, engine, outbox, runner, tracking
    from .config import ConfigError
    from .data import DataError
    from .models import ModelError

    uri = _tracking_or_fail(tracking_uri)
    what = f"resuming run {resume_run_id}" if config is None else (
        f"training {config.model} for {config.epochs} epoch(s)")  # fmt: skip
    click.echo(f"mnist-tracker {__version__}: {what}; tracking to {tracking.redact(uri)}", err=True)
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    started: list[str] = [resume_run_id] if resume_run_id else []

    def on_sigterm(signum, _frame):
        raise tracking.Interrupted(signum)

    def ended_how(status: str) -> str:
        """What happened to the run, told truthfully when the server was away at its end."""
        if not started:
            return ""
        folder = checkpoint.run_dir(started[0])
        if outbox.Outbox(folder / "outbox").pending():
            return (f"The run ends {status} once the tracking server has it: send its outbox "
                    f"with `mnist-tracker sync {folder}`.")  # fmt: skip
        return f"The run was marked {status}."

    def stopped(how: str, code: int) -> None:
        message = f"{how}. {ended_how('KILLED')}"
        if started and (checkpoint.run_dir(started[0]) / checkpoint.FILENAME).is_file():
            uri_option = f" --tracking-uri {tracking.redact(uri)}" if tracking_uri else ""
            message += f" Continue it with: mnist-tracker train --resume {started[0]}{uri_option}"
        click.echo(message, err=True)
        sys.exit(code)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    progress = sys.stderr.isatty()
    try:
        if config is None:
            outcome = runner.resume(resume_run_id, data_dir=data_dir, progress=progress, echo=echo)
        else:
            outcome = runner.train(
                config,
                data_dir=data_dir,
                experiment=experiment,
                run_name=run_name,
                register=register,
                progress=progress,
                echo=echo,
                on_run_start=started.append,
            )
    except engine.Diverged as exc:
        kept = " Its last good epoch's checkpoint was kept." if exc.epoch > 1 else ""
        click.echo(
            f"Error: training diverged in epoch {exc.epoch} ({exc.reason}). "
            f"{ended_how('FAILED')}{kept} Start a new run with a lower --lr.",
            err=True,
        )
        sys.exit(1)
    except (ConfigError, DataError, ModelError, ValueError) as exc:
        fail(str(exc))
    except mlflow.exceptions.MlflowException as exc:
        if config is not None:  # a training run: MLflow refused a call mid-run; not bad input
            raise
        fail(tracking.scrub(" ".join(str(exc).split())[:300], uri))
    except KeyboardInterrupt:
        stopped("Interrupted", 130)
    except tracking.Interrupted as exc:
        stopped(f"Stopped by signal {exc.signum}", 128 + exc.signum)
    finally:
        signal.signal(signal.SIGTERM, previous)
    final = outcome.result.final
    click.echo(
        f"run {outcome.run_id}: test accuracy {final['test_accuracy']:.2%}, "
        f"macro F1 {final['test_f1_macro']:.4f}, training time {final['training_time_s']:.1f}s "
        f"({final['train_throughput_img_s']:.0f} img/s on {outcome.result.device}, "
        f"{outcome.result.precision})"
    )
    if outcome.offline_reason:
        click.echo(
            f"The tracking server went away during the run ({outcome.offline_reason}). Training "
            f"finished; what could not be sent is kept in {outcome.outbox}. When the server is "
            f"back, send it with: mnist-tracker sync {outcome.outbox.parent}",
            err=True,
        )
        return
    click.echo(_ui_hint(uri, outcome.experiment_id, outcome.run_id), err=True)


@main.command("sync")
@click.argument("path", required=False)
@click.option(
    "--tracking-uri",
    "--tracking_uri",
    default=None,
    help="Server to send to [default: $MLFLOW_TRACKING_URI, else the URI the run used].",
)
def sync_cmd(path, tracking_uri) -> None:
    """Send what runs kept in their outbox while the tracking server was away.

    PATH is a run's folder (as `train` printed it) or a folder of runs [default: every run
    under $MNIST_TRACKER_HOME, else ~/.mnist-tracker]. Safe to run again: what was sent is
    not sent twice.
    """
    import os

    from . import outbox as outbox_mod
    from . import tracking

    boxes = outbox_mod.find(path)
    if path and not boxes:
        fail(f"no outbox under {path}; pass the folder `train` printed, or no PATH for all runs")
    pending = [box for box in boxes if box.pending()]
    if not pending:
        click.echo(f"nothing to send: {len(boxes)} outbox(es), all sent")
        return
    for box in pending:
        meta = box.meta()
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or meta["tracking_uri"]
        if "***" in uri:
            fail(f"the run was logged to {uri}; pass --tracking-uri (credentials from "
                 "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)")  # fmt: skip
        uri = _tracking_or_fail(uri)
        run_id = meta.get("run_id", box.folder.parent.name)
        try:
            result = outbox_mod.replay(box)
        except Exception as exc:
            reason = tracking.scrub(" ".join(str(exc).split())[:300], uri)
            fail(f"run {run_id}: the server did not take an operation ({reason}); what was sent "
                 "is recorded, run sync again once that is fixed")  # fmt: skip
        click.echo(
            f"run {run_id}: sent {result.sent} operation(s) to {tracking.redact(uri)}"
            + (f" ({result.already_done} sent before)" if result.already_done else "")
        )


def _tracking_or_fail(tracking_uri: str | None) -> str:
    """Set the tracking URI and check, within seconds, that its server answers (exit 2 if
    not): a run must not train for hours and then find nowhere to log."""
    from . import tracking

    uri = tracking.set_tracking_uri(tracking_uri)
    try:
        tracking.check_reachable(uri)
    except tracking.TrackingUnavailable as exc:
        fail(str(exc))
    return uri


def _ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    from .tracking import redact

    if uri.startswith(("http://", "https://")):
        return f"View it: {redact(uri).rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return (
        f"View it: mlflow ui --backend-store-uri {uri}  (then open http://127.0.0.1:5000/"
        f"#/experiments/{experiment_id}/runs/{run_id})"
    )


@main.command("models")
def models_cmd() -> None:
    """List the registered models with their recipes and parameter counts."""
    from .models import list_specs

    header = (
        f"{'name':<9} {'params':>12} {'trainable':>12} {'input':>9} {'optim':<6} "
        f"{'lr':>7} {'wd':>7} {'epochs':>6} {'sched':<6}  description"
    )
    click.echo(header)
    for spec in list_specs():
        r = spec.recipe
        size = f"{spec.input.image_size}x{spec.input.channels}"
        click.echo(
            f"{spec.name:<9} {spec.n_params:>12,} {spec.n_trainable:>12,} {size:>9} "
            f"{r['optimizer']:<6} {r['lr']:>7.0e} {r['weight_decay']:>7.0e} {r['epochs']:>6} "
            f"{r.get('scheduler', 'none'):<6}  {spec.description}"
        )
    fast = [spec for spec in list_specs() if spec.fast_recipe]
    if fast:
        click.echo("\n--recipe fast (changes to the lab's recipe):")
        for spec in fast:
            changes = ", ".join(f"{k}={v}" for k, v in spec.fast_recipe.items())
            click.echo(f"  {spec.name:<9} {changes}")


@main.group("data")
def data_group() -> None:
    """Inspect the MNIST files."""


@data_group.command("check")
@click.option(
    "--data-dir", default=None, help="Folder with the IDX files [$MNIST_DATA_DIR, ./data]."
)
@click.option(
    "--download/--no-download",
    default=False,
    show_default=True,
    help="Download the files when they are missing.",
)
def data_check(data_dir, download) -> None:
    """Verify the MNIST files (magic, sizes, sha256) and print the counts."""
    from .data import DataError, label_counts, load_mnist

    try:
        mnist = load_mnist(data_dir, download_missing=download)
    except DataError as exc:
        fail(str(exc))
    click.echo(f"MNIST in {mnist.source}: verified")
    for split, y in (("train", mnist.train_y), ("test", mnist.test_y)):
        counts = " ".join(str(c) for c in label_counts(y))
        click.echo(f"  {split:<5} {len(y):>6} images; per digit 0-9: {counts}")


@main.command()
@click.option(
    "--model", "model_name", required=True, help="Model name; see `mnist-tracker models`."
)
@option(
    "--trials", type=int, default=20, show_default=True, help="Trials in the study (all workers)."
)
@option("--timeout", type=float, default=None, help="Stop this worker after S seconds.")
@option("--epochs", type=int, default=None, help="Epochs per trial [default: the model's recipe].")
@option("--sampler", type=click.Choice(["tpe", "random"]), default="tpe", show_default=True)
@option(
    "--pruner",
    type=click.Choice(["median", "hyperband", "none"]),
    default="median",
    show_default=True,
    help="Stops hopeless trials early, judged on validation accuracy per epoch.",
)
@option("--val-size", type=int, default=5000, show_default=True, help="Validation hold-out.")
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
@option("--seed", type=int, default=42, show_default=True)
@_flag("final", "Train the best config on the full training set and test it [default: yes].")
@option("--limit-train", type=int, default=None, help="Use N training images (class-balanced).")
@option("--limit-test", type=int, default=None, help="Test images for the final run.")
@option("--image-size", type=int, default=None, help="Input side for vgg16/alexnet.")
@option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps.")
@option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default=None)
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
@option("--data-dir", default=None, help="Folder with the MNIST IDX files.")
@_tracking_options
def tune(model_name, final, no_final, data_dir, tracking_uri, **options) -> None:
    """Search hyper-parameters with Optuna on a validation split; one MLflow child run a trial.

    Several processes (or machines) given the same --storage and --study-name share one
    study: --trials is the study's total, and the child runs of all workers nest under one
    parent run.
    """
    import optuna

    from . import tracking
    from .config import ConfigError
    from .data import DataError
    from .tune import TuneError, TuneSettings
    from .tune import tune as run_tune

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial suffices
    uri = _tracking_or_fail(tracking_uri)
    final = _tri(final, no_final, "final")
    settings = TuneSettings(model=model_name, final=final is not False, **options)
    echo = lambda line: click.echo(line, err=True)  # noqa: E731
    echo(
        f"mnist-tracker {__version__}: tuning {model_name}, {settings.trials} trial(s), "
        f"storage {tracking.redact(settings.storage) or 'in memory'}, "
        f"tracking to {tracking.redact(uri)}"
    )
    try:
        outcome = run_tune(settings, data_dir=data_dir, echo=echo)
    except (TuneError, ConfigError, DataError) as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    counts = ", ".join(f"{v} {k}" for k, v in outcome.counts.items())
    if outcome.best_value is None:
        click.echo(f"study {outcome.study.study_name}: no trial completed ({counts})")
        return
    params = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
        for k, v in outcome.best_params.items()
    )
    click.echo(
        f"study {outcome.study.study_name}: best val_accuracy {outcome.best_value:.4f} "
        f"({counts}); best params: {params}"
    )
    if outcome.final_run_id:
        click.echo(f"final run {outcome.final_run_id} (parent run {outcome.parent_run_id})")


# The lab's results table and the multi-model suite live in their own module (it imports only
# click at start-up); added here so `mnist-tracker compare` / `mnist-tracker suite` exist.
from .cli_compare import compare_cmd, suite_cmd  # noqa: E402

main.add_command(compare_cmd)
main.add_command(suite_cmd)
