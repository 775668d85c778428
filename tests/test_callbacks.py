"""``fit``'s callback protocol: order, Stop, the divergence guard, cleanup on errors; and the
CLI's one error map. In process, tiny data: seconds."""

from __future__ import annotations

import click
import pytest
import torch

from mnist_tracker import data, errors
from mnist_tracker.cli.errors import HINT_ATTR, report
from mnist_tracker.config import resolve_config
from mnist_tracker.models import create_model
from mnist_tracker.training import Callback, OnEpoch, Stop, fit
from mnist_tracker.training.callbacks import DivergenceGuard, FitState
from mnist_tracker.training.loop import Batch

from .conftest import SUBSET

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module")
def tiny():
    config = resolve_config(
        "cnn", epochs=3, limit_train=64, limit_test=32, device="cpu", precision="fp32"
    )
    mnist = data.load_mnist(SUBSET, download_missing=False)
    return config, data.split_data(mnist, seed=0, limit_train=64, limit_test=32)


class Recorder(Callback):
    def __init__(self, log, name):
        self.log, self.name = log, name

    def on_epoch_start(self, state):
        self.log.append((self.name, "start", state.epoch))

    def on_batch_end(self, state, batch):
        if batch.step == 1:
            self.log.append((self.name, "batch", state.epoch))

    def on_train_end(self, state, train_loss):
        self.log.append((self.name, "train_end", state.epoch))

    def on_epoch_end(self, state, metrics):
        assert state.history[-1] is metrics  # the epoch is in the history when hooks see it
        self.log.append((self.name, "end", state.epoch))

    def on_fit_end(self, state):
        self.log.append((self.name, "fit_end", state.epoch))


def test_hooks_run_in_order_for_every_epoch(tiny):
    config, splits = tiny
    log = []
    fit(config, splits, create_model(config), [Recorder(log, "a"), Recorder(log, "b")])
    per_epoch = ["start", "batch", "train_end", "end"]
    expected = [(n, h, e) for e in (1, 2, 3) for h in per_epoch for n in ("a", "b")]
    assert log == [*expected, ("a", "fit_end", 3), ("b", "fit_end", 3)]


def test_a_stop_ends_the_fit_after_that_epoch_and_later_hooks_still_run(tiny):
    config, splits = tiny
    seen = []
    stop = OnEpoch(lambda e, m: Stop("KILLED", {"why": "test"}) if e == 2 else None)
    result = fit(config, splits, create_model(config), [stop, OnEpoch(lambda e, m: seen.append(e))])
    assert result.stopped == Stop("KILLED", {"why": "test"})
    assert len(result.history) == 2 and seen == [1, 2]
    assert result.final["train_throughput_img_s"] == pytest.approx(
        64 * 2 / result.final["training_time_s"]
    )


def test_fit_end_runs_when_a_callback_raises(tiny):
    config, splits = tiny
    log = []

    def boom(epoch, metrics):
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        fit(config, splits, create_model(config), [OnEpoch(boom), Recorder(log, "r")])
    assert log[-1] == ("r", "fit_end", 1)


def test_fit_refuses_an_unresolved_config(tiny):
    config, splits = tiny
    with pytest.raises(ValueError, match="resolve_runtime"):
        fit(config.replace(device="auto"), splits, create_model(config))


def _state(model, epoch=2):
    return FitState(None, model, model, None, None, None, None, [], n_train=10, epoch=epoch)


def test_divergence_guard_checks_every_n_batches_and_names_the_epoch():
    guard = DivergenceGuard(every=3)
    state = _state(torch.nn.Linear(2, 2))
    nan = torch.tensor(float("nan"))
    guard.on_batch_end(state, Batch(step=2, size=4, loss=nan, loss_sum=nan, seen=8))  # not due
    with pytest.raises(errors.Diverged) as info:
        guard.on_batch_end(state, Batch(step=3, size=4, loss=nan, loss_sum=nan, seen=12))
    assert info.value.epoch == 2 and "after 12 images" in info.value.reason
    assert str(info.value).startswith("training diverged in epoch 2 (train loss is nan")


