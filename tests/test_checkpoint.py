"""Checkpoints and divergence in the training loop itself (in process, no tracking)."""

from __future__ import annotations

import pytest
import torch

from mnist_tracker import data, errors
from mnist_tracker.config import resolve_config
from mnist_tracker.models import create_model
from mnist_tracker.training import OnCheckpoint, OnEpoch, checkpoint, fit

from .conftest import SUBSET

pytestmark = pytest.mark.fast

# The lr schedule on the CPU is deterministic: a resumed run must match to float rounding.
TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist(SUBSET, download_missing=False)


def _setup(mnist, model_name, **overrides):
    config = resolve_config(
        model_name, limit_train=200, limit_test=100, device="cpu", precision="fp32", **overrides
    )
    splits = data.split_data(mnist, seed=config.seed, limit_train=200, limit_test=100)
    return config, splits


@pytest.mark.parametrize(
    "model_name, overrides",
    [
        ("cnn", {"epochs": 3}),  # dropout: the torch RNG must be restored
        ("vit", {"epochs": 3, "scheduler": "cosine"}),  # an epoch-wise schedule
        ("cnn", {"epochs": 3, "scheduler": "onecycle", "optimizer": "sgd"}),  # per-batch one
    ],
)
def test_resumed_fit_equals_the_uninterrupted_one(mnist, tmp_path, model_name, overrides):
    config, splits = _setup(mnist, model_name, **overrides)
    states = {}

    def keep(state):
        states[state["epoch"]] = checkpoint.save(state, tmp_path / f"e{state['epoch']}.pt")

    torch.manual_seed(config.seed)
    full = fit(config, splits, create_model(config), [OnCheckpoint(keep)])
    assert sorted(states) == [1, 2, 3]

    # A fresh process would start from other weights and RNG states: the checkpoint must win.
    torch.manual_seed(12345)
    resumed_epochs = []
    state = checkpoint.load(states[1])
    resumed = fit(
        config,
        splits,
        create_model(config),
        [OnEpoch(lambda epoch, metrics: resumed_epochs.append(epoch))],
        resume=state,
    )
    assert resumed_epochs == [2, 3]
    assert len(resumed.history) == 3
    for a, b in zip(full.history, resumed.history, strict=True):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], abs=TOLERANCE), key
    assert (full.test_predictions == resumed.test_predictions).all()
    assert resumed.final["training_time_s"] > state["training_time_s"]


def test_resume_after_the_last_epoch_only_evaluates(mnist, tmp_path):
    config, splits = _setup(mnist, "cnn", epochs=1)
    states = []
    torch.manual_seed(config.seed)
    full = fit(config, splits, create_model(config), [OnCheckpoint(states.append)])
    again = fit(config, splits, create_model(config), resume=states[-1])
    assert again.history == full.history
    assert (again.test_predictions == full.test_predictions).all()


def test_checkpoint_save_is_atomic_and_keeps_only_the_newest(tmp_path):
    path = tmp_path / "run" / checkpoint.FILENAME
    checkpoint.save({"epoch": 1, "w": torch.ones(3)}, path)
    checkpoint.save({"epoch": 2, "w": torch.zeros(3)}, path)
    assert [p.name for p in path.parent.iterdir()] == [checkpoint.FILENAME]
    assert checkpoint.load(path)["epoch"] == 2


def test_divergence_stops_with_the_epoch_and_keeps_the_last_good_state(mnist):
    """SGD at lr 5 on a one-cycle schedule: epoch 1 is fine, a later one blows up (here: 2)."""
    config, splits = _setup(mnist, "cnn", epochs=6, optimizer="sgd", lr=5.0, scheduler="onecycle")
    states = []
    torch.manual_seed(config.seed)
    with pytest.raises(errors.Diverged) as info:
        fit(config, splits, create_model(config), [OnCheckpoint(states.append)])
    assert info.value.epoch >= 2
    assert "nan" in info.value.reason or "not finite" in info.value.reason
    assert [s["epoch"] for s in states] == list(range(1, info.value.epoch))
    assert all(torch.isfinite(t).all() for t in states[0]["model"].values())


def test_divergence_is_caught_mid_epoch_by_the_periodic_check(mnist):
    """100 batches an epoch: the loss blows up in the first steps and the every-50-batches
    check stops the run after 100 images, before the epoch's end (200) is reached."""
    config, splits = _setup(mnist, "cnn", epochs=2, batch_size=2, optimizer="sgd", lr=1e4)
    assert len(splits.train_y) == 200
    states = []
    torch.manual_seed(config.seed)
    with pytest.raises(errors.Diverged) as info:
        fit(config, splits, create_model(config), [OnCheckpoint(states.append)])
    assert info.value.epoch == 1 and states == []
    assert "after 100 images" in info.value.reason, info.value.reason


