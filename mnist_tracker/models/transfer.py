"""VGG16 and AlexNet by transfer learning: ImageNet weights, frozen features, a 10-class head.

The weights come through torchvision's own loader (``weights.get_state_dict``), which reads the
torch hub cache (``$TORCH_HOME/hub/checkpoints``) and downloads into it when the file is absent.
Offline with no cached file, ``ModelError`` names the file expected and ``--no-pretrained``.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import sys

import torch
from torch import nn
from torchvision import models as tvm

from ..errors import ModelError, clip
from .specs import BuildConfig

DOWNLOAD_TIMEOUT_S = 30

_ARCHS = {
    "vgg16": (tvm.vgg16, tvm.VGG16_Weights.IMAGENET1K_V1),
    "alexnet": (tvm.alexnet, tvm.AlexNet_Weights.IMAGENET1K_V1),
}


def weights_cache_path(name: str) -> str:
    """Where torch hub keeps (or would keep) the ImageNet weights of ``name``."""
    weights = _ARCHS[name][1]
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))


def load_imagenet_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The ImageNet state dict of ``name``, from the hub cache or downloaded into it.

    torch hub writes 'Downloading: "URL" to PATH' on stdout, where a command's output goes
    (``compare``'s table after ``suite``), and before it knows whether the download works: the
    line is held, and written to stderr once the weights are there; offline, the ModelError
    is the only line."""
    weights = _ARCHS[name][1]
    path = weights_cache_path(name)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib has no timeout of its own
    held = io.StringIO()
    try:
        with contextlib.redirect_stdout(held):
            state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # URLError, HTTPError, hash mismatch, unreadable file ...
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise ModelError(
            f"ImageNet weights for {name} are not in the torch hub cache ({path}) and could not "
            f"be downloaded ({reason}); copy the file there, or train from scratch with "
            "--no-pretrained (under mlflow run: -P pretrained=false)"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    sys.stderr.write(held.getvalue())
    return state


def ensure_imagenet_weights(name: str) -> None:
    """``name``'s ImageNet weights in the hub cache: nothing to do when the file is there,
    else downloaded now (ModelError offline), so that a command training several models can
    refuse before the first one trains rather than fail halfway."""
    if not os.path.isfile(weights_cache_path(name)):
        load_imagenet_state_dict(name)


def feature_blocks(features: nn.Sequential) -> list[nn.Sequential]:
    """The backbone's conv blocks, each ending at a MaxPool (VGG16: 5, AlexNet: 3)."""
    blocks, current = [], []
    for layer in features:
        current.append(layer)
        if isinstance(layer, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    return blocks


def build_transfer(config: BuildConfig) -> nn.Module:
    """torchvision ``config.model`` with a 10-class last layer.

    With ``config.freeze`` the features are frozen except the last ``unfreeze_blocks`` conv
    blocks (``config.extra``, default 0), which fine-tune with the head.
    """
    if config.pretrained:
        net = _with_weights(config.model, load_imagenet_state_dict(config.model))
    else:
        net = _ARCHS[config.model][0](weights=None)
    last = net.classifier[-1]
    net.classifier[-1] = nn.Linear(last.in_features, 10)
    if config.freeze:
        net.features.requires_grad_(False)
        unfreeze = int(config.extra.get("unfreeze_blocks", 0))
        blocks = feature_blocks(net.features)
        for block in blocks[len(blocks) - unfreeze :]:
            block.requires_grad_(True)
    return net


def _with_weights(name: str, state: dict[str, torch.Tensor]) -> nn.Module:
    """torchvision ``name`` holding ``state`` as its parameters, or ModelError naming the file
    when ``state`` is not that network's.

    Built on the meta device: torchvision's random initialisation, which the weights replace
    anyway, took 1.1 s for VGG16's 138 M parameters (2 threads) and twice the memory."""
    with torch.device("meta"):
        net = _ARCHS[name][0](weights=None)
    # assign=True keeps the file's dtypes, where copying into the built parameters made them
    # fp32: a file saved in half precision still gives fp32 parameters (a no-op for fp32).
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    try:
        net.load_state_dict(state, assign=True)
    except RuntimeError as exc:  # missing, unexpected or misshapen tensors
        reason = clip(str(exc), 200)
        raise ModelError(
            f"{weights_cache_path(name)} does not hold {name}'s ImageNet weights ({reason}); "
            "delete it to download them again, or train from scratch with --no-pretrained"
        ) from None
    return net


def split_features(net: nn.Module) -> tuple[nn.Module, nn.Module]:
    """(``features``, avgpool + flatten + ``classifier``): torchvision VGG / AlexNet's forward
    in two parts. The backbone ends before the adaptive pool, whose output (7x7 for VGG, 6x6
    for AlexNet) is larger than its input at small image sizes."""
    return net.features, nn.Sequential(net.avgpool, nn.Flatten(1), net.classifier)
