"""Frozen-backbone feature cache: whether it can run, and in what it stores the features.

When a model's backbone is frozen and nothing in it behaves differently in training (no
dropout, no batch norm), its output for an image is the same every epoch: ``fit``
computes it once per split (``encode``) and trains the head on the stored features.

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
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import TrainConfig
from ..data import Splits, to_input
from ..errors import ConfigError, FeatureCacheError
from ..models import get_spec, split_model
from .loop import eval_batch_size
from .runtime import autocast, compute_dtype, sync

# The share of the device's available memory the cached features may take.
MEMORY_FRACTION = 0.5
_TRAIN_MODE_LAYERS = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm)


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
    """The half-precision dtype features are stored in for a run at ``precision`` (resolved):
    the run's own for bf16 and fp16, fp16 for fp32 runs."""
    return torch.float16 if precision == "fp32" else compute_dtype(precision)


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


def default_budget(model: nn.Module, device: torch.device) -> int | None:
    """``MEMORY_FRACTION`` of what ``device`` will have left once ``model`` is on it: its
    available memory less the bytes of the model's weights and buffers not there yet (the
    plan is made before ``fit`` moves the model; vgg16's are 0.5 GiB). None when the platform
    does not say."""
    available = available_memory(device)
    if available is None:
        return None
    tensors = [*model.parameters(), *model.buffers()]
    arriving = sum(t.nbytes for t in tensors if not _on(t, device))
    return max(0, int((available - arriving) * MEMORY_FRACTION))


def _on(tensor: torch.Tensor, device: torch.device) -> bool:
    """Whether ``tensor`` is on ``device``; a device without an index ("cuda") means any."""
    return tensor.device.type == device.type and device.index in (None, tensor.device.index)


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

    ``config.precision`` must be resolved. ``budget_bytes`` defaults to ``default_budget``:
    ``MEMORY_FRACTION`` of what the device has left with the model on it. The one place that
    enforces ``feature_cache=on``: when the cache was required and cannot run, raises
    ConfigError saying why.
    """
    plan = _plan(config, model, splits, device, budget_bytes)
    if config.feature_cache == "on" and not plan.enabled:
        raise ConfigError(
            f"the feature cache cannot run: {plan.reason}; pass --feature-cache auto or off"
        )
    return plan


def _plan(config, model, splits, device, budget_bytes) -> CachePlan:
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
        budget_bytes = default_budget(model, device)
    size = f"{nbytes / 2**20:,.0f} MiB for {n_images:,} images"
    if budget_bytes is not None and nbytes > budget_bytes:
        return CachePlan(
            False,
            f"the features would take {size}, over the budget of {budget_bytes / 2**20:,.0f} MiB "
            f"({MEMORY_FRACTION:.0%} of the {device.type} memory left with the model on it)",
            nbytes,
            backbone,
            head,
        )
    dtype = str(cache_dtype(config.precision)).removeprefix("torch.")
    return CachePlan(True, f"backbone features computed once: {size} in {dtype}", nbytes, *parts)


@torch.inference_mode()
def encode(
    backbone: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device,
    precision: str,
    batch_size: int,
) -> torch.Tensor:
    """The backbone's output for images ``x`` (uint8, (N, 28, 28)), on ``device`` in
    ``cache_dtype(precision)``, in the order of ``x``.

    Raises FeatureCacheError (a RunFailed) when fp16 storage would overflow (bf16 has fp32's
    range).
    """
    backbone.eval()
    dtype = cache_dtype(precision)
    out: torch.Tensor | None = None
    for start in range(0, len(x), batch_size):
        xb = to_input(x[start : start + batch_size].to(device))
        with autocast(device, precision):
            chunk = backbone(xb).to(dtype)
        if dtype == torch.float16 and not torch.isfinite(chunk).all():
            raise FeatureCacheError(
                "backbone features exceed the fp16 range; pass --precision bf16 or "
                "--feature-cache off"
            )
        if out is None:
            out = torch.empty((len(x), *chunk.shape[1:]), dtype=dtype, device=device)
        out[start : start + len(chunk)] = chunk
    return out


@dataclass
class Inputs:
    """What the epoch loop trains and evaluates: the whole model on pixels, or the head on the
    backbone's cached features (``seconds``: time spent computing them, per split).

    Every tensor is on the fit's device; ``train_y`` is the training labels there (the
    evaluation reads its labels from the splits, on the host, for the metrics)."""

    module: nn.Module
    train_x: torch.Tensor
    val_x: torch.Tensor | None
    test_x: torch.Tensor | None
    eval_batch_size: int
    seconds: dict[str, float] = field(default_factory=dict)
    train_y: torch.Tensor | None = None


def build_inputs(
    config: TrainConfig, splits: Splits, model: nn.Module, plan: CachePlan, device: torch.device
) -> Inputs:
    """The plain inputs, or (``plan.enabled``) the cached features of every split."""
    eval_bs = eval_batch_size(config)
    train_y = splits.train_y.to(device)
    if not plan.enabled:
        # On a GPU the images (uint8, 47 MB for all of MNIST) stay on the device for the whole
        # fit: a step then slices device memory instead of copying a batch from the host.
        train_x, val_x, test_x = (
            None if t is None else t.to(device)
            for t in (splits.train_x, splits.val_x, splits.test_x)
        )
        return Inputs(model, train_x, val_x, test_x, eval_bs, train_y=train_y)
    seconds: dict[str, float] = {}
    cached: dict[str, torch.Tensor | None] = {"val": None, "test": None}
    for split in ("train", "val", "test"):
        x = getattr(splits, f"{split}_x")
        if x is None:
            continue
        t0 = time.perf_counter()
        cached[split] = encode(
            plan.backbone, x, device=device, precision=config.precision, batch_size=eval_bs
        )
        sync(device)
        seconds[split] = time.perf_counter() - t0
    # The head is light: evaluate it in large batches.
    return Inputs(
        plan.head,
        cached["train"],
        cached["val"],
        cached["test"],
        max(eval_bs, 1024),
        seconds,
        train_y,
    )
