"""The frozen-backbone feature cache: when it runs, what it stores, and that it changes nothing.

Equivalence: the same seed, one epoch, once on pixels and once on cached features. alexnet
runs with random frozen features (no weights download here): in fp32 (features stored in fp16)
the two paths must be close. A small stand-in with the same structure (conv features, adaptive
pool, dropout MLP head, the same split) shows that in bf16 they are bit-identical, and that
the accuracies of a head that does learn agree (random AlexNet features carry almost no
information about the digit).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from mnist_tracker import errors
from mnist_tracker.config import ConfigError, resolve_config
from mnist_tracker.models import InputSpec, ModelSpec, create_model, specs
from mnist_tracker.models.transfer import split_features
from mnist_tracker.serving import import_mlflow_pytorch
from mnist_tracker.training import OnCheckpoint, checkpoint, features, fit, loop
from mnist_tracker.workflows.data import prepare_data
from mnist_tracker.workflows.train import TrainOptions, train

from .conftest import SUBSET

CPU = torch.device("cpu")
# alexnet at its smallest size, 128 training images in batches of 16: 8 steps, seconds.
SMALL = dict(
    pretrained=False,
    freeze=True,
    image_size=63,
    epochs=1,
    batch_size=16,
    limit_train=128,
    limit_test=64,
    val_size=32,
    device="cpu",
    precision="fp32",  # fit takes a resolved config; auto would differ between CPUs
)
METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss")
METRICS += ("test_accuracy", "test_f1_macro")


def _splits(config):
    return prepare_data(config, SUBSET)


def _fit(model="alexnet", **overrides):
    config = resolve_config(model, **(SMALL | overrides))
    torch.manual_seed(config.seed)
    net = create_model(config)
    return fit(config, _splits(config), net), net, config


def _head(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.net.classifier.parameters()])


@pytest.mark.slow
def test_bf16_cached_path_is_bit_identical_to_the_plain_path(stand_in):
    """bf16 runs store what the plain path's head receives: the same numbers, exactly. On the
    stand-in (alexnet's split and head layout, at 32 px so that the resize runs in both paths):
    alexnet's convolutions in bf16 take over a minute on a CPU without native bf16 and prove
    nothing more about the cache."""
    plain, plain_model, _ = _fit(stand_in, precision="bf16", feature_cache="off", image_size=32)
    cached, cached_model, _ = _fit(stand_in, precision="bf16", feature_cache="on", image_size=32)
    assert (plain.feature_cache, cached.feature_cache) == ("off", "on")
    assert cached.final["feature_cache_time_s"] > 0 and "feature_cache_time_s" not in plain.final
    for key in METRICS:
        assert cached.final[key] == plain.final[key], key
    np.testing.assert_array_equal(cached.test_predictions, plain.test_predictions)
    assert torch.equal(_head(cached_model), _head(plain_model))


@pytest.mark.slow
def test_fp32_cached_path_matches_the_plain_path():
    """fp32 runs store features in fp16: losses within 1e-3 relative, and the trained head
    within 25 % of how far training moved it (Adam magnifies tiny differences in the smallest
    gradients; measured: about 18 %)."""
    plain, plain_model, config = _fit(precision="fp32", feature_cache="off")
    cached, cached_model, _ = _fit(precision="fp32", feature_cache="on")
    for key in ("train_loss", "val_loss", "test_loss"):
        assert cached.final[key] == pytest.approx(plain.final[key], rel=1e-3), key
    torch.manual_seed(config.seed)
    start = _head(create_model(config))
    moved = (_head(plain_model) - start).norm()
    assert moved > 0
    assert (_head(cached_model) - _head(plain_model)).norm() <= 0.25 * moved


class _StandIn(nn.Module):
    """VGG / AlexNet's structure at MNIST scale: conv features, adaptive pool, a dropout MLP
    head. Random frozen features of this size do tell digits apart."""

    def __init__(self, freeze: bool):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True), nn.Dropout(0.5), nn.Linear(128, 10)
        )
        self.features.requires_grad_(not freeze)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.fixture
def stand_in(monkeypatch) -> str:
    """``stand_in`` registered for this test only, split like vgg16 / alexnet."""
    spec = ModelSpec(
        name="stand_in",
        builder=lambda config: _StandIn(config.freeze),
        input=InputSpec(channels=3),
        recipe={"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "epochs": 1},
        description="test stand-in for the transfer models",
        n_params=0,
        n_trainable=0,
        resizable=True,
        has_pretrained=True,
        channels_last=True,
        split=split_features,
    )
    monkeypatch.setitem(specs._REGISTRY, spec.name, spec)
    return spec.name


@pytest.mark.slow
def test_a_head_that_learns_scores_the_same_on_both_paths(stand_in):
    """fp32, 512 images, 32 steps: the head learns, and both paths agree on every metric within
    one test image (accuracy, F1) and 1e-3 relative (losses)."""
    runs = {
        path: _fit(stand_in, precision="fp32", feature_cache=path, image_size=28, limit_train=512)[
            0
        ]
        for path in ("off", "on")
    }
    plain, cached = runs["off"], runs["on"]
    assert cached.feature_cache == "on"
    assert plain.final["test_accuracy"] >= 0.4, "the head must learn (chance: 0.1)"
    for key in ("train_loss", "val_loss", "test_loss"):
        assert cached.final[key] == pytest.approx(plain.final[key], rel=1e-3), key
    for key in ("train_accuracy", "val_accuracy", "test_accuracy", "test_f1_macro"):
        assert cached.final[key] == pytest.approx(plain.final[key], abs=1 / 64 + 1e-9), key


@pytest.mark.slow
def test_the_logged_model_is_the_whole_classifier(stand_in):
    """After training on cached features, the model on pixels scores what the run reported."""
    cached, model, config = _fit(stand_in, feature_cache="on", image_size=28)
    splits = _splits(config)
    on_pixels = loop.evaluate(model, splits.test_x, splits.test_y, device=CPU)
    assert on_pixels.accuracy == pytest.approx(cached.final["test_accuracy"], abs=1 / 64 + 1e-9)
    assert on_pixels.loss == pytest.approx(cached.final["test_loss"], rel=1e-3)
    assert all(p.is_contiguous() for p in model.parameters())


def test_plan_says_why_not():
    config = resolve_config("alexnet", **SMALL)
    splits = _splits(config)
    model = create_model(config)
    plan = features.plan_cache(config, model, splits, CPU)
    assert plan.enabled and plan.param == "on"
    # 256 channels x 1 x 1 at 63 px, fp16, for train + val + test.
    assert plan.nbytes == (128 + 32 + 64) * 256 * 2
    assert "in float16" in plan.reason

    over = features.plan_cache(config, model, splits, CPU, budget_bytes=plan.nbytes - 1)
    assert not over.enabled and over.param == "off" and "over the budget" in over.reason

    off = features.plan_cache(config.replace(feature_cache="off"), model, splits, CPU)
    assert not off.enabled and "--feature-cache off" in off.reason

    vit = resolve_config("vit", limit_train=8)
    assert "no backbone" in features.plan_cache(vit, create_model(vit), splits, CPU).reason

    partly = resolve_config("alexnet", **SMALL, extra={"unfreeze_blocks": 1})
    plan = features.plan_cache(partly, create_model(partly), splits, CPU)
    assert not plan.enabled and "not frozen" in plan.reason

    bf16 = config.replace(precision="bf16")
    assert "in bfloat16" in features.plan_cache(bf16, model, splits, CPU).reason


def test_the_default_budget_leaves_room_for_the_weights_still_to_come(monkeypatch):
    """The plan is made before the model moves to the device: the budget is half of what the
    device will have left with the model's weights on it, not half of what it has now."""
    monkeypatch.setattr(features, "available_memory", lambda device: 10_000_000)
    meta = torch.device("meta")
    layer = nn.Linear(1000, 1000)  # 4,004,000 bytes in fp32
    assert features.default_budget(layer, CPU) == 5_000_000  # already there
    assert features.default_budget(layer, meta) == (10_000_000 - 4_004_000) // 2
    assert features.default_budget(layer.to(meta), meta) == 5_000_000
    assert features.default_budget(nn.Linear(2000, 2000), meta) == 0  # it would not fit at all

    config = resolve_config("alexnet", **SMALL)
    splits, model = _splits(config), create_model(config)
    need = features.plan_cache(config, model, splits, CPU).nbytes
    weights = sum(t.nbytes for t in [*model.parameters(), *model.buffers()])
    room = weights + 2 * need
    monkeypatch.setattr(features, "available_memory", lambda device: room)
    assert features.plan_cache(config, model, splits, meta).enabled
    monkeypatch.setattr(features, "available_memory", lambda device: room - 2)
    over = features.plan_cache(config, model, splits, meta)
    assert not over.enabled and "left with the model on it" in over.reason


def test_backbone_with_batch_norm_is_not_cached():
    backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)).requires_grad_(False)
    assert "BatchNorm2d" in features._blocker(backbone)
    assert features._blocker(nn.Sequential(nn.Conv2d(1, 4, 3))) is not None  # trainable
    assert features._blocker(nn.Sequential(nn.Conv2d(1, 4, 3)).requires_grad_(False)) is None


