"""The training loop: ``fit(config, splits, model, on_epoch) -> FitResult``.

Plain functions that return numbers; nothing here knows about MLflow. ``on_epoch(epoch,
metrics)`` is called after each epoch with the GUIDE.md metric names (step = epoch from 1).

Speed without changing what is computed: batches are sliced from uint8 tensors in memory;
conv nets train in channels_last; ``precision`` picks autocast (``auto`` = bf16 where the
hardware is fast at it); a frozen backbone's features are computed once per split and the
head trains on them (``features.plan_cache``).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import f1_score
from torch import nn

from . import checkpoint, features
from .config import TrainConfig
from .data import Splits, iterate_batches, to_input
from .models import get_spec

EpochHook = Callable[[int, dict[str, float]], None]
CheckpointHook = Callable[[dict], None]

# How often (in batches) a training pass checks its running loss for NaN / inf: often enough to
# stop a diverged run early, rarely enough that the host sync it costs does not show.
DIVERGENCE_CHECK_EVERY = 50


class Diverged(RuntimeError):
    """The training loss became NaN or infinite; ``epoch`` is the epoch it happened in."""

    def __init__(self, reason: str, epoch: int = 0):
        super().__init__(reason)
        self.reason, self.epoch = reason, epoch


@dataclass
class EvalResult:
    loss: float
    accuracy: float
    f1_macro: float
    predictions: np.ndarray  # predicted class per item, in the split's order


@dataclass
class FitResult:
    """What a run produced. ``final`` holds the last epoch's metrics plus run-level ones."""

    history: list[dict[str, float]]
    final: dict[str, float]
    test_predictions: np.ndarray | None  # None when the splits had no test set
    test_labels: np.ndarray | None
    device: str
    precision: str
    feature_cache: str  # "on" or "off": the path that ran


def select_device(name: str = "auto") -> torch.device:
    """``auto``: cuda, then mps, then cpu. Anything else is passed to ``torch.device``."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU runs bf16 matrix work natively (AVX512-bf16 or AMX)."""
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the hardware runs it fast, else fp32; fp16 only on CUDA."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        if device.type == "cpu" and cpu_has_fast_bf16():
            return "bf16"
        return "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 autocast needs a CUDA device; use --precision bf16 or fp32")
    return precision


def autocast(device: torch.device, precision: str):
    """The autocast context for a resolved precision (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# glibc's mallopt parameters (malloc.h) and the value this process sets them to.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks of up to 1 GiB for reuse instead of returning them to the
    kernel; True when it took effect (Linux with glibc), False elsewhere.

    By default glibc unmaps a freed block over 32 MiB at once, so a training step that
    allocates the same large tensors again (the 55-120 M-parameter heads of alexnet and vgg16:
    their gradients and bf16 weight copies) page-faults all of their pages back in, step after
    step; measured on a 2-core CPU, that made the head's step up to twice as slow. The cost is
    memory the process keeps instead of giving back. Process-wide; calling it again is harmless.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (e.g. musl)
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)
        and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES)
    )


def memory_format(config: TrainConfig) -> torch.memory_format:
    """channels_last for the conv nets (their spec says so), the default layout otherwise."""
    if get_spec(config.model).channels_last:
        return torch.channels_last
    return torch.contiguous_format


def build_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The config's optimizer over the trainable parameters only.

    Adam and AdamW use the fused implementation on CPU and CUDA (one pass over each tensor
    instead of several; the same update): it matters for the transfer models' heads, whose
    120 M parameters make the optimizer step memory-bound.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    fused = params[0].device.type in ("cpu", "cuda") or None
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=config.lr, weight_decay=config.weight_decay, fused=fused
        )
    return torch.optim.SGD(
        params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )


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
    progress: Callable[[int, float, float], None] | None = None,
) -> tuple[float, float]:
    """One pass over ``(x, y)`` in a seeded order; returns (mean loss, accuracy).

    Raises Diverged as soon as a periodic check (and the final one) finds the loss not finite.
    """
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
        # Accumulate on the device: no host sync per batch.
        total_loss += loss.detach().float() * len(yb)
        correct += (logits.detach().argmax(1) == yb).sum()
        seen += len(yb)
        if progress is not None:
            progress(len(yb), float(loss), 0.0)
        if step % DIVERGENCE_CHECK_EVERY == 0 and not torch.isfinite(total_loss):
            raise Diverged(f"train loss is {float(total_loss / seen)} after {seen} images")
    mean_loss = float(total_loss) / seen
    if not math.isfinite(mean_loss):
        raise Diverged(f"train loss is {mean_loss} after {seen} images")
    return mean_loss, int(correct) / seen


@torch.no_grad()
def weights_finite(model: nn.Module) -> bool:
    """Whether every trainable parameter of ``model`` is finite (one host sync)."""
    flags = [torch.isfinite(p).all() for p in model.parameters() if p.requires_grad]
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
    """Loss, accuracy and macro F1 of ``model`` on ``(x, y)``, in large batches."""
    model.eval()
    total_loss = 0.0
    preds = []
    for xb, yb in iterate_batches(x, y, batch_size, device=device):
        with autocast(device, precision):
            logits = model(xb)
        total_loss += float(F.cross_entropy(logits.float(), yb, reduction="sum"))
        preds.append(logits.argmax(1).cpu())
    predictions = torch.cat(preds).numpy()
    labels = y.numpy()
    return EvalResult(
        loss=total_loss / len(y),
        accuracy=float((predictions == labels).mean()),
        f1_macro=float(
            f1_score(labels, predictions, average="macro", labels=list(range(10)), zero_division=0)
        ),
        predictions=predictions,
    )


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
    ``features.cache_dtype(precision)``, in the order of ``x``.

    Raises FeatureCacheError when fp16 storage would overflow (bf16 has fp32's range).
    """
    backbone.eval()
    dtype = features.cache_dtype(precision)
    out: torch.Tensor | None = None
    for start in range(0, len(x), batch_size):
        xb = to_input(x[start : start + batch_size].to(device))
        with autocast(device, precision):
            chunk = backbone(xb).to(dtype)
        if dtype == torch.float16 and not torch.isfinite(chunk).all():
            raise features.FeatureCacheError(
                "backbone features exceed the fp16 range; pass --precision bf16 or "
                "--feature-cache off"
            )
        if out is None:
            out = torch.empty((len(x), *chunk.shape[1:]), dtype=dtype, device=device)
        out[start : start + len(chunk)] = chunk
    return out


