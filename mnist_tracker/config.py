"""The training config: one typed object, resolved from a model's recipe plus overrides.

Contracts:
- ``resolve_config(model, **overrides)`` returns a complete, validated ``TrainConfig``; any
  override left as ``None`` takes the value of the model's recipe: ``lab`` (the default, GUIDE.md
  section 2) or ``fast`` (the model's quicker recipe, for the models that declare one).
- ``TrainConfig.to_params()`` is what gets logged as MLflow params: every field, as strings that
  ``parse_param`` reads back to an equal value.
- Invalid values raise ``ConfigError`` whose message names the option and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from typing import Any

from .constants import (
    FEATURE_CACHE,
    MAX_EXPERIMENT_NAME_LENGTH,
    MAX_RUN_NAME_LENGTH,
    MAX_SEED,
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    SCHEDULERS,
)
from .errors import ConfigError
from .models import get_spec

__all__ = [
    "FEATURE_CACHE",
    "MAX_BATCH_SIZE",
    "MAX_EPOCHS",
    "OPTIMIZERS",
    "PRECISIONS",
    "RECIPES",
    "SCHEDULERS",
    "ConfigError",
    "TrainConfig",
    "fit_to_data",
    "format_param",
    "params_equal",
    "parse_param",
    "resolve_config",
    "validate",
    "validate_experiment_name",
]

# The largest batch accepted: 16 times the largest of any recipe or search space (512, the
# cnn's fast recipe). A training step holds every layer's activations for the backward pass,
# about 2 MB an image for the deep_cnn in fp32: some 16 GB at 8192, and a whole MNIST
# (60,000) as one batch is what got runs OOM-killed.
MAX_BATCH_SIZE = 8192
# The most epochs a new run accepts: 1,000 times the longest recipe (the lab's 10). A run of
# 10**20 epochs trained until stopped, and its cosine schedule never decayed (a hostile test's
# find). Not checked on resume: a run begun before the limit must still be able to finish.
MAX_EPOCHS = 10_000


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run computes.

    ``image_size`` is the side the network sees (28 for the MNIST-native models; the transfer
    models resize inside the model). ``limit_*`` of None means the whole split. ``recipe`` names
    the recipe the defaults came from. ``feature_cache``: ``auto`` caches a frozen backbone's
    features when it can (``features.plan_cache``), ``on`` requires it, ``off`` never; a run
    logs ``on`` or ``off``, the path that ran. ``cuda_graphs``: each full training batch
    replays one captured CUDA graph of the whole step (``training.graphs``); CUDA only, not
    with fp16 or a schedule that changes the learning rate every batch.
    """

    model: str
    epochs: int
    batch_size: int
    optimizer: str
    lr: float
    weight_decay: float
    scheduler: str
    image_size: int
    pretrained: bool
    freeze: bool
    # Every recipe's: bf16 autocast where the hardware runs it fast (native bf16 on the CPU,
    # bf16 on a CUDA GPU), else fp32. The lab's 10-epoch cnn ended at 99.35 % in bf16 against
    # 99.40 % in fp32 (seed 42, 2026-12-06), 1.25x faster to train.
    precision: str = "auto"
    seed: int = 42
    device: str = "auto"
    limit_train: int | None = None
    limit_test: int | None = None
    val_size: int = 0
    recipe: str = "lab"
    feature_cache: str = "auto"
    cuda_graphs: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # model kwargs, e.g. from a search

    def to_params(self) -> dict[str, str]:
        """Every field as an MLflow param string (``extra`` flattened as ``model.<key>``)."""
        params = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            params[f.name] = format_param(getattr(self, f.name))
        for key, value in sorted(self.extra.items()):
            params[f"model.{key}"] = format_param(value)
        return params

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A new, validated config with ``changes`` applied."""
        new = dataclasses.replace(self, **changes)
        validate(new)
        return new


def format_param(value: Any) -> str:
    """The string form logged to MLflow: lowercase booleans, empty for None, repr for floats."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def parse_param(name: str, text: str) -> Any:
    """Read a param string back into the type of ``TrainConfig.<name>`` (str if unknown)."""
    kinds = {f.name: f.type for f in fields(TrainConfig)}
    kind = str(kinds.get(name, "str"))
    if text == "" and "None" in kind:
        return None
    if kind.startswith("bool"):
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"{name}={text!r} is not a boolean; pass true or false")
    if kind.startswith("int"):
        return int(float(text))
    if kind.startswith("float"):
        return float(text)
    return text


def params_equal(name: str, a: str, b: str) -> bool:
    """Whether two param strings mean the same value (``1e-3`` equals ``0.001``)."""
    if a == b:
        return True
    try:
        va, vb = parse_param(name, a), parse_param(name, b)
    except ValueError:  # ConfigError included: not a number of that kind
        return False
    if isinstance(va, float) and isinstance(vb, float):
        return math.isclose(va, vb, rel_tol=1e-12)
    return va == vb


