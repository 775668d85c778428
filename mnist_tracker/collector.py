"""Python's cyclic garbage collector during a command's start-up.

Before its first training step a ``train`` imports torch, ``torch._dynamo``, MLflow,
SQLAlchemy and matplotlib: a few hundred thousand long-lived objects and next to no garbage.
Those allocations set the collector off again and again, and each full collection walks every
object made so far. On the 2-core CPU that was 1.8 s of a 1-epoch cnn run on full MNIST
(time outside training 6.6 s with the collector, 4.8 s without; the imports alone 3.9-4.0 s
against 2.6-2.7 s; benchmarks/RESULTS.md, round two).

So the CLI ``pause``s the collector when it starts, and a fit ``resume``s it when its first
epoch starts, with everything made so far frozen (``gc.freeze``): a long run collects its own
cycles, and its collections do not walk the start-up's objects again. A command that never
trains (compare, promote, sync) keeps it paused: short-lived, and what it makes is freed by
reference counting (a table, a query's rows), not by the collector.

Only a pause made here is undone here: a program that turned the collector off itself keeps
it off.
"""

from __future__ import annotations

import gc

_paused = False


def pause() -> None:
    """Turn the collector off for the start-up, unless it already is off."""
    global _paused
    if gc.isenabled():
        gc.disable()
        _paused = True


def resume() -> None:
    """Start-up is over: freeze what exists and turn the collector back on, if ``pause`` had
    turned it off (otherwise nothing). Cheap to call again."""
    global _paused
    if _paused:
        _paused = False
        gc.freeze()
        gc.enable()


def paused() -> bool:
    """Whether ``pause`` has the collector off now."""
    return _paused