@dataclass
class _Inputs:
    """What the epoch loop trains and evaluates: the whole model on pixels, or the head on the
    backbone's cached features (``seconds``: time spent computing them, per split)."""

    module: nn.Module
    train_x: torch.Tensor
    val_x: torch.Tensor | None
    test_x: torch.Tensor | None
    eval_batch_size: int
    seconds: dict[str, float]


def _inputs(
    config: TrainConfig,
    splits: Splits,
    model: nn.Module,
    plan: features.CachePlan,
    device: torch.device,
    precision: str,
) -> _Inputs:
    """The plain inputs, or (``plan.enabled``) the cached features of every split."""
    eval_bs = eval_batch_size(config)
    if not plan.enabled:
        return _Inputs(model, splits.train_x, splits.val_x, splits.test_x, eval_bs, {})
    seconds: dict[str, float] = {}
    cached: dict[str, torch.Tensor | None] = {"val": None, "test": None}
    for split in ("train", "val", "test"):
        x = getattr(splits, f"{split}_x")
        if x is None:
            continue
        t0 = time.perf_counter()
        cached[split] = encode(
            plan.backbone, x, device=device, precision=precision, batch_size=eval_bs
        )
        _sync(device)
        seconds[split] = time.perf_counter() - t0
    # The head is light: evaluate it in large batches.
    return _Inputs(
        plan.head, cached["train"], cached["val"], cached["test"], max(eval_bs, 1024), seconds
    )