def validate(config: TrainConfig) -> None:
    """Raise ConfigError for the first invalid value."""
    spec = get_spec(config.model)
    if config.epochs < 1:
        raise ConfigError(
            f"epochs must be at least 1 (got {config.epochs}); pass --epochs 1 or more"
        )
    if config.batch_size < 1:
        raise ConfigError(
            f"batch size must be at least 1 (got {config.batch_size}); pass --batch-size 1 or more"
        )
    if config.batch_size > MAX_BATCH_SIZE:
        raise ConfigError(
            f"batch size {config.batch_size} is above the maximum of {MAX_BATCH_SIZE} (a batch "
            f"that large runs out of memory); pass --batch-size {MAX_BATCH_SIZE} or less"
        )
    if not (config.lr > 0 and math.isfinite(config.lr)):
        raise ConfigError(f"lr must be a positive number (got {config.lr}); pass e.g. --lr 1e-3")
    if not (config.weight_decay >= 0 and math.isfinite(config.weight_decay)):
        raise ConfigError(
            f"weight decay must be 0 or more (got {config.weight_decay}); pass --weight-decay 0"
        )
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {config.optimizer!r}; choose from {OPTIMIZERS}")
    if config.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {config.scheduler!r}; choose from {SCHEDULERS}")
    if config.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {config.precision!r}; choose from {PRECISIONS}")
    if config.recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {config.recipe!r}; choose from {RECIPES}")
    if config.feature_cache not in FEATURE_CACHE:
        raise ConfigError(
            f"unknown feature cache setting {config.feature_cache!r}; choose from {FEATURE_CACHE}"
        )
    _validate_image_size(config)
    if config.pretrained and not spec.has_pretrained:
        raise ConfigError(
            f"{config.model} has no pretrained weights; leave --pretrained out or use "
            "--no-pretrained"
        )
    if config.freeze and not spec.has_pretrained:
        raise ConfigError(f"{config.model} has no backbone to freeze; leave --freeze out")
    if config.feature_cache == "on" and (spec.split is None or not config.freeze):
        raise ConfigError(
            f"the feature cache needs a frozen backbone ({config.model} "
            f"{'has none' if spec.split is None else 'is not frozen'}); pass --feature-cache "
            "auto or off"
        )
    if config.cuda_graphs:
        _validate_cuda_graphs(config)
    for name in ("limit_train", "limit_test"):
        value = getattr(config, name)
        if value is not None and value < 1:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} must be at least 1 (got {value}); leave it out for all")
    if config.val_size < 0:
        raise ConfigError(f"val size must be 0 or more (got {config.val_size})")
    validate_seed(config.seed)
    if config.device not in ("auto", "cpu", "mps") and not config.device.startswith("cuda"):
        raise unknown_device(config.device)


def unknown_device(name: str) -> ConfigError:
    """The refusal of a device name: here for one that names no kind of device, and in
    ``runtime.select_device`` for one torch cannot parse (``cuda:-1``)."""
    return ConfigError(f"unknown device {name!r}; pass auto, cpu, cuda, cuda:N or mps")


def _validate_cuda_graphs(config: TrainConfig) -> None:
    """What a captured step cannot replay: the host decisions of fp16's GradScaler (it skips
    a step whose gradients overflowed), and a learning rate that changes between two batches
    (the optimizer's step is captured with the rate it had). The device is checked once it is
    resolved (``runtime.resolve_runtime``)."""
    if config.precision == "fp16":
        raise ConfigError(
            "--cuda-graphs cannot capture fp16's gradient scaler; pass --precision bf16 or fp32, "
            "or leave --cuda-graphs out"
        )
    if config.scheduler == "onecycle":
        raise ConfigError(
            "--cuda-graphs needs a learning rate that stays fixed through an epoch, and the "
            "onecycle schedule changes it every batch; pass --scheduler none or cosine, or "
            "leave --cuda-graphs out"
        )


def _validate_image_size(config: TrainConfig) -> None:
    """A resizable model's side within its bounds; any other model's its one input size."""
    spec = get_spec(config.model)
    if not spec.resizable:
        if config.image_size != spec.input.image_size:
            raise ConfigError(
                f"{config.model} takes {spec.input.image_size}x{spec.input.image_size} images "
                f"only (got --image-size {config.image_size}); leave --image-size out"
            )
        return
    if config.image_size < spec.min_image_size:
        raise ConfigError(
            f"image size {config.image_size} is below {config.model}'s minimum of "
            f"{spec.min_image_size}; pass --image-size {spec.min_image_size} or more"
        )
    if config.image_size > spec.max_image_size:
        raise ConfigError(
            f"image size {config.image_size} is above {config.model}'s maximum of "
            f"{spec.max_image_size}; pass --image-size {spec.max_image_size} or less "
            "(224, the default, is what its weights were trained at)"
        )


