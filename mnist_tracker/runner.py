"""One tracked training run: ``train(config, ...) -> TrainOutcome``, and ``resume(run_id)``.

Called by the CLI, the tests and the tuner alike. Everything that can reject the input (data
files, model weights, config) happens before the MLflow run is created, so bad input leaves
nothing in the tracking store.

No finished epoch is lost: after each one a checkpoint is written to the run's local folder
(``checkpoint.run_dir``) and, when small, uploaded as the artifact ``checkpoints/checkpoint.pt``;
a run that stops early (Ctrl-C, SIGTERM, divergence, an error) uploads its newest one as it
ends. ``resume(run_id)`` continues such a run from it. A run that finishes removes its local
checkpoint (its outbox, if the server went away, stays for ``sync``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from sklearn.metrics import classification_report

from . import checkpoint, engine, features, plots, tracking
from . import data as data_mod
from .config import ConfigError, TrainConfig
from .models import count_params, create_model, get_spec

RUN_METRICS = ("training_time_s", "total_time_s", "train_throughput_img_s", "feature_cache_time_s")

# Checkpoints up to this size are uploaded after every epoch (insurance against a machine
# that dies without a chance to upload); bigger ones (vgg16: about 1.5 GB with Adam's state)
# only when the run stops early, so that they do not slow every epoch down.
UPLOAD_EVERY_EPOCH_MAX_BYTES = 64 * 2**20


class ResumeError(ValueError):
    """The run cannot be resumed; the message says why and what to do instead."""


@dataclass
class TrainOutcome:
    run_id: str
    experiment_id: str
    config: TrainConfig
    result: engine.FitResult
    model: torch.nn.Module
    offline_reason: str | None = None  # set when the server went away: see ``outbox``
    outbox: Path | None = None


@dataclass
class Resume:
    """A stopped run to continue: its id and the checkpoint of its last finished epoch."""

    run_id: str
    state: dict


class _Checkpoints:
    """The ``on_checkpoint`` hook of one run: keep the newest locally, upload it when due."""

    def __init__(self, sink, config: TrainConfig, register: str | None, echo=None):
        self.sink, self.config, self.register = sink, config, register
        self.path = checkpoint.run_dir(sink.run_id) / checkpoint.FILENAME
        self.epoch = self.uploaded = 0
        self.echo = echo or (lambda _line: None)
        self.broken = False

    def __call__(self, state: dict) -> None:
        if self.broken:
            return
        state["config"] = self.config.to_dict()
        state["register"] = self.register  # a resumed run registers its model as asked
        try:
            checkpoint.save(state, self.path)
        except OSError as exc:  # e.g. the disk filled up: lose the checkpoint, not the run
            self.broken = True
            self.echo(f"warning: cannot write checkpoints ({exc}); training goes on without")
            return
        self.epoch = state["epoch"]
        small = self.path.stat().st_size <= UPLOAD_EVERY_EPOCH_MAX_BYTES
        if small and not self.sink.offline:
            self.upload()

    def upload(self) -> None:
        """Send the newest checkpoint, unless it was sent already (or none was written)."""
        if self.epoch and self.uploaded != self.epoch:
            self.sink.log_artifact(self.path, checkpoint.ARTIFACT_DIR)
            self.uploaded = self.epoch

    def discard(self) -> None:
        """The run finished: its local checkpoint is no longer needed."""
        self.path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # kept when it holds an outbox
            self.path.parent.rmdir()


def prepare_data(config: TrainConfig, data_dir: str | os.PathLike | None) -> data_mod.Splits:
    """Load, verify and split MNIST as ``config`` asks. Raises DataError."""
    mnist = data_mod.load_mnist(data_dir)
    return data_mod.split_data(
        mnist,
        seed=config.seed,
        limit_train=config.limit_train,
        limit_test=config.limit_test,
        val_size=config.val_size,
    )


def resolve_runtime(config: TrainConfig) -> TrainConfig:
    """``device`` and ``precision`` as they will actually run (``auto`` resolved)."""
    device = engine.select_device(config.device)
    precision = engine.resolve_precision(config.precision, device)
    return config.replace(device=str(device), precision=precision)


def resolve_feature_cache(
    config: TrainConfig, model: torch.nn.Module, splits: data_mod.Splits
) -> tuple[TrainConfig, str]:
    """``config`` with ``feature_cache`` as it will run (``on`` / ``off``), and why.

    Raises ConfigError when the cache was required (``on``) and cannot run.
    """
    plan = features.plan_cache(config, model, splits, torch.device(config.device))
    if config.feature_cache == "on" and not plan.enabled:
        raise ConfigError(
            f"the feature cache cannot run: {plan.reason}; pass --feature-cache auto or off"
        )
    return config.replace(feature_cache=plan.param), plan.reason


def format_epoch(epoch: int, epochs: int, m: dict[str, float]) -> str:
    """One log line per epoch, with whichever splits the run evaluates."""
    parts = [f"epoch {epoch}/{epochs}", f"train_loss {m['train_loss']:.4f}"]
    parts.append(f"train_acc {m['train_accuracy']:.2%}")
    for split in ("val", "test"):
        if f"{split}_accuracy" in m:
            parts.append(f"{split}_loss {m[f'{split}_loss']:.4f}")
            parts.append(f"{split}_acc {m[f'{split}_accuracy']:.2%}")
            parts.append(f"{split}_f1 {m[f'{split}_f1_macro']:.4f}")
    parts.append(f"{m['epoch_time_s']:.1f}s")
    return "  ".join(parts)


def train(
    config: TrainConfig,
    *,
    data_dir: str | os.PathLike | None = None,
    splits: data_mod.Splits | None = None,
    experiment: str = tracking.DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    register: str | None = None,
    extra_tags: dict[str, str] | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
    epoch_hook: Callable[[int, dict[str, float]], None] | None = None,
    parent_run_id: str | None = None,
    attach: bool = True,
    log_artifacts: bool = True,
    status_tags: dict[str, dict[str, str]] | None = None,
    on_run_start: Callable[[str], None] | None = None,
    checkpoints: bool = True,
    resume_from: Resume | None = None,
) -> TrainOutcome:
    """Train ``config`` and log the run to the current MLflow tracking URI.

    ``splits`` skips loading (the tuner reuses one copy); otherwise the data comes from
    ``data_dir``. Raises ConfigError / DataError / ModelError before any run is created.
    ``epoch_hook(epoch, metrics)`` runs after each epoch is logged and may raise
    ``tracking.EndRun`` (the tuner's pruning). ``parent_run_id`` nests the run; ``attach``
    lets it join ``mlflow run``'s run. Without ``log_artifacts`` only params, metrics and
    tags are logged (search trials): no datasets, plots, report or model. ``status_tags``
    maps the run's final status to tags set as it ends; ``on_run_start(run_id)`` is called
    as soon as the run exists. ``checkpoints`` keeps one per epoch (see the module's doc);
    ``resume_from`` continues a stopped run (use ``resume``). Raises engine.Diverged after
    ending the run FAILED with tags ``diverged_epoch`` and ``diverged_reason``.
    """
    config = resolve_runtime(config)
    if splits is None:
        splits = prepare_data(config, data_dir)
    torch.manual_seed(config.seed)  # the same seed gives the same initial weights
    # A resumed run gets every weight from its checkpoint: no ImageNet download needed.
    model = create_model(config if resume_from is None else config.replace(pretrained=False))
    resume_state = None if resume_from is None else resume_from.state
    config, cache_reason = resolve_feature_cache(config, model, splits)
    n_params, n_trainable = count_params(model)
    counts = {
        "n_params": n_params,
        "n_trainable_params": n_trainable,
        "train_size": len(splits.train_y),
    }
    if splits.test_y is not None:
        counts["test_size"] = len(splits.test_y)
    if checkpoints:
        checkpoint.ensure_home()  # refuse now rather than fail after the first epoch
    tags = tracking.run_tags(config.device) | {"feature_cache_reason": cache_reason}
    tags.update(extra_tags or {})
    with tracking.tracked_run(
        experiment,
        run_name,
        tags,
        parent_run_id,
        attach,
        status_tags,
        resume_run_id=None if resume_from is None else resume_from.run_id,
    ) as sink:
        run, run_id = sink.run, sink.run_id
        if on_run_start is not None:
            on_run_start(run_id)
        if resume_state is None:
            sink.log_params(config.to_params() | {k: str(v) for k, v in counts.items()})
            if log_artifacts:
                tracking.log_config_artifact(config, sink)
                tracking.log_datasets(splits, sink)
        else:
            _log_missing_epochs(sink, resume_state["history"])
        if echo is not None and get_spec(config.model).split is not None:
            echo(f"feature cache {config.feature_cache}: {cache_reason}")

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if echo is not None:
                echo(format_epoch(epoch, config.epochs, metrics))
            if epoch_hook is not None:
                epoch_hook(epoch, metrics)

        keeper = _Checkpoints(sink, config, register, echo) if checkpoints else None
        try:
            result = engine.fit(
                config,
                splits,
                model,
                tracking.EpochLogger(sink, on_epoch),
                progress=progress,
                resume=resume_state,
                on_checkpoint=keeper,
            )
        except BaseException as exc:
            # Best effort: the run must still end (KILLED / FAILED) if the server refuses these;
            # the local checkpoint stays either way.
            if isinstance(exc, engine.Diverged):
                reason = f"epoch {exc.epoch}: {exc.reason}"
                with contextlib.suppress(Exception):
                    sink.set_tags({"diverged_epoch": str(exc.epoch), "diverged_reason": reason})
            if keeper is not None:
                with contextlib.suppress(Exception):
                    keeper.upload()  # the newest finished epoch, for --resume
            raise
        run_level = {k: result.final[k] for k in RUN_METRICS if k in result.final}
        sink.log_metrics(run_level)
        experiment_id = run.info.experiment_id
        outcome = TrainOutcome(run_id, experiment_id, config, result, model)
        if log_artifacts and result.test_labels is not None:
            _log_artifacts(sink, config, run.info.run_name, result, splits, model, register)
        if keeper is not None:
            keeper.discard()
    if sink.offline:
        outcome.offline_reason, outcome.outbox = sink.offline_reason, sink.outbox.folder
    return outcome


def _log_missing_epochs(sink, history: list[dict[str, float]]) -> None:
    """Send the checkpoint's epochs the server does not have (a run stopped between its
    checkpoint and its metrics, or whose metrics sat in an outbox), so none is missing."""
    logged = {m.step for m in sink.client.get_metric_history(sink.run_id, "train_loss")}
    for epoch, metrics in enumerate(history, start=1):
        if epoch not in logged:
            sink.log_metrics(metrics, step=epoch)


def _log_artifacts(sink, config, run_name, result, splits, model, register) -> None:
    """Plots, the classification report and the model of a finished run."""
    title = f"{config.model} ({run_name})"
    sink.log_text(
        plots.learning_curves(result.history, title).to_html(include_plotlyjs="cdn"),
        "plots/learning_curves.html",
    )
    sink.log_text(
        plots.confusion_matrix_figure(result.test_labels, result.test_predictions, title).to_html(
            include_plotlyjs="cdn"
        ),
        "plots/confusion_matrix.html",
    )
    report = classification_report(
        result.test_labels,
        result.test_predictions,
        labels=list(range(10)),
        target_names=plots.DIGITS,
        output_dict=True,
        zero_division=0,
    )
    sink.log_dict(report, "reports/classification_report.json")
    example = splits.test_x[:2].unsqueeze(1).float().div(255.0)
    sink.log_model(model, example, config, register=register)


def check_resumable(run_id: str):
    """The run ``run_id`` if it can be resumed; else ResumeError saying why and what to do."""
    from mlflow.tracking import MlflowClient

    try:
        run = MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise ResumeError(
            f"run {run_id} is not in this tracking store; pass the --tracking-uri it was logged to"
        ) from None
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


def find_checkpoint(run_id: str) -> dict:
    """The newest checkpoint of ``run_id``: the local copy, or the run's artifact when that
    one is newer (the run went on elsewhere). It must cover every epoch the server holds.

    Raises ResumeError when there is no checkpoint, or none recent enough.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    logged = max((m.step for m in client.get_metric_history(run_id, "train_loss")), default=0)
    local = checkpoint.run_dir(run_id) / checkpoint.FILENAME
    state = checkpoint.load(local) if local.is_file() else None
    if state is None or state["epoch"] < logged:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = client.download_artifacts(
                    run_id, f"{checkpoint.ARTIFACT_DIR}/{checkpoint.FILENAME}", tmp
                )
                remote = checkpoint.load(Path(path))
            except Exception:
                remote = None
        if remote is not None and (state is None or remote["epoch"] > state["epoch"]):
            state = remote
            checkpoint.save(state, local)  # kept locally while the run lives again
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
    return state


def resume(
    run_id: str,
    *,
    data_dir: str | os.PathLike | None = None,
    progress: bool = False,
    echo: Callable[[str], None] | None = None,
) -> TrainOutcome:
    """Continue stopped run ``run_id`` from its newest checkpoint, in the same run: metric
    steps go on from the next epoch, and the results equal those of a run never stopped.

    A pending outbox of the run is sent first. Raises ResumeError (and the errors of
    ``train``) before the run is touched when it cannot be resumed.
    """
    from . import outbox as outbox_mod

    check_resumable(run_id)
    pending = outbox_mod.Outbox(checkpoint.run_dir(run_id) / "outbox")
    if pending.pending():
        outbox_mod.replay(pending)
    check_resumable(run_id)  # the outbox may have ended the run
    state = find_checkpoint(run_id)
    config = TrainConfig(**state["config"]).replace()  # validated
    splits = prepare_data(config, data_dir)
    if state["epoch"] >= config.epochs and echo is not None:
        echo(f"run {run_id}: all {config.epochs} epochs were done; finishing the run")
    elif echo is not None:
        echo(f"run {run_id}: resuming after epoch {state['epoch']} of {config.epochs}")
    return train(
        config,
        splits=splits,
        progress=progress,
        echo=echo,
        attach=False,
        register=state.get("register"),
        resume_from=Resume(run_id, state),
    )
