"""One tracked training run: ``train(config, ...) -> TrainOutcome``.

Called by the CLI, the tests and (later) the tuner alike. Everything that can reject the input
(data files, model weights, config) happens before the MLflow run is created, so bad input
leaves nothing in the tracking store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import mlflow
import torch
from sklearn.metrics import classification_report

from . import data as data_mod
from . import engine, plots, tracking
from .config import TrainConfig
from .models import count_params, create_model


@dataclass
class TrainOutcome:
    run_id: str
    experiment_id: str
    config: TrainConfig
    result: engine.FitResult
    model: torch.nn.Module


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
) -> TrainOutcome:
    """Train ``config`` and log the run to the current MLflow tracking URI.

    ``splits`` skips loading (the tuner reuses one copy); otherwise the data comes from
    ``data_dir``. Raises ConfigError / DataError / ModelError before any run is created.
    ``epoch_hook(epoch, metrics)`` runs after each epoch is logged and may raise
    ``tracking.EndRun`` (the tuner's pruning). ``parent_run_id`` nests the run; ``attach``
    lets it join ``mlflow run``'s run. Without ``log_artifacts`` only params, metrics and
    tags are logged (search trials): no datasets, plots, report or model. ``status_tags``
    maps the run's final status to tags set as it ends; ``on_run_start(run_id)`` is called
    as soon as the run exists.
    """
    config = resolve_runtime(config)
    if splits is None:
        splits = prepare_data(config, data_dir)
    torch.manual_seed(config.seed)  # the same seed gives the same initial weights
    model = create_model(config)
    n_params, n_trainable = count_params(model)
    counts = {
        "n_params": n_params,
        "n_trainable_params": n_trainable,
        "train_size": len(splits.train_y),
    }
    if splits.test_y is not None:
        counts["test_size"] = len(splits.test_y)
    tags = tracking.run_tags(config.device)
    tags.update(extra_tags or {})
    with tracking.tracked_run(
        experiment, run_name, tags, parent_run_id, attach, status_tags
    ) as run:
        run_id = run.info.run_id
        if on_run_start is not None:
            on_run_start(run_id)
        params = config.to_params() | {k: str(v) for k, v in counts.items()}
        tracking.log_params(run_id, params)
        if log_artifacts:
            tracking.log_config_artifact(config)
            tracking.log_datasets(splits)

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            if echo is not None:
                echo(format_epoch(epoch, config.epochs, metrics))
            if epoch_hook is not None:
                epoch_hook(epoch, metrics)

        result = engine.fit(
            config, splits, model, tracking.EpochLogger(run_id, on_epoch), progress=progress
        )
        run_level = {
            k: result.final[k]
            for k in ("training_time_s", "total_time_s", "train_throughput_img_s")
        }
        tracking.log_run_metrics(run_id, run_level)
        experiment_id = run.info.experiment_id
        if not log_artifacts or result.test_labels is None:
            return TrainOutcome(run_id, experiment_id, config, result, model)
        title = f"{config.model} ({run.info.run_name})"
        mlflow.log_text(
            plots.learning_curves(result.history, title).to_html(include_plotlyjs="cdn"),
            "plots/learning_curves.html",
        )
        mlflow.log_text(
            plots.confusion_matrix_figure(
                result.test_labels, result.test_predictions, title
            ).to_html(include_plotlyjs="cdn"),
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
        mlflow.log_dict(report, "reports/classification_report.json")
        example = splits.test_x[:2].unsqueeze(1).float().div(255.0)
        tracking.log_model(model, example, register=register)
    return TrainOutcome(run_id, experiment_id, config, result, model)
