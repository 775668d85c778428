"""Model registry: ``create_model(config)`` builds any registered model by name.

Importing this package registers the lab's five models (``catalog.py``: cnn, deep_cnn, vgg16,
alexnet, vit) without importing torch; ``create_model``, ``count_params``, ``split_model`` and
the torch modules load on first use.
"""

from __future__ import annotations

from ..errors import ModelError
from ..lazy import lazy_getattr
from . import catalog  # noqa: F401  (registration side effects)
from .specs import BuildConfig, InputSpec, ModelSpec, get_spec, list_specs, register

_LAZY = {
    "create_model": "registry",
    "count_params": "registry",
    "split_model": "registry",
    "Preprocess": "registry",
    "Classifier": "registry",
}


# torch-backed names, imported when first asked for.
_MODULES = ("registry", "cnn", "vit", "transfer", "layers")
__getattr__ = lazy_getattr(__name__, _LAZY, _MODULES)


__all__ = [
    "BuildConfig",
    "Classifier",
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
