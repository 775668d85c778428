"""Option helpers shared by the command modules (click only)."""

from __future__ import annotations

import click


def option(*names: str, **kwargs):
    """A click option that also accepts the underscore spelling of its dashed names, as
    ``mlflow run`` passes undeclared parameters (``--limit_train 100``)."""
    dashed = [n for n in names if n.startswith("--") and "-" in n[2:]]
    aliases = [n.replace("-", "_").replace("__", "--", 1) for n in dashed]
    return click.option(*names, *[a for a in aliases if a not in names], **kwargs)
