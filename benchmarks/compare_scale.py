"""How fast does `mnist-tracker compare` answer on an experiment holding 10,000 runs?

Builds a SQLite tracking store through MLflow's client (per run: ``create_run``, one
``log_batch`` with the params and metrics a real run logs, ``set_terminated``), or with
``--bulk`` the same rows written with SQL (``bulk_populate``: seconds for 100,000 runs), then
times the real command in fresh processes and prints the times with the command and the
machine.

    .venv/bin/python benchmarks/compare_scale.py                 # 10,000 runs, temp store
    .venv/bin/python benchmarks/compare_scale.py --db /tmp/big.db --keep --repeats 5
    .venv/bin/python benchmarks/compare_scale.py --smoke         # 50 runs: does it still work
    .venv/bin/python benchmarks/compare_scale.py --runs 100000 --bulk   # SQL-loaded store

``synthetic_specs`` and ``populate`` are also used by tests/test_compare.py (correctness at the
same size; the time bound is checked here, not in CI).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

MODELS = ("cnn", "deep_cnn", "vgg16", "alexnet", "vit")
EPOCHS = {"cnn": 10, "deep_cnn": 10, "vgg16": 5, "alexnet": 5, "vit": 10}
T0_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def synthetic_specs(n: int, seed: int = 0, *, full: bool = True) -> list[dict]:
    """``n`` run descriptions: model, status, start time, params, latest metrics, history.

    About 2% of the runs are RUNNING and 2% FAILED; start times are one second apart in list
    order. ``full`` gives each run every param of a real run (the benchmark); otherwise only
    what compare reads (the test, quicker to create). Per-epoch history is logged for the
    first metric keys only with ``full``.
    """
    rng = random.Random(seed)
    specs = []
    for i in range(n):
        model = MODELS[i % len(MODELS)]
        epochs = EPOCHS[model]
        roll = rng.random()
        status = "RUNNING" if roll < 0.02 else "FAILED" if roll < 0.04 else "FINISHED"
        accuracy = round(0.90 + 0.0999 * rng.random(), 6)
        params = {
            "model": model,
            "epochs": str(epochs),
            "batch_size": "64",
            "lr": "0.001" if model in ("cnn", "deep_cnn", "vit") else "0.0001",
            "precision": "bf16",
            "device": "cpu",
        }
        if full:
            params |= {
                "optimizer": "adamw" if model == "vit" else "adam",
                "weight_decay": "0.05" if model == "vit" else "1e-05",
                "scheduler": "cosine" if model == "vit" else "none",
                "image_size": "224" if model in ("vgg16", "alexnet") else "28",
                "pretrained": "true" if model in ("vgg16", "alexnet") else "false",
                "freeze": "true" if model in ("vgg16", "alexnet") else "false",
                "seed": str(i),
                "limit_train": "",
                "limit_test": "",
                "val_size": "0",
                "n_params": "422474",
                "n_trainable_params": "422474",
                "train_size": "60000",
                "test_size": "10000",
            }
        metrics = {
            "test_accuracy": accuracy,
            "test_f1_macro": round(accuracy - 0.001 * rng.random(), 6),
            "training_time_s": round(50 + 1000 * rng.random(), 3),
        }
        if full:
            metrics |= {
                "train_loss": round(0.2 * rng.random(), 6),
                "test_loss": round(0.2 * rng.random(), 6),
                "train_accuracy": round(accuracy + 0.005, 6),
                "epoch_time_s": round(5 + 100 * rng.random(), 3),
                "lr": float(params["lr"]),
                "total_time_s": metrics["training_time_s"] + 10.0,
                "train_throughput_img_s": round(500 + 1000 * rng.random(), 1),
            }
        specs.append(
            {
                "name": f"run-{i:05d}",
                "model": model,
                "status": status,
                "start_time": T0_MS + 1000 * i,
                "epochs": epochs,
                "params": params,
                "metrics": metrics,
                "history": full,
            }
        )
    return specs


def _create(args: tuple[str, str, list[dict]]) -> list[str]:
    """Create ``specs`` in experiment ``experiment_id`` at ``uri``; return their run ids."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    uri, experiment_id, specs = args
    client = MlflowClient(uri)
    run_ids = []
    for spec in specs:
        start = spec["start_time"]
        run = client.create_run(experiment_id, start_time=start, run_name=spec["name"])
        # The last epoch's values, and earlier epochs of the per-epoch ones (``history``).
        metrics = [Metric(k, v, ts, step) for k, v, ts, step in _metric_rows(spec)]
        client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=[Param(k, v) for k, v in spec["params"].items()],
            tags=[RunTag("mnist_tracker.synthetic", "true")],
        )
        if spec["status"] != "RUNNING":
            client.set_terminated(run.info.run_id, spec["status"], end_time=start + 2000)
        run_ids.append(run.info.run_id)
    return run_ids


