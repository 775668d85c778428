"""Callbacks: what ``fit`` calls around its loop, and the built-in ones.

The protocol is five optional hooks (``Callback`` implements each as a no-op):

- ``on_epoch_start(state)``: before an epoch's training pass.
- ``on_batch_end(state, batch)``: after each optimiser step (``loop.Batch``; its tensors are on
  the device, reading one is a host sync).
- ``on_train_end(state, train_loss)``: after an epoch's training pass, before evaluation.
- ``on_epoch_end(state, metrics) -> Stop | None``: after evaluation, with the epoch's metrics
  (GUIDE.md names); returning ``Stop`` ends the fit after this epoch (the tuner's pruning).
  Callbacks run in list order, so a checkpoint callback placed before the logger means every
  logged epoch has a checkpoint.
- ``on_fit_end(state)``: always, also when the fit raises (close bars, files).

A callback may raise: ``RunFailed`` (e.g. ``Diverged``) ends the fit as a failed run; anything
else propagates as it is. ``FitState`` is what the hooks read; ``state.capture()`` is the
checkpoint of the epoch just finished.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .. import collector
from ..errors import Diverged
from . import checkpoint
from .loop import Batch, EvalResult, weights_finite

if TYPE_CHECKING:
    from torch import nn

    from ..config import TrainConfig

# How often (in batches) the divergence guard checks the running loss for NaN / inf: often
# enough to stop a diverged run early, rarely enough that the host sync it costs does not show.
DIVERGENCE_CHECK_EVERY = 50


@dataclass(frozen=True)
class Stop:
    """A callback's decision to end the fit after this epoch; the run ends with ``status``
    (FINISHED, KILLED) and ``tags``."""

    status: str
    tags: dict[str, str] = field(default_factory=dict)
    reason: str = ""


@dataclass
class FitState:
    """The fit as the hooks see it. ``epoch`` is the current (or just finished) epoch;
    ``trained`` the module the loop trains (the head alone with the feature cache)."""

    config: TrainConfig
    model: nn.Module
    trained: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    history: list[dict[str, float]]
    n_train: int
    per_batch: bool = False  # the scheduler steps per batch (one-cycle), else per epoch
    epoch: int = 0
    training_time_s: float = 0.0
    evals: dict[str, EvalResult] = field(default_factory=dict)  # this epoch's, by split
    elapsed_s: Callable[[], float] = lambda: 0.0  # total time of the run so far

    def capture(self, copy: bool = True) -> dict:
        """The checkpoint of the epoch just finished (``checkpoint.capture``; ``copy=False``
        for a state written at once and not kept)."""
        return checkpoint.capture(
            copy=copy,
            epoch=self.epoch,
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            generator=self.generator,
            history=self.history,
            training_time_s=self.training_time_s,
            total_time_s=self.elapsed_s(),
        )


class Callback:
    """The hooks ``fit`` calls; subclasses override the ones they need."""

    def on_epoch_start(self, state: FitState) -> None:
        pass

    def on_batch_end(self, state: FitState, batch: Batch) -> None:
        pass

    def on_train_end(self, state: FitState, train_loss: float) -> None:
        pass

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> Stop | None:
        return None

    def on_fit_end(self, state: FitState) -> None:
        pass


class DivergenceGuard(Callback):
    """Stops a run whose training loss turns NaN / inf (checked every ``every`` batches and at
    the end of each pass) or whose weights do after the epoch's last step: raises Diverged
    with the epoch, before that epoch can become a checkpoint. ``fit`` always runs it first."""

    def __init__(self, every: int = DIVERGENCE_CHECK_EVERY):
        self.every = every

    def on_batch_end(self, state: FitState, batch: Batch) -> None:
        if batch.step % self.every == 0 and not torch.isfinite(batch.loss_sum):
            mean = float(batch.loss_sum / batch.seen)
            raise Diverged(f"train loss is {mean} after {batch.seen} images", state.epoch)

    def on_train_end(self, state: FitState, train_loss: float) -> None:
        if not math.isfinite(train_loss):
            raise Diverged(f"train loss is {train_loss} after {state.n_train} images", state.epoch)
        # The last step can blow the weights up after the last loss was computed.
        if not weights_finite(state.trained):
            raise Diverged("weights are not finite after the epoch's last step", state.epoch)


class StartupOver(Callback):
    """Turns the garbage collector back on when the first epoch starts, if the CLI paused it
    for its start-up (``collector``): after the model, the optimiser (``torch._dynamo``) and
    the run exist, before the first training step."""

    def on_epoch_start(self, state: FitState) -> None:
        collector.resume()


class ProgressBar(Callback):
    """A tqdm bar per epoch with a smoothed live loss (for a terminal).

    The smoothing runs on the loss's device and is read back every ``READ_EVERY`` batches and
    at the epoch's last: each read waits for the GPU, and a wait every step would keep the CPU
    from queueing the next steps ahead (a replayed CUDA graph's included).
    """

    READ_EVERY = 20

    def __init__(self):
        self.bar = None
        self.loss: torch.Tensor | None = None  # the smoothed loss, on the loss's device

    def on_epoch_start(self, state: FitState) -> None:
        from tqdm.auto import tqdm

        desc = f"epoch {state.epoch}/{state.config.epochs}"
        self.bar = tqdm(total=state.n_train, desc=desc, unit="img", leave=False)
        self.loss = None

    def on_batch_end(self, state: FitState, batch: Batch) -> None:
        loss = batch.loss.detach().float()  # a graph's loss is overwritten by its next replay
        if self.loss is None:
            self.loss = loss.clone()
        else:
            self.loss.mul_(0.9).add_(loss, alpha=0.1)
        self.bar.update(batch.size)
        if batch.step % self.READ_EVERY == 0 or batch.seen >= state.n_train:
            self.bar.set_postfix(loss=f"{float(self.loss):.4f}", refresh=False)

    def on_train_end(self, state: FitState, train_loss: float) -> None:
        self.on_fit_end(state)

    def on_fit_end(self, state: FitState) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class OnEpoch(Callback):
    """Calls ``fn(epoch, metrics)`` after each epoch (a plain function as a callback)."""

    def __init__(self, fn: Callable[[int, dict[str, float]], Stop | None]):
        self.fn = fn

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> Stop | None:
        return self.fn(state.epoch, metrics)


class OnCheckpoint(Callback):
    """Calls ``save(state.capture())`` after each epoch: the checkpoint of every finished
    epoch, before the callbacks after it (place it before the metric logger)."""

    def __init__(self, save: Callable[[dict], None]):
        self.save = save

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        self.save(state.capture())


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


class EpochPrinter(Callback):
    """``echo(line)`` with one ``format_epoch`` line per epoch."""

    def __init__(self, echo: Callable[[str], None]):
        self.echo = echo

    def on_epoch_end(self, state: FitState, metrics: dict[str, float]) -> None:
        self.echo(format_epoch(state.epoch, state.config.epochs, metrics))
