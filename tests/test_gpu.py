"""The CUDA paths: bf16 and fp16 with a GradScaler, the data and the feature cache on the device,
and a resumed fit equal to an uninterrupted one.

Marked ``gpu``: skipped, with the reason, where torch sees no CUDA device (the development and
CI machines have none; the guard in conftest lets exactly these skips through there). On a
machine with one: ``pytest -m gpu``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from mnist_tracker import data
from mnist_tracker.config import resolve_config
from mnist_tracker.models import create_model
from mnist_tracker.training import OnCheckpoint, checkpoint, features, fit, runtime
from mnist_tracker.training.graphs import WARMUP, GraphedEpochs
from mnist_tracker.training.loop import build_optimizer, evaluate

from .conftest import SUBSET

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
]


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist(SUBSET, download_missing=False)


@pytest.fixture
def deterministic():
    """cuDNN's deterministic kernels: without them two equal fits may differ in the last bits."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _setup(mnist, model_name="cnn", limit_train=512, limit_test=256, **overrides):
    # Resolved as the CLI resolves it: fit refuses precision "auto", every recipe's default.
    config = runtime.resolve_runtime(
        resolve_config(
            model_name, limit_train=limit_train, limit_test=limit_test, device="cuda", **overrides
        )
    )
    splits = data.split_data(
        mnist, seed=config.seed, limit_train=limit_train, limit_test=limit_test
    )
    return config, splits


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_trains_like_fp32(mnist, precision):
    """bf16 autocast, and fp16 autocast with a GradScaler: finite, learning, close to fp32."""
    results = {}
    for p in ("fp32", precision):
        # The whole subset (1,000 training images, 500 test), 8 epochs: the lab cnn is past
        # 90 % there (this fit on the CPU: 93.2 % fp32, 93.6 % bf16, 92.6 % fp16); after 3
        # epochs on 512 it was still at 35-50 % and moving by 10 points an epoch.
        config, splits = _setup(mnist, limit_train=None, limit_test=None, epochs=8, precision=p)
        torch.manual_seed(config.seed)
        results[p] = fit(config, splits, create_model(config))
    half = results[precision]
    assert half.precision == precision and half.device.startswith("cuda")
    losses = [h["train_loss"] for h in half.history]
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[0], losses
    # Well above chance (10 %), and within a few points of fp32.
    assert half.final["test_accuracy"] > 0.85, half.final
    assert abs(half.final["test_accuracy"] - results["fp32"].final["test_accuracy"]) < 0.05


def test_fp16_fit_uses_a_grad_scaler(mnist):
    """fp16 keeps its gradients in range with a GradScaler; the checkpoint carries its state."""
    config, splits = _setup(mnist, epochs=1, precision="fp16")
    states = []
    fit(config, splits, create_model(config), [OnCheckpoint(states.append)])
    (state,) = states
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0


def test_training_data_and_cached_features_stay_on_the_device(mnist):
    """The plain path holds the images on the GPU; a frozen backbone's features are cached there
    in half precision, so no step copies a batch from the host."""
    config, splits = _setup(mnist, precision="bf16")
    model = create_model(config).to("cuda")
    device = torch.device("cuda")
    plain = features.build_inputs(
        config, splits, model, features.plan_cache(config, model, splits, device), device
    )
    assert plain.train_x.is_cuda and plain.train_y.is_cuda and plain.test_x.is_cuda
    assert plain.train_x.dtype == torch.uint8

    config, splits = _setup(
        mnist, "alexnet", pretrained=False, freeze=True, image_size=63, precision="bf16"
    )
    model = create_model(config).to("cuda")
    plan = features.plan_cache(config, model, splits, device)
    assert plan.enabled, plan.reason
    cached = features.build_inputs(config, splits, model, plan, device)
    assert cached.train_x.is_cuda and cached.test_x.is_cuda and cached.train_y.is_cuda
    assert cached.train_x.dtype == torch.bfloat16
    assert len(cached.train_x) == len(splits.train_y)


def test_resumed_fit_equals_the_uninterrupted_one_on_cuda(mnist, tmp_path, deterministic):
    """The CUDA RNG (dropout) and the optimizer come back from the checkpoint: epochs 2-3 of a
    resumed fit are those of a fit never stopped."""
    config, splits = _setup(mnist, epochs=3)
    states = {}

    def keep(state):
        states[state["epoch"]] = checkpoint.save(state, tmp_path / f"e{state['epoch']}.pt")

    torch.manual_seed(config.seed)
    full = fit(config, splits, create_model(config), [OnCheckpoint(keep)])
    torch.manual_seed(12345)  # a fresh process starts from other weights and RNG states
    torch.cuda.manual_seed_all(12345)
    resumed = fit(config, splits, create_model(config), resume=checkpoint.load(states[1]))
    assert len(resumed.history) == 3
    for a, b in zip(full.history, resumed.history, strict=True):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    assert (full.test_predictions == resumed.test_predictions).all()


