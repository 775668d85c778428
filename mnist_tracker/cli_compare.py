"""The ``compare`` and ``suite`` commands (added to the ``mnist-tracker`` group by ``cli.py``).

Bad input raises ``click.UsageError`` with one line naming the problem and the fix; the group
prints it as ``Error: ...`` and exits with code 2. Every option also accepts its underscore
spelling and boolean options take an optional value (``--include-unfinished false``), because
``mlflow run`` passes undeclared parameters as ``--name value``.

This module imports only click at import time (the library modules load inside the
commands), so ``cli.py`` can register these commands without slowing every command's start or
creating an import cycle. The option choices below mirror ``compare.MODES`` / ``FORMATS``
(a test holds them equal).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from .cli_options import option
from .uris import redact, set_tracking_uri

if TYPE_CHECKING:
    from .compare import Comparison, Query

RUN_MODES = ("best", "latest", "all")
FORMATS = ("table", "markdown", "csv", "json")


def _bool_option(name: str, help_text: str, default: bool | None = False):
    """``--name`` alone means true; ``--name true|false`` (as ``mlflow run`` passes it) too."""
    return option(
        f"--{name}",
        name.replace("-", "_"),
        type=click.BOOL,
        is_flag=False,
        flag_value=True,
        default=default,
        help=help_text,
    )


def _tracking_uri_option(fn):
    return option(
        "--tracking-uri",
        default=None,
        help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else MLflow's sqlite:///mlflow.db].",
    )(fn)


def _write(path: str, text: str, what: str) -> Path:
    """Write ``text`` to ``path``; a path that cannot be written is a usage error."""
    target = Path(path)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.UsageError(
            f"cannot write {what} {path} ({exc.strerror or exc}); pass a path in an existing, "
            "writable folder"
        ) from None
    return target


def _log_to_project_run(paths: list[Path]) -> None:
    """Under ``mlflow run``, attach the written files to the run it created."""
    run_id = os.environ.get("MLFLOW_RUN_ID")
    if not run_id or not paths:
        return
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    for path in paths:
        client.log_artifact(run_id, str(path))


def run_compare(query: Query, uri: str) -> Comparison:
    """``compare.compare`` against the current store; store errors become usage errors."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from . import compare as compare_mod

    try:
        return compare_mod.compare(MlflowClient(), query)
    except compare_mod.CompareError as exc:
        raise click.UsageError(str(exc)) from None
    except MlflowException as exc:
        raise click.UsageError(
            f"cannot query the tracking store at {redact(uri)} ({' '.join(exc.message.split())}"
            "); check --tracking-uri or $MLFLOW_TRACKING_URI"
        ) from None


@click.command("compare")
@option(
    "--experiment",
    "experiments",
    multiple=True,
    help="Experiment to read; repeat for several [default: mnist].",
)
@_bool_option("all-experiments", "Read every experiment in the store.")
@option(
    "--filter",
    "filter_string",
    default="",
    help="MLflow search filter, e.g. \"params.epochs = '10' and metrics.test_accuracy > 0.99\".",
)
@option(
    "--runs",
    "mode",
    type=click.Choice(RUN_MODES),
    default="best",
    show_default=True,
    help="Per model the best run by --metric, the latest run, or every run.",
)
@option(
    "--metric",
    default="test_accuracy",
    show_default=True,
    help="Metric that ranks the runs (lower is better for *loss and *_time_s).",
)
@_bool_option("include-unfinished", "Also show RUNNING, FAILED and KILLED runs.")
@option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table (aligned, rounded), or markdown / csv / json (parseable; csv, json exact).",
)
@option("--output", default=None, help="Write the table to this file instead of stdout.")
@option(
    "--report",
    default=None,
    help="Also write this self-contained HTML report (and a PNG beside it when possible).",
)
@option(
    "--data-dir",
    default=None,
    help="MNIST folder for the report's sample digits [default: $MNIST_DATA_DIR, else ./data].",
)
@_tracking_uri_option
def compare_cmd(
    experiments: tuple[str, ...],
    all_experiments: bool,
    filter_string: str,
    mode: str,
    metric: str,
    include_unfinished: bool,
    fmt: str,
    output: str | None,
    report: str | None,
    data_dir: str | None,
    tracking_uri: str | None,
) -> None:
    """Rebuild the lab's results table from the tracking store (and an HTML report).

    Columns Model | Accuracy (%) | F1 | Training Time (s) | epochs, batch size, lr, ...; one
    row per model (its best run by --metric), sorted by the metric; finished runs only unless
    --include-unfinished. --report also writes a self-contained interactive HTML report.

    Exit codes: 0 done; 2 bad input, an unknown experiment, a filter MLflow rejects, or no runs.
    """
    if all_experiments and experiments:
        raise click.UsageError(
            "--experiment and --all-experiments contradict each other; pass one of them"
        )
    from . import compare as compare_mod

    uri = set_tracking_uri(tracking_uri)
    query = compare_mod.Query(
        experiments=experiments or (compare_mod.DEFAULT_EXPERIMENT,),
        all_experiments=all_experiments,
        filter_string=filter_string,
        mode=mode,
        metric=metric,
        include_unfinished=include_unfinished,
    )
    comparison = run_compare(query, uri)
    text = compare_mod.render(comparison.table, fmt)
    written = []
    if output:
        written.append(_write(output, text + "\n", "--output"))
        click.echo(f"wrote {output} ({len(comparison.table)} row(s), {fmt})", err=True)
    else:
        click.echo(text)
    if report:
        written += _write_report(report, comparison, data_dir, uri)
    _log_to_project_run(written)


