"""Logging the model: the ``MODEL`` artifact (MLflow's PyTorch flavour, saved as pt2).

Contracts:
- ``log_model`` logs the model to a run, in the run's experiment, named after its architecture:
  a pyfunc (``serving.py``: [0, 1] pixels (N, 1, 28, 28) -> label, probability, prob_0..9)
  around the network (PyTorch flavour, pt2: pixels -> logits (N, 10)), each with signature,
  a two-image input example (so the exported program keeps the batch dimension dynamic) and
  explicit pip requirements (inference would cost seconds).
- ``save_for_replay`` / ``log_saved`` are the outbox's form of the same call: weights, example
  and config on disk, rebuilt and logged exactly as the run would have.
- Exactly once per run and name, under retries and kills (with the run's lease held, see
  ``lease.py``): a READY model of the run with that name is kept and not logged again; PENDING
  or FAILED leftovers of an attempt cut short (or of MLflow's retry of a request the server had
  applied) are deleted, so the run ends with exactly one model.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import warnings
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch

from ..config import TrainConfig
from ..errors import ModelError, clip
from ..models import create_model
from ..serving import import_mlflow_pytorch
from ..uris import local_path
from . import artifacts
from .client import client, env_vars, read_failure

REPLAY_FILES = ("model.pt", "example.pt", "config.json")
# The pyfunc's code, logged as the model ("models from code": nothing pickled).
SERVING_CODE = Path(__file__).resolve().parent.parent / "serving.py"


def pip_requirements() -> list[str]:
    """What a loaded model needs; given explicitly so logging skips requirement inference."""
    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"mlflow=={mlflow.__version__}",
        f"numpy=={np.__version__}",
    ]


def log_model(
    model: torch.nn.Module,
    example: torch.Tensor,
    run_id: str,
    name: str,
    register: str | None = None,
    step: int = 0,
) -> str:
    """Log ``model`` to ``run_id`` as the logged model ``name`` (the architecture, e.g. ``cnn``:
    ``runs:/<run_id>/cnn``), once (see the module's contract); ``register`` also registers it.
    Returns the model's ``models:/<id>`` URI, also set as the run's ``MODEL_URI_TAG``.

    The pyfunc is ``serving.py`` (digit and probabilities out); the network is its artifact
    ``network`` in MLflow's PyTorch flavour. The run's metrics at ``step`` (the last epoch:
    test accuracy, F1, ...) are linked to the logged model, so its page shows them.
    """
    mlflow_client = client()
    experiment_id = mlflow_client.get_run(run_id).info.experiment_id
    ready = _clear_unfinished(mlflow_client, experiment_id, run_id, name)
    if ready is not None:
        uri = f"models:/{ready.model_id}"
        if register is not None:
            _register_once(mlflow_client, uri, run_id, register)
    else:
        try:
            uri = _log_new(model, example, run_id, experiment_id, name, register, step)
        except mlflow.exceptions.MlflowException as exc:
            if not _already_applied(exc):
                raise
            # MLflow retried a request the server had already applied (a 500 after the write)
            # and was told so: the attempt's model is FAILED now; log it again, once.
            _clear_unfinished(mlflow_client, experiment_id, run_id, name)
            uri = _log_new(model, example, run_id, experiment_id, name, register, step)
        _clear_unfinished(mlflow_client, experiment_id, run_id, name)
    mlflow_client.set_tag(run_id, artifacts.MODEL_URI_TAG, uri)
    return uri


_APPLIED = ("UNIQUE constraint", "duplicate key", "already exists")  # SQLite, PostgreSQL, MLflow


def _already_applied(exc: Exception) -> bool:
    return any(marker in str(exc) for marker in _APPLIED)


def _clear_unfinished(mlflow_client, experiment_id: str, run_id: str, name: str):
    """Delete the run's non-READY models called ``name``; return its READY one, if any."""
    from mlflow.entities import LoggedModelStatus

    found = mlflow_client.search_logged_models(
        experiment_ids=[experiment_id],
        filter_string=f"source_run_id = '{run_id}' AND name = '{name}'",
    )
    ready = [m for m in found if m.status == LoggedModelStatus.READY]
    for stale in found:
        if stale.status != LoggedModelStatus.READY:
            mlflow_client.delete_logged_model(stale.model_id)
    return min(ready, key=lambda m: m.creation_timestamp) if ready else None


def _register_once(mlflow_client, uri: str, run_id: str, register: str) -> None:
    """Register ``uri`` as ``register`` unless the run has a version there already."""
    versions = mlflow_client.search_model_versions(f"name = '{register}' AND run_id = '{run_id}'")
    if not versions:
        mlflow.register_model(uri, register)


def _log_new(model, example, run_id: str, experiment_id: str, name: str, register, step) -> str:
    """One ``Model.log`` call: the pyfunc around the network (see ``log_model``)."""
    from mlflow.models import Model, infer_signature

    mlflow_pytorch = import_mlflow_pytorch()
    cpu_model = copy.deepcopy(model).to("cpu").float().eval()
    example = example[:2].to("cpu").float()
    with torch.inference_mode():
        logits = cpu_model(example)
    with tempfile.TemporaryDirectory() as tmp, _requirements_trusted():
        network = Path(tmp) / "network"
        mlflow_pytorch.save_model(
            cpu_model,
            str(network),
            serialization_format="pt2",
            signature=infer_signature(example.numpy(), logits.numpy()),
            input_example=example.numpy(),
            pip_requirements=pip_requirements(),
        )
        # A logged model belongs to an experiment, which MLflow takes from the process's
        # default unless told: the run's own.
        quiet = {
            "MLFLOW_EXPERIMENT_ID": experiment_id,
            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
        }
        with env_vars(quiet), warnings.catch_warnings():
            # MLflow's hints (integer columns, type hints) are about other models' inputs.
            warnings.simplefilter("ignore", UserWarning)
            # Model.log, not pyfunc.log_model: only the former takes the run (no fluent run).
            info = Model.log(
                artifact_path=None,
                name=name,
                flavor=mlflow.pyfunc,
                python_model=str(SERVING_CODE),
                artifacts={"network": str(network)},
                signature=infer_signature(example.numpy(), _served(logits)),
                input_example=example.numpy(),
                pip_requirements=pip_requirements(),
                registered_model_name=register,
                run_id=run_id,
                step=step,
            )
    return info.model_uri


@contextlib.contextmanager
def _requirements_trusted():
    """Skip MLflow's check of the model's pip requirements against the installed packages,
    made when the network is saved and again when ``Model.log`` loads the pyfunc to validate
    the input example (that validation itself still runs).

    ``pip_requirements()`` names the running versions, so the check cannot find a mismatch;
    it costs 1.5-3 s per model logged (``importlib.metadata.packages_distributions`` reads
    every installed package's file list). MLflow's functions are put back afterwards; where a
    later MLflow moves them, the check simply runs.
    """
    import mlflow.pyfunc
    from mlflow.utils import environment

    patched = [m for m in (environment, mlflow.pyfunc) if hasattr(m, _CHECK)]
    originals = [getattr(m, _CHECK) for m in patched]
    for module in patched:
        setattr(module, _CHECK, lambda requirements: None)
    try:
        yield
    finally:
        for module, original in zip(patched, originals, strict=True):
            setattr(module, _CHECK, original)


_CHECK = "warn_dependency_requirement_mismatches"


def _served(logits: torch.Tensor) -> pd.DataFrame:
    """What ``serving.DigitClassifier`` returns for ``logits`` (for the signature)."""
    probs = torch.softmax(logits.float(), dim=1).numpy()
    frame = pd.DataFrame(probs, columns=[f"prob_{d}" for d in range(10)])
    frame.insert(0, "probability", probs.max(axis=1))
    frame.insert(0, "label", probs.argmax(axis=1).astype(np.int64))
    return frame


def save_for_replay(
    model: torch.nn.Module, example: torch.Tensor, config: TrainConfig, folder: Path
) -> dict[str, Path]:
    """The files ``log_saved`` needs to log the same model later, written under ``folder``."""
    files = {name: Path(folder) / name for name in REPLAY_FILES}
    torch.save({k: v.cpu() for k, v in model.state_dict().items()}, files["model.pt"])
    torch.save(example[:2].cpu(), files["example.pt"])
    files["config.json"].write_text(json.dumps(config.to_dict()))
    return files


def log_saved(folder: Path, run_id: str, register: str | None, step: int = 0) -> None:
    """Rebuild the model from ``save_for_replay``'s files and log it to ``run_id``."""
    config = TrainConfig(**json.loads((folder / "config.json").read_text()))
    # The weights below replace every parameter: no need for the ImageNet download.
    model = create_model(config.replace(pretrained=False))
    model.load_state_dict(torch.load(folder / "model.pt", map_location="cpu", weights_only=True))
    example = torch.load(folder / "example.pt", weights_only=True)
    log_model(model, example, run_id, config.model, register=register, step=step)


MLMODEL = "MLmodel"  # the file that makes a folder an MLflow model


def load_served(model_uri: str):
    """The pyfunc model at ``model_uri`` (``runs:/RUN/cnn``, ``models:/NAME@champion``), or
    ModelError saying the URI could not be loaded and why. Leaves no files behind: the loaded
    model holds its network in memory."""
    folder = local_path(model_uri)
    if folder is not None and not (folder / MLMODEL).is_file():
        # MLflow copies a local folder whole before it looks for the file: all of /etc.
        raise ModelError(
            f"{model_uri} is no MLflow model: {folder} has no {MLMODEL} file; pass the folder "
            "that holds it, or runs:/RUN_ID/MODEL or models:/NAME@ALIAS"
        )
    quiet = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    # MLflow downloads a model into a folder of its own under the temporary directory and
    # never removes it (230 MB for an alexnet, per call): here it goes into one that is removed.
    with (
        env_vars(quiet),
        warnings.catch_warnings(),
        tempfile.TemporaryDirectory(
            prefix="mnist-tracker-model-", ignore_cleanup_errors=True
        ) as download,
    ):
        warnings.simplefilter("ignore", UserWarning)
        try:
            return mlflow.pyfunc.load_model(model_uri, dst_path=download)
        except Exception as exc:  # a bad URI, an unknown alias, an unreachable store
            store = mlflow.get_registry_uri() if model_uri.startswith("models:") else None
            failure = read_failure(exc, store)  # the store's trouble, not the URI's
            if failure is not None:
                raise ModelError(failure) from None
            reason = clip(str(exc), 300)
            raise ModelError(
                f"cannot load the model {model_uri} ({reason}); pass runs:/RUN_ID/MODEL or "
                "models:/NAME@ALIAS from this tracking store"
            ) from None
