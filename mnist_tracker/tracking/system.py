"""System metrics of a run (CPU, memory, disk, network; NVIDIA or AMD GPUs when their
libraries are installed), in the run's "System metrics" tab under MLflow's names
(``system/cpu_utilization_percentage``, ...).

Contracts:
- The samples are taken by MLflow's own metric monitors, every ``SAMPLE_EVERY_S`` seconds
  (``$MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` wins) in a daemon thread, and sent through the
  run's ``RunSink``: with the server away they wait in the outbox like every other metric, and
  a dead server costs the sink's few seconds, not minutes. (MLflow's ``SystemMetricsMonitor``
  is not used: its thread asks the server for the run every interval with MLflow's default
  retries, so a run whose server died took minutes to exit, and it logs the failing URL,
  password included.)
- One last sample is taken when the block ends, so a run shorter than the interval still has
  system metrics. A resumed run goes on after its last step.
- A failing sample never fails the run; without psutil nothing is sampled (one warning).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .sink import RunSink

SAMPLE_EVERY_S = 5.0  # MLflow's default is 10 s: too coarse for a run of a minute
PREFIX = "system/"

_log = logging.getLogger(__name__)


def sample_every_s() -> float:
    return float(os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL") or SAMPLE_EVERY_S)


def _monitors() -> list:
    """MLflow's CPU (and memory), disk and network monitors, and a GPU one when NVML or ROCm
    answers. Raises ImportError without psutil."""
    from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor
    from mlflow.system_metrics.metrics.disk_monitor import DiskMonitor
    from mlflow.system_metrics.metrics.network_monitor import NetworkMonitor

    monitors = [CPUMonitor(), DiskMonitor(), NetworkMonitor()]
    for module, name in (("gpu_monitor", "GPUMonitor"), ("rocm_monitor", "ROCMMonitor")):
        with contextlib.suppress(Exception):  # no such GPU, or its library is missing
            mod = importlib.import_module(f"mlflow.system_metrics.metrics.{module}")
            monitors.append(getattr(mod, name)())
            break
    return monitors


def last_step(sink: RunSink) -> int:
    """The highest step of the run's system metrics on the server; -1 when it has none (or
    the server cannot tell)."""
    with contextlib.suppress(Exception):
        metrics = sink.client.get_run(sink.run_id).data._metric_objs
        return max((m.step for m in metrics if m.key.startswith(PREFIX)), default=-1)
    return -1


class Sampler:
    """Samples every ``every_s`` seconds into ``sink`` from ``start`` until ``stop``."""

    def __init__(self, sink: RunSink, monitors: list, every_s: float, first_step: int = 0):
        self.sink, self.monitors, self.every_s = sink, monitors, every_s
        self.step = first_step
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-metrics", daemon=True)

    def sample(self) -> dict[str, float]:
        """Take one sample of every monitor; returns it under MLflow's ``system/`` names."""
        values: dict[str, float] = {}
        for monitor in self.monitors:
            monitor.collect_metrics()
            values.update(monitor.aggregate_metrics())
            monitor.clear_metrics()
        return {PREFIX + k: v for k, v in values.items()}

    def publish(self) -> None:
        """One sample, sent (or kept in the outbox) at the next step."""
        try:
            values = self.sample()
            if values:
                self.sink.log_metrics(values, step=self.step)
                self.step += 1
        except Exception as exc:  # a sample is not worth a run
            _log.debug("system metrics sample dropped: %s", exc)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.publish()

    def start(self) -> Sampler:
        # psutil's CPU percentage is measured since its previous call: prime it, so the
        # first sample covers the first interval rather than reading 0.
        with contextlib.suppress(Exception):
            self.sample()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the thread (after the call it may be in), then take the last sample."""
        self._stop.set()
        self._thread.join()
        self.publish()


@contextlib.contextmanager
def system_metrics(sink: RunSink, enabled: bool = True, resumed: bool = False) -> Iterator[None]:
    """Sample system metrics into ``sink``'s run until the block ends (see the module's
    contract). ``resumed``: the run already has samples; the new ones follow them."""
    if not enabled:
        yield
        return
    try:
        monitors = _monitors()
    except ImportError:  # psutil missing: the run goes on without
        _log.warning("system metrics off: psutil is not installed")
        yield
        return
    first = last_step(sink) + 1 if resumed else 0
    sampler = Sampler(sink, monitors, sample_every_s(), first).start()
    try:
        yield
    finally:
        sampler.stop()
