"""The lab's five models (GUIDE.md section 2): recipes, search spaces, parameter counts.

Registered here by name with their builders given as ``"module:function"``, so that importing
the catalogue (listing models, resolving and validating a config) imports no torch; the
networks are in ``cnn.py``, ``vit.py`` and ``transfer.py``.
"""

from __future__ import annotations

from .specs import IMAGENET_MEAN, IMAGENET_STD, InputSpec, ModelSpec, register

LAB_ADAM = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 1e-5, "epochs": 10}
# --recipe fast for the cnn (the lab's architecture): batches of 256 (on a 2-core CPU as many
# images a second as 512, with twice the steps), a one-cycle schedule peaking at 1e-2 so that 3
# epochs reach 99.3 % (99.33-99.53 % in 17 runs of 8 seeds, bf16 and fp32, 2026-12-06; 512 needed
# 4 epochs), lighter dropout (the lab's 0.25 / 0.5 slow a short run down).
CNN_FAST = {
    "batch_size": 256,
    "scheduler": "onecycle",
    "lr": 1e-2,
    "epochs": 3,
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


def _register_conv_net(name: str, builder: str, description: str, n_params: int, **kw) -> None:
    """The two conv nets share the lab's Adam recipe, search space and channels_last."""
    register(
        ModelSpec(
            name=name,
            builder=f"mnist_tracker.models.cnn:{builder}",
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
    "cnn", "build_cnn", "3-block CNN (32-64-128) with a 256-128 head", 422_474, fast_recipe=CNN_FAST
)
_register_conv_net(
    "deep_cnn",
    "build_deep_cnn",
    "deeper CNN, 3 double-conv blocks (64-128-256), the lab's adapted Faster R-CNN",
    2_331_338,
)

TRANSFER_RECIPE = {"optimizer": "adam", "lr": 1e-4, "weight_decay": 0.0, "epochs": 5}
IMAGENET_INPUT = InputSpec(image_size=224, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
IMAGENET_INPUT = InputSpec(image_size=224, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD)
TRANSFER_SEARCH = {
    "lr": ("float", 1e-5, 1e-3, True),
    "batch_size": ("categorical", [32, 64, 128]),
    "unfreeze_blocks": ("int", 0, 2),
}

# name, description, parameters (all, trainable), smallest input side torchvision accepts
_TRANSFER_MODELS = (
    ("vgg16", "torchvision VGG16", 134_301_514, 119_586_826, 32),
    ("alexnet", "torchvision AlexNet", 57_044_810, 54_575_114, 63),
)
for _name, _arch, _n_params, _n_trainable, _min_size in _TRANSFER_MODELS:
    register(
        ModelSpec(
            name=_name,
            builder="mnist_tracker.models.transfer:build_transfer",
            input=IMAGENET_INPUT,
            recipe=dict(TRANSFER_RECIPE),
            description=f"{_arch}, ImageNet weights, frozen features, new 10-class head",
            n_params=_n_params,
            n_trainable=_n_trainable,
            min_image_size=_min_size,
            resizable=True,
            has_pretrained=True,
            search_space=TRANSFER_SEARCH,
            channels_last=True,
            split="mnist_tracker.models.transfer:split_features",
        )
    )

register(
    ModelSpec(
        name="vit",
        builder="mnist_tracker.models.vit:build_vit",
        input=InputSpec(),
        recipe={
            "optimizer": "adamw",
            "lr": 1e-3,
            "weight_decay": 0.05,
            "epochs": 10,
            "scheduler": "cosine",
        },
        description="ViT from scratch: 4x4 patches, dim 128, 6 pre-norm blocks, 8 heads",
        n_params=1_199_882,
        n_trainable=1_199_882,
        search_space={
            "lr": ("float", 1e-4, 3e-3, True),
            "weight_decay": ("float", 1e-3, 0.1, True),
            "batch_size": ("categorical", [64, 128]),
            "depth": ("int", 3, 8),
            "dim": ("categorical", [64, 128, 192]),
            "dropout": ("float", 0.0, 0.2, False),
        },
    )
)
