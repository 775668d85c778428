"""Accuracy on full MNIST, trained for real by the command a user types (`full_data`: CI has
the data; elsewhere these skip with the reason)."""

from __future__ import annotations

import subprocess

import pytest
from mlflow.tracking import MlflowClient

from mnist_tracker.training.runtime import cpu_has_fast_bf16

from .conftest import BIN

pytestmark = [pytest.mark.slow, pytest.mark.full_data]


def _train_cnn(full_data_dir, tracking_uri: str, cli_env, *args: str):
    """`mnist-tracker train --model cnn ARGS` on full MNIST: its one FINISHED run, which saw
    all 60,000 training and 10,000 test images."""
    proc = subprocess.run(
        [str(BIN / "mnist-tracker"), "train", "--model", "cnn", *args,
         "--data-dir", str(full_data_dir), "--tracking-uri", tracking_uri],
        capture_output=True, text=True, env=cli_env, timeout=1800,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("mnist").experiment_id])
    assert run.info.status == "FINISHED"
    assert (run.data.params["train_size"], run.data.params["test_size"]) == ("60000", "10000")
    return run


def test_one_epoch_of_the_lab_cnn_on_full_mnist(full_data_dir, sqlite_uri, cli_env):
    """README: `make run MNIST_DATA_DIR=... ARGS="--epochs 1"` (the lab's cnn recipe, one
    epoch) gave 98.33 % test accuracy in bf16 (2026-12-07, after dropout's scale changed;
    98.05 % on 2026-12-06; 98.41 % in fp32 on 2026-12-02: one seed's epoch each).
    The recipe's 10 epochs (GUIDE's 99.38 %) take about 2 minutes on this 2-core CPU in bf16,
    about 1.8 times that with one thread as `make test` runs it (the fast recipe: 51 s against
    28 s), and far more on a CPU without native bf16 (fp32): too long for CI. One epoch is
    checked, against a bound a few tenths below every seed measured by hand."""
    # Measured 2026-12-03 on the 2-core CPU, shared with other jobs (load average 6-10):
    # `mnist-tracker train --model cnn --epochs 1 --data-dir /work/shared/data/mnist
    # --tracking-uri sqlite:///mlflow-lab.db` gave test_accuracy 0.9824 (F1 0.9823; fp32,
    # seed 42; 575 s for the epoch, 697 s end to end on that loaded machine). README's run of
    # 2026-12-02 gave 0.9841: the bound sits 0.34 below the lower of the two.
    # Since every recipe's precision is auto (2026-12-06), a CPU with native bf16 trains it in
    # bf16. One epoch's figure depends on the seed's draws: with OMP_NUM_THREADS=1 (as `make
    # test` runs it), seeds 42 and 1-7, bf16 on the 2-core AMD EPYC with avx512_bf16, the
    # dropout masks of 2026-12-06 gave 97.81-98.71 % (median 98.43 %; seed 42: 97.83 %), the
    # masks before them 98.08-98.56 % (median 98.43 %; benchmarks/RESULTS.md, stop 28). The
    # bound sits 0.31 below the lowest of those 16 runs: a recipe that lost its learning rate,
    # its data or its labels falls far below it.
    run = _train_cnn(full_data_dir, sqlite_uri, cli_env, "--epochs", "1")
    params = run.data.params
    assert (params["recipe"], params["epochs"], params["batch_size"]) == ("lab", "1", "64")
    if params["device"] == "cpu":  # --precision auto: bf16 where the CPU has it natively
        assert params["precision"] == ("bf16" if cpu_has_fast_bf16() else "fp32"), params
    assert run.data.metrics["test_accuracy"] >= 0.975


def test_the_fast_recipe_reaches_99_3_percent_on_full_mnist(full_data_dir, sqlite_uri, cli_env):
    """README: `--recipe fast` (cnn: batch 256, one-cycle to 1e-2, 3 epochs, lighter dropout)
    reaches 99.3 % test accuracy on full MNIST. Its last epoch is the run's result
    (GUIDE.md section 3), so that is what must reach it, not a better epoch on the way."""
    # Measured (benchmarks/RESULTS.md, stop 27, a CPU with avx512_bf16): seed 42 ends at 99.39 %
    # in bf16 and 99.33 % in fp32 (auto on a CPU without native bf16); with one thread, as
    # `make test` runs it (OMP_NUM_THREADS=1), 99.45 % (bf16) and 99.37 % (fp32). 17 runs over
    # 8 seeds: 99.33-99.53 %; epoch 2 ended at 98.93-99.22 %, so a recipe that lost an epoch
    # fails here. With the dropout masks of stop 28 (8 random bits an element), seeds 42 and
    # 1-7 in bf16 end at 99.33-99.46 %, seed 42 at 99.40 % in fp32 and 99.36 % in bf16 with
    # one thread; epoch 2 at 98.96-99.29 %.
    run = _train_cnn(full_data_dir, sqlite_uri, cli_env, "--recipe", "fast")
    params = run.data.params
    assert (params["recipe"], params["epochs"], params["batch_size"]) == ("fast", "3", "256")
    assert (params["scheduler"], float(params["lr"])) == ("onecycle", 0.01), params
    if params["device"] == "cpu":  # --precision auto: bf16 where the CPU has it natively
        assert params["precision"] == ("bf16" if cpu_has_fast_bf16() else "fp32"), params
    history = MlflowClient(sqlite_uri).get_metric_history(run.info.run_id, "test_accuracy")
    epochs = sorted(history, key=lambda m: m.step)
    assert [m.step for m in epochs] == [1, 2, 3]
    assert epochs[-1].value >= 0.993