class _Progress:
    """A tqdm bar per epoch with live loss and accuracy (only when asked, i.e. on a TTY)."""

    def __init__(self, enabled: bool, total: int, epoch: int, epochs: int):
        self.bar = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, desc=f"epoch {epoch}/{epochs}", unit="img", leave=False)
        self.loss = None

    def __call__(self, n: int, loss: float, _acc: float) -> None:
        if self.bar is None:
            return
        self.loss = loss if self.loss is None else 0.9 * self.loss + 0.1 * loss
        self.bar.update(n)
        self.bar.set_postfix(loss=f"{self.loss:.4f}", refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock timings cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(
    config: TrainConfig,
    splits: Splits,
    model: nn.Module,
    on_epoch: EpochHook | None = None,
    *,
    progress: bool = False,
    resume: dict | None = None,
    on_checkpoint: CheckpointHook | None = None,
) -> FitResult:
    """Train ``model`` per ``config`` on ``splits``; evaluate on test (and val) every epoch.

    Seeded: the same config, data and device give the same numbers. ``training_time_s`` is the
    wall time of the training passes (the lab's "Training Time"), including computing the
    cached training features (in the ``epoch_time_s`` of the first epoch this call trains);
    evaluation, and caching the evaluation splits' features, are not in it but are in
    ``total_time_s``. With the cache, ``final`` also holds ``feature_cache_time_s``. ``model``
    is trained in place and returned on the device in the default memory format. Raises
    FeatureCacheError when ``feature_cache=on`` and the cache cannot run. On CPU it calls
    ``keep_freed_memory()``.

    After each epoch, ``on_checkpoint(state)`` gets ``checkpoint.capture``'s state (before
    ``on_epoch``, so a logged epoch always has a checkpoint). ``resume`` (such a state)
    continues from the epoch after it, with the same results as a run never stopped (the
    cached features, if any, are computed again from the restored backbone). Raises Diverged
    (with its epoch) when the training loss is NaN or infinite.
    """
    start = time.perf_counter()
    device = select_device(config.device)
    if device.type == "cpu":
        keep_freed_memory()
    precision = resolve_precision(config.precision, device)
    config = config.replace(precision=precision)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device, memory_format=memory_format(config))
    plan = features.plan_cache(config, model, splits, device)
    if config.feature_cache == "on" and not plan.enabled:
        raise features.FeatureCacheError(f"the feature cache cannot run: {plan.reason}")
    optimizer = build_optimizer(config, model)
    steps = math.ceil(len(splits.train_y) / config.batch_size)
    scheduler, per_batch = build_scheduler(config, optimizer, steps)
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    history: list[dict[str, float]] = []
    training_time = earlier_time = 0.0
    first_epoch = 1
    if resume is not None:
        checkpoint.restore(
            resume,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            scaler=scaler,
            generator=generator,
        )
        history = [dict(m) for m in resume["history"]]
        training_time, earlier_time = resume["training_time_s"], resume["total_time_s"]
        first_epoch = resume["epoch"] + 1
    # After any restore, so that cached features come from the backbone the run trains with.
    inputs = _inputs(config, splits, model, plan, device, precision)
    test = None

    def evaluate_split(x: torch.Tensor, y: torch.Tensor) -> EvalResult:
        return evaluate(
            inputs.module,
            x,
            y,
            device=device,
            precision=precision,
            batch_size=inputs.eval_batch_size,
        )

    for epoch in range(first_epoch, config.epochs + 1):
        lr = optimizer.param_groups[0]["lr"]
        bar = _Progress(progress, len(splits.train_y), epoch, config.epochs)
        t0 = time.perf_counter()
        try:
            train_loss, train_acc = train_one_epoch(
                inputs.module,
                inputs.train_x,
                splits.train_y,
                batch_size=config.batch_size,
                optimizer=optimizer,
                device=device,
                precision=precision,
                generator=generator,
                scheduler=scheduler if per_batch else None,
                scaler=scaler,
                progress=bar if bar.bar is not None else None,
            )
            _sync(device)
            # The last step can blow the weights up after the last loss was computed: such an
            # epoch must not become the "last good" checkpoint.
            if not weights_finite(inputs.module):
                raise Diverged("weights are not finite after the epoch's last step")
        except Diverged as exc:
            exc.epoch = epoch
            raise
        finally:
            bar.close()
        epoch_time = time.perf_counter() - t0
        if epoch == first_epoch:  # this call computed the training features before it
            epoch_time += inputs.seconds.get("train", 0.0)
        training_time += epoch_time
        if scheduler is not None and not per_batch:
            scheduler.step()
        metrics = {
            "train_loss": train_loss,
            "train_accuracy": train_acc,
            "epoch_time_s": epoch_time,
            "lr": lr,
        }
        if splits.val_y is not None:
            val = evaluate_split(inputs.val_x, splits.val_y)
            metrics.update(val_loss=val.loss, val_accuracy=val.accuracy, val_f1_macro=val.f1_macro)
        if splits.test_y is not None:
            test = evaluate_split(inputs.test_x, splits.test_y)
            metrics.update(
                test_loss=test.loss, test_accuracy=test.accuracy, test_f1_macro=test.f1_macro
            )
        history.append(metrics)
        if on_checkpoint is not None:
            state = checkpoint.capture(
                epoch=epoch,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                scaler=scaler,
                generator=generator,
                history=history,
                training_time_s=training_time,
                total_time_s=earlier_time + time.perf_counter() - start,
            )
            on_checkpoint(state)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
    if test is None and splits.test_y is not None:
        # Resumed after its last epoch: the predictions for the plots come from one more pass.
        test = evaluate_split(inputs.test_x, splits.test_y)
    model.to(memory_format=torch.contiguous_format)
    final = dict(history[-1])
    final.update(
        training_time_s=training_time,
        total_time_s=earlier_time + time.perf_counter() - start,
        train_throughput_img_s=len(splits.train_y) * config.epochs / training_time,
    )
    if plan.enabled:
        final["feature_cache_time_s"] = sum(inputs.seconds.values())
    return FitResult(
        history=history,
        final=final,
        test_predictions=None if test is None else test.predictions,
        test_labels=None if splits.test_y is None else splits.test_y.numpy(),
        device=str(device),
        precision=precision,
        feature_cache=plan.param,
    )
