"""The garbage collector's pause during a command's start-up (``mnist_tracker.collector``)."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from mnist_tracker import collector


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