def test_a_capture_without_copies_shares_the_live_tensors_and_saves_the_same(mnist, tmp_path):
    """``capture(copy=False)`` (what the run's Checkpointer writes at once) holds the live CPU
    tensors of the model and Adam's state, not copies, and writes the same checkpoint as
    ``capture()``, whose tensors are copies."""
    from mnist_tracker.training.callbacks import Callback

    config, splits = _setup(mnist, "cnn", epochs=1)
    seen = {}

    class Both(Callback):
        def on_epoch_end(self, state, metrics):
            live = {p.data_ptr() for p in state.model.parameters()}
            shared, copied = state.capture(copy=False), state.capture()
            for name, captured in (("shared", shared), ("copied", copied)):
                ptrs = {t.data_ptr() for t in captured["model"].values()}
                adam = captured["optimizer"]["state"][0]["exp_avg"].data_ptr()
                seen[name] = (ptrs >= live, adam)
                checkpoint.save(captured, tmp_path / f"{name}.pt")
            seen["adam"] = state.optimizer.state_dict()["state"][0]["exp_avg"].data_ptr()

    fit(config, splits, create_model(config), [Both()])
    assert seen["shared"] == (True, seen["adam"])
    assert seen["copied"][0] is False and seen["copied"][1] != seen["adam"]
    a, b = checkpoint.load(tmp_path / "shared.pt"), checkpoint.load(tmp_path / "copied.pt")
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])


def _training_parts():
    """A seeded batch generator and the cnn's parts as ``capture`` and ``restore`` take them."""
    model = create_model(resolve_config("cnn", device="cpu", precision="fp32"))
    optimizer = torch.optim.Adam(model.parameters())
    parts = {"model": model, "optimizer": optimizer, "scheduler": None, "scaler": None}
    return torch.Generator().manual_seed(0), parts


def test_a_cpu_runs_checkpoint_leaves_the_gpus_alone(monkeypatch):
    """On a GPU host, capturing and restoring a CPU run's state reads and sets no GPU's RNG:
    each such call starts CUDA, and every GPU's state in a list made a resume fail on a
    machine with fewer GPUs (an IndexError). Here the host claims GPUs, whose RNG calls fail."""

    def touched(*args, **kwargs):
        raise AssertionError("a GPU's RNG was touched by a CPU run")

    generator, parts = _training_parts()
    with monkeypatch.context() as gpu_host:
        gpu_host.setattr(torch.cuda, "is_available", lambda: True)
        for name in ("get_rng_state", "get_rng_state_all", "set_rng_state", "set_rng_state_all"):
            gpu_host.setattr(torch.cuda, name, touched)
        state = checkpoint.capture(
            epoch=1, generator=generator, history=[], training_time_s=0.0, total_time_s=0.0,
            **parts,
        )  # fmt: skip
        assert state["rng"]["cuda"] is None
        state["rng"]["cuda"] = [torch.zeros(16, dtype=torch.uint8)]  # as written before
        checkpoint.restore(state, generator=generator, **parts)


@pytest.mark.parametrize(("index", "entry"), [(0, 0), (1, 1), (3, 0)])
def test_a_gpu_runs_checkpoint_holds_and_restores_its_own_gpus_rng(monkeypatch, index, entry):
    """A run on cuda:N captures cuda:N's RNG state and restores it there. A checkpoint written
    before stop 34 holds every visible GPU's state in a list: cuda:N gets entry N, or the
    first where the list is shorter. No GPU here: the model's device and the RNG calls are
    stand-ins."""
    device = torch.device("cuda", index)
    calls = []
    generator, parts = _training_parts()
    ours = torch.full((16,), 7, dtype=torch.uint8)
    monkeypatch.setattr(checkpoint, "_device_of", lambda model: device)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda d: calls.append(("get", d)) or ours)
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda s, d: calls.append(("set", int(s[0]), d))
    )
    state = checkpoint.capture(
        epoch=1, generator=generator, history=[], training_time_s=0.0, total_time_s=0.0,
        **parts,
    )  # fmt: skip
    assert state["rng"]["cuda"] is ours
    checkpoint.restore(state, generator=generator, **parts)
    state["rng"]["cuda"] = [torch.full((16,), i, dtype=torch.uint8) for i in range(2)]
    checkpoint.restore(state, generator=generator, **parts)
    assert calls == [("get", device), ("set", 7, device), ("set", entry, device)]
