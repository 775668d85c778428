"""One tracked training run: ``train(config, options) -> TrainOutcome``.

Called by the CLI, the suite, the tuner and the tests alike. Everything that can reject the
input (data files, model weights, config, the feature cache, the run folder) happens before
the MLflow run is created, so bad input leaves nothing in the tracking store.

No finished epoch is lost: after each one a checkpoint is written to the run's local folder
and, when small, uploaded as ``artifacts.CHECKPOINT``; a run that stops early (Ctrl-C,
SIGTERM, divergence, an error) uploads its newest one as it ends, for ``resume``. A run that
finishes removes its checkpoint, local and uploaded (its outbox, if the server went away,
stays for ``sync``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .. import collector
from ..config import TrainConfig, fit_to_data
from ..data import Splits
from ..errors import Diverged
from ..models import count_params, create_model, get_spec
from ..paths import ensure_home
from ..reporting import images
from ..tracking import RunSpec, TrackedRun, artifacts, records, store, tracked_run
from ..tracking.registry import check_names
from ..tracking.system import system_metrics
from ..training import FitResult, fit, resolve_runtime, seed_everything
from ..training.callbacks import Callback, EpochPrinter, ProgressBar, StartupOver
from ..training.features import CachePlan, plan_cache
from ..training.metrics import classification_report, confusion
from .callbacks import Checkpointer, MetricLogger, MisclassifiedDigits
from .data import prepare_data

RUN_METRICS = ("training_time_s", "total_time_s", "train_throughput_img_s", "feature_cache_time_s")


@dataclass(frozen=True)
class TrainOptions:
    """How a config is run and tracked (what it computes is the config's business).

    ``data_dir``: where MNIST is (unless ``train`` gets splits). ``experiment`` / ``run_name`` /
    ``tags`` / ``parent_run_id`` / ``attach`` / ``status_tags``: the MLflow run (``RunSpec``).
    ``register``: a model registry name. ``log_artifacts=False`` logs params, metrics and tags
    only (search trials: no datasets, plots, report or model); ``checkpoints=False`` keeps
    none (a trial is retried or pruned, never resumed). ``progress``: a bar per epoch;
    ``echo``: one line per epoch and notes. ``callbacks`` run after the logging ones (the
    tuner's pruning); ``on_run_start(run_id)`` as soon as the run exists. ``system_metrics``:
    CPU / memory / GPU sampled into the run's System metrics tab. Without ``run_name`` a new
    run is named ``<model>-<recipe>-<epochs>ep-<first 6 characters of its id>``.
    """

    data_dir: str | os.PathLike | None = None
    experiment: str = artifacts.DEFAULT_EXPERIMENT
    run_name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    parent_run_id: str | None = None
    attach: bool = True
    status_tags: dict[str, dict[str, str]] = field(default_factory=dict)
    register: str | None = None
    log_artifacts: bool = True
    checkpoints: bool = True
    progress: bool = False
    echo: Callable[[str], None] | None = None
    callbacks: Sequence[Callback] = ()
    on_run_start: Callable[[str], None] | None = None
    system_metrics: bool = True


@dataclass(frozen=True)
class Resume:
    """A stopped run to continue: its id and the checkpoint of its last finished epoch."""

    run_id: str
    state: dict


@dataclass
class TrainOutcome:
    run_id: str
    experiment_id: str
    config: TrainConfig
    result: FitResult
    model: torch.nn.Module
    offline_reason: str | None = None  # why ``outbox`` still holds operations (then not None)
    outbox: Path | None = None


@dataclass
class _Prepared:
    """What a run needs before it exists in MLflow; building it is where bad input fails."""

    config: TrainConfig
    splits: Splits
    model: torch.nn.Module
    plan: CachePlan
    params: dict[str, str]
    tags: dict[str, str]


def _prepare(
    config: TrainConfig, options: TrainOptions, splits: Splits | None, resume: Resume | None
) -> _Prepared:
    """Resolve the runtime and the feature cache, load data, build the model: once each."""
    config = resolve_runtime(config)
    splits = splits if splits is not None else prepare_data(config, options.data_dir)
    test_size = None if splits.test_y is None else len(splits.test_y)
    config = fit_to_data(config, len(splits.train_y), test_size)  # what is logged is what ran
    seed_everything(config.seed)  # the same seed gives the same initial weights
    # A resumed run gets every weight from its checkpoint: no ImageNet download needed.
    model = create_model(config if resume is None else config.replace(pretrained=False))
    plan = plan_cache(config, model, splits, torch.device(config.device))
    config = config.replace(feature_cache=plan.param)
    n_params, n_trainable = count_params(model)
    counts = {"n_params": n_params, "n_trainable_params": n_trainable}
    counts["train_size"] = len(splits.train_y)
    if splits.test_y is not None:
        counts["test_size"] = len(splits.test_y)
    if options.checkpoints:
        ensure_home()  # refuse now rather than fail after the first epoch
    if options.register is not None:  # refuse now, not once the model is logged
        check_names(options.register, option="--register")
    tags = records.run_tags(config.device) | {"feature_cache_reason": plan.reason}
    params = config.to_params() | {k: str(v) for k, v in counts.items()}
    return _Prepared(config, splits, model, plan, params, tags | dict(options.tags))


def train(
    config: TrainConfig,
    options: TrainOptions | None = None,
    *,
    splits: Splits | None = None,
    resume_from: Resume | None = None,
) -> TrainOutcome:
    """Train ``config`` and log the run to the current MLflow tracking URI.

    ``splits`` skips loading (the tuner and the suite reuse one copy). Raises UserErrors
    (ConfigError, DataError, ModelError, HomeError, RegistryError) before any run is created.
    A RunFailed (Diverged: tags ``diverged_epoch`` and ``diverged_reason``) propagates after
    the run was ended FAILED; a callback's ``Stop`` ends the run with its status and tags (the
    outcome's ``result.stopped`` says so). ``resume_from`` continues a stopped run (see
    ``resume``).

    The garbage collector is on when this returns or raises (``collector``): the first epoch
    turns it on, and a training with none (a failure before it, a resumed run with no epoch
    left) does so here, with nothing frozen, so that what a failure left is collected.
    """
    try:
        return _train(config, options or TrainOptions(), splits, resume_from)
    finally:
        collector.resume(freeze=False)


def _train(
    config: TrainConfig, options: TrainOptions, splits: Splits | None, resume_from: Resume | None
) -> TrainOutcome:
    """``train``'s work, with its options given."""
    prep = _prepare(config, options, splits, resume_from)
    spec = RunSpec(
        experiment=options.experiment,
        run_name=options.run_name,
        tags=prep.tags,
        parent_run_id=options.parent_run_id,
        attach=options.attach,
        resume_run_id=None if resume_from is None else resume_from.run_id,
        status_tags=options.status_tags,
    )
    with (
        tracked_run(spec) as run,
        system_metrics(run.sink, options.system_metrics, resumed=resume_from is not None),
    ):
        if options.on_run_start is not None:
            options.on_run_start(run.run_id)
        if options.run_name is None and resume_from is None:
            run.rename(default_run_name(prep.config, run.run_id))
        _log_start(run, prep, options, resume_from)
        keeper = (
            Checkpointer(run.sink, prep.config, options.register, options.echo)
            if options.checkpoints
            else None
        )
        result = _fit(run, prep, options, keeper, resume_from)
        outcome = TrainOutcome(run.run_id, run.experiment_id, prep.config, result, prep.model)
        if result.stopped is not None:  # a callback's decision (a pruned trial): KILLED
            if keeper is not None:
                keeper.upload()
            run.end_as(result.stopped.status, result.stopped.tags)
        else:
            _log_finish(run, prep, options, result)
            if keeper is not None:
                keeper.discard()
    if run.sink.unsent:  # the server went away, or refused files: the run waits for sync
        refused = run.sink.refused[-1] if run.sink.refused else "calls kept in the outbox"
        reason = run.sink.offline_reason or f"it refused: {refused}"
        outcome.offline_reason, outcome.outbox = reason, run.sink.outbox.folder
    return outcome


def _log_start(run: TrackedRun, prep: _Prepared, options: TrainOptions, resume) -> None:
    """Params, config and datasets of a new run; the missing epochs of a resumed one."""
    if resume is None:
        run.sink.log_params(prep.params)
        if options.log_artifacts:
            run.sink.log_dict(prep.config.to_dict(), artifacts.CONFIG)
            run.sink.log_inputs(records.dataset_inputs(prep.splits))
    else:
        _log_missing_epochs(run, resume.state["history"])
    if options.echo is not None and get_spec(prep.config.model).split is not None:
        options.echo(f"feature cache {prep.config.feature_cache}: {prep.plan.reason}")


def _fit(run: TrackedRun, prep: _Prepared, options: TrainOptions, keeper, resume) -> FitResult:
    """``fit`` with the run's callbacks; a run that fails keeps its newest checkpoint."""
    callbacks: list[Callback] = [StartupOver()]
    callbacks += [ProgressBar()] if options.progress else []
    callbacks += [keeper] if keeper is not None else []
    callbacks.append(MetricLogger(run.sink))
    if options.log_artifacts and prep.splits.test_y is not None:
        test_x, test_y = prep.splits.test_x.numpy(), prep.splits.test_y.numpy()
        callbacks.append(MisclassifiedDigits(run.sink, test_x, test_y, _title(prep, run)))
    if options.echo is not None:
        callbacks.append(EpochPrinter(options.echo))
    callbacks += list(options.callbacks)
    state = None if resume is None else resume.state
    try:
        return fit(prep.config, prep.splits, prep.model, callbacks, resume=state, plan=prep.plan)
    except BaseException as exc:
        # Best effort: the run must still end (KILLED / FAILED) if the server refuses these.
        if isinstance(exc, Diverged):
            reason = f"epoch {exc.epoch}: {exc.reason}"
            with contextlib.suppress(Exception):
                run.sink.set_tags({"diverged_epoch": str(exc.epoch), "diverged_reason": reason})
        if keeper is not None:
            with contextlib.suppress(Exception):
                keeper.upload()  # the newest finished epoch, for --resume
        raise


def default_run_name(config: TrainConfig, run_id: str) -> str:
    """``cnn-lab-10ep-1a2b3c``: what ran, readable in the UI's run list, tied to the id."""
    return f"{config.model}-{config.recipe}-{config.epochs}ep-{run_id[:6]}"


def _title(prep: _Prepared, run: TrackedRun) -> str:
    return f"{prep.config.model} ({run.run_name})"


def _log_missing_epochs(run: TrackedRun, history: list[dict[str, float]]) -> None:
    """Send the checkpoint's epochs the server does not have (a run stopped between its
    checkpoint and its metrics, or whose metrics sat in an outbox), so none is missing."""
    logged = store.logged_steps(run.run_id, "train_loss", run.sink.client)
    for epoch, metrics in enumerate(history, start=1):
        if epoch not in logged:
            run.sink.log_metrics(metrics, step=epoch)


def _log_finish(run: TrackedRun, prep: _Prepared, options: TrainOptions, result) -> None:
    """Run-level metrics; then plots, reports and the model of a run that logs artifacts."""
    run.sink.log_metrics({k: result.final[k] for k in RUN_METRICS if k in result.final})
    if not options.log_artifacts or result.test_labels is None:
        return
    title = _title(prep, run)
    labels, predictions = result.test_labels, result.test_predictions
    matrix = confusion(labels, predictions)
    payload = artifacts.confusion_payload(matrix)
    sink = run.sink
    sink.log_bytes(images.learning_curves_png(result.history, title), artifacts.LEARNING_CURVES)
    figure = images.confusion_matrix_png(payload["matrix"], f"{title}: test set")
    sink.log_bytes(figure, artifacts.CONFUSION_FIGURE)
    sink.log_dict(payload, artifacts.CONFUSION_MATRIX)
    report = classification_report(matrix, artifacts.DIGITS)
    sink.log_dict(report, artifacts.CLASSIFICATION_REPORT)
    example = prep.splits.test_x[:2].unsqueeze(1).float().div(255.0)
    last_epoch = len(result.history)  # its test metrics are linked to the logged model
    sink.log_model(prep.model, example, prep.config, register=options.register, step=last_epoch)