def _metric_rows(spec: dict) -> list[tuple[str, float, int, int]]:
    """(key, value, timestamp, step) of every metric ``_create`` logs for ``spec``."""
    start, epochs = spec["start_time"], spec["epochs"]
    rows = [(key, float(v), start + 1000, epochs) for key, v in spec["metrics"].items()]
    if spec["history"]:
        rows += [
            (key, float(value) * (0.9 + 0.01 * step), start + step, step)
            for key, value in spec["metrics"].items()
            if key in ("train_loss", "test_loss", "train_accuracy", "test_accuracy")
            for step in range(1, epochs)
        ]
    return rows


def bulk_populate(uri: str, experiment: str, specs: list[dict]) -> list[str]:
    """``populate``'s runs, written with SQL in one transaction: seconds for 100,000 runs
    where MLflow's client takes minutes. The same rows as ``_create`` makes through the
    client (runs, tags, params, metrics, latest metrics); tests/test_compare.py checks that
    compare reads both stores alike. SQLite stores only (``sqlite:///PATH``)."""
    import sqlite3
    import uuid

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)  # creates the schema, and the experiment as MLflow makes it
    experiment_id = client.create_experiment(experiment)
    root = client.get_experiment(experiment_id).artifact_location
    run_ids = [uuid.uuid4().hex for _ in specs]
    runs, tags, params, metrics, latest = [], [], [], [], []
    for run_id, spec in zip(run_ids, specs, strict=True):
        start, status = spec["start_time"], spec["status"]
        end = None if status == "RUNNING" else start + 2000
        runs.append((run_id, spec["name"], "UNKNOWN", "", "", "unknown", status, start, end,
                     "", "active", f"{root}/{run_id}/artifacts", int(experiment_id)))  # fmt: skip
        tags += [("mlflow.runName", spec["name"], run_id),
                 ("mnist_tracker.synthetic", "true", run_id)]  # fmt: skip
        params += [(k, v, run_id) for k, v in spec["params"].items()]
        rows = _metric_rows(spec)
        metrics += [(k, v, ts, run_id, step, 0) for k, v, ts, step in rows]
        newest: dict[str, tuple] = {}
        for key, value, ts, step in rows:  # MLflow's latest: highest step, then timestamp
            if key not in newest or (step, ts, value) > newest[key][:3]:
                newest[key] = (step, ts, value)
        latest += [(k, v, ts, step, 0, run_id) for k, (step, ts, v) in newest.items()]
    db = sqlite3.connect(uri.removeprefix("sqlite:///"))
    with db:
        db.executemany(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, "
            "user_id, status, start_time, end_time, source_version, lifecycle_stage, "
            "artifact_uri, experiment_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            runs,
        )
        db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)", tags)
        db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?, ?, ?)", params)
        db.executemany(
            "INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            metrics,
        )
        db.executemany(
            "INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, run_uuid) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            latest,
        )
    db.close()
    return run_ids


