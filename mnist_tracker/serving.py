"""The logged model as MLflow serves it: pixels in, digit and probabilities out.

This file is the model's code ("models from code"): ``tracking.model.log_model`` logs it as the
pyfunc model, so it imports nothing of mnist_tracker and runs wherever MLflow loads the model.
The network itself is the artifact ``network``, MLflow's PyTorch flavour saved with
``torch.export`` (no pickle): ``mlflow.pytorch.load_model(<model uri>/artifacts/network)``
gives the ``nn.Module`` (pixels -> logits).

Input: float32 images ``(N, 1, 28, 28)`` with pixels in [0, 1] (MNIST's white digit on black).
Output: a DataFrame with columns ``label`` (the digit), ``probability`` (its softmax
probability) and ``prob_0`` ... ``prob_9``. Pixels above 1 (0-255 integers) are refused with a
message saying how to scale them, instead of being classified wrongly.
"""

from __future__ import annotations

import sys

import mlflow
import numpy as np
import pandas as pd
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

COLUMNS = ["label", "probability", *(f"prob_{d}" for d in range(10))]
_LIGHTNING = ("pytorch_lightning", "lightning")


def import_mlflow_pytorch():
    """``mlflow.pytorch``, imported without PyTorch Lightning.

    Where Lightning is installed (the peer benchmark's extra puts it in the test environment),
    ``mlflow.pytorch`` imports it at once for an autolog callback this model never uses: 4-8 s
    (torchmetrics, torchvision, ``torch._dynamo``) on every model logged or loaded. Lightning
    is hidden only while ``mlflow.pytorch`` loads and only if nothing imported it yet, so a
    process that uses Lightning keeps all of it; ``mlflow.pytorch.autolog`` imports its
    Lightning part again when called.
    """
    if "mlflow.pytorch" in sys.modules:
        return sys.modules["mlflow.pytorch"]
    hidden = [name for name in _LIGHTNING if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # "import pytorch_lightning" raises ImportError, caught there
    try:
        import mlflow.pytorch
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return mlflow.pytorch


class InputRefused(mlflow.exceptions.MlflowException, ValueError):
    """Input the model refuses, saying what to do. A ValueError to a caller in process;
    MLflow's scoring server answers an MlflowException's message (HTTP 400), where any other
    error became "Encountered an unexpected error while evaluating the model", the reason
    only in the stack trace."""

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._reason

    @message.setter
    def message(self, value: str) -> None:
        # The first message is the reason. The scoring server then prefixes its dump of the
        # whole input ("Failed to predict data '<every pixel>'. Error: ..."): 4 KB for one
        # digit, megabytes for a batch, the reason at their end. It is not taken.
        if not hasattr(self, "_reason"):
            self._reason = value


class DigitClassifier(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper of the network: see the module's contract.

    No type hints on ``predict``: MLflow's hint-based validation takes lists of instances; the
    signature (a tensor spec) validates here, and the checks below say what is wrong in words.
    """

    _skip_type_hint_validation = True  # MLflow's switch for that (it would warn otherwise)

    def load_context(self, context) -> None:
        self.network = import_mlflow_pytorch().load_model(context.artifacts["network"])

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        import torch

        pixels = np.asarray(model_input)
        if pixels.ndim != 4 or pixels.shape[1:] != (1, 28, 28):
            raise InputRefused(
                f"expected images of shape (N, 1, 28, 28), got {pixels.shape}; reshape them "
                "to one grey channel of 28 x 28 pixels"
            )
        if pixels.size and (pixels.max() > 1.0 + 1e-6 or pixels.min() < -1e-6):
            raise InputRefused(
                f"pixels must be floats in [0, 1] (got values from {pixels.min():g} to "
                f"{pixels.max():g}); divide 0-255 pixels by 255 before sending them"
            )
        with torch.inference_mode():
            logits = self.network(torch.from_numpy(pixels.astype(np.float32)))
            probs = torch.softmax(logits.float(), dim=1).numpy()
        frame = pd.DataFrame(probs, columns=COLUMNS[2:])
        frame.insert(0, "probability", probs.max(axis=1))
        frame.insert(0, "label", probs.argmax(axis=1).astype(np.int64))
        return frame


mlflow.models.set_model(DigitClassifier())
