"""The error taxonomy: what went wrong decides the exit code, in one place (``cli.errors``).

- ``UserError``: the input is wrong (an option, a file, a URI, a run id). The message is one
  line naming the problem and the fix. Raised before any MLflow run is created or touched, so
  the tracking store holds nothing half-written. Exit code 2.
- ``RunFailed``: a run started and could not finish for a reason the user can act on (the loss
  diverged, cached features overflowed fp16). The run is already ended FAILED when it
  propagates. One line, exit code 1.
- ``Interrupted``: SIGTERM, raised by the CLI's signal handler so that a run ends KILLED as on
  Ctrl-C. Exit code 128 + signal.
- Anything else is a bug or an outage MLflow did not survive: a traceback, exit code 1.

Standard library only: every layer imports this module.
"""

from __future__ import annotations

USAGE_EXIT = 2
RUN_FAILED_EXIT = 1


def clip(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters: a longer one is cut at a word's end,
    `` ...`` marking the cut (a reason quoted in an error line; cut mid-word, it read as a
    different word)."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    head = text[: limit - 4]
    return f"{head.rsplit(' ', 1)[0] if ' ' in head else head} ..."


class UserError(ValueError):
    """Bad input; one line naming the problem and the fix; nothing tracked yet.

    A ValueError (it is one), but the CLI maps this family only: a bare ValueError raised by
    a bug is not mistaken for bad input.
    """

    exit_code = USAGE_EXIT


class ConfigError(UserError):
    """A config value is invalid; the message says which option and what to pass instead."""


class DataError(UserError):
    """The MNIST files are missing, unreadable, or not what they claim to be."""


class ModelError(UserError):
    """A model cannot be built as asked (e.g. pretrained weights unavailable offline)."""


class HomeError(UserError):
    """The folder for run files cannot be written; the message says how to choose another."""


class ResumeError(UserError):
    """The run cannot be resumed; the message says why and what to do instead."""


class TrackingUnavailable(UserError):
    """The tracking store cannot be used at the start: a server that does not answer (or
    refuses the credentials), a database that cannot be opened."""


class ExperimentDeleted(UserError):
    """The experiment a run would go to is in MLflow's trash; the message says how to restore it."""


class TuneError(UserError):
    """The search cannot start as asked (bad storage URL, unreachable database, ...)."""


class CompareError(UserError):
    """A comparison cannot be made as asked (unknown experiment, bad filter, no runs)."""


class StoreError(UserError):
    """The tracking store cannot be read (unreachable, or it refused the query)."""


class InvalidQuery(UserError):
    """MLflow rejected a search filter; the message is MLflow's reason."""


class RegistryError(UserError):
    """The model registry refused a registration or an alias (MLflow's reason, one line)."""


class SyncError(UserError):
    """An outbox cannot be sent as asked (no outbox there, the server refused an operation)."""


class RunLocked(UserError):
    """Another process holds the run (training, resuming or syncing it); the message names it."""


class RunFailed(Exception):
    """A started run could not finish; it was ended FAILED. ``epoch``: where it stopped."""

    exit_code = RUN_FAILED_EXIT

    def __init__(self, reason: str, epoch: int = 0):
        super().__init__(reason)
        self.reason, self.epoch = reason, epoch


class Diverged(RunFailed):
    """The training loss (or the weights) became NaN or infinite."""

    def __str__(self) -> str:
        return f"training diverged in epoch {self.epoch} ({self.reason})"


class FeatureCacheError(RunFailed):
    """The frozen-backbone feature cache failed while computing (fp16 overflow)."""


class Interrupted(BaseException):
    """Raised by the SIGTERM handler so that the run ends KILLED like on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


def behind(exc: BaseException, kinds) -> BaseException | None:
    """The first exception of ``kinds`` (a type or tuple) in ``exc``'s chain: ``exc`` itself,
    then what it was raised from or during, nearest first; None if there is none."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; a cycle must not loop
        if seen is None:
            return None
        if isinstance(seen, kinds):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None
