"""The training loop: ``fit(config, splits, model, callbacks) -> FitResult``.

Nothing here knows about MLflow: logging, checkpoint files, progress bars and pruning are
callbacks (``callbacks.py``). ``fit`` trains, evaluates on test (and val) each epoch, and
calls the hooks.

Speed without changing what is computed: batches are sliced from uint8 tensors in memory;
conv nets train in channels_last; the config's precision picks autocast; a frozen backbone's
features are computed once per split and the head trains on them (``features.plan_cache``);
with ``config.cuda_graphs`` full batches replay one captured CUDA graph (``graphs.py``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..config import TrainConfig
from ..data import Splits
from . import checkpoint, features, graphs
from .callbacks import Callback, DivergenceGuard, FitState, Stop
from .loop import EvalResult, build_optimizer, build_scheduler, evaluate, train_one_epoch
from .runtime import is_resolved, keep_freed_memory, memory_format, sync


@dataclass
class FitResult:
    """What a fit produced. ``final`` holds the last epoch's metrics plus run-level ones;
    ``stopped`` is the callback's decision when one ended the fit early."""

    history: list[dict[str, float]]
    final: dict[str, float]
    test_predictions: np.ndarray | None  # None when the splits had no test set
    test_labels: np.ndarray | None
    device: str
    precision: str
    feature_cache: str  # "on" or "off": the path that ran
    stopped: Stop | None = None


def fit(
    config: TrainConfig,
    splits: Splits,
    model: nn.Module,
    callbacks: Sequence[Callback] = (),
    *,
    resume: dict | None = None,
    plan: features.CachePlan | None = None,
) -> FitResult:
    """Train ``model`` per ``config`` on ``splits``; evaluate on test (and val) every epoch.

    ``config`` must be resolved (``runtime.resolve_runtime``: a concrete device and precision).
    Seeded by the batch-order generator (``config.seed``) and the global RNG as the caller left
    it (``runtime.seed_everything`` before building the model). ``training_time_s`` is the wall
    time of the training passes (the lab's "Training Time"), including computing the cached
    training features (in the ``epoch_time_s`` of the first epoch this call trains);
    evaluation is in ``total_time_s`` only. ``plan`` is the caller's ``features.plan_cache``
    (computed here when None). ``model`` is trained in place and returned on the device in the
    default memory format. ``resume`` (a ``checkpoint.capture`` state) continues from the
    epoch after it, with the same results as a fit never stopped. Raises Diverged (with its
    epoch) when the loss or the weights stop being finite.
    """
    if not is_resolved(config):
        raise ValueError("fit needs a resolved config: call runtime.resolve_runtime first")
    start = time.perf_counter()
    device = torch.device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    model.to(device, memory_format=memory_format(config))
    plan = plan or features.plan_cache(config, model, splits, device)
    state = _initial_state(config, splits, model, resume)
    earlier = 0.0 if resume is None else resume["total_time_s"]
    state.elapsed_s = lambda: earlier + time.perf_counter() - start
    # After any restore, so that cached features come from the backbone the run trains with.
    inputs = features.build_inputs(config, splits, model, plan, device)
    state.trained = inputs.module
    graphed = None
    if config.cuda_graphs:
        if state.scaler is not None or state.per_batch:  # the config refuses both
            raise ValueError("cuda_graphs cannot replay a GradScaler or a per-batch schedule")
        graphed = graphs.GraphedEpochs(
            inputs.module,
            inputs.train_x,
            inputs.train_y,
            batch_size=config.batch_size,
            optimizer=state.optimizer,
            precision=config.precision,
        )
    hooks = [DivergenceGuard(), *callbacks]
    first_epoch = len(state.history) + 1
    test = stopped = None
    try:
        for epoch in range(first_epoch, config.epochs + 1):
            state.epoch = epoch
            # This call computed the training features before its first epoch: count them.
            setup_s = inputs.seconds.get("train", 0.0) if epoch == first_epoch else 0.0
            metrics, test = _run_epoch(state, hooks, splits, inputs, setup_s, graphed)
            stopped = _epoch_end(hooks, state, metrics)
            if stopped is not None:
                break
    finally:
        for hook in hooks:
            hook.on_fit_end(state)
    if test is None and splits.test_y is not None:
        # Resumed after its last epoch: the predictions for the plots come from one more pass.
        test = _evaluate(state, inputs, inputs.test_x, splits.test_y)
    model.to(memory_format=torch.contiguous_format)
    return _result(state, splits, inputs, plan, test, stopped)