def _graphed_and_eager(mnist, model_name, **overrides):
    """The same fit twice on the whole subset (15 full batches of 64 and one of 40 an epoch),
    eagerly and with --cuda-graphs, with the Dropout modules off (a graph draws its random
    numbers its own way). Not for the vit: its attention dropout is no module."""
    results = {}
    for graphs in (False, True):
        config, splits = _setup(
            mnist, model_name, limit_train=None, limit_test=None, cuda_graphs=graphs, **overrides
        )
        torch.manual_seed(config.seed)
        model = create_model(config)
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        results[graphs] = fit(config, splits, model)
    return results[False], results[True]


@pytest.mark.parametrize(
    ("model_name", "overrides", "captures"),
    [
        # fp32 and a per-epoch schedule: the step is captured again each epoch, at its new lr.
        ("cnn", {"epochs": 3, "precision": "fp32", "scheduler": "cosine"}, 3),
        # bf16 casts without autocast's cache; the head trains on cached features.
        (
            "alexnet",
            {
                "epochs": 2,
                "precision": "bf16",
                "pretrained": False,
                "freeze": True,
                "image_size": 63,
            },
            1,
        ),
    ],
)
def test_a_graphed_fit_computes_the_eager_steps(
    mnist, deterministic, monkeypatch, model_name, overrides, captures
):
    """Replaying the captured step (after the eager warm-up, with the last smaller batch
    eager) gives the eager fit's losses, accuracies and predictions; the graph was captured
    (once, or once an epoch when the lr moves), so the match is not an eager fit's."""
    done = []
    capture = GraphedEpochs._capture
    monkeypatch.setattr(GraphedEpochs, "_capture", lambda self: done.append(capture(self)))
    eager, graphed = _graphed_and_eager(mnist, model_name, **overrides)
    assert len(done) == captures
    assert len(graphed.history) == len(eager.history) == overrides["epochs"]
    for a, b in zip(eager.history, graphed.history, strict=True):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr"):
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
    assert (eager.test_predictions == graphed.test_predictions).mean() > 0.99


def test_a_graphed_fit_with_dropout_learns_like_an_eager_one(mnist, monkeypatch):
    """With dropout (its own random draws in the graph), bf16, 8 epochs on the subset: past
    85 % as the eager fit is (92.6 % on the CPU), and within a few points of it; the graphed
    fit did replay a graph (captured once: no schedule moves its lr)."""
    done = []
    capture = GraphedEpochs._capture
    monkeypatch.setattr(GraphedEpochs, "_capture", lambda self: done.append(capture(self)))
    results = {}
    for graphs in (False, True):
        config, splits = _setup(
            mnist, limit_train=None, limit_test=None, epochs=8, precision="bf16",
            cuda_graphs=graphs,
        )  # fmt: skip
        torch.manual_seed(config.seed)
        results[graphs] = fit(config, splits, create_model(config))
    graphed, eager = results[True], results[False]
    assert len(done) == 1
    losses = [h["train_loss"] for h in graphed.history]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    assert graphed.final["test_accuracy"] > 0.85, graphed.final
    assert abs(graphed.final["test_accuracy"] - eager.final["test_accuracy"]) < 0.05


def test_each_replay_draws_new_dropout_masks(mnist):
    """One image, 64 times a batch, and a learning rate of 0: every step sees the same batch
    and the same weights, so its loss changes only with the dropout masks. The replays' losses
    differ: the graph draws new masks each time instead of replaying the captured ones."""
    config, splits = _setup(mnist, limit_train=None, epochs=1, precision="bf16", cuda_graphs=True)
    torch.manual_seed(config.seed)
    model = create_model(config).to("cuda")
    optimizer = build_optimizer(config, model)
    for group in optimizer.param_groups:
        group["lr"] = 0.0
    image = torch.as_tensor(splits.train_x[:1]).to("cuda")
    x = image.expand(64 * (WARMUP + 5), *image.shape[1:]).contiguous()
    y = torch.as_tensor(splits.train_y[:1]).to("cuda").expand(len(x)).contiguous()
    epochs = GraphedEpochs(model, x, y, batch_size=64, optimizer=optimizer, precision="bf16")
    losses = []
    epochs.train_epoch(
        generator=torch.Generator().manual_seed(0),
        on_batch=lambda batch: losses.append(float(batch.loss)),
    )
    assert epochs.captures == 1 and len(losses) == WARMUP + 5
    replayed = losses[WARMUP:]
    assert len(set(replayed)) > 1, replayed


def test_evaluation_waits_for_the_gpu_a_fixed_number_of_times_not_once_a_batch(mnist):
    """evaluate reads its results back at the end, not per batch: the host syncs that CUDA's
    sync debug mode reports are as many for 8 batches as for 1."""
    config, splits = _setup(mnist)
    device = torch.device("cuda")
    model = create_model(config).to(device)
    x = splits.test_x.to(device)  # the labels stay on the host, as fit passes them

    def syncs(batch_size: int) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                evaluate(model, x, splits.test_y, device=device, batch_size=batch_size)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchronizing" in str(w.message) for w in caught)

    syncs(32), syncs(256)  # first calls of each shape: cuDNN's choices, the allocator
    assert len(splits.test_y) == 256
    at_the_end = syncs(256)
    assert at_the_end > 0  # the mode does report: the results' reads back are syncs
    assert syncs(32) == at_the_end
