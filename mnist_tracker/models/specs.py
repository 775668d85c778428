"""Model specs: what each registered model is, without building one (no torch needed).

``register`` / ``get_spec`` / ``list_specs`` hold the registry; ``catalog.py`` registers the
lab's five models. Listing models, resolving a config and validating it therefore cost no
torch import; ``registry.create_model`` builds networks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..errors import ConfigError

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class BuildConfig(Protocol):
    """What a builder reads of the training config (``config.TrainConfig`` satisfies it; the
    models layer sits below config and does not import it)."""

    model: str
    image_size: int
    pretrained: bool
    freeze: bool
    extra: dict[str, Any]


@dataclass(frozen=True)
class InputSpec:
    """What the bare network expects: side, channels, normalisation."""

    image_size: int = 28
    channels: int = 1
    mean: tuple[float, ...] = MNIST_MEAN
    std: tuple[float, ...] = MNIST_STD


@dataclass(frozen=True)
class ModelSpec:
    """A registered model.

    ``builder(config)`` returns the bare network for preprocessed input; it may be given as
    ``"package.module:function"``, imported when a model is first built (``split`` too).
    ``recipe`` holds the lab's defaults (optimizer, lr, weight_decay, epochs, scheduler, ...);
    ``fast_recipe``, when not empty, the changes to it that make ``--recipe fast``.
    ``n_params`` and ``n_trainable`` are the GUIDE's counts for the default config, checked by
    the tests. ``channels_last``: a conv net that trains faster in that memory format.
    ``split(net)``, when given, returns ``(backbone, head)``: modules of ``net`` (shared, not
    copies) with ``head(backbone(x))`` equal to ``net(x)``, so a frozen backbone's output can
    be cached. ``min_image_size`` / ``max_image_size`` bound ``--image-size`` of a
    ``resizable`` model.

    ``search_space`` maps a name to ``("float", low, high, log)``, ``("int", low, high)`` or
    ``("categorical", choices)``. Names that are TrainConfig fields set the config; the
    others are keyword arguments of the builder (``config.extra``).
    """

    name: str
    builder: Callable[[BuildConfig], Any] | str
    input: InputSpec
    recipe: dict[str, Any]
    description: str
    n_params: int
    n_trainable: int
    min_image_size: int = 28
    # The largest side a resizable model is fed. The pretrained weights were trained at 224
    # and a 28x28 digit has nothing more to show at 18x; at 512 a VGG16 forward pass already
    # costs about 5x the 15 GFLOP an image of 224, and its first feature map alone is 64 MB
    # an image (64 x 512 x 512 float32). Far above that, as at 10000, the first batch cannot
    # even be allocated.
    max_image_size: int = 512
    resizable: bool = False
    has_pretrained: bool = False
    search_space: dict[str, Any] = field(default_factory=dict)
    fast_recipe: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False
    split: Callable[[Any], tuple[Any, Any]] | str | None = None

    def build(self, config: BuildConfig):
        """The bare network for ``config`` (the builder imported when first needed)."""
        return _resolve(self.builder)(config)

    def split_fn(self) -> Callable[[Any], tuple[Any, Any]] | None:
        return None if self.split is None else _resolve(self.split)


def _resolve(target: Callable | str) -> Callable:
    """A callable, or ``"package.module:name"`` imported on first use (keeps torch out of
    start-up: listing and validating models needs none)."""
    if callable(target):
        return target
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str) -> ModelSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(_REGISTRY)}") from None


def list_specs() -> list[ModelSpec]:
    return list(_REGISTRY.values())