@pytest.mark.slow
def test_fit_falls_back_when_the_features_do_not_fit(monkeypatch):
    monkeypatch.setattr(features, "MEMORY_FRACTION", 1e-15)
    result, _, _ = _fit(limit_train=32, limit_test=16, val_size=0, epochs=1)
    assert result.feature_cache == "off"
    with pytest.raises(ConfigError, match="over the budget"):
        _fit(limit_train=32, limit_test=16, val_size=0, feature_cache="on")


def test_fp16_storage_refuses_to_overflow():
    class Huge(nn.Module):
        def forward(self, x):
            return x * 1e6 + 1e5

    x = torch.full((3, 28, 28), 255, dtype=torch.uint8)
    with pytest.raises(errors.FeatureCacheError, match="fp16 range"):
        features.encode(Huge(), x, device=CPU, precision="fp32", batch_size=2)
    stored = features.encode(Huge(), x, device=CPU, precision="bf16", batch_size=2)
    assert stored.dtype == torch.bfloat16 and stored.shape == (3, 1, 28, 28)


@pytest.mark.slow
def test_tracked_run_logs_the_cache_and_a_model_that_takes_pixels(
    stand_in, sqlite_uri, experiment_name
):
    """On the stand-in at 32 px (the exported model resizes, as alexnet's does): an alexnet run
    would export and store a ~230 MB model for the same proof (alexnet's own export, without
    the cache, is tested in test_tracking.py)."""
    config = resolve_config(stand_in, **(SMALL | {"val_size": 0, "image_size": 32}))
    outcome = train(config, TrainOptions(data_dir=SUBSET, experiment=experiment_name))
    run = MlflowClient().get_run(outcome.run_id)
    assert run.data.params["feature_cache"] == "on"
    assert run.data.params["recipe"] == "lab"
    assert "computed once" in run.data.tags["feature_cache_reason"]
    assert run.data.metrics["feature_cache_time_s"] > 0

    network_uri = f"runs:/{outcome.run_id}/{stand_in}/artifacts/network"
    network = import_mlflow_pytorch().load_model(network_uri)
    images = np.random.default_rng(0).random((5, 1, 28, 28), dtype=np.float32)
    with torch.inference_mode():
        expected = outcome.model.to("cpu").eval()(torch.from_numpy(images)).numpy()
        logits = network(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-3, atol=1e-4)


