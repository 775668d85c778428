"""``compare`` and ``suite``: the lab's results table from the store, and several models in a row.

Bad input raises a ``UserError`` (``CompareError``, ``ConfigError``, ...) or a click usage
error; ``cli.errors`` prints it as one ``Error: ...`` line and exits with code 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..constants import DEFAULT_EXPERIMENT, FORMATS, RUN_MODES
from ..uris import check_folder, redact, scrub, store_noun
from .errors import fail, hinting, sigterm_as_interrupt
from .options import (
    CUDA_GRAPHS_HELP,
    check_experiments,
    connect,
    data_dir_option,
    flag,
    option,
    tracking_options,
    tracking_uri_option,
    training_options,
)
from .train import echo_err, echo_view_hint

if TYPE_CHECKING:
    from ..reporting.compare import Comparison, Query


def _check_destination(path: str, what: str) -> None:
    """Refuse a file path whose folder is missing, read-only or not ours (or which names a
    folder, or a file we cannot overwrite) before any query, so that a refusal prints nothing
    else. The report writes a PNG beside its HTML: the folder must take new files."""
    target = Path(path)
    if target.is_dir():
        fail(f"cannot write {what} {path}: it is a folder; pass a file path")
    if not target.parent.is_dir():
        fail(
            f"cannot write {what} {path}: folder {target.parent} does not exist; "
            "pass a path in an existing folder"
        )
    check_folder(target.parent, f"cannot write {what} {path}")
    if target.exists() and not os.access(target, os.W_OK):
        fail(f"cannot write {what} {path}: the file is read-only; pass a path you can write")


def _write(path: str, text: str, what: str) -> Path:
    """Write ``text`` to ``path``; a path that cannot be written is a usage error."""
    target = Path(path)
    try:
        target.write_text(text, encoding="utf-8")
    except OSError as exc:
        fail(
            f"cannot write {what} {path} ({exc.strerror or exc}); pass a path in an existing, "
            "writable folder"
        )
    return target


def _log_to_project_run(paths: list[Path]) -> None:
    """Under ``mlflow run``, attach the written files to the run it created."""
    from ..tracking import attached_run_id

    run_id = attached_run_id()
    if not run_id or not paths:
        return
    # Only now: the sink imports torch (seconds), which a plain compare never needs.
    from ..tracking import RunSink, set_tracking_uri

    sink = RunSink(run_id, set_tracking_uri(None))
    for path in paths:
        sink.log_artifact(path)
    if sink.offline:
        echo_err(
            f"the {store_noun(sink.uri)} went away ({sink.offline_reason}); the files wait in "
            f"{sink.outbox.folder}: send them with `mnist-tracker sync {sink.outbox.folder}`"
        )


def run_compare(query: Query) -> Comparison:
    """``compare.compare`` against the current store (CompareError / StoreError propagate)."""
    from ..reporting import compare as compare_mod
    from ..tracking import client

    comparison = compare_mod.compare(client(), query)
    if comparison.registry_unread:  # the table stands; its empty column must not mislead
        echo_err(
            "note: the Registry column is empty because the model registry could not be read "
            f"({scrub(comparison.registry_unread)})"
        )
    return comparison


@click.command("compare")
@option(
    "--experiment",
    "experiments",
    multiple=True,
    callback=check_experiments,
    help=f"Experiment to read; repeat for several [default: {DEFAULT_EXPERIMENT}].",
)
@flag("all_experiments", "Read every experiment in the store.", default=False)
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
@flag("include_unfinished", "Also show RUNNING, FAILED and KILLED runs.", default=False)
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
@tracking_uri_option
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
        fail("--experiment and --all-experiments contradict each other; pass one of them")
    for path, what in ((output, "--output"), (report, "--report")):
        if path:
            _check_destination(path, what)
    if report:  # the figure written beside it
        _check_destination(str(Path(report).with_suffix(".png")), "--report's figure")
    from ..reporting import compare as compare_mod
    from ..reporting.render import render

    uri = connect(tracking_uri, existing=True)
    query = compare_mod.Query(
        experiments=experiments or (DEFAULT_EXPERIMENT,),
        all_experiments=all_experiments,
        filter_string=filter_string,
        mode=mode,
        metric=metric,
        include_unfinished=include_unfinished,
    )
    comparison = run_compare(query)
    text = render(comparison.table, fmt)
    written = []
    if output:
        written.append(_write(output, text + "\n", "--output"))
        echo_err(f"wrote {output} ({len(comparison.table)} row(s), {fmt})")
    else:
        click.echo(text)
    if report:
        written += _write_report(report, comparison, data_dir, uri)
    _log_to_project_run(written)


def _write_report(path: str, comparison: Comparison, data_dir: str | None, uri: str) -> list[Path]:
    """Write the HTML report (and PNG); print its notes; return the files written."""
    from ..reporting import report as report_mod
    from ..tracking import client

    target = Path(path)  # its folder was checked before the query (``_check_destination``)
    try:
        notes = report_mod.write_report(
            target, comparison, client(), data_dir=data_dir, source=redact(uri)
        )
    except OSError as exc:  # writing it: the disk filled up, the PNG's name is a folder, ...
        if exc.filename is None or Path(exc.filename) not in (target, target.with_suffix(".png")):
            raise  # reading the runs' files: not the destination's fault
        fail(
            f"cannot write the report ({exc.filename}: {exc.strerror or exc}); pass another "
            "--report"
        )
    for note in notes:
        echo_err(f"note: {note}")
    echo_err(f"wrote {path}")
    png = target.with_suffix(".png")
    return [target, png] if png.is_file() else [target]


@click.command("suite")
@option(
    "--models",
    default="cnn,deep_cnn,vgg16,alexnet,vit",
    show_default=True,
    help="Comma-separated models to train, in order.",
)
@training_options(
    "epochs",
    "batch_size",
    "image_size",
    epochs={"help": "Epochs for every model [default: recipes]."},
    batch_size={"help": "Batch size [default: 64]."},
)
@flag("pretrained", "ImageNet weights for vgg16/alexnet [default: yes for those].")
@flag("freeze", "Freeze vgg16's/alexnet's features [default: yes when pretrained].")
@training_options(
    "precision",
    "limit_train",
    "limit_test",
    "seed",
    "device",
)
@flag("cuda_graphs", CUDA_GRAPHS_HELP)
@data_dir_option
@tracking_options
def suite_cmd(
    models: str, data_dir: str | None, experiment: str, tracking_uri: str | None, **overrides
) -> None:
    """Train several models one after another, then compare them.

    Each model is its own run, all tagged with one suite id; then a summary (which models
    finished, which failed and why) and the compare table of the suite are printed. A model
    that fails does not stop the others.

    Exit codes: 0 all models finished; 1 one or more failed; 2 bad input (nothing trained);
    130 / 143 Ctrl-C / SIGTERM (the current run marked KILLED).
    """
    from ..data import load_mnist
    from ..models.transfer import ensure_imagenet_weights
    from ..reporting import compare as compare_mod
    from ..reporting.render import render
    from ..tracking import attached_run_id, client
    from ..tracking.run import check_experiment
    from ..training.runtime import resolve_runtime
    from ..workflows import suite as suite_mod

    names = suite_mod.parse_models(models)
    configs = suite_mod.suite_configs(names, **overrides)
    for config in configs:  # what a model could not run with here: refused before any trains
        resolve_runtime(config)  # --cuda-graphs off CUDA
        if config.pretrained:  # ImageNet weights offline
            ensure_imagenet_weights(config.model)
    mnist = load_mnist(data_dir)
    uri = connect(tracking_uri)
    if attached_run_id() is None:  # under mlflow run, the models go to the project run's
        check_experiment(experiment)
    echo_err(f"suite: {', '.join(names)}; tracking to {redact(uri)}")
    stopped = "The current run was marked KILLED; the suite stopped."
    with sigterm_as_interrupt(), hinting(lambda _exc: stopped):
        result = suite_mod.run_suite(configs, mnist, experiment=experiment, echo=echo_err)
    for line in suite_mod.summary_lines(result):
        click.echo(line)
    if len(result.failed) < len(result.outcomes):
        query = compare_mod.Query(
            experiments=(result.experiment,),
            filter_string=suite_mod.suite_filter(result.suite_id),
            mode="all",
        )
        click.echo("")
        click.echo(render(run_compare(query).table, "table"))
    name = result.experiment
    echo_view_hint(uri, lambda: (client().get_experiment_by_name(name).experiment_id, None))
    if result.failed:
        click.get_current_context().exit(1)
