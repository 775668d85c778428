"""The garbage collector's pause during a command's start-up (``mnist_tracker.collector``)."""

from __future__ import annotations

import gc
import subprocess
import sys
import warnings
import weakref
from types import SimpleNamespace

import pytest

from mnist_tracker import collector

from .conftest import copy_subset


@pytest.fixture
def restored():
    """The test process's collector as it was, whatever a test did to it."""
    was_enabled = gc.isenabled()
    yield
    collector._paused = False
    gc.unfreeze()
    (gc.enable if was_enabled else gc.disable)()


@pytest.mark.fast
def test_pause_then_resume_freezes_what_exists_and_collects_again(restored):
    gc.enable()
    collector.pause()
    assert not gc.isenabled() and collector.paused()
    collector.resume()
    assert gc.isenabled() and not collector.paused()
    assert gc.get_freeze_count() > 1000  # this process's modules and objects
    collector.resume()  # a second epoch's call changes nothing
    assert gc.isenabled()


@pytest.mark.fast
def test_a_collector_the_program_turned_off_stays_off(restored):
    gc.disable()
    collector.pause()
    collector.resume()
    assert not gc.isenabled() and gc.get_freeze_count() == 0


class _Node:
    """An object that can be in a reference cycle and be watched through a weak reference."""


def _cycle() -> tuple[_Node, weakref.ref]:
    node = _Node()
    node.itself = node
    return node, weakref.ref(node)


@pytest.mark.fast
def test_resume_without_freeze_leaves_what_the_pause_made_collectable(restored):
    """A cycle made while paused and still referenced when the collector comes back on (an
    exception on its way up holding its frames) is freed once it is garbage; frozen, as the
    first epoch's resume does, it would never be."""
    gc.enable()
    frozen_before = gc.get_freeze_count()
    collector.pause()
    held, ref = _cycle()
    collector.resume(freeze=False)
    assert gc.isenabled() and not collector.paused()
    assert gc.get_freeze_count() == frozen_before
    del held
    gc.collect()
    assert ref() is None
    # What freeze=False avoids: a cycle alive at a freezing resume outlives its last name.
    collector.pause()
    held, ref = _cycle()
    collector.resume()
    del held
    gc.collect()
    assert ref() is not None


@pytest.mark.fast
def test_a_training_that_fails_before_its_first_epoch_turns_the_collector_back_on(
    restored, tmp_path
):
    """`train` raises a DataError before any run exists (a truncated MNIST file): the
    collector the CLI paused is on again, unfrozen, so what the failure leaves (a tuning
    trial's model and data, held by the exception's frames) can be collected."""
    from mnist_tracker.config import resolve_config
    from mnist_tracker.errors import DataError
    from mnist_tracker.workflows.train import TrainOptions, train

    copy_subset(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-40])
    gc.enable()
    frozen_before = gc.get_freeze_count()
    collector.pause()
    config = resolve_config("cnn", epochs=1, device="cpu")
    with pytest.raises(DataError, match="truncated"):
        train(config, TrainOptions(data_dir=tmp_path, log_artifacts=False))
    assert gc.isenabled() and not collector.paused()
    assert gc.get_freeze_count() == frozen_before


@pytest.mark.slow
def test_the_cli_collects_nothing_before_training_and_collects_during_it(tmp_path, subset_dir):
    """The console script's whole start-up (imports, store, model, optimiser) runs without a
    collection; the first epoch turns the collector on with the start-up's objects frozen,
    and the process ends with it on. A hook counts collections before the freeze."""
    code = (
        "import atexit, gc, sys\n"
        "from mnist_tracker.cli import entry\n"
        "early = []\n"
        "def seen(phase, info):\n"
        "    if phase == 'start' and gc.get_freeze_count() == 0:\n"
        "        early.append(info['generation'])\n"
        "gc.callbacks.append(seen)\n"
        "atexit.register(lambda: print('GC', gc.isenabled(), gc.get_freeze_count(), early))\n"
        "sys.argv = ['mnist-tracker', 'train', '--model', 'cnn', '--epochs', '1',\n"
        "    '--limit-train', '64', '--limit-test', '64', '--data-dir', sys.argv[1],\n"
        "    '--tracking-uri', sys.argv[2]]\n"
        "entry()\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(subset_dir), f"sqlite:///{tmp_path}/s.db"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    (line,) = [x for x in out.stdout.splitlines() if x.startswith("GC ")]
    _, enabled, frozen, early = line.split(" ", 3)
    assert enabled == "True" and early == "[]", line
    assert int(frozen) > 100_000, line  # torch, MLflow, SQLAlchemy: the start-up's objects


@pytest.mark.fast
def test_a_tuning_worker_that_only_waits_turns_the_collector_back_on(restored, tmp_path):
    """A worker that finds the study full while another worker's trial still runs waits for
    it (heartbeats on: it may go stale and come back as a retry), maybe for hours and with no
    epoch of its own: the collector the CLI paused is on again, unfrozen, while it waits."""
    import optuna

    from mnist_tracker.workflows.study import StudyLock, TuneSettings, open_storage
    from mnist_tracker.workflows.tune import _work

    settings = TuneSettings(
        model="cnn",
        trials=1,
        timeout=1.5,
        storage=f"sqlite:///{tmp_path}/optuna.db",
        study_name="waits",
        heartbeat_interval=1,
    )
    study = optuna.create_study(
        study_name="waits", storage=open_storage(settings), direction="maximize"
    )
    with warnings.catch_warnings():  # optuna: heartbeats are meant for optimize, not ask
        warnings.simplefilter("ignore", UserWarning)
        study.ask()  # the other worker's trial: RUNNING, and it fills the study
    lock = StudyLock.open(settings.storage, "waits")
    gc.enable()
    frozen_before = gc.get_freeze_count()
    collector.pause()
    said = []
    objective = SimpleNamespace(parent_run_id="unused", workers=None)  # never called: full
    assert _work(study, settings, lock, objective, said.append) is False
    assert said == ["timeout reached: this worker stops; the study goes on with the others"]
    assert gc.isenabled() and not collector.paused()
    assert gc.get_freeze_count() == frozen_before
