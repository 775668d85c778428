"""Building models: ``create_model(config)`` -> ``Preprocess`` + the bare network.

Every model takes float32 images ``(N, 1, 28, 28)`` in [0, 1] and returns logits ``(N, 10)``:
``create_model`` puts a ``Preprocess`` layer (resize, grey to RGB, normalise) in front of the
bare network, so the training loop, the evaluation and the logged MLflow model all see the same
plain pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .specs import BuildConfig, InputSpec, ModelSpec, get_spec


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
    return Classifier(Preprocess(spec.input, config.image_size), spec.build(config))


def split_model(model: Classifier, spec: ModelSpec) -> tuple[nn.Module, nn.Module] | None:
    """``(backbone, head)`` of a ``create_model`` result, the preprocessing inside the backbone:
    ``head(backbone(x)) == model(x)`` for pixels ``x``. None when ``spec`` declares no split."""
    split = spec.split_fn()
    if split is None:
        return None
    backbone, head = split(model.net)
    return nn.Sequential(model.preprocess, backbone), head


def count_params(model: nn.Module) -> tuple[int, int]:
    """(all parameters, trainable parameters)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return total, trainable