def _write_report(path: str, comparison: Comparison, data_dir: str | None, uri: str) -> list[Path]:
    """Write the HTML report (and PNG); print its notes; return the files written."""
    from mlflow.tracking import MlflowClient

    from . import report as report_mod

    target = Path(path)
    if not target.parent.is_dir():
        raise click.UsageError(
            f"cannot write --report {path}: folder {target.parent} does not exist; "
            "pass a path in an existing folder"
        )
    notes = report_mod.write_report(
        target, comparison, MlflowClient(), data_dir=data_dir, source=redact(uri)
    )
    for note in notes:
        click.echo(f"note: {note}", err=True)
    click.echo(f"wrote {path}", err=True)
    png = target.with_suffix(".png")
    return [target, png] if png.is_file() else [target]


@click.command("suite")
@option(
    "--models",
    default="cnn,deep_cnn,vgg16,alexnet,vit",
    show_default=True,
    help="Comma-separated models to train, in order.",
)
@option("--epochs", type=int, default=None, help="Epochs for every model [default: recipes].")
@option("--batch-size", type=int, default=None, help="Batch size [default: 64].")
@option("--image-size", type=int, default=None, help="Input side for vgg16/alexnet [224].")
@_bool_option(
    "pretrained", "ImageNet weights for vgg16/alexnet [default: yes for those].", default=None
)
@option("--no-pretrained", is_flag=True, default=False, help="Train vgg16/alexnet from scratch.")
@option(
    "--precision",
    type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
    default=None,
    help="Numeric precision [default: fp32].",
)
@option("--limit-train", type=int, default=None, help="Use N training images (class-balanced).")
@option("--limit-test", type=int, default=None, help="Use N test images (class-balanced).")
@option("--seed", type=int, default=None, help="Random seed [default: 42].")
@option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps [default: auto].")
@option(
    "--data-dir",
    default=None,
    help="Folder with the MNIST IDX files [default: $MNIST_DATA_DIR, else ./data].",
)
@option("--experiment", default="mnist", show_default=True, help="MLflow experiment name.")
@_tracking_uri_option
def suite_cmd(
    models: str,
    pretrained: bool | None,
    no_pretrained: bool,
    data_dir: str | None,
    experiment: str,
    tracking_uri: str | None,
    **overrides,
) -> None:
    """Train several models one after another, then compare them.

    Each model is its own run, all tagged with one suite id; then a summary (which models
    finished, which failed and why) and the compare table of the suite are printed. A model
    that fails does not stop the others.

    Exit codes: 0 all models finished; 1 one or more failed; 2 bad input (nothing trained);
    130 / 143 Ctrl-C / SIGTERM (the current run marked KILLED).
    """
    from . import compare as compare_mod
    from . import suite as suite_mod
    from .config import ConfigError
    from .data import DataError, load_mnist

    if pretrained and no_pretrained:
        raise click.UsageError(
            "--pretrained and --no-pretrained contradict each other; pass one of them"
        )
    try:
        names = suite_mod.parse_models(models)
        configs = suite_mod.suite_configs(
            names, pretrained=False if no_pretrained else pretrained, **overrides
        )
        mnist = load_mnist(data_dir)
    except (ConfigError, DataError) as exc:
        raise click.UsageError(str(exc)) from None
    uri = set_tracking_uri(tracking_uri)
    click.echo(f"suite: {', '.join(names)}; tracking to {redact(uri)}", err=True)
    result = _train_all(suite_mod, configs, mnist, experiment)
    for line in suite_mod.summary_lines(result):
        click.echo(line)
    if len(result.failed) < len(result.outcomes):
        query = compare_mod.Query(
            experiments=(result.experiment,),
            filter_string=suite_mod.suite_filter(result.suite_id),
            mode="all",
        )
        click.echo("")
        click.echo(compare_mod.render(run_compare(query, uri).table, "table"))
    if result.failed:
        click.get_current_context().exit(1)


def _train_all(suite_mod, configs, mnist, experiment):
    """``run_suite`` with SIGTERM handled like Ctrl-C: the current run ends KILLED."""
    from .tracking import Interrupted

    def on_sigterm(signum, _frame):
        raise Interrupted(signum)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        return suite_mod.run_suite(
            configs, mnist, experiment=experiment, echo=lambda line: click.echo(line, err=True)
        )
    except KeyboardInterrupt:
        click.echo("Interrupted: the current run was marked KILLED; suite stopped.", err=True)
        sys.exit(130)
    except Interrupted as exc:
        click.echo(f"Stopped by signal {exc.signum}: the current run was marked KILLED.", err=True)
        sys.exit(128 + exc.signum)
    finally:
        signal.signal(signal.SIGTERM, previous)
