"""models/layers.py: the cheaper dropout mask draws what ``nn.Dropout`` draws, laid out right."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mnist_tracker.models.layers import Dropout, dropout, keep_mask

pytestmark = pytest.mark.fast

N = 1 << 20  # enough draws that 5 standard deviations of the keep rate are under 0.0025


# 0.5, 0.75 and 255/256 are multiples of 2**-8 (8 bits an element), 0.9 and 0.3 are not (16).
@pytest.mark.parametrize("keep", [0.5, 0.75, 255 / 256, 0.9, 0.3])
def test_keep_mask_keeps_each_element_with_the_given_probability(keep):
    torch.manual_seed(0)
    mask = keep_mask(torch.empty(N), keep)
    assert mask.dtype == torch.bool and mask.shape == (N,)
    assert float(mask.float().mean()) == pytest.approx(keep, abs=0.0025)
    # The elements cut from one 64-bit draw (four or eight) are independent: neighbours are
    # both kept with probability keep**2, not keep, and so are the first and last of a word.
    words = mask.view(-1, 8)
    for i, j in ((0, 1), (3, 4), (0, 7)):
        both = (words[:, i] & words[:, j]).float().mean()
        assert float(both) == pytest.approx(keep**2, abs=0.004), (i, j)


@pytest.mark.parametrize("keep", [1.0, 1 - 1e-6])
def test_a_keep_probability_that_rounds_to_one_keeps_every_element(keep):
    """Rounded to 2**16 / 2**16, the int16 threshold would be 2**15, which wraps to -2**15: a
    mask that kept nothing (a searched dropout of 1e-6 silenced its layer)."""
    like = torch.empty(8, 16, 5, 5).to(memory_format=torch.channels_last)
    mask = keep_mask(like, keep)
    assert mask.all() and mask.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(1000)
    torch.testing.assert_close(Dropout(1 - keep).train()(x), x / keep)


def test_keep_mask_follows_channels_last_layout_and_the_seed():
    like = torch.empty(8, 16, 5, 5).to(memory_format=torch.channels_last)
    torch.manual_seed(1)
    mask = keep_mask(like, 0.5)
    assert mask.shape == like.shape
    assert mask.is_contiguous(memory_format=torch.channels_last)
    torch.manual_seed(1)
    assert torch.equal(keep_mask(like, 0.5), mask)
    torch.manual_seed(2)
    assert not torch.equal(keep_mask(like, 0.5), mask)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [0.25, 0.1, 1e-6])  # 8-bit draws, 16-bit draws, keep all
def test_dropout_computes_what_cuda_native_dropout_computes_given_the_mask(dtype, p):
    """Values and gradients bit for bit those of CUDA's ``native_dropout`` (``x * mask``, then
    ``* (1 / (1 - p))`` in the compute type), in the input's dtype and layout. A multiplier
    rounded to bf16 first (1.109375 for 1 / 0.9) failed this for bf16 at p 0.1 and 0.25."""
    x = torch.randn(8, 16, 5, 5, dtype=dtype).to(memory_format=torch.channels_last)
    x.requires_grad_()
    torch.manual_seed(3)
    y = dropout(x, p)
    torch.manual_seed(3)
    mask = keep_mask(x, 1 - p).to(dtype)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, x.detach().mul(mask).mul_(1 / (1 - p)))
    upstream = torch.randn_like(y)
    (grad,) = torch.autograd.grad(y, x, upstream)
    assert grad.dtype == dtype and torch.equal(grad, upstream.mul(mask).mul_(1 / (1 - p)))


def test_dropout_in_bf16_does_not_shrink_what_it_keeps():
    """The kept values' mean is the inputs' mean / (1 - p), as for fp32 ``nn.Dropout``: a scale
    rounded to bf16 made it 0.16 % smaller at p = 0.1, 30 standard errors here."""
    x = torch.rand(N, dtype=torch.bfloat16) + 1  # in [1, 2): every element rounds alike
    torch.manual_seed(0)
    y = dropout(x, 0.1)
    kept = y != 0
    ratio = y[kept].double().sum() / x[kept].double().sum()
    assert float(ratio) == pytest.approx(1 / 0.9, rel=2e-4)


@pytest.mark.parametrize(("keep", "drawn"), [(0.5, "1000011100101011"), (0.9, "1111111111110101")])
def test_the_draws_of_a_seed_stay_the_same_across_versions(keep, drawn):
    """A run resumed with a newer mnist-tracker continues with the masks the seed gave it
    before: seed 0's draws as they have been since commit c9eceaa (8-bit draws, stop 28)."""
    torch.manual_seed(0)
    assert "".join("1" if kept else "0" for kept in keep_mask(torch.empty(16), keep)) == drawn


def test_dropout_matches_nn_dropout_in_expectation_and_in_eval():
    layer = Dropout(0.25)
    x = torch.ones(N)
    torch.manual_seed(0)
    y = layer.train()(x)
    kept = y != 0
    assert float(kept.float().mean()) == pytest.approx(0.75, abs=0.0025)
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    assert float(y.mean()) == pytest.approx(1.0, abs=0.005)
    assert torch.equal(layer.eval()(x), x)
    assert isinstance(layer, nn.Dropout) and layer.p == 0.25


def test_dropout_keeps_the_dtype_and_passes_gradients_through_the_mask():
    layer = Dropout(0.1).train()
    x = torch.randn(64, 32, dtype=torch.bfloat16, requires_grad=True)
    y = layer(x)
    assert y.dtype == torch.bfloat16
    y.sum().backward()
    expected = torch.where(y != 0, 1 / 0.9, 0.0).to(torch.bfloat16)
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("p", [1.0, -0.1, 1.5])
def test_dropout_refuses_a_probability_outside_zero_to_one(p):
    """p = 1 would divide by zero (``Dropout`` hands it to ``nn.Dropout``, which zeroes)."""
    with pytest.raises(ValueError, match="must be in"):
        dropout(torch.ones(4), p)