def test_required_cache_that_cannot_run_is_a_config_error(monkeypatch):
    monkeypatch.setattr(features, "MEMORY_FRACTION", 1e-15)
    config = resolve_config("alexnet", **(SMALL | {"feature_cache": "on"}))
    with pytest.raises(ConfigError, match="pass --feature-cache auto or off"):
        features.plan_cache(config, create_model(config), _splits(config), CPU)


@pytest.mark.slow
def test_a_resumed_cached_fit_equals_the_uninterrupted_one(stand_in, tmp_path):
    """Resuming recomputes the features from the restored backbone, not from the fresh model's
    (here a different random one): the run continues exactly as if never stopped."""
    config = resolve_config(
        stand_in, **(SMALL | {"image_size": 28, "epochs": 2, "feature_cache": "on"})
    )
    splits = _splits(config)
    states = {}

    def keep(state):
        states[state["epoch"]] = checkpoint.save(state, tmp_path / f"e{state['epoch']}.pt")

    torch.manual_seed(config.seed)
    full = fit(config, splits, create_model(config), [OnCheckpoint(keep)])
    torch.manual_seed(12345)  # another backbone: the checkpoint must replace it
    resumed = fit(config, splits, create_model(config), resume=checkpoint.load(states[1]))
    assert (full.feature_cache, resumed.feature_cache) == ("on", "on")
    for key in METRICS:
        assert resumed.final[key] == pytest.approx(full.final[key], abs=1e-6), key
    assert (full.test_predictions == resumed.test_predictions).all()
