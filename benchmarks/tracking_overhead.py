"""What tracking adds to a one-epoch ``cnn`` run on full MNIST, as a ratio in one process.

The same one-epoch run twice per repeat, alternating which goes first: ``training.fit`` alone
(plain) and ``workflows.train`` against a local ``mlflow server`` (tracked: run creation, params,
datasets, one metrics call per epoch, the checkpoint after each epoch, plots, report, the
model). Both start from the loaded splits and build the model. Target: tracked / plain - 1 <= 2 %.

Timing noise on a shared 2-core machine is larger than 2 % of a run, so the script also sums
the time spent inside each tracking call (``breakdown``): that sum over the plain run's time
is the overhead without the noise. The first tracked run in a process also pays one-off
imports (plotly, torch.export, MLflow's model code); it is reported apart as ``cold``.

    python benchmarks/tracking_overhead.py --data-dir DIR [--recipe lab] [--repeats 5]
    python benchmarks/tracking_overhead.py --smoke     # seconds, on the committed subset
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import time
from collections import defaultdict
from collections.abc import Callable

import common
import mlflow
import torch

from mnist_tracker import data
from mnist_tracker.config import TrainConfig, resolve_config
from mnist_tracker.models import create_model
from mnist_tracker.reporting import images
from mnist_tracker.tracking import RunSink, records
from mnist_tracker.training import checkpoint, fit, resolve_runtime
from mnist_tracker.workflows import train as train_mod
from mnist_tracker.workflows.callbacks import Checkpointer, MetricLogger

TARGET = 0.02
# Where tracking time goes: (owner, attribute, label). The train workflow calls each through
# its module, the run's sink or a callback; the checkpoint kept after every epoch (capture,
# save, upload) counts too.
TIMED = [
    (RunSink, "log_params", "params"),
    (records, "dataset_inputs", "datasets"),
    (RunSink, "log_inputs", "datasets"),
    (MetricLogger, "on_epoch_end", "epoch metrics"),
    (RunSink, "log_metrics", "run metrics"),
    (images, "learning_curves_png", "plots"),
    (images, "confusion_matrix_png", "plots"),
    (images, "misclassified_grid", "plots"),
    (RunSink, "log_bytes", "plots"),
    (RunSink, "log_image", "plots"),
    (train_mod, "classification_report", "report"),
    (RunSink, "log_dict", "config.json and report"),
    (RunSink, "log_model", "model"),
    (checkpoint, "capture", "checkpoints"),
    (Checkpointer, "on_epoch_end", "checkpoints"),
    (Checkpointer, "discard", "checkpoints"),
]


class Breakdown:
    """Seconds spent in each tracking call, by label; a call made inside another timed call
    (``log_dict`` calls ``log_artifact``) counts once, for the outer one."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.depth = 0

    def wrap(self, fn: Callable, label: str) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            if self.depth:
                return fn(*args, **kwargs)
            self.depth += 1
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - start
                self.depth -= 1

        return timed

    def install(self) -> None:
        for owner, name, label in TIMED:
            setattr(owner, name, self.wrap(getattr(owner, name), label))
        original = train_mod.tracked_run

        @contextlib.contextmanager
        def timed_run(*args, **kwargs):
            start = time.perf_counter()
            manager = original(*args, **kwargs)
            run = manager.__enter__()
            self.seconds["run start/end"] += time.perf_counter() - start
            try:
                yield run
            except BaseException as exc:
                if not manager.__exit__(type(exc), exc, exc.__traceback__):
                    raise
            else:
                start = time.perf_counter()
                manager.__exit__(None, None, None)
                self.seconds["run start/end"] += time.perf_counter() - start

        train_mod.tracked_run = timed_run

    def take(self) -> dict[str, float]:
        taken = dict(self.seconds)
        self.seconds.clear()
        return taken


