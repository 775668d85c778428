"""Splits and batches: what training sees, sliced from tensors held in memory.

Contracts:
- ``split_data`` turns an ``MNIST`` into the train / val / test splits a config asks for
  (class-balanced limits, seeded hold-out taken from the training set only).
- ``iterate_batches`` slices batches from a seeded permutation of in-memory tensors; the model
  does its own resizing and normalisation, so the training path has no per-image work.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..errors import DataError
from .source import MNIST


@dataclass
class Splits:
    """What training sees. ``val_*`` is None without a hold-out; ``test_*`` is None when the
    test set must stay unseen (hyper-parameter search)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor | None
    test_y: torch.Tensor | None
    val_x: torch.Tensor | None = None
    val_y: torch.Tensor | None = None
    source: str = ""


def balanced_order(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded permutation of ``range(len(labels))`` whose every prefix is class-balanced.

    Round-robin over the classes in a random order: the first k indices hold each class
    ``k / n_classes`` times (±1) as long as every class has that many items.
    """
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(labels), generator=gen)
    shuffled = labels[perm]
    rank = torch.empty_like(perm)
    for cls in torch.unique(shuffled):
        positions = (shuffled == cls).nonzero(as_tuple=True)[0]
        rank[positions] = torch.arange(len(positions))
    # Sort by rank within class; ties broken by the random position (stable sort).
    return perm[torch.sort(rank, stable=True).indices]


def split_data(
    data: MNIST,
    *,
    seed: int,
    limit_train: int | None = None,
    limit_test: int | None = None,
    val_size: int = 0,
) -> Splits:
    """Seeded, class-balanced splits.

    The validation hold-out is taken from the training set first (``val_size`` images), then
    ``limit_train`` from what remains; ``limit_test`` takes a class-balanced subset of the test
    set. The test set is never used for validation; it is None in the result when ``data``
    was loaded without it.
    """
    n_train = len(data.train_y)
    if val_size < 0:
        raise DataError(f"val size {val_size} is negative; pass --val-size 0 or more")
    if val_size >= n_train:
        raise DataError(
            f"val size {val_size} is not smaller than the training set ({n_train} images); "
            "pass a smaller --val-size"
        )
    order = balanced_order(data.train_y, seed)
    val_idx, train_idx = order[:val_size], order[val_size:]
    if limit_train is not None and limit_train < len(train_idx):
        # Re-balance what remains, so the limited training set is balanced too.
        rest_order = balanced_order(data.train_y[train_idx], seed + 1)
        train_idx = train_idx[rest_order[:limit_train]]
    test_x, test_y = data.test_x, data.test_y
    if test_y is not None and limit_test is not None and limit_test < len(test_y):
        test_idx = balanced_order(test_y, seed + 2)[:limit_test]
        test_x, test_y = test_x[test_idx], test_y[test_idx]
    splits = Splits(
        train_x=data.train_x[train_idx],
        train_y=data.train_y[train_idx],
        test_x=test_x,
        test_y=test_y,
        source=data.source,
    )
    if val_size:
        splits.val_x, splits.val_y = data.train_x[val_idx], data.train_y[val_idx]
    return splits


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(inputs, labels)`` batches of ``to_input(x[...])`` on ``device``.

    With a ``generator`` (on the CPU) the order is a fresh seeded permutation (training), the
    same on every device; without, the stored order (evaluation). The slice moves to the
    device before conversion, so the host copies uint8 (or half-precision features), not
    float32; tensors already on ``device`` are sliced there, with no copy and no host sync.
    """
    n = len(y)
    order = None
    if generator is not None:
        order = torch.randperm(n, generator=generator).to(x.device)
    non_blocking = torch.device(device).type == "cuda"
    for start in range(0, n, batch_size):
        if order is None:
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        else:
            idx = order[start : start + batch_size]
            xb, yb = x[idx], y[idx.to(y.device)]
        yield (
            to_input(xb.to(device, non_blocking=non_blocking)),
            yb.to(device, non_blocking=non_blocking),
        )


def to_input(x: torch.Tensor) -> torch.Tensor:
    """What a model takes: uint8 images (B, 28, 28) become float32 (B, 1, 28, 28) in [0, 1];
    anything else (cached features) becomes float32 as it is."""
    if x.dtype == torch.uint8:
        return x.unsqueeze(1).float().div_(255.0)
    return x.float()


def label_counts(labels: torch.Tensor) -> list[int]:
    """How many items of each digit 0-9."""
    return torch.bincount(labels, minlength=10).tolist()