def fit_to_data(config: TrainConfig, train_size: int, test_size: int | None) -> TrainConfig:
    """``config`` as it runs on the splits it got: ``train_size`` training images (after the
    validation hold-out), ``test_size`` test images (None: the test set was not loaded).

    A ``limit_*`` above what the split holds becomes the count used, so the logged params say
    what ran (``--limit-train 1000000000`` on MNIST logs 60000). A batch larger than the
    training set raises ConfigError.
    """
    changes: dict[str, int] = {}
    if config.limit_train is not None and config.limit_train > train_size:
        changes["limit_train"] = train_size
    if test_size is not None and config.limit_test is not None and config.limit_test > test_size:
        changes["limit_test"] = test_size
    if config.batch_size > train_size:
        more = ", or a larger --limit-train" if config.limit_train == train_size else ""
        raise ConfigError(
            f"batch size {config.batch_size} is larger than the training set ({train_size} "
            f"images); pass --batch-size {train_size} or less{more}"
        )
    return config.replace(**changes) if changes else config


def validate_experiment_name(name: str, option: str = "--experiment") -> None:
    """Raise ConfigError for an experiment name no MLflow store takes: empty (or blank), or
    longer than ``MAX_EXPERIMENT_NAME_LENGTH``. ``option`` is where the name came from."""
    _validate_name(name, "experiment", MAX_EXPERIMENT_NAME_LENGTH, option)


def validate_run_name(name: str, option: str = "--run-name") -> None:
    """The same for a run name, at most ``MAX_RUN_NAME_LENGTH`` long (PostgreSQL and MySQL
    refuse a longer one once the run exists)."""
    _validate_name(name, "run", MAX_RUN_NAME_LENGTH, option)


def _validate_name(name: str, what: str, limit: int, option: str) -> None:
    if not name.strip():
        raise ConfigError(f"the {what} name is empty; pass {option} NAME, or leave it out")
    if len(name) > limit:
        raise ConfigError(
            f"the {what} name is {len(name)} characters long, more than the {limit} an MLflow "
            f"store holds; pass a shorter {option}"
        )


def validate_seed(seed: int, option: str = "--seed") -> None:
    """Raise ConfigError for a seed outside ``0..MAX_SEED``: PyTorch's CPU generator would
    take its low 32 bits and repeat another seed's draws (or, past 64 bits, fail mid-run)."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(
            f"seed {seed} is outside 0..{MAX_SEED} (PyTorch seeds with 32 bits: it would "
            f"repeat the run of a seed in that range); pass e.g. {option} 42"
        )


def resolve_config(model: str, recipe: str | None = None, **overrides: Any) -> TrainConfig:
    """The model's recipe (``lab`` unless ``recipe`` says ``fast``) with every non-None override
    applied, validated.

    Unknown override names raise TypeError (a programming error, not user input); a model
    without a fast recipe raises ConfigError.
    """
    spec = get_spec(model)  # raises ConfigError for an unknown model
    recipe = recipe or "lab"
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; choose from {RECIPES}")
    if recipe == "fast" and not spec.fast_recipe:
        raise ConfigError(
            f"{model} has no fast recipe; leave --recipe out (the lab's) or use a model that has "
            "one (`mnist-tracker models` lists them)"
        )
    values: dict[str, Any] = {
        "model": model,
        "pretrained": spec.has_pretrained,
        "freeze": spec.has_pretrained,
        "image_size": spec.input.image_size,
        "batch_size": 64,
        "scheduler": "none",
        **spec.recipe,
        **(spec.fast_recipe if recipe == "fast" else {}),
        "recipe": recipe,
    }
    known = {f.name for f in fields(TrainConfig)}
    for key, value in overrides.items():
        if key not in known:
            raise TypeError(f"resolve_config got an unknown field {key!r}")
        if value is not None:
            values[key] = value
    if overrides.get("freeze") is None:
        # Freezing only makes sense for pretrained features: random ones stay trainable.
        values["freeze"] = bool(values["pretrained"])
    config = TrainConfig(**values)
    validate(config)
    if config.epochs > MAX_EPOCHS:  # a new run's only: a resumed one keeps what it began with
        raise ConfigError(
            f"epochs {config.epochs} is above the maximum of {MAX_EPOCHS} (the lab's recipe "
            f"takes 10); pass --epochs {MAX_EPOCHS} or less"
        )
    return config
