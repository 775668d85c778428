"""models/vit.py: CPU attention with dropout is SDPA's in the inputs' dtype, with a cheaper mask."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from mnist_tracker.models.layers import dropout, keep_mask
from mnist_tracker.models.vit import Attention, attention_with_dropout

pytestmark = pytest.mark.fast

SHAPE = (4, 8, 50, 16)  # batch, heads, tokens (49 patches + CLS), head dim: the vit's


def qkv(dtype: torch.dtype, grad: bool = False) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(SHAPE, dtype=dtype, requires_grad=grad) for _ in range(3)]


def reference(q, k, v, mask: torch.Tensor, p: float) -> torch.Tensor:
    """The attention the docstring promises, in float64: softmax(q k^T / sqrt(d)), the weights
    dropped where ``mask`` is False and the kept ones scaled by 1 / (1 - p), times v."""
    q, k, v = q.double(), k.double(), v.double()
    weights = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)
    return (weights * mask / (1 - p)) @ v


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_values_and_gradients_are_the_math_path_with_the_keep_mask(dtype):
    q, k, v = qkv(dtype, grad=True)
    torch.manual_seed(7)
    out = attention_with_dropout(q, k, v, 0.1)
    torch.manual_seed(7)  # the same draw: the mask the function used
    mask = keep_mask(torch.empty(4, 8, 50, 50), 0.9)  # the weights: tokens x tokens
    assert out.dtype == dtype and out.shape == SHAPE
    assert 0.05 < 1 - float(mask.float().mean()) < 0.15  # it did drop about a tenth
    ref = reference(q, k, v, mask, 0.1)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(out.double(), ref, **tol)
    upstream = torch.randn(SHAPE, dtype=torch.float64)
    got = torch.autograd.grad(out.double(), (q, k, v), upstream)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    want = torch.autograd.grad(reference(q64, k64, v64, mask, 0.1), (q64, k64, v64), upstream)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == dtype
        torch.testing.assert_close(g.double(), w, **tol)


def math_path(q, k, v, mask: torch.Tensor) -> torch.Tensor:
    """ATen's own math path of SDPA with dropout 0.1, handed ``mask``."""
    with warnings.catch_warnings():  # "Dropout mask should only be used for testing purposes"
        warnings.simplefilter("ignore")
        out, _ = torch.ops.aten._scaled_dot_product_attention_math(
            q, k, v, dropout_p=0.1, dropout_mask=mask
        )
    return out


def test_in_fp32_it_is_sdpas_math_path_given_the_same_mask():
    """1 ulp apart at most: the two scale the kept weights in another order."""
    q, k, v = qkv(torch.float32)
    torch.manual_seed(5)
    got = attention_with_dropout(q, k, v, 0.1)
    torch.manual_seed(5)
    expected = math_path(q, k, v, keep_mask(torch.empty(4, 8, 50, 50), 0.9))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_in_bf16_it_stays_near_sdpas_math_path_given_the_same_mask():
    """In bf16 the matmuls and the softmax's result are bf16 (the math path upcasts to fp32),
    under autocast too: off by a bf16 rounding of the scores and weights. Measured here: the
    largest difference 0.016 on values of mean size 0.19, the mean difference 0.0006; the
    bounds are twice that. The fp32 computation in bf16 would be within 2**-7 (1 ulp)."""
    q, k, v = qkv(torch.bfloat16)
    torch.manual_seed(5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attention_with_dropout(q, k, v, 0.1)
    torch.manual_seed(5)
    expected = math_path(q, k, v, keep_mask(torch.empty(4, 8, 50, 50), 0.9)).float()
    assert got.dtype == torch.bfloat16
    difference = (got.float() - expected).abs()
    assert float(difference.max()) < 0.032
    assert float(difference.mean()) < 0.0013
    assert float(difference.mean()) > 0  # it does compute in bf16: not the fp32 math path


def test_a_dropout_that_rounds_to_nothing_keeps_every_weight():
    """0 < p < 2**-17 keeps each weight with probability 1 after keep_mask's rounding: the
    result is attention without dropout (an int16 threshold of 2**15 once wrapped to a mask
    that dropped everything)."""
    q, k, v = qkv(torch.float32)
    expected = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(attention_with_dropout(q, k, v, 1e-6), expected)


def test_the_layer_uses_it_in_training_on_cpu_and_sdpa_otherwise():
    layer = Attention(dim=32, heads=4, dropout=0.1)
    x = torch.randn(2, 50, 32)
    torch.manual_seed(3)
    trained = layer.train()(x)
    q, k, v = layer.qkv(x).reshape(2, 50, 3, 4, 8).permute(2, 0, 3, 1, 4)
    torch.manual_seed(3)  # the attention's mask, then proj_drop's, as in the forward pass
    inner = attention_with_dropout(q, k, v, 0.1).transpose(1, 2).reshape(2, 50, 32)
    torch.testing.assert_close(trained, layer.proj_drop(layer.proj(inner)))
    evaluated = layer.eval()(x)
    inner = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, 50, 32)
    torch.testing.assert_close(evaluated, layer.proj(inner))


def bits(t: torch.Tensor) -> torch.Tensor:
    """``t``'s raw bits (so that -0.0 and +0.0 differ, as ``torch.equal`` would not say)."""
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("head_dim", [16, 12])  # the vit's; one whose scale is no power of 2
def test_the_layer_equals_its_textbook_form_bit_for_bit(dtype, head_dim):
    """The layer splits q, k and v with ``unbind`` and makes each contiguous once (no copies
    in the matmuls): the output and every gradient equal those of the textbook split,
    ``qkv.permute(...)[i]``, into the textbook attention in the inputs' dtype (bf16 under
    autocast), bit for bit."""
    torch.manual_seed(0)
    dim = 8 * head_dim
    layer = Attention(dim=dim, heads=8, dropout=0.1).train()
    x = torch.randn(8, 50, dim, requires_grad=True)

    def textbook(x):
        qkv = layer.qkv(x).reshape(8, 50, 3, 8, head_dim).permute(2, 0, 3, 1, 4)
        scale = head_dim**-0.25
        with torch.autocast("cpu", enabled=False):
            q, k, v = qkv[0], qkv[1], qkv[2]
            weights = ((q * scale) @ (k.transpose(-2, -1) * scale)).softmax(-1)
            inner = dropout(weights, 0.1) @ v
        return layer.proj_drop(layer.proj(inner.transpose(1, 2).reshape(8, 50, dim)))

    results = []
    for forward in (layer, textbook):
        torch.manual_seed(3)  # the same masks
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = forward(x)
        grads = torch.autograd.grad(out.float().square().sum(), [x, *layer.parameters()])
        results.append((out, *grads))
    for got, want in zip(*results, strict=True):
        assert got.dtype == want.dtype and torch.equal(bits(got), bits(want))
