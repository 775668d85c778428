"""Frozen-backbone feature cache: whether it can run, and in what it stores the features.

When a model's backbone is frozen and nothing in it behaves differently in training (no
dropout, no batch norm), its output for an image is the same every epoch: ``engine.fit``
computes it once per split (``engine.encode``) and trains the head on the stored features.

Contracts:
- ``plan_cache(config, model, splits)`` decides before anything is computed and says why in one
  line. It needs ``config.feature_cache`` not ``off``, a model whose spec declares a
  backbone/head split, a backbone with no trainable parameter and no train-mode-dependent
  layer, and features for every split that fit within ``MEMORY_FRACTION`` of the memory the
  device has available.
- Features are stored in half precision (``cache_dtype``): bf16 for bf16 runs (what the head
  sees on the plain path too), fp16 otherwise (finer steps than bf16).
- Training the head on cached features sees the same batches, in the same order, with the same
  dropout draws as the plain path: both give the same metrics up to the rounding of the
  features to half precision.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import nn

from .config import TrainConfig
from .data import Splits
from .models import get_spec, split_model

# The share of the device's available memory the cached features may take.
MEMORY_FRACTION = 0.5
_TRAIN_MODE_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


class FeatureCacheError(RuntimeError):
    """The feature cache was required (``feature_cache=on``) but cannot run, or failed."""


@dataclass(frozen=True)
class CachePlan:
    """Whether the cache runs (``enabled``), why (``reason``, one line), and its estimated size.

    ``backbone`` and ``head`` are the model's two parts when the model declares a split.
    """

    enabled: bool
    reason: str
    nbytes: int = 0
    backbone: nn.Module | None = None
    head: nn.Module | None = None

    @property
    def param(self) -> str:
        """The logged value of ``feature_cache``: the path that runs."""
        return "on" if self.enabled else "off"


def cache_dtype(precision: str) -> torch.dtype:
    """The half-precision dtype features are stored in for a run at ``precision`` (resolved)."""
    return torch.bfloat16 if precision == "bf16" else torch.float16


def available_memory(device: torch.device) -> int | None:
    """Bytes the device can still allocate (free GPU memory; available RAM otherwise), or None
    when the platform does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _blocker(backbone: nn.Module) -> str | None:
    """Why ``backbone``'s output could change between epochs, or None when it cannot."""
    trainable = sum(p.numel() for p in backbone.parameters() if p.requires_grad)
    if trainable:
        return f"the backbone is not frozen ({trainable:,} trainable parameters)"
    for name, module in backbone.named_modules():
        if isinstance(module, _TRAIN_MODE_LAYERS):
            return f"the backbone's {type(module).__name__} ({name}) depends on train mode"
    return None


def feature_shape(backbone: nn.Module) -> tuple[int, ...]:
    """The shape of the backbone's output for one image (one forward pass on zeros)."""
    device = next(backbone.parameters()).device
    was_training = backbone.training
    backbone.eval()
    with torch.inference_mode():
        shape = tuple(backbone(torch.zeros(1, 1, 28, 28, device=device)).shape[1:])
    backbone.train(was_training)
    return shape


def plan_cache(
    config: TrainConfig,
    model: nn.Module,
    splits: Splits,
    device: torch.device,
    *,
    budget_bytes: int | None = None,
) -> CachePlan:
    """Whether ``fit`` trains ``model`` (a ``create_model`` result) on cached backbone features.

    ``config.precision`` must be resolved. ``budget_bytes`` defaults to ``MEMORY_FRACTION`` of
    ``available_memory(device)``. Raises nothing: ``feature_cache=on`` callers check
    ``enabled``.
    """
    if config.feature_cache == "off":
        return CachePlan(False, "off as asked (--feature-cache off)")
    parts = split_model(model, get_spec(config.model))
    if parts is None:
        return CachePlan(False, f"{config.model} has no backbone to cache")
    backbone, head = parts
    blocker = _blocker(backbone)
    if blocker is not None:
        return CachePlan(False, blocker, backbone=backbone, head=head)
    n_images = sum(len(y) for y in (splits.train_y, splits.val_y, splits.test_y) if y is not None)
    per_image = math.prod(feature_shape(backbone)) * cache_dtype(config.precision).itemsize
    nbytes = n_images * per_image
    if budget_bytes is None:
        available = available_memory(device)
        budget_bytes = None if available is None else int(available * MEMORY_FRACTION)
    size = f"{nbytes / 2**20:,.0f} MiB for {n_images:,} images"
    if budget_bytes is not None and nbytes > budget_bytes:
        return CachePlan(
            False,
            f"the features would take {size}, over the budget of {budget_bytes / 2**20:,.0f} MiB "
            f"({MEMORY_FRACTION:.0%} of the {device.type} memory available)",
            nbytes,
            backbone,
            head,
        )
    dtype = str(cache_dtype(config.precision)).removeprefix("torch.")
    return CachePlan(True, f"backbone features computed once: {size} in {dtype}", nbytes, *parts)
