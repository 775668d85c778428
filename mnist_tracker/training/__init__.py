"""Training: the loop, its callbacks, checkpoints, the feature cache, the runtime. No MLflow.

``fit(config, splits, model, callbacks) -> FitResult`` is the entry point; see ``fit.py``.
"""

from .callbacks import Callback, FitState, OnCheckpoint, OnEpoch, Stop
from .fit import FitResult, fit
from .runtime import resolve_runtime, seed_everything

__all__ = [
    "Callback",
    "FitResult",
    "FitState",
    "OnCheckpoint",
    "OnEpoch",
    "Stop",
    "fit",
    "resolve_runtime",
    "seed_everything",
]
