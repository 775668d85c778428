"""Recipes, validation and the param round-trip."""

from __future__ import annotations

import pytest

from mnist_tracker.config import ConfigError, params_equal, parse_param, resolve_config

pytestmark = pytest.mark.fast


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "cnn",
            dict(
                optimizer="adam",
                lr=1e-3,
                weight_decay=1e-5,
                epochs=10,
                scheduler="none",
                image_size=28,
                pretrained=False,
                freeze=False,
            ),
        ),
        ("deep_cnn", dict(optimizer="adam", lr=1e-3, weight_decay=1e-5, epochs=10)),
        (
            "vgg16",
            dict(optimizer="adam", lr=1e-4, epochs=5, image_size=224, pretrained=True, freeze=True),
        ),
        (
            "alexnet",
            dict(optimizer="adam", lr=1e-4, epochs=5, image_size=224, pretrained=True, freeze=True),
        ),
        ("vit", dict(optimizer="adamw", lr=1e-3, weight_decay=0.05, epochs=10, scheduler="cosine")),
    ],
)
def test_lab_recipes(name, expected):
    config = resolve_config(name)
    assert config.batch_size == 64
    for key, value in expected.items():
        assert getattr(config, key) == value, key


def test_overrides_and_unfrozen_random_features():
    config = resolve_config("alexnet", pretrained=False, epochs=2, lr=3e-4)
    assert (config.epochs, config.lr, config.pretrained, config.freeze) == (2, 3e-4, False, False)
    assert resolve_config("alexnet", pretrained=False, freeze=True).freeze is True


@pytest.mark.parametrize(
    ("model", "overrides", "message"),
    [
        ("resnet", {}, "unknown model 'resnet'"),
        ("cnn", {"epochs": 0}, "epochs must be at least 1"),
        ("cnn", {"lr": 0.0}, "lr must be a positive"),
        ("cnn", {"lr": -1.0}, "lr must be a positive"),
        ("cnn", {"batch_size": 0}, "batch size must be at least 1"),
        ("vgg16", {"image_size": 31}, "below vgg16's minimum of 32"),
        ("alexnet", {"image_size": 62}, "below alexnet's minimum of 63"),
        ("cnn", {"image_size": 64}, "takes 28x28 images only"),
        ("cnn", {"limit_train": 0}, "--limit-train must be at least 1"),
        ("cnn", {"limit_test": -5}, "--limit-test must be at least 1"),
        ("cnn", {"device": "tpu"}, "unknown device"),
    ],
)
def test_invalid_values_name_the_fix(model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(model, **overrides)


def test_params_round_trip():
    config = resolve_config("vgg16", image_size=32, limit_train=100)
    params = config.to_params()
    assert params["pretrained"] == "true" and params["limit_test"] == ""
    assert params["lr"] == "0.0001" and params["image_size"] == "32"
    for key, text in params.items():
        assert parse_param(key, text) == getattr(config, key), key


def test_param_equivalence():
    assert params_equal("lr", "1e-3", "0.001")
    assert params_equal("pretrained", "False", "false")
    assert params_equal("batch_size", "64.0", "64")
    assert not params_equal("lr", "1e-3", "1e-4")
    assert not params_equal("device", "auto", "cpu")


def test_lab_recipe_is_the_default_and_fast_recipe_changes_the_cnn():
    lab = resolve_config("cnn")
    assert (lab.recipe, lab.precision, lab.batch_size, lab.scheduler) == ("lab", "fp32", 64, "none")
    fast = resolve_config("cnn", recipe="fast")
    assert fast.recipe == "fast"
    assert (fast.batch_size, fast.scheduler, fast.precision) == (512, "onecycle", "auto")
    assert (fast.epochs, fast.lr, fast.optimizer) == (4, 1e-2, "adam")
    assert fast.extra == {"dropout_conv": 0.1, "dropout_fc": 0.25}
    # An explicit option still wins over the recipe it starts from.
    assert resolve_config("cnn", recipe="fast", batch_size=128, epochs=2).batch_size == 128
    assert resolve_config("cnn", recipe="lab") == lab


@pytest.mark.parametrize(
    ("model", "overrides", "message"),
    [
        ("vit", {"recipe": "fast"}, "vit has no fast recipe"),
        ("cnn", {"recipe": "quick"}, "unknown recipe 'quick'"),
        ("cnn", {"feature_cache": "maybe"}, "unknown feature cache setting 'maybe'"),
        ("cnn", {"feature_cache": "on"}, r"needs a frozen backbone \(cnn has none\)"),
        ("alexnet", {"pretrained": False, "feature_cache": "on"}, "alexnet is not frozen"),
    ],
)
def test_recipe_and_feature_cache_values_are_checked(model, overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_config(model, **overrides)


def test_recipe_and_feature_cache_are_logged_params():
    config = resolve_config("cnn", recipe="fast", feature_cache="off")
    params = config.to_params()
    assert params["recipe"] == "fast" and params["feature_cache"] == "off"
    assert params["model.dropout_conv"] == "0.1" and params["model.dropout_fc"] == "0.25"
    for key, text in params.items():
        if not key.startswith("model."):
            assert parse_param(key, text) == getattr(config, key), key
