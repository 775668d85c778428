"""Tracking: the only layer that talks to MLflow.

- ``client``: the one ``MlflowClient`` factory, the tracking URI, outage checks.
- ``run``: a run's lifecycle (``tracked_run``); ``sink``: every call a run makes, to the server
  or to the outbox; ``outbox``: the calls not sent yet, and their replay (``sync``).
- ``records`` (params, datasets, tags) and ``model`` (the logged model) are what the sink sends.
- ``store``: reads (runs, histories, artifacts, experiments) for the layers above.
- ``artifacts``: the names and schemas of what runs store, shared by writers and readers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_getattr
from . import artifacts
from .client import attached_run_id, check_reachable, client, set_tracking_uri

if TYPE_CHECKING:
    from .run import RunSpec, TrackedRun, experiment_id_for, open_run, tracked_run
    from .sink import RunSink

# Loaded on first use: ``run`` and ``sink`` import torch (seconds), and the CLI's first step,
# asking whether the server answers, needs only ``client`` (MLflow).
_LAZY = {
    "RunSink": "sink",
    "RunSpec": "run",
    "TrackedRun": "run",
    "experiment_id_for": "run",
    "open_run": "run",
    "tracked_run": "run",
}


__getattr__ = lazy_getattr(__name__, _LAZY)


__all__ = [
    "RunSink",
    "RunSpec",
    "TrackedRun",
    "artifacts",
    "attached_run_id",
    "check_reachable",
    "client",
    "experiment_id_for",
    "open_run",
    "set_tracking_uri",
    "tracked_run",
]
