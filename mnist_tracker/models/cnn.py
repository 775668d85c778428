"""The lab's two MNIST-native conv nets: ``cnn`` and ``deep_cnn`` (GUIDE.md section 2)."""

from __future__ import annotations

from torch import nn

from .layers import Dropout
from .registry import InputSpec, ModelSpec, register

LAB_ADAM = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "epochs": 10}
# --recipe fast for the cnn (the lab's architecture): batches of 512 (more images a second on a
# CPU), a one-cycle schedule peaking at 1e-2 so that 4 epochs reach 99.3-99.4 %, lighter dropout
# (the lab's 0.25 / 0.5 slow a 4-epoch run down), bf16 where the hardware runs it fast.
CNN_FAST = {
    "batch_size": 512,
    "scheduler": "onecycle",
    "lr": 1e-2,
    "epochs": 4,
    "precision": "auto",
    "extra": {"dropout_conv": 0.1, "dropout_fc": 0.25},
}
CONV_SEARCH = {
    "lr": ("float", 1e-4, 1e-2, True),
    "weight_decay": ("float", 1e-6, 1e-3, True),
    "batch_size": ("categorical", [32, 64, 128]),
    "optimizer": ("categorical", ["adam", "adamw"]),
    "dropout_conv": ("float", 0.0, 0.4, False),
    "dropout_fc": ("float", 0.1, 0.6, False),
}


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


def _register_conv_net(name: str, net: type[nn.Module], description: str, n_params: int, **kw):
    """The two conv nets share the lab's Adam recipe, search space and channels_last."""
    register(
        ModelSpec(
            name=name,
            builder=lambda config: net(**config.extra),
            input=InputSpec(),
            recipe=dict(LAB_ADAM),
            description=description,
            n_params=n_params,
            n_trainable=n_params,
            search_space=CONV_SEARCH,
            channels_last=True,
            **kw,
        )
    )


_register_conv_net(
    "cnn", CNN, "3-block CNN (32-64-128) with a 256-128 head", 422_474, fast_recipe=CNN_FAST
)
_register_conv_net(
    "deep_cnn",
    DeepCNN,
    "deeper CNN, 3 double-conv blocks (64-128-256), the lab's adapted Faster R-CNN",
    2_331_338,
)