def populate(uri: str, experiment: str, specs: list[dict], workers: int = 1) -> list[str]:
    """Create ``specs`` as runs of a new experiment at ``uri``; return run ids in spec order.

    With ``workers`` > 1 the runs are created by that many processes (worth it on tmpfs,
    where SQLite's commits are cheap; on a disk the writers mostly wait for each other).
    """
    from mlflow.tracking import MlflowClient

    experiment_id = MlflowClient(uri).create_experiment(experiment)
    chunks = [specs[k::workers] for k in range(workers)]
    if workers == 1:
        return _create((uri, experiment_id, specs))
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        parts = pool.map(_create, [(uri, experiment_id, chunk) for chunk in chunks])
    run_ids = [""] * len(specs)
    for k, part in enumerate(parts):
        run_ids[k::workers] = part
    return run_ids


def cpu() -> str:
    """CPU model and its notable vector extensions, from /proc/cpuinfo where there is one."""
    try:
        with open("/proc/cpuinfo") as fh:  # every core repeats the same fields
            info = {k.strip(): v.strip() for k, v in (ln.split(":", 1) for ln in fh if ":" in ln)}
    except OSError:
        return platform.processor() or platform.machine()
    present = info.get("flags", "").split()
    flags = [f for f in ("avx512f", "avx512_bf16", "amx_tile") if f in present]
    model = info.get("model name", platform.machine())
    return f"{model} ({', '.join(flags)})" if flags else model


def load_average() -> float:
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def header(args: list[str]) -> str:
    """What ran, on what, when (the lines every benchmark here prints first)."""
    from importlib.metadata import version

    return "\n".join(
        [
            "# compare on a SQLite store with many runs",
            f"command: python benchmarks/compare_scale.py {' '.join(args)}".rstrip(),
            f"date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}",
            f"machine: {cpu()}, {os.cpu_count()} cores, load average {load_average():.1f} "
            f"at start; {platform.system()} {platform.release()}",
            f"software: torch {version('torch')}, mlflow {version('mlflow')}, "
            f"python {platform.python_version()}",
        ]
    )


def time_command(command: list[str], repeats: int) -> list[float]:
    """Wall seconds of ``command`` in fresh processes; exits if it fails."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            sys.exit(f"command failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return times


def measure(db: Path, args: argparse.Namespace) -> None:
    """Create the runs in ``db`` (unless ``--keep`` finds them), time compare, print a table."""
    uri = f"sqlite:///{db}"
    experiment = f"scale-{args.runs}"
    if not (args.keep and db.exists()):
        db.unlink(missing_ok=True)
        specs = synthetic_specs(args.runs)
        start = time.perf_counter()
        if args.bulk:
            bulk_populate(uri, experiment, specs)
        else:
            populate(uri, experiment, specs, workers=args.workers)
        took = time.perf_counter() - start
        how = "SQL bulk load" if args.bulk else f"MLflow client, {args.workers} process(es)"
        per_run = 1000 * took / args.runs
        print(f"created {args.runs} runs in {took:.0f} s ({per_run:.1f} ms/run, {how})")
    command = [sys.executable, "-m", "mnist_tracker", "compare"]
    command += ["--experiment", experiment, "--tracking-uri", uri]
    load_before = load_average()
    times = time_command(command, args.repeats)
    print(f"timed: python {' '.join(command[1:])} ({args.repeats} fresh processes)\n")
    print("| runs | store (MB) | min (s) | median (s) | max (s) | load before / after |")
    print("|---:|---:|---:|---:|---:|---|")
    print(
        f"| {args.runs} | {db.stat().st_size / 1e6:.0f} | {min(times):.2f} | "
        f"{statistics.median(times):.2f} | {max(times):.2f} | "
        f"{load_before:.1f} / {load_average():.1f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--db", default=None, help="SQLite file [default: a temp dir]")
    parser.add_argument("--keep", action="store_true", help="Reuse --db if it holds the runs.")
    parser.add_argument("--workers", type=int, default=1, help="Processes creating runs.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bulk", action="store_true", help="Write the runs with SQL.")
    parser.add_argument("--smoke", action="store_true", help="50 runs, timed once (seconds).")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.repeats, args.keep = 50, 1, False
    print(header(sys.argv[1:]))
    if args.db:
        measure(Path(args.db).resolve(), args)
        return
    with tempfile.TemporaryDirectory(prefix="compare-scale-") as tmp:
        measure(Path(tmp) / "mlflow.db", args)


if __name__ == "__main__":
    main()
