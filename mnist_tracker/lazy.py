"""Names a package loads on first use (PEP 562), so that importing it stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def lazy_getattr(
    package: str, names: dict[str, str], modules: Iterable[str] = ()
) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each of ``names`` (name -> submodule) is read
    from its submodule, and each of ``modules`` is the submodule itself, imported when first
    asked for. Any other name raises AttributeError."""
    modules = frozenset(modules)

    def __getattr__(name: str) -> Any:
        if name in names:
            return getattr(importlib.import_module(f".{names[name]}", package), name)
        if name in modules:
            return importlib.import_module(f".{name}", package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
