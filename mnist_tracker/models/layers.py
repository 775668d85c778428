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


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout(x, p)`` in training (``0 <= p < 1``), its mask drawn as ``keep_mask`` draws
    it: each kept element is ``x * (1 / (1 - p))`` computed in fp32 for bf16 and fp16, rounded
    once, the rest 0; gradients likewise. Given the same mask, the values and gradients equal
    CUDA's ``native_dropout``'s bit for bit, and in fp32 the CPU's ``F.dropout``'s (up to the
    sign of a dropped zero).

    PyTorch's CPU dropout in bf16 and fp16, like a multiplier tensor in ``x``'s dtype, rounds
    the scale to the dtype first: 1 / 0.9 is 1.109375 in bf16 and 1 / 0.75 is 1.3359375, which
    scales every kept value 0.16 % down (0.20 % up), a bias that the lab's fp32 dropout and
    CUDA's do not have.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p}")
    return _Dropped.apply(x, _kept(x, 1.0 - p, x.dtype), 1.0 / (1.0 - p))


class _Dropped(torch.autograd.Function):
    """``x * kept * scale`` (``kept`` 1 or 0 in x's dtype) in one pass each way, the product
    formed in the dtype's compute type as CUDA's ``native_dropout`` forms it: ``addcmul`` onto
    a zero scalar. Autograd's own formula for ``addcmul`` would round ``kept * scale`` first."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, kept: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(kept)
        ctx.scale = scale
        return torch.addcmul(x.new_zeros(()), x, kept, value=scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (kept,) = ctx.saved_tensors
        return torch.addcmul(grad.new_zeros(()), grad, kept, value=ctx.scale), None, None


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
        return dropout(x, self.p)
