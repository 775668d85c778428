"""Option decorators shared by the command modules, built from config's constants.

Every option also accepts its underscore spelling and every boolean takes an optional value
(``--pretrained``, ``--pretrained false``, ``--no-pretrained``), because ``mlflow run``
passes undeclared parameters as ``--name value``.
"""

from __future__ import annotations

import functools
import os

import click

from ..constants import (
    DEFAULT_EXPERIMENT,
    FEATURE_CACHE,
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    SCHEDULERS,
)
from ..uris import redact, validate_tracking_uri
from .errors import BadValue, fail


def option(*names: str, **kwargs):
    """A click option that also accepts the underscore spelling of its dashed names, as
    ``mlflow run`` passes undeclared parameters (``--limit_train 100``)."""
    dashed = [n for n in names if n.startswith("--") and "-" in n[2:]]
    aliases = [n.replace("-", "_").replace("__", "--", 1) for n in dashed]
    return click.option(*names, *[a for a in aliases if a not in names], **kwargs)


class OptionalBool(click.ParamType):
    """A boolean given as ``--flag``, ``--flag true`` or ``--flag false``."""

    name = "[true|false]"

    def convert(self, value, param, ctx):
        if isinstance(value, bool):
            return value
        lowered = str(value).strip().lower()
        if lowered in ("true", "t", "1", "yes", "y", "on"):
            return True
        if lowered in ("false", "f", "0", "no", "n", "off"):
            return False
        raise BadValue(f"{value!r} is not a boolean; pass true or false", ctx=ctx, param=param)


def flag(name: str, help_text: str, default: bool | None = None):
    """``--name [true|false]`` and ``--no-name``, merged into one parameter ``name``: True,
    False, or ``default`` when neither is given (None: the recipe decides)."""
    dashed = name.replace("_", "-")

    def decorate(fn):
        @functools.wraps(fn)
        def merged(*args, **kwargs):
            value, negated = kwargs.pop(name), kwargs.pop(f"no_{name}")
            if negated and value:
                fail(f"--{dashed} and --no-{dashed} contradict each other; pass one of them")
            kwargs[name] = False if negated else (default if value is None else value)
            return fn(*args, **kwargs)

        merged = option(
            f"--no-{dashed}", f"no_{name}", is_flag=True, default=False, help=f"Not --{dashed}."
        )(merged)
        shown = "" if default is None else f" [default: {str(default).lower()}]"
        return option(
            f"--{dashed}",
            name,
            type=OptionalBool(),
            is_flag=False,
            flag_value=True,
            default=None,
            help=help_text + shown,
        )(merged)

    return decorate


# The training config's options: name -> click option settings (defaults None = the recipe).
TRAINING_OPTIONS: dict[str, dict] = {
    "epochs": {"type": int, "help": "Epochs [default: the model's recipe]."},
    "batch_size": {"type": int, "help": "Batch size [default: recipe; lab: 64]."},
    "lr": {"type": float, "help": "Learning rate [default: the model's recipe]."},
    "weight_decay": {"type": float, "help": "Weight decay [default: recipe]."},
    "optimizer": {"type": click.Choice(OPTIMIZERS), "help": "Optimizer [default: recipe]."},
    "scheduler": {"type": click.Choice(SCHEDULERS), "help": "LR schedule [default: recipe]."},
    "image_size": {
        "type": int,
        "help": "Input side for vgg16/alexnet, up to 512 [default: 224]; the others take 28.",
    },
    "recipe": {
        "type": click.Choice(RECIPES),
        "help": "Defaults to start from: the lab's, or the model's fast one (cnn) [default: lab].",
    },
    "precision": {
        "type": click.Choice(PRECISIONS),
        "help": "Numeric precision; auto = bf16 where the hardware is fast at it (AVX512-bf16 "
        "or AMX CPUs, CUDA GPUs with bf16), else fp32 [default: auto].",
    },
    "feature_cache": {
        "type": click.Choice(FEATURE_CACHE),
        "help": "Compute a frozen backbone's features once and train the head on them (vgg16, "
        "alexnet); auto = when they fit in memory [default: auto].",
    },
    "limit_train": {"type": int, "help": "Use N training images (class-balanced)."},
    "limit_test": {"type": int, "help": "Use N test images (class-balanced)."},
    "val_size": {"type": int, "help": "Hold out N training images for validation [default: 0]."},
    "seed": {"type": int, "help": "Random seed [default: 42]."},
    "device": {"help": "auto, cpu, cuda, cuda:N or mps [default: auto]."},
}


