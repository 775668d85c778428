"""Layers the native models share."""

from __future__ import annotations

import torch
from torch import nn

_INT16_VALUES = 1 << 16


def keep_mask(like: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """A bool tensor shaped like ``like`` (channels_last where ``like`` is, else contiguous), each
    element True with probability ``round(keep_prob * 2**16) / 2**16``, independently.

    Every 64-bit draw of PyTorch's generator gives four elements 16 random bits each, so the
    mask costs a quarter of the draws of ``bernoulli_``; eight elements 8 bits each where that
    probability is a multiple of 2**-8 (the lab's 0.75 and 0.5), exactly as likely, for half
    the draws again. Seeded by ``torch.manual_seed``. A ``keep_prob`` that rounds to 1 (within
    2**-17 of it) keeps every element, drawing nothing.
    """
    return _kept(like, keep_prob, torch.bool)


def dropout_multiplier(like: torch.Tensor, p: float) -> torch.Tensor:
    """What a dropout of probability ``p`` multiplies ``like`` by: ``keep_mask(like, 1 - p)``
    in ``like``'s dtype, kept elements 1 / (1 - p), the rest 0 (the same draws)."""
    return _kept(like, 1.0 - p, like.dtype).mul_(1.0 / (1.0 - p))


def _kept(like: torch.Tensor, keep_prob: float, dtype: torch.dtype) -> torch.Tensor:
    """``keep_mask``'s draw as 1 (kept) and 0 in ``dtype``, shaped like ``like`` and in
    channels_last where ``like`` is (a 4-D tensor), else contiguous."""
    kept = round(keep_prob * _INT16_VALUES)
    if kept >= _INT16_VALUES:  # the int16 comparison below cannot hold 2**15: it would wrap
        return torch.ones_like(like, dtype=dtype)
    n = like.numel()
    per_word = 8 if kept % 256 == 0 else 4
    words = torch.empty((n + per_word - 1) // per_word, dtype=torch.int64, device=like.device)
    words.random_(-(2**63), 2**63 - 1)
    if per_word == 8:
        values, threshold = words.view(torch.uint8)[:n], kept // 256
    else:
        values, threshold = words.view(torch.int16)[:n], kept - _INT16_VALUES // 2
    # The comparison writes the result's dtype itself: on the CPU, 1.6 M elements into bf16 in
    # 114 us, where a bool result took 254 us and casting it to bf16 92 us more.
    flat = torch.lt(values, threshold, out=torch.empty(n, dtype=dtype, device=like.device))
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
        batch, channels, height, width = like.shape
        return flat.view(batch, height, width, channels).permute(0, 3, 1, 2)
    return flat.view(like.shape)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose mask is cheaper to draw on CPU (``keep_mask``).

    On a 2-core CPU the lab's cnn spent half of its forward pass in ``bernoulli_`` drawing
    dropout masks. The distribution is the same up to rounding the keep probability to a
    multiple of 2**-16 (within 8e-6: 1 - 0.25 exactly, 1 - 0.1 as 0.899994), and kept elements
    are scaled by 1 / (1 - p) as ever. On other devices, in eval mode, for p of 0 or 1, and
    in place, it is ``nn.Dropout`` itself.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.inplace or x.device.type != "cpu" or self.p in (0.0, 1.0):
            return super().forward(x)
        # One multiply by a mask already in x's dtype: no casts forward or backward.
        return x * dropout_multiplier(x, self.p)
