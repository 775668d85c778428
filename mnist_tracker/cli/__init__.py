"""The ``mnist-tracker`` command line: parse options, build typed settings, call a workflow.

One module per command group (``train``: train, sync; ``tune``; ``compare``: compare, suite;
``info``: models, data check; ``registry``: promote, predict; ``runs``: reap); shared option
decorators in ``options``; what an error prints and its exit code in ``errors`` (bad input:
one line, exit 2, before any run exists); how the process ends in ``leave``. Only click is
imported at start-up; each command loads the library when it runs.
"""

from __future__ import annotations

import os

import click

from .. import __version__, collector
from ..uris import install_log_scrubber
from .compare import compare_cmd, suite_cmd
from .errors import OneLineErrors
from .info import data_group, models_cmd
from .leave import leave
from .registry import predict_cmd, promote_cmd
from .runs import runs_group
from .train import sync_cmd, train
from .tune import tune


@click.group(cls=OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mnist-tracker")
def main() -> None:
    """Train MNIST classifiers (cnn, deep_cnn, vgg16, alexnet, vit) and track them in MLflow."""
    # MLflow's INFO lines ("Creating initial MLflow database tables...") are not for users;
    # read when MLflow is first imported, which the commands do later. A user's value wins.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # MLflow's usage telemetry posts to the internet from every process: on an offline cluster
    # a wait for nothing (about 1.5 s of logging a model, measured). A user's value wins.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    install_log_scrubber()  # MLflow's and urllib3's warnings quote URLs, passwords included


for command in (
    train,
    sync_cmd,
    models_cmd,
    data_group,
    tune,
    compare_cmd,
    suite_cmd,
    promote_cmd,
    predict_cmd,
    runs_group,
):
    main.add_command(command)


def entry() -> None:
    """The ``mnist-tracker`` console script and ``python -m mnist_tracker``: ``main``, then
    ``leave`` with its exit status (no interpreter teardown: 1.5 s of a run; see ``leave``).
    Tests call ``main`` itself, which raises SystemExit.

    The garbage collector is off until a fit's first epoch (``collector``: the imports of a
    ``train`` cost 1.2-1.8 s more with it)."""
    collector.pause()
    try:
        main()
    except SystemExit as exc:  # how OneLineErrors.main always ends
        leave(exc.code)
