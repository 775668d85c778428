"""Ending a command's process without the interpreter's teardown.

After its atexit handlers, CPython tears down every module and object it holds. With torch,
``torch._dynamo`` and MLflow loaded (every ``train``, ``tune`` and ``suite`` has them) that took
1.5 s on the 2-core CPU (a process that imports them and exits at once; 0.4 s for torch
alone): a fifth of a short ``train`` run, and nothing in it can be seen outside the process.
``leave`` does, in CPython's order, the parts of an exit that can: threading's exit calls and
the join of every non-daemon thread, then the atexit handlers (MLflow's async logging,
``logging``'s flush, temporary folders, multiprocessing), then the flush of stdout and stderr;
and ends the process there with ``os._exit``.

Contract for the package: nothing it writes may depend on a finalizer (``__del__``, module
teardown) to reach disk or a server; files are closed by ``with``, runs ended explicitly.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn


def exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` ends a process with: None is 0, an int itself; anything
    else is printed to stderr first and is 1, as Python does."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def leave(code: object = None) -> NoReturn:
    """End the process as ``sys.exit(code)`` would, minus the interpreter's teardown.

    The ordinary exit instead where something waits for the teardown: under a profiler or a
    tracer (cProfile, coverage and pdb write their results after the program returns), or on
    a Python without the two hooks this needs (CPython has both)."""
    status = exit_status(code)
    shutdown = getattr(threading, "_shutdown", None)
    run_exitfuncs = getattr(atexit, "_run_exitfuncs", None)
    watched = sys.getprofile() is not None or sys.gettrace() is not None
    if shutdown is None or run_exitfuncs is None or watched:
        sys.exit(status)
    # A second Ctrl-C while threads finish: CPython, too, goes on to the atexit handlers.
    with contextlib.suppress(KeyboardInterrupt):
        shutdown()  # ThreadPoolExecutor's exit calls, then every non-daemon thread joined
    run_exitfuncs()
    try:
        sys.stdout.flush()
    except Exception:
        status = 120  # what CPython exits with when its final flush of stdout fails
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    with contextlib.suppress(Exception):  # C libraries' stdio buffers, which os._exit drops
        import ctypes  # here, not at start-up: only an exit needs it

        ctypes.CDLL(None).fflush(None)
    os._exit(status & 0xFF)
