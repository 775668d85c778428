"""Recipes, validation and the param round-trip."""

from __future__ import annotations

import pytest

from mnist_tracker.config import (
    MAX_BATCH_SIZE,
    ConfigError,
    fit_to_data,
    params_equal,
    parse_param,
    resolve_config,
    validate_experiment_name,
)

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
        ("alexnet", {"image_size": 10000}, "above alexnet's maximum of 512"),
        ("vgg16", {"image_size": 513}, "above vgg16's maximum of 512"),
        ("cnn", {"batch_size": MAX_BATCH_SIZE + 1}, "above the maximum of 8192"),
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
    # Every recipe's precision is auto: bf16 where the hardware runs it fast.
    assert (lab.recipe, lab.precision, lab.batch_size, lab.scheduler) == ("lab", "auto", 64, "none")
    fast = resolve_config("cnn", recipe="fast")
    assert fast.recipe == "fast"
    assert (fast.batch_size, fast.scheduler, fast.precision) == (256, "onecycle", "auto")
    assert (fast.epochs, fast.lr, fast.optimizer) == (3, 1e-2, "adam")
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
        ("cnn", {"cuda_graphs": True, "precision": "fp16"}, "--cuda-graphs cannot capture fp16"),
        ("cnn", {"cuda_graphs": True, "recipe": "fast"}, "onecycle schedule changes it every"),
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


def test_the_bounds_themselves_are_accepted():
    assert resolve_config("alexnet", image_size=512).image_size == 512
    assert resolve_config("cnn", batch_size=MAX_BATCH_SIZE).batch_size == MAX_BATCH_SIZE
    validate_experiment_name("x" * 256)


def test_limits_above_the_data_become_the_counts_that_ran():
    """``--limit-train 1000000000`` on 60,000 images ran 60,000: that is what gets logged."""
    config = resolve_config("cnn", limit_train=1_000_000_000, limit_test=20_000)
    fitted = fit_to_data(config, train_size=60_000, test_size=10_000)
    assert (fitted.limit_train, fitted.limit_test) == (60_000, 10_000)
    assert fitted.to_params()["limit_train"] == "60000"
    unchanged = fitted.replace(limit_train=config.limit_train, limit_test=config.limit_test)
    assert unchanged == config  # nothing else changed
    small = resolve_config("cnn", limit_train=64)
    assert fit_to_data(small, 64, 500) is small  # limits within the data stay as given
    assert fit_to_data(config, 60_000, None).limit_test == 20_000  # no test set loaded


@pytest.mark.parametrize(
    ("limit", "hint"), [(64, "pass --batch-size 64 or less, or a larger --limit-train"), (None, "")]
)
def test_a_batch_larger_than_the_training_set_is_refused(limit, hint):
    config = resolve_config("cnn", batch_size=128, limit_train=limit)
    with pytest.raises(ConfigError, match="batch size 128 is larger than the training set") as err:
        fit_to_data(config, train_size=64, test_size=None)
    assert hint in str(err.value)
    assert ("--limit-train" in str(err.value)) == bool(limit)


@pytest.mark.fast
def test_the_epoch_limit_is_a_new_run_s_and_a_resumed_run_keeps_its_own():
    """A new run of more than MAX_EPOCHS is refused; a run begun before the limit existed
    resumes from its checkpoint's config (the review of stop 36: it was stuck, refused both
    with its own epochs and with --epochs, which a resume does not take)."""
    from mnist_tracker.config import MAX_EPOCHS, ConfigError, TrainConfig

    with pytest.raises(ConfigError, match=f"pass --epochs {MAX_EPOCHS} or less"):
        resolve_config("cnn", epochs=MAX_EPOCHS + 1)
    saved = resolve_config("cnn").to_dict() | {"epochs": 2 * MAX_EPOCHS}
    assert TrainConfig(**saved).replace().epochs == 2 * MAX_EPOCHS  # as resume rebuilds it