CUDA_GRAPHS_HELP = (
    "Replay one captured CUDA graph of the whole training step for each full batch: far "
    "fewer kernel launches on a GPU (CUDA only; not with fp16 or --scheduler onecycle) "
    "[default: false]."
)


def training_options(*names: str, **settings: dict):
    """The options ``names`` of ``TRAINING_OPTIONS``, in that order; ``settings[name]``
    overrides a name's click settings (another default or help)."""

    def decorate(fn):
        for name in reversed(names):
            spec = {"default": None, **TRAINING_OPTIONS[name], **settings.get(name, {})}
            fn = option(f"--{name.replace('_', '-')}", name, **spec)(fn)
        return fn

    return decorate


def not_empty(ctx, param, value: str | None) -> str | None:
    """A callback refusing an empty (or blank) value, which would otherwise silently mean the
    option's default (a script's unset variable: ``--data-dir "$DIR"``)."""
    if value is not None and not value.strip():
        flag = param.opts[0]
        fix = f"pass a value, or leave {flag} out for its default"
        raise BadValue(f"it is empty; {fix}", ctx=ctx, param=param)
    return value


def data_dir_option(fn):
    return option(
        "--data-dir",
        default=None,
        callback=not_empty,
        help="Folder with the MNIST IDX files [default: $MNIST_DATA_DIR, else ./data].",
    )(fn)


def check_tracking_uri(ctx, param, value: str | None) -> str | None:
    """The ``--tracking-uri`` callback: the URI, else ``$MLFLOW_TRACKING_URI`` (which MLflow
    reads when none is given), refused before anything starts if MLflow could not open it
    (or if it is empty)."""
    not_empty(ctx, param, value)
    if value:
        validate_tracking_uri(value)
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        validate_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], source="$MLFLOW_TRACKING_URI")
    return value


def connect(tracking_uri: str | None, *, existing: bool = False) -> str:
    """Set the tracking URI and check, within seconds, that its store answers
    (TrackingUnavailable, exit 2, if not): a run must not train for hours and then find
    nowhere to log, and a query must not sit through MLflow's retries (minutes) to say so.

    ``existing``: the command reads runs that must already be there (compare, promote,
    predict, reap), so a SQLite file that does not exist is a typo, refused, where MLflow
    would create an empty store there on the first query.
    """
    from ..tracking import check_reachable, set_tracking_uri
    from ..tracking.fresh_store import sqlite_path

    uri = set_tracking_uri(tracking_uri)
    path = sqlite_path(uri) if existing else None  # None: not a SQLite file (a server, ...)
    if path is not None and not path.is_file():
        fail(
            f"no tracking store at {path} (from {redact(uri)}); pass the --tracking-uri your "
            "runs were logged to"
        )
    check_reachable(uri)
    return uri


def check_run_name(ctx, param, value: str | None) -> str | None:
    """The ``--run-name`` callback: a name no MLflow store takes (empty, too long) refused
    before anything starts."""
    from ..config import validate_run_name  # no torch: the models' specs only

    if value is not None:
        validate_run_name(value, "--run-name")
    return value


def check_experiments(_ctx, param, value):
    """The ``--experiment`` callback (one name, or a tuple of them): names no MLflow store
    takes (empty, too long) refused before anything starts."""
    from ..config import validate_experiment_name  # no torch: the models' specs only

    for name in value if isinstance(value, tuple) else (value,):
        validate_experiment_name(name, "--experiment")
    return value


def tracking_uri_option(fn):
    return option(
        "--tracking-uri",
        default=None,
        callback=check_tracking_uri,
        help="MLflow tracking URI [default: $MLFLOW_TRACKING_URI, else MLflow's sqlite:///mlflow.db].",
    )(fn)


def tracking_options(fn):
    """``--experiment`` and ``--tracking-uri``."""
    fn = tracking_uri_option(fn)
    return option(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        show_default=True,
        callback=check_experiments,
        help="MLflow experiment.",
    )(fn)
