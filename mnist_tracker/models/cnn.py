"""The lab's two MNIST-native conv nets: ``cnn`` and ``deep_cnn`` (GUIDE.md section 2)."""

from __future__ import annotations

import itertools

from torch import nn

from .layers import Dropout
from .specs import BuildConfig


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out)]


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [*_conv_bn(c_in, c_out), nn.ReLU(inplace=True)]


def _relu_pool_drop(p: float) -> list[nn.Module]:
    """The lab's ReLU -> MaxPool 2x2 -> Dropout, computed as MaxPool -> ReLU -> Dropout.

    The two orders give the same values and the same gradients, bit for bit, in any dtype:
    ReLU(max(window)) = max(ReLU(window)), and the gradient reaches the same element. With a
    positive maximum both pick the window's first maximum (ReLU leaves positive values as
    they are); without one both pass no gradient (ReLU's backward zeroes it). The ReLU then
    touches a quarter of the elements: the cnn's training 4.5 % faster on the 2-core CPU
    (benchmarks/RESULTS.md, stop 29); tests/test_models.py checks the equality.
    """
    return [nn.MaxPool2d(2, 2), nn.ReLU(inplace=True), Dropout(p)]


class CNN(nn.Module):
    """3 blocks Conv3x3 (32, 64, 128) + BN + ReLU + MaxPool + Dropout, then a 3-layer head.
    (ReLU and MaxPool run in the other order: the same function, see ``_relu_pool_drop``.)"""

    def __init__(self, dropout_conv: float = 0.25, dropout_fc: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 32), (32, 64), (64, 128)):
            layers += _conv_bn(c_in, c_out) + _relu_pool_drop(dropout_conv)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(128 * 3 * 3, 256),
            nn.ReLU(inplace=True),
            Dropout(dropout_fc),
            nn.Linear(256, 128),
            nn.ReLU(inplace=True),
            Dropout(dropout_fc),
            nn.Linear(128, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


class DeepCNN(nn.Module):
    """The lab's "Faster R-CNN, adapted": 3 blocks of two Conv3x3 (64, 128, 256), then 512.
    (Each block's last ReLU runs after its MaxPool: the same function, see ``_relu_pool_drop``.)"""

    def __init__(self, dropout_conv: float = 0.25, dropout_fc: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 64), (64, 128), (128, 256)):
            layers += _conv_bn_relu(c_in, c_out) + _conv_bn(c_out, c_out)
            layers += _relu_pool_drop(dropout_conv)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(256 * 3 * 3, 512),
            nn.ReLU(inplace=True),
            Dropout(dropout_fc),
            nn.Linear(512, 10),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def build_cnn(config: BuildConfig) -> CNN:
    return CNN(**config.extra)


def build_deep_cnn(config: BuildConfig) -> DeepCNN:
    return DeepCNN(**config.extra)


def in_lab_order(net: nn.Module) -> nn.Module:
    """``net`` with every MaxPool -> ReLU pair back in the lab's order, ReLU -> MaxPool (in
    place; the same parameters and state dict keys): the lab's literal network, for its
    pipeline in the benchmarks and for the test of ``_relu_pool_drop``'s equality."""
    for seq in net.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = list(seq._modules)
        for first, second in itertools.pairwise(names):
            a, b = seq._modules[first], seq._modules[second]
            if isinstance(a, nn.MaxPool2d) and isinstance(b, nn.ReLU):
                seq._modules[first], seq._modules[second] = b, a
    return net
