"""Model registry: ``create_model(config)`` builds any registered model by name.

Importing this package registers the lab's five models (``catalog.py``: cnn, deep_cnn, vgg16,
alexnet, vit) without importing torch; ``create_model``, ``count_params``, ``split_model`` and
the torch modules load on first use.
"""

from __future__ import annotations

import importlib

from ..errors import ModelError
from . import catalog  # noqa: F401  (registration side effects)
from .specs import BuildConfig, InputSpec, ModelSpec, get_spec, list_specs, register

_LAZY = {
    "create_model": "registry",
    "count_params": "registry",
    "split_model": "registry",
    "Preprocess": "registry",
    "Classifier": "registry",
}


def __getattr__(name: str):
    """torch-backed names, imported when first asked for (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    if name in ("registry", "cnn", "vit", "transfer", "layers"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
