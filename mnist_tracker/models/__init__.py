"""Model registry: ``create_model(config)`` builds any registered model by name.

Importing this package registers the five lab models (cnn, deep_cnn, vgg16, alexnet, vit).
"""

from ..errors import ModelError
from . import cnn, transfer, vit  # noqa: F401  (registration side effects)
from .registry import (
    BuildConfig,
    InputSpec,
    ModelSpec,
    Preprocess,
    count_params,
    create_model,
    get_spec,
    list_specs,
    register,
    split_model,
)

__all__ = [
    "BuildConfig",
    "InputSpec",
    "ModelError",
    "ModelSpec",
    "Preprocess",
    "count_params",
    "create_model",
    "get_spec",
    "list_specs",
    "register",
    "split_model",
]
