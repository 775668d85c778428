"""The registry: name -> builder, input spec, recipe, parameter counts.

Every model takes float32 images ``(N, 1, 28, 28)`` in [0, 1] and returns logits ``(N, 10)``:
``create_model`` puts a ``Preprocess`` layer (resize, grey to RGB, normalise) in front of the
bare network, so the training loop, the evaluation and the logged MLflow model all see the same
plain pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

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

    ``builder(config)`` returns the bare network for preprocessed input. ``recipe`` holds the
    lab's defaults (optimizer, lr, weight_decay, epochs, scheduler, ...); ``fast_recipe``, when
    not empty, the changes to it that make ``--recipe fast``. ``n_params`` and ``n_trainable``
    are the GUIDE's counts for the default config, checked by the tests. ``channels_last``:
    a conv net that trains faster in that memory format. ``split(net)``, when given, returns
    ``(backbone, head)``: modules of ``net`` (shared, not copies) with ``head(backbone(x))``
    equal to ``net(x)``, so a frozen backbone's output can be cached.

    ``search_space`` maps a name to ``("float", low, high, log)``, ``("int", low, high)`` or
    ``("categorical", choices)``. Names that are TrainConfig fields set the config; the
    others are keyword arguments of the builder (``config.extra``).
    """

    name: str
    builder: Callable[[BuildConfig], nn.Module]
    input: InputSpec
    recipe: dict[str, Any]
    description: str
    n_params: int
    n_trainable: int
    min_image_size: int = 28
    resizable: bool = False
    has_pretrained: bool = False
    search_space: dict[str, Any] = field(default_factory=dict)
    fast_recipe: dict[str, Any] = field(default_factory=dict)
    channels_last: bool = False
    split: Callable[[nn.Module], tuple[nn.Module, nn.Module]] | None = None


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


class Preprocess(nn.Module):
    """[0, 1] grey ``(N, 1, 28, 28)`` -> the network's input: resized, channels, normalised."""

    def __init__(self, spec: InputSpec, image_size: int):
        super().__init__()
        self.image_size = image_size
        self.channels = spec.channels
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.image_size:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        if self.channels != x.shape[1]:
            x = x.expand(-1, self.channels, -1, -1)
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``Preprocess`` followed by the bare network; what training and MLflow both use."""

    def __init__(self, preprocess: Preprocess, net: nn.Module):
        super().__init__()
        self.preprocess = preprocess
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.preprocess(x))


def create_model(config: BuildConfig) -> Classifier:
    """Build the model a config names, with pretrained weights and freezing as configured."""
    spec = get_spec(config.model)
    return Classifier(Preprocess(spec.input, config.image_size), spec.builder(config))


def split_model(model: Classifier, spec: ModelSpec) -> tuple[nn.Module, nn.Module] | None:
    """``(backbone, head)`` of a ``create_model`` result, the preprocessing inside the backbone:
    ``head(backbone(x)) == model(x)`` for pixels ``x``. None when ``spec`` declares no split."""
    if spec.split is None:
        return None
    backbone, head = spec.split(model.net)
    return nn.Sequential(model.preprocess, backbone), head


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
