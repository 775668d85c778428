"""The one map from what went wrong to what the user sees and the exit code; one signal handler.

| raised                            | printed                                       | exit    |
|-----------------------------------|-----------------------------------------------|---------|
| a group called without a command  | the group's help                              | 2       |
| click's own usage error           | ``Error: <one line> See `<command> --help`.`` | 2       |
| ``Refused``, ``BadValue`` (ours)  | ``Error: <one line, with the fix>``           | 2       |
| ``UserError``                     | ``Error: <one line>``                         | 2       |
| ``RunFailed`` (Diverged, ...)     | ``Error: <one line>. <hint>``                 | 1       |
| Ctrl-C (KeyboardInterrupt, Abort) | ``Interrupted. <hint>``                       | 130     |
| ``Interrupted`` (SIGTERM, SIGHUP) | ``Stopped by signal N. <hint>``               | 128 + N |
| the store's auth refused a call,  | ``Error: <one line: the store, fix>. <hint>`` | 2       |
| it answers only 5xx, or nothing,  |                                               |         |
| its database is locked or gone    |                                               |         |
| anything else                     | the traceback (a bug)                         | 1       |

Everything printed has its passwords hidden (``uris.scrub``), the traceback included.

Under ``mlflow run`` an exit 2 also puts its line on the run MLflow created (its description,
unless it has one), which MLflow then ends FAILED: the UI says why
(``tracking.client.note_refusal``).

A command adds what happened to its run with ``hinting(fn)``: ``fn(exc)`` returns the hint
(the run's state, how to resume). Nothing here catches a bare ValueError.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from collections.abc import Callable, Iterator

import click

from ..errors import USAGE_EXIT, Interrupted, RunFailed, UserError
from ..uris import scrub

HINT_ATTR = "mnist_tracker_hint"
# click 8.2+ raises this for a group called without a command (8.1 printed the help itself).
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


def _one_line(text: str) -> str:
    return scrub(" ".join(str(text).split()))


def _with_hint(text: str, exc: BaseException) -> str:
    # click turns a KeyboardInterrupt into Abort: the hint sits on the original.
    hint = getattr(exc, HINT_ATTR, "") or getattr(exc.__context__, HINT_ATTR, "")
    return f"{text} {hint}".strip() if hint else text


def report(exc: BaseException, on_refusal: Callable[[str], None] | None = None) -> int:
    """Print ``exc`` as the table above says (to stderr) and return its exit code; a line
    printed with exit code 2 is also given to ``on_refusal``."""
    line, code = _render(exc)
    if line is not None:
        click.echo(line, err=True)
        if code == USAGE_EXIT and on_refusal is not None:
            on_refusal(line.removeprefix("Error: "))
    return code


def _render(exc: BaseException) -> tuple[str | None, int]:
    """The line ``report`` prints for ``exc`` (None: nothing more to print) and the exit code."""
    if isinstance(exc, click.exceptions.Exit):
        return None, exc.exit_code
    if isinstance(exc, KeyboardInterrupt | click.Abort):
        return scrub(_with_hint("Interrupted.", exc)), 130
    if isinstance(exc, Interrupted):
        return scrub(_with_hint(f"Stopped by signal {exc.signum}.", exc)), 128 + exc.signum
    if isinstance(exc, _NO_ARGS_IS_HELP):  # a bare group: its help, as is
        exc.show()
        return None, exc.exit_code
    if isinstance(exc, click.ClickException):
        code = USAGE_EXIT if isinstance(exc, click.UsageError) else exc.exit_code
        return f"Error: {_one_line(exc.format_message())}{_help_hint(exc)}", code
    if isinstance(exc, UserError):
        return f"Error: {_one_line(exc)}", exc.exit_code
    if isinstance(exc, RunFailed):
        return scrub(_with_hint(f"Error: {_one_line(exc).rstrip('.')}.", exc)), exc.exit_code
    failed = _tracking_failure(exc)
    if failed is not None:
        return scrub(_with_hint(f"Error: {_one_line(failed)}.", exc)), USAGE_EXIT
    # A bug: the traceback, as Python would print it, passwords hidden.
    return scrub("".join(traceback.format_exception(exc))).rstrip(), 1


class FixGiven:
    """A usage error of ours, whose message already says how to fix it."""


class Refused(FixGiven, click.UsageError):
    """Bad input found by a command (exit 2); the message names the problem and the fix."""


class BadValue(FixGiven, click.BadParameter):
    """An option value its parser refuses; the message names the fix."""


def _help_hint(exc: click.ClickException) -> str:
    """For click's own usage errors, where the fix is spelled out: the command's ``--help``
    (click names what was wrong, e.g. "'two' is not a valid integer", not what is accepted)."""
    ctx = getattr(exc, "ctx", None)
    if not isinstance(exc, click.UsageError) or isinstance(exc, FixGiven) or ctx is None:
        return ""
    return f" See `{ctx.command_path} --help`."


def _tracking_failure(exc: BaseException) -> str | None:
    """``tracking.client.tracking_failure``, asked only when MLflow is loaded (a command
    that never imported it raised nothing of MLflow's)."""
    if "mlflow" not in sys.modules:
        return None
    from ..tracking.client import tracking_failure

    return tracking_failure(exc)


class OneLineErrors(click.Group):
    """A group whose errors follow the map above (no usage dump, no traceback for bad input)."""

    def main(self, *args, **kwargs):
        kwargs["standalone_mode"] = False
        # Read first: MLflow's set_tracking_uri rewrites $MLFLOW_TRACKING_URI to --tracking-uri.
        project = os.environ.get("MLFLOW_RUN_ID"), os.environ.get("MLFLOW_TRACKING_URI")
        try:
            rv = super().main(*args, **kwargs)
        except BaseException as exc:
            if isinstance(exc, SystemExit):
                raise
            sys.exit(report(exc, on_refusal=lambda line: _note_on_project_run(line, *project)))
        sys.exit(rv if isinstance(rv, int) else 0)


def _note_on_project_run(line: str, run_id: str | None, store: str | None) -> None:
    """``tracking.client.note_refusal``, imported (MLflow: half a second) only under
    ``mlflow run``."""
    if run_id:
        from ..tracking.client import note_refusal

        note_refusal(line, run_id, store)


@contextlib.contextmanager
def hinting(explain: Callable[[BaseException], str]) -> Iterator[None]:
    """Attach ``explain(exc)`` to any exception leaving the block, for ``report`` to print."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):
            setattr(exc, HINT_ATTR, explain(exc))
        raise


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Inside the block SIGTERM raises ``Interrupted``, so a run ends KILLED as on Ctrl-C; so
    does SIGHUP (a closed terminal, a dropped SSH session), which by default ended the process
    at once and left its run RUNNING, unless the process ignores it (``nohup``: the run goes
    on, as asked)."""

    def on_signal(signum, _frame):
        raise Interrupted(signum)

    caught = [signal.SIGTERM]
    if signal.getsignal(signal.SIGHUP) is signal.SIG_DFL:
        caught.append(signal.SIGHUP)
    previous = {signum: signal.signal(signum, on_signal) for signum in caught}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def fail(message: str) -> None:
    """Raise a usage error (exit 2) with ``message``, which names the problem and the fix."""
    raise Refused(message)
