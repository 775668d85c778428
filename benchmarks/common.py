"""What every benchmark script shares: the machine header, data folders, medians, an MLflow
server, and the lab's pipeline (torchvision dataset, per-image transforms, DataLoader, fp32).

Benchmarks are run by hand (``python benchmarks/<name>.py``); each takes ``--smoke`` to run in
seconds on the committed subset, which CI does so that they keep working.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mlflow
import torch
import torch.nn.functional as F
from torch import nn

from mnist_tracker import data
from mnist_tracker.config import TrainConfig
from mnist_tracker.models import ModelSpec, get_spec
from mnist_tracker.models.cnn import in_lab_order
from mnist_tracker.models.layers import Dropout
from mnist_tracker.models.vit import Attention

REPO = Path(__file__).resolve().parent.parent
SUBSET = REPO / "tests" / "data" / "mnist"
# The CLI as this interpreter runs it (a GPU machine may have the package on PYTHONPATH only).
CLI = [sys.executable, "-m", "mnist_tracker"]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's guess elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def header(title: str) -> str:
    """The lines every benchmark prints first: what ran, on what, when."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return "\n".join(
        [
            f"# {title}",
            f"command: {shlex.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}",
            f"date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"machine: {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch "
            f"threads, GPU {gpu}, load average {load:.1f} at start",
            f"software: torch {torch.__version__}, mlflow {mlflow.__version__}, "
            f"python {platform.python_version()}",
        ]
    )


def data_dir(given: str | None, smoke: bool) -> Path:
    """The MNIST folder: the committed subset in smoke mode, else ``--data-dir`` or
    ``$MNIST_DATA_DIR``. Exits with a message when neither is given."""
    if smoke:
        return SUBSET
    chosen = given or os.environ.get(data.ENV_DATA_DIR)
    if not chosen:
        sys.exit(f"pass --data-dir (or set {data.ENV_DATA_DIR}) to the full MNIST folder")
    return Path(chosen)


def median(values: list[float]) -> float:
    return statistics.median(values)


def verdict(met: bool, smoke: bool = False, not_judged: str | None = None) -> str:
    """A target's "met" cell: ``yes`` or ``NO``; ``n/a (smoke)`` in smoke mode (a few images
    prove the plumbing, not a figure) and ``n/a (<not_judged>)`` where the target does not
    apply to this measurement."""
    if smoke:
        return "n/a (smoke)"
    if not_judged is not None:
        return f"n/a ({not_judged})"
    return "yes" if met else "NO"


def timed(command: list[str], cwd: Path) -> tuple[float, str]:
    """Run ``command`` in ``cwd`` (where its artifacts land) to its end; its wall time and
    stdout. Exits when it fails."""
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    return wall, proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server() -> Iterator[str]:
    """A local ``mlflow server`` (SQLite backend, served artifacts) in a temporary folder;
    yields its URI and stops it afterwards. When ``$MNIST_BENCH_TRACKING_URI`` names a server
    already running, yields that one instead: the test suite's smoke runs share its session
    server (a server start is seconds of CPU); a measurement by hand leaves it unset."""
    shared = os.environ.get("MNIST_BENCH_TRACKING_URI")
    if shared:
        print(f"tracking to {shared} ($MNIST_BENCH_TRACKING_URI)", flush=True)
        _wait_healthy(shared, None, timeout=30.0)
        yield shared
        return
    with tempfile.TemporaryDirectory(prefix="mnist-bench-mlflow-") as root:
        port = free_port()
        log = open(Path(root) / "server.log", "w")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                sys.executable,  # not the ``mlflow`` script: a --target install has none
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{root}/mlflow.db",
                "--artifacts-destination",
                f"{root}/artifacts",
                "--serve-artifacts",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            # As deploy/mlflow-server.sh: no job runner (7 processes, unused by these runs).
            env={"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ},
        )
        uri = f"http://127.0.0.1:{port}"
        try:
            _wait_healthy(uri, proc)
            yield uri
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            log.close()


def _wait_healthy(uri: str, proc: subprocess.Popen | None, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with code {proc.returncode}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{uri}/health", timeout=2) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.3)
    raise TimeoutError(f"mlflow server at {uri} did not answer within {timeout:.0f}s")


# ---------------------------------------------------------------------------------------------
# The lab's pipeline


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, dropout_p=p)


def lab_network(config: TrainConfig) -> nn.Module:
    """The bare network as the lab built it: ours with ``torch.nn.Dropout`` for our
    ``Dropout``, the vit's attention dropout SDPA's own (the same layers, with slower
    masks on CPU), and the conv nets' ReLU before their MaxPool (``cnn.in_lab_order``)."""
    net = in_lab_order(get_spec(config.model).build(config))
    for module in net.modules():
        if isinstance(module, Attention):
            module.attend = _sdpa
    for parent in list(net.modules()):
        for name, child in parent.named_children():
            if isinstance(child, Dropout):
                setattr(parent, name, nn.Dropout(child.p))
    return net


def lab_loader(
    images: torch.Tensor,
    labels: torch.Tensor,
    spec: ModelSpec,
    image_size: int,
    batch_size: int,
    root: Path,
) -> torch.utils.data.DataLoader:
    """The lab's input pipeline over ``images`` (uint8 (N, 28, 28)): the files written as IDX
    for ``torchvision.datasets.MNIST``, per-image PIL transforms (resize and grey to RGB for the
    transfer models, ``ToTensor``, ``Normalize``), a shuffling ``DataLoader`` in the process."""
    from torchvision import datasets, transforms

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    data.write_idx(raw / data.FILES["train_images"].name, images.numpy())
    data.write_idx(raw / data.FILES["train_labels"].name, labels.numpy().astype("uint8"))
    data.write_idx(raw / data.FILES["test_images"].name, images[:1].numpy())
    data.write_idx(raw / data.FILES["test_labels"].name, labels[:1].numpy().astype("uint8"))
    steps: list = []
    if spec.input.channels == 3:
        steps += [transforms.Resize((image_size, image_size)), transforms.Grayscale(3)]
    steps += [transforms.ToTensor(), transforms.Normalize(spec.input.mean, spec.input.std)]
    dataset = datasets.MNIST(str(root), train=True, transform=transforms.Compose(steps))
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True)


def loader_rate(loader: torch.utils.data.DataLoader) -> float:
    """Images per second of the lab's input pipeline alone (no model): what it costs."""
    seen = 0
    start = time.perf_counter()
    for _, yb in loader:
        seen += len(yb)
    return seen / (time.perf_counter() - start)


def lab_epoch(
    net: nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
) -> float:
    """One fp32 training pass the lab's way; returns images per second."""
    net.train()
    seen = 0
    start = time.perf_counter()
    for xb, yb in loader:
        xb, yb = xb.to(device), yb.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(net(xb), yb)
        loss.backward()
        optimizer.step()
        seen += len(yb)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return seen / (time.perf_counter() - start)
