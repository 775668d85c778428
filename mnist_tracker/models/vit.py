"""A small Vision Transformer trained from scratch on 28x28 MNIST (GUIDE.md section 2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import Dropout, dropout
from .specs import BuildConfig


def attention_with_dropout(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float
) -> torch.Tensor:
    """``F.scaled_dot_product_attention(q, k, v, dropout_p=p)`` for CPU training, computed in
    the inputs' dtype, its mask drawn as ``layers.keep_mask`` draws it (``layers.dropout``).

    On CPU, attention with dropout runs SDPA's math path, which draws the mask with
    ``bernoulli_`` (22 % of a bf16 vit training step on the 2-core CPU), checks for fully
    masked rows that an unmasked softmax cannot have, and upcasts bf16 inputs to fp32. This is
    the textbook attention as autocast runs it: q and k each scaled by ``d ** -0.25``, their
    product, softmax, dropout on the weights, weights @ v, every tensor in the inputs' dtype
    (ATen's softmax sums in fp32 and rounds its result). In bf16 the two batched matmuls, 512
    products of 50 x 16 by 16 x 50 matrices a layer at batch 64, run twice as fast as in fp32,
    and the vit's step is about 10 % faster (benchmarks/RESULTS.md, stop 34). The scores are
    rounded to bf16 before the softmax, as in any unfused attention under autocast; SDPA's
    fused kernel, which evaluation runs, keeps them in fp32 (tests/test_attention.py bounds
    the difference). In fp32 it is the math path handed the same mask, to 1 ulp.
    q, k and v arrive as strided views of the qkv projection; each is made contiguous once
    here, so that the matmuls copy nothing of their own, forward or backward.
    """
    scale = q.shape[-1] ** -0.25
    with torch.autocast(q.device.type, enabled=False):  # the inputs' dtype throughout
        q, k, v = (t.contiguous() for t in (q, k, v))
        weights = ((q * scale) @ (k.transpose(-2, -1) * scale)).softmax(-1)
        return dropout(weights, p) @ v


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.proj_drop = Dropout(dropout)

    @staticmethod
    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
        """Attention of (batch, heads, tokens, head dim) tensors, dropout ``p`` on the weights:
        SDPA, or with a dropout on CPU ``attention_with_dropout`` (faster: SDPA's math path
        to 1 ulp in fp32; in bf16 the textbook attention in bf16)."""
        if 0.0 < p < 1.0 and q.device.type == "cpu":
            return attention_with_dropout(q, k, v, p)
        return F.scaled_dot_product_attention(q, k, v, dropout_p=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads)
        # unbind, not qkv[i]: its backward stacks the three gradients into qkv's own layout,
        # where indexing would zero-fill a full-size tensor for each and add them up.
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))  # (batch, heads, tokens, dim)
        x = self.attend(q, k, v, self.dropout if self.training else 0.0)
        return self.proj_drop(self.proj(x.transpose(1, 2).reshape(b, n, d)))


class Block(nn.Module):
    """Pre-norm transformer block: x + Attn(LN(x)), x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            Dropout(dropout),
            nn.Linear(hidden, dim),
            Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """4x4 patches (49) -> embed, CLS token + learned positions, pre-norm blocks, LN, head."""

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 4,
        dim: int = 128,
        depth: int = 6,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.1,
        num_classes: int = 10,
    ):
        super().__init__()
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Conv2d(1, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        self.pos_drop = Dropout(dropout)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, dropout) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, 49, dim)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = self.pos_drop(torch.cat([cls, x], dim=1) + self.pos_embed)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def build_vit(config: BuildConfig) -> ViT:
    return ViT(**config.extra)
