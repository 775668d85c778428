"""The lab's two MNIST-native conv nets: ``cnn`` and ``deep_cnn`` (GUIDE.md section 2)."""

from __future__ import annotations

from torch import nn

from .layers import Dropout
from .specs import BuildConfig


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _pool_drop(p: float) -> list[nn.Module]:
    return [nn.MaxPool2d(2, 2), Dropout(p)]


class CNN(nn.Module):
    """3 blocks Conv3x3 (32, 64, 128) + BN + ReLU + MaxPool + Dropout, then a 3-layer head."""

    def __init__(self, dropout_conv: float = 0.25, dropout_fc: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 32), (32, 64), (64, 128)):
            layers += _conv_bn_relu(c_in, c_out) + _pool_drop(dropout_conv)
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
    """The lab's "Faster R-CNN, adapted": 3 blocks of two Conv3x3 (64, 128, 256), then 512."""

    def __init__(self, dropout_conv: float = 0.25, dropout_fc: float = 0.5):
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out in ((1, 64), (64, 128), (128, 256)):
            layers += _conv_bn_relu(c_in, c_out) + _conv_bn_relu(c_out, c_out)
            layers += _pool_drop(dropout_conv)
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