def plain(config: TrainConfig, splits: data.Splits) -> float:
    """Seconds for model + fit with no tracking at all."""
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    fit(config, splits, create_model(config))
    return time.perf_counter() - start


def tracked(config: TrainConfig, splits: data.Splits) -> float:
    """Seconds for the same run through ``workflows.train`` (tracking to the current URI)."""
    start = time.perf_counter()
    train_mod.train(config, train_mod.TrainOptions(experiment="tracking-overhead"), splits=splits)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="full MNIST folder [$MNIST_DATA_DIR]")
    parser.add_argument("--recipe", choices=["lab", "fast"], default="lab")
    parser.add_argument("--repeats", type=int, default=5, help="alternating pairs [5]")
    parser.add_argument("--smoke", action="store_true", help="seconds, on the committed subset")
    args = parser.parse_args()
    print(common.header("Tracking overhead: one-epoch cnn run, tracked vs plain"), flush=True)
    mnist = data.load_mnist(common.data_dir(args.data_dir, args.smoke), download_missing=False)
    config = resolve_runtime(resolve_config("cnn", recipe=args.recipe, epochs=1))
    splits = data.split_data(mnist, seed=config.seed)
    breakdown = Breakdown()
    breakdown.install()
    times: dict[str, list[float]] = {"plain": [], "tracked": []}
    with common.mlflow_server() as uri:
        mlflow.set_tracking_uri(uri)
        cold = tracked(config, splits)
        cold_parts = breakdown.take()
        parts: list[dict[str, float]] = []
        for i in range(1 if args.smoke else args.repeats):
            order = ("plain", "tracked") if i % 2 == 0 else ("tracked", "plain")
            for kind in order:
                times[kind].append((plain if kind == "plain" else tracked)(config, splits))
            parts.append(breakdown.take())
            print(f"repeat {i + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    base, with_tracking = common.median(times["plain"]), common.median(times["tracked"])
    labels = sorted({k for p in parts for k in p})
    warm = {k: common.median([p.get(k, 0.0) for p in parts]) for k in labels}
    print(f"\nconfig: {config.to_params()}")
    print(f"train images {len(splits.train_y):,}, test images {len(splits.test_y):,}")
    print("\n| measure | seconds | overhead vs plain |\n|---|---|---|")
    print(f"| plain run (median) | {base:.2f} | - |")
    print(f"| tracked run (median) | {with_tracking:.2f} | {with_tracking / base - 1:+.2%} |")
    pairs = [t / p - 1 for t, p in zip(times["tracked"], times["plain"], strict=True)]
    print(f"| tracked / plain - 1, median of the pairs | - | {common.median(pairs):+.2%} |")
    print(
        f"| tracking calls, summed (median) | {sum(warm.values()):.2f} "
        f"| {sum(warm.values()) / base:+.2%} |"
    )
    print(f"| cold: first tracked run | {cold:.2f} | {cold / base - 1:+.2%} |")
    print(
        f"| cold: its tracking calls, summed | {sum(cold_parts.values()):.2f} "
        f"| {sum(cold_parts.values()) / base:+.2%} |"
    )
    print("\n| tracking call | warm (s) | cold, first run (s) |\n|---|---|---|")
    for label in sorted(set(labels) | set(cold_parts)):
        print(f"| {label} | {warm.get(label, 0.0):.3f} | {cold_parts.get(label, 0.0):.3f} |")
    # The verdict reads the summed calls: wall-clock pairs on a shared 2-core machine scatter by
    # more than the 2 % being measured. Both are given: a fresh `mnist-tracker train` process
    # pays the cold figure, a process that logs several runs the warm one from its second on.
    for name, seconds in (("warm", sum(warm.values())), ("cold", sum(cold_parts.values()))):
        verdict = "yes" if seconds / base <= TARGET else "NO"
        print(f"target: tracking adds <= {TARGET:.0%} ({name}, summed calls): {verdict}")


if __name__ == "__main__":
    main()
