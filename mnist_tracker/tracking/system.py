"""System metrics of a run (CPU, memory, disk, network; NVIDIA GPUs with nvidia-ml-py), in
the run's "System metrics" tab, sampled by MLflow's own monitor while the block runs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

SAMPLE_EVERY_S = 5.0  # MLflow's default is 10 s: too coarse for a run of a minute


@contextlib.contextmanager
def system_metrics(run_id: str, uri: str, enabled: bool = True) -> Iterator[None]:
    """Sample system metrics into ``run_id`` until the block ends. Without psutil (or when
    ``enabled`` is False) nothing is sampled; a failing monitor never fails the run."""
    if not enabled:
        yield
        return
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
    except ImportError:  # psutil missing: the run goes on without
        logging.getLogger(__name__).warning("system metrics off: psutil is not installed")
        yield
        return
    monitor = SystemMetricsMonitor(run_id, sampling_interval=SAMPLE_EVERY_S, tracking_uri=uri)
    monitor.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            monitor.finish()
            # MLflow's loop drops the sample it was taking when stopped: a run shorter than
            # the interval would show no system metrics at all. One last one, taken now.
            monitor.collect_metrics()
            monitor.publish_metrics(monitor.aggregate_metrics())
            monitor.mlflow_logger.flush()
