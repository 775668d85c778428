"""Logging the model: the ``MODEL`` artifact (MLflow's PyTorch flavour, saved as pt2).

Contracts:
- ``log_model`` logs [0, 1] pixels (N, 1, 28, 28) -> logits (N, 10) to a run, in the run's
  experiment, with signature, a two-image input example (so the exported program keeps the
  batch dimension dynamic) and explicit pip requirements (inference would cost seconds).
- ``save_for_replay`` / ``log_saved`` are the outbox's form of the same call: weights, example
  and config on disk, rebuilt and logged exactly as the run would have.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import mlflow
import numpy as np
import torch

from ..config import TrainConfig
from ..models import create_model
from . import artifacts
from .client import client, env_vars

REPLAY_FILES = ("model.pt", "example.pt", "config.json")


def pip_requirements() -> list[str]:
    """What a loaded model needs; given explicitly so logging skips requirement inference."""
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
    ]


def log_model(
    model: torch.nn.Module, example: torch.Tensor, run_id: str, register: str | None = None
):
    """Log ``model`` as the ``MODEL`` artifact of ``run_id``; ``register`` also registers it."""
    import mlflow.pytorch
    from mlflow.models import infer_signature

    cpu_model = copy.deepcopy(model).to("cpu").float().eval()
    example = example[:2].to("cpu").float()
    with torch.inference_mode():
        logits = cpu_model(example)
    signature = infer_signature(example.numpy(), logits.numpy())
    # A logged model belongs to an experiment, which MLflow takes from the process's default
    # unless told: the run's own.
    experiment_id = client().get_run(run_id).info.experiment_id
    with env_vars({"MLFLOW_EXPERIMENT_ID": experiment_id}):
        return mlflow.pytorch.log_model(
            cpu_model,
            name=artifacts.MODEL,
            serialization_format="pt2",
            input_example=example.numpy(),
            signature=signature,
            pip_requirements=pip_requirements(),
            registered_model_name=register,
            run_id=run_id,
        )


def save_for_replay(
    model: torch.nn.Module, example: torch.Tensor, config: TrainConfig, folder: Path
) -> dict[str, Path]:
    """The files ``log_saved`` needs to log the same model later, written under ``folder``."""
    files = {name: Path(folder) / name for name in REPLAY_FILES}
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, files["model.pt"])
    torch.save(example[:2].cpu(), files["example.pt"])
    files["config.json"].write_text(json.dumps(config.to_dict()))
    return files


def log_saved(folder: Path, run_id: str, register: str | None) -> None:
    """Rebuild the model from ``save_for_replay``'s files and log it to ``run_id``."""
    config = TrainConfig(**json.loads((folder / "config.json").read_text()))
    # The weights below replace every parameter: no need for the ImageNet download.
    model = create_model(config.replace(pretrained=False))
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    example = torch.load(folder / "example.pt", weights_only=True)
    log_model(model, example, run_id, register=register)