def test_divergence_guard_catches_weights_blown_up_by_the_last_step():
    model = torch.nn.Linear(2, 2)
    guard, state = DivergenceGuard(), _state(model)
    guard.on_train_end(state, 0.5)  # finite loss, finite weights: fine
    with torch.no_grad():
        model.weight[0, 0] = float("inf")
    with pytest.raises(errors.Diverged, match="weights are not finite"):
        guard.on_train_end(state, 0.5)
    with pytest.raises(errors.Diverged, match="train loss is inf"):
        guard.on_train_end(_state(torch.nn.Linear(2, 2)), float("inf"))


@pytest.mark.parametrize(
    "exc, code, printed",
    [
        (errors.ConfigError("epochs must be at least 1; pass --epochs 1"), 2, "Error: epochs must"),
        (errors.DataError("x.gz: corrupt"), 2, "Error: x.gz: corrupt"),
        (errors.TrackingUnavailable("server not reachable"), 2, "Error: server not reachable"),
        (errors.Diverged("loss is nan", epoch=3), 1, "Error: training diverged in epoch 3"),
        (errors.FeatureCacheError("features exceed the fp16 range"), 1, "Error: features exceed"),
        (KeyboardInterrupt(), 130, "Interrupted."),
        (errors.Interrupted(15), 143, "Stopped by signal 15."),
        (click.UsageError("no such option: --x"), 2, "Error: no such option: --x"),
    ],
)
def test_the_error_map(exc, code, printed, capsys):
    assert report(exc) == code
    err = capsys.readouterr().err
    assert err.startswith(printed) and err.count("\n") == 1, err


def test_hints_follow_the_message_and_bugs_keep_their_traceback(capsys, monkeypatch):
    exc = errors.Diverged("loss is nan", epoch=2)
    setattr(exc, HINT_ATTR, "The run was marked FAILED.")
    assert report(exc) == 1
    assert capsys.readouterr().err.strip().endswith("(loss is nan). The run was marked FAILED.")
    # Not bad input: the traceback, with any password hidden (issue 11).
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-secret")
    try:
        raise ValueError("a bug at http://admin:pw-in-url@host:5000/ with hunter2-secret")
    except ValueError as bug:
        assert report(bug) == 1
    err = capsys.readouterr().err
    assert err.startswith("Traceback (most recent call last):") and "ValueError: a bug" in err
    assert "pw-in-url" not in err and "hunter2-secret" not in err
    assert "http://admin:***@host:5000/" in err


def test_ctrl_c_keeps_its_hint_through_clicks_abort(capsys):
    """click turns KeyboardInterrupt into Abort; the run's hint must survive that."""
    interrupt = KeyboardInterrupt()
    setattr(interrupt, HINT_ATTR, "The run was marked KILLED.")
    try:
        try:
            raise interrupt
        except KeyboardInterrupt:
            raise click.Abort() from None
    except click.Abort as abort:
        assert report(abort) == 130
    assert capsys.readouterr().err == "Interrupted. The run was marked KILLED.\n"


def test_the_progress_bar_reads_its_loss_back_every_few_batches(monkeypatch):
    """The smoothed loss is read back (a wait for the GPU) every READ_EVERY batches and at the
    epoch's end, not after each step; what it shows is the smoothed loss all the same."""
    from types import SimpleNamespace

    from mnist_tracker.training.callbacks import ProgressBar

    reads = []
    real = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: reads.append(1) or real(t))
    steps = 2 * ProgressBar.READ_EVERY + 5
    state = SimpleNamespace(epoch=1, config=SimpleNamespace(epochs=1), n_train=64 * steps)
    bar = ProgressBar()
    bar.on_epoch_start(state)
    losses = torch.linspace(2.0, 1.0, steps)
    smoothed = None
    for step, loss in enumerate(losses, start=1):
        bar.on_batch_end(state, Batch(step, 64, loss, loss * 0, 64 * step))
        smoothed = float(real(loss)) if smoothed is None else 0.9 * smoothed + 0.1 * real(loss)
    assert len(reads) == 3  # after batches 20 and 40, and the last
    assert bar.bar.postfix == f"loss={smoothed:.4f}"
    bar.on_fit_end(state)
