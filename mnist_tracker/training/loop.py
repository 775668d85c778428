"""One training pass and one evaluation: plain functions that return numbers.

Contracts:
- ``train_one_epoch`` trains over ``(x, y)`` in a seeded order and returns (mean loss,
  accuracy); loss and accuracy accumulate on the device (no host sync per batch). After each
  batch it calls ``on_batch(Batch)`` when given (progress bars, divergence checks).
- ``evaluate`` returns loss, accuracy, macro F1 and the predictions, in large batches under
  inference mode.
- ``build_optimizer`` / ``build_scheduler`` turn the config's names into torch objects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..data import iterate_batches
from .metrics import macro_f1
from .runtime import autocast


@dataclass
class Batch:
    """What ``on_batch`` sees after a step: the step (from 1), its size and loss, and the
    running sum of losses over the ``seen`` images so far (device tensors: read them only
    when needed, each read is a host sync)."""

    step: int
    size: int
    loss: torch.Tensor
    loss_sum: torch.Tensor
    seen: int


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    f1_macro: float
    predictions: np.ndarray  # predicted class per item, in the split's order


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The config's optimizer over the trainable parameters only.

    Adam and AdamW use the fused implementation on CPU and CUDA (one pass over each tensor
    instead of several; the same update): it matters for the transfer models' heads, whose
    120 M parameters make the optimizer step memory-bound. With ``config.cuda_graphs`` they
    are capturable (their step counts on the device), as a captured step needs.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = params[0].device.type in ("cpu", "cuda") or None
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay}
    adam = {"fused": fused, "capturable": config.cuda_graphs}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, **adam, **kwargs)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **adam, **kwargs)
    return torch.optim.SGD(params, momentum=0.9, nesterov=True, **kwargs)


def build_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """(scheduler or None, whether it steps per batch)."""
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs), False
    if config.scheduler == "onecycle":
        sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch
        )
        return sched, True
    return None, False


def eval_batch_size(config: TrainConfig) -> int:
    """Large batches for evaluation, scaled down for big inputs to bound activation memory."""
    scaled = int(2048 * (28 / config.image_size) ** 2)
    return max(config.batch_size, min(2048, scaled))


def train_one_epoch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    precision: str,
    generator: torch.Generator,
    scheduler=None,
    scaler: torch.amp.GradScaler | None = None,
    on_batch: Callable[[Batch], None] | None = None,
) -> tuple[float, float]:
    """One pass over ``(x, y)`` in a seeded order; returns (mean loss, accuracy)."""
    model.train()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    seen = 0
    batches = iterate_batches(x, y, batch_size, generator=generator, device=device)
    for step, (xb, yb) in enumerate(batches, start=1):
        with autocast(device, precision):
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        loss = loss.detach()
        total_loss += loss.float() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(yb)
        if on_batch is not None:
            on_batch(Batch(step, len(yb), loss, total_loss, seen))
    return float(total_loss) / seen, int(correct) / seen


@torch.no_grad()
def weights_finite(model: nn.Module) -> bool:
    """Whether every trainable parameter of ``model`` is finite (one host sync).

    A real tensor is finite exactly when its minimum and maximum are (``aminmax`` propagates
    NaN): two numbers per tensor instead of ``isfinite``'s full-size mask, 25x faster on
    vgg16's 102.8 M-element classifier layer (0.013 s against 0.33 s here), read once an
    epoch. Complex tensors, which ``aminmax`` does not take, get the mask.
    """
    flags = [
        torch.isfinite(p).all()
        if p.is_complex()
        else torch.isfinite(torch.stack(torch.aminmax(p))).all()
        for p in model.parameters()
        if p.requires_grad and p.numel()
    ]
    return bool(torch.stack(flags).all()) if flags else True


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 1024,
) -> EvalResult:
    """Loss, accuracy and macro F1 of ``model`` on ``(x, y)``, in large batches.

    The batches' loss sums and predictions stay on the device until the last batch, then come
    back (two transfers): a read per batch would make the CPU wait for the GPU each time,
    instead of queueing the next batch. The loss is the same sum as one read per batch gave:
    each batch's sum in fp32, added up in Python floats, in order.
    """
    model.eval()
    losses, preds = [], []
    for xb, yb in iterate_batches(x, y, batch_size, device=device):
        with autocast(device, precision):
            logits = model(xb)
        losses.append(F.cross_entropy(logits.float(), yb, reduction="sum"))
        preds.append(logits.argmax(1))
    predictions = torch.cat(preds).cpu().numpy()
    total_loss = sum(torch.stack(losses).cpu().tolist())
    labels = y.numpy()
    return EvalResult(
        loss=total_loss / len(y),
        accuracy=float((predictions == labels).mean()),
        f1_macro=macro_f1(labels, predictions),
        predictions=predictions,
    )
