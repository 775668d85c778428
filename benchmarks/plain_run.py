"""One training run as ``mnist-tracker train`` makes it, minus MLflow: the untracked process of
``tracking_overhead.py``'s fresh-process pairs.

The same steps as the CLI's ``train`` before and after its run exists: resolve the model's
recipe and the runtime, load and verify MNIST, fit the config to the data, seed, build the
model, plan the feature cache, ``fit`` (a test evaluation every epoch), and end through the
CLI's own exit (``cli.leave``: no interpreter teardown). The garbage collector is paused for
the start-up and resumed at the first epoch, as the CLI does (``collector``). Nothing of
MLflow is imported. Prints one JSON line: ``training_time_s`` and the config's params, which
the caller compares with the tracked run's.

    python benchmarks/plain_run.py --data-dir DIR [--recipe lab] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from mnist_tracker import collector
from mnist_tracker.cli.leave import leave
from mnist_tracker.config import fit_to_data, resolve_config
from mnist_tracker.models import create_model
from mnist_tracker.training import fit, resolve_runtime, seed_everything
from mnist_tracker.training.callbacks import StartupOver
from mnist_tracker.training.features import plan_cache
from mnist_tracker.workflows.data import prepare_data


def main() -> None:
    collector.pause()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--recipe", choices=["lab", "fast"], default="lab")
    parser.add_argument("--epochs", type=int, default=1)
    args = parser.parse_args()
    config = resolve_runtime(resolve_config("cnn", recipe=args.recipe, epochs=args.epochs))
    splits = prepare_data(config, args.data_dir)
    config = fit_to_data(config, len(splits.train_y), len(splits.test_y))
    seed_everything(config.seed)
    model = create_model(config)
    plan = plan_cache(config, model, splits, torch.device(config.device))
    config = config.replace(feature_cache=plan.param)
    result = fit(config, splits, model, [StartupOver()], plan=plan)
    params = config.to_params()
    print(json.dumps({"training_time_s": result.final["training_time_s"], "params": params}))
    sys.stdout.flush()
    leave(0)


if __name__ == "__main__":
    main()
