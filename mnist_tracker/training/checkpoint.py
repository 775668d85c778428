"""Checkpoints of the last finished epoch: everything needed to continue a run exactly.

Contracts:
- A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts. ``save`` writes
  it to a temporary file and renames it, so a crash mid-write leaves the previous checkpoint
  whole, and only the newest one exists. ``load`` reads it with ``weights_only=True``.
- Keys: ``epoch`` (last finished, from 1), ``model``, ``optimizer``, ``scheduler`` and
  ``scaler`` (state dicts or None), ``rng`` (the RNG states that decide dropout and batch
  order: the CPU's, the training GPU's or None, the batch order's), ``history`` (per-epoch
  metrics so far), ``training_time_s``, ``total_time_s``, and, added by
  ``workflows.callbacks.Checkpointer``, ``config`` (``TrainConfig.to_dict()``) and
  ``register`` (a model registry name or None).
- ``capture`` and ``restore`` are inverses: a run restored from ``capture(epoch=k)`` computes
  the same epochs k+1.. as the uninterrupted run (on the CPU, bit for bit in practice).
  ``capture(copy=False)`` is for a state written at once and then dropped: its CPU tensors
  share memory with the live model and optimiser instead of being copied (vgg16's Adam state
  is about 1 GB, 1.6 s to copy here), and training must not resume before it is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..paths import CHECKPOINT_FILE

FILENAME = CHECKPOINT_FILE  # the checkpoint's file name, locally and as an artifact


def save(state: dict, path: Path) -> Path:
    """Write ``state`` to ``path`` atomically; return ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # left only when interrupted: can be gigabytes
    return path


def load(path: Path) -> dict:
    """Read a checkpoint written by ``save``, tensors on the CPU."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def capture(
    *,
    copy: bool = True,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler,
    generator: torch.Generator,
    history: list[dict[str, float]],
    training_time_s: float,
    total_time_s: float,
) -> dict:
    """The state after ``epoch`` finished, tensors on the CPU: copies, or with ``copy=False``
    the live CPU tensors themselves (one copy from any other device, never two)."""
    return {
        "epoch": epoch,
        "model": _to_cpu(model.state_dict(), copy),
        "optimizer": _to_cpu(optimizer.state_dict(), copy),
        "scheduler": None if scheduler is None else scheduler.state_dict(),
        "scaler": None if scaler is None else scaler.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": _cuda_rng_state(model),
            "batches": generator.get_state(),
        },
        "history": [dict(m) for m in history],
        "training_time_s": training_time_s,
        "total_time_s": total_time_s,
    }


def restore(
    state: dict,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    scaler,
    generator: torch.Generator,
) -> None:
    """Put ``model``, optimiser, scheduler, scaler and RNGs back as ``capture`` saw them.

    ``model`` must already be on its device: the optimiser state follows its parameters.
    """
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if scaler is not None and state["scaler"] is not None:
        scaler.load_state_dict(state["scaler"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    device = _device_of(model)
    if rng["cuda"] is not None and device.type == "cuda":
        cuda = rng["cuda"]
        if isinstance(cuda, list):  # written before stop 34: every visible GPU's, in order
            index = device.index or 0
            cuda = cuda[index] if index < len(cuda) else cuda[0]
        torch.cuda.set_rng_state(cuda, device)
    generator.set_state(rng["batches"])


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _cuda_rng_state(model: nn.Module) -> torch.Tensor | None:
    """The RNG state of the GPU the model trains on (its dropout masks), None off CUDA.

    Only that GPU's: a run resumes on a machine with fewer GPUs (every GPU's list failed there
    with an IndexError), and a CPU run on a GPU host does not start CUDA at each checkpoint.
    """
    device = _device_of(model)
    return torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _to_cpu(obj, copy: bool = True):
    """A (nested) state dict with every tensor on the CPU, copied when ``copy``."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=copy)
    if isinstance(obj, dict):
        return {k: _to_cpu(v, copy) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_to_cpu(v, copy) for v in obj)
    return obj