def _initial_state(
    config: TrainConfig, splits: Splits, model: nn.Module, resume: dict | None
) -> FitState:
    """Optimiser, schedule, scaler and batch-order generator, restored from ``resume``."""
    optimizer = build_optimizer(config, model)
    steps = math.ceil(len(splits.train_y) / config.batch_size)
    scheduler, per_batch = build_scheduler(config, optimizer, steps)
    state = FitState(
        config=config,
        model=model,
        trained=model,
        optimizer=optimizer,
        scheduler=scheduler,
        scaler=torch.amp.GradScaler("cuda") if config.precision == "fp16" else None,
        generator=torch.Generator().manual_seed(config.seed),
        history=[],
        n_train=len(splits.train_y),
        per_batch=per_batch,
    )
    if resume is not None:
        checkpoint.restore(
            resume,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=state.scaler,
            generator=state.generator,
        )
        state.history = [dict(m) for m in resume["history"]]
        state.training_time_s = resume["training_time_s"]
    return state


def _run_epoch(state: FitState, hooks, splits: Splits, inputs, setup_s: float, graphed=None):
    """One epoch: train (through ``graphed`` when the fit captures its steps), evaluate;
    returns (metrics, test EvalResult or None)."""
    config, device = state.config, torch.device(state.config.device)
    lr = state.optimizer.param_groups[0]["lr"]
    for hook in hooks:
        hook.on_epoch_start(state)

    def on_batch(batch) -> None:
        for hook in hooks:
            hook.on_batch_end(state, batch)

    t0 = time.perf_counter()
    if graphed is not None:
        train_loss, train_acc = graphed.train_epoch(generator=state.generator, on_batch=on_batch)
    else:
        train_loss, train_acc = train_one_epoch(
            inputs.module,
            inputs.train_x,
            inputs.train_y,
            batch_size=config.batch_size,
            optimizer=state.optimizer,
            device=device,
            precision=config.precision,
            generator=state.generator,
            scheduler=state.scheduler if state.per_batch else None,
            scaler=state.scaler,
            on_batch=on_batch,
        )
    sync(device)
    for hook in hooks:
        hook.on_train_end(state, train_loss)
    epoch_time = time.perf_counter() - t0 + setup_s
    state.training_time_s += epoch_time
    if state.scheduler is not None and not state.per_batch:
        state.scheduler.step()
    metrics = {"train_loss": train_loss, "train_accuracy": train_acc}
    metrics |= {"epoch_time_s": epoch_time, "lr": lr}
    test = None
    for split in ("val", "test"):
        y = getattr(splits, f"{split}_y")
        if y is None:
            continue
        result = _evaluate(state, inputs, getattr(inputs, f"{split}_x"), y)
        metrics |= {
            f"{split}_loss": result.loss,
            f"{split}_accuracy": result.accuracy,
            f"{split}_f1_macro": result.f1_macro,
        }
        state.evals[split] = result
        test = result if split == "test" else test
    state.history.append(metrics)
    return metrics, test


def _epoch_end(hooks, state: FitState, metrics: dict[str, float]) -> Stop | None:
    """Every hook's ``on_epoch_end`` in order; the first Stop wins (the others still run)."""
    stopped = None
    for hook in hooks:
        decision = hook.on_epoch_end(state, metrics)
        stopped = stopped or decision
    return stopped


def _evaluate(state: FitState, inputs, x: torch.Tensor, y: torch.Tensor) -> EvalResult:
    return evaluate(
        inputs.module,
        x,
        y,
        device=torch.device(state.config.device),
        precision=state.config.precision,
        batch_size=inputs.eval_batch_size,
    )


def _result(state: FitState, splits: Splits, inputs, plan, test, stopped) -> FitResult:
    final = dict(state.history[-1])
    trained_epochs = len(state.history)
    final.update(
        training_time_s=state.training_time_s,
        total_time_s=state.elapsed_s(),
        train_throughput_img_s=state.n_train * trained_epochs / state.training_time_s,
    )
    if plan.enabled:
        final["feature_cache_time_s"] = sum(inputs.seconds.values())
    return FitResult(
        history=state.history,
        final=final,
        test_predictions=None if test is None else test.predictions,
        test_labels=None if splits.test_y is None else splits.test_y.numpy(),
        device=state.config.device,
        precision=state.config.precision,
        feature_cache=plan.param,
        stopped=stopped,
    )
