"""Wall time of ``mnist-tracker train --model cnn --recipe fast`` on full MNIST, end to end.

The command runs as a user would run it (a fresh process: imports, data loading and checks,
training, evaluation every epoch, tracking to a local ``mlflow server`` with plots and the
model), timed from launch to exit. Its per-epoch lines give the time at which the test
accuracy first reached the target. Target: 99.3 % test accuracy within 40 s on the 2-core
development CPU (issue 13; issue 5 asked for 150 s).

    python benchmarks/time_to_accuracy.py --data-dir DIR [--repeats 1] [-- extra train options]
    python benchmarks/time_to_accuracy.py --smoke     # seconds, on the committed subset
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import common

TARGET_ACCURACY = 0.993
TARGET_SECONDS = 40.0  # issue 13 (was 150 s in issue 5)
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+) .*test_acc ([\d.]+)%")
SMOKE_OPTIONS = ["--epochs", "1", "--limit-train", "512", "--limit-test", "128"]  # fast: batch 256


@dataclass
class Attempt:
    wall_s: float
    final_accuracy: float | None
    reached_at_s: float | None  # seconds from launch to the first epoch line at the target
    reached_epoch: int | None
    epochs: int


def run_once(data_dir: Path, uri: str, extra: list[str]) -> Attempt:
    """Run the command once, reading its epoch lines as they come."""
    command = [
        *common.CLI,
        "train",
        "--model",
        "cnn",
        "--recipe",
        "fast",
        "--data-dir",
        str(data_dir),
        "--tracking-uri",
        uri,
        "--experiment",
        "time-to-accuracy",
        *extra,
    ]
    print("$ " + " ".join(command), flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    reached_at = reached_epoch = accuracy = None
    epochs = 0
    for line in proc.stderr:
        print("  " + line.rstrip(), flush=True)
        match = EPOCH_LINE.match(line)
        if match:
            epochs = int(match[1])
            accuracy = float(match[3]) / 100
            if reached_at is None and accuracy >= TARGET_ACCURACY - 1e-9:
                reached_at, reached_epoch = time.perf_counter() - start, epochs
    out, _ = proc.communicate()
    wall = time.perf_counter() - start
    print("  " + out.strip().replace("\n", "\n  "), flush=True)
    if proc.returncode != 0:
        sys.exit(f"the command failed with exit code {proc.returncode}")
    return Attempt(wall, accuracy, reached_at, reached_epoch, epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="full MNIST folder [$MNIST_DATA_DIR]")
    parser.add_argument("--repeats", type=int, default=1, help="runs of the command [1]")
    parser.add_argument("--smoke", action="store_true", help="seconds, on the committed subset")
    parser.add_argument("extra", nargs="*", help="more train options, after --")
    args = parser.parse_args()
    print(common.header("Time to 99.3% test accuracy: cnn, --recipe fast, end to end"))
    folder = common.data_dir(args.data_dir, args.smoke)
    extra = (SMOKE_OPTIONS if args.smoke else []) + args.extra
    attempts = []
    with common.mlflow_server() as uri:
        for _ in range(1 if args.smoke else args.repeats):
            attempts.append(run_once(folder, uri, extra))
    print(
        "\n| run | wall time (s) | final test accuracy | reached 99.3% at (s) | epoch | "
        "target: >= 99.3% within 40 s |\n|---|---|---|---|---|---|"
    )
    for i, a in enumerate(attempts, 1):
        # The run's result is its last epoch (GUIDE.md section 3): passing through 99.3 % on
        # the way is not enough, the command must end there, within the time.
        met = (
            a.final_accuracy is not None
            and a.final_accuracy >= TARGET_ACCURACY - 1e-9
            and a.wall_s <= TARGET_SECONDS
        )
        acc = "-" if a.final_accuracy is None else f"{a.final_accuracy:.2%}"
        reached = "-" if a.reached_at_s is None else f"{a.reached_at_s:.1f}"
        print(
            f"| {i} | {a.wall_s:.1f} | {acc} | {reached} | {a.reached_epoch or '-'}/{a.epochs} "
            f"| {common.verdict(met, args.smoke)} |"
        )


if __name__ == "__main__":
    main()
