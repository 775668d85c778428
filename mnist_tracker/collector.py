"""Python's cyclic garbage collector during a command's start-up.

Before its first training step a ``train`` imports torch, ``torch._dynamo``, MLflow,
SQLAlchemy and matplotlib: about a million long-lived objects and next to no garbage.
Those allocations set the collector off again and again, and each full collection walks every
object made so far. On the 2-core CPU that was 1.8 s of a 1-epoch cnn run on full MNIST
(time outside training 6.6 s with the collector, 4.8 s without; the imports alone 3.9-4.0 s
against 2.6-2.7 s; benchmarks/RESULTS.md, round two).

So the CLI ``pause``s the collector when it starts, and a fit ``resume``s it when its first
epoch starts, with everything made so far frozen (``gc.freeze``): a long run collects its own
cycles, and its collections do not walk the start-up's objects again. A training that ends
without an epoch turns it back on unfrozen (``resume(freeze=False)``), so that what a failure
leaves behind is collected. A command that never trains (compare, promote, sync) keeps it
paused: short-lived, and what it makes is freed by reference counting (a table, a query's
rows), not by the collector.

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


def resume(*, freeze: bool = True) -> None:
    """Turn the collector back on, if ``pause`` turned it off (otherwise nothing: cheap to call
    again).

    ``freeze`` (the first epoch's call): what exists is the start-up's, alive for the whole
    process, so it is frozen as it is, without a collection first. A full pass over the
    million objects costs about 0.5 s on the 2-core CPU and frees about 14,000 (the imports'
    own cycles): those are frozen with the rest, once a process.

    ``freeze=False``: a command leaves start-up without an epoch (a failure before the first,
    a resumed run with none left, a tuning worker that only waits). What exists may include
    garbage still referenced for a moment: an exception on its way up holds its frames, the
    model and the data. Frozen, a cycle among those would never be freed; unfrozen, the
    collector frees it once it is garbage.
    """
    global _paused
    if _paused:
        _paused = False
        if freeze:
            gc.freeze()
        gc.enable()


def paused() -> bool:
    """Whether ``pause`` has the collector off now."""
    return _paused
