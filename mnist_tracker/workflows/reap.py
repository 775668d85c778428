"""Ending zombie runs: ``reap(experiments, older_than_s) -> list[Reaped]``.

A run whose process died (SIGKILL, the OOM killer, a power cut) stays RUNNING in MLflow; its
heartbeat (``tracking.lease``) stops. ``reap`` finds the RUNNING runs whose last heartbeat is
older than ``older_than_s`` and that do not wait for ``sync``, and ends each FAILED with the
reason tagged (and, when it has a checkpoint, the command that resumes it). A run held by a
live process on this machine (its lock file taken) is left alone whatever its heartbeat says.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import CompareError, RunLocked
from ..tracking import lease, store


@dataclass(frozen=True)
class Reaped:
    run_id: str
    run_name: str
    experiment: str
    reason: str


def stale_runs(experiments: tuple[str, ...], older_than_s: float) -> list:
    """The stale runs (``lease.is_stale``) of ``experiments`` (all when empty), oldest first."""
    if experiments:
        found = [store.experiment_by_name(name) for name in experiments]
        missing = [name for name, e in zip(experiments, found, strict=True) if e is None]
        if missing:
            raise CompareError(f"no experiment {missing[0]!r} in this tracking store; pass one "
                               "that exists, or no --experiment for all")  # fmt: skip
    else:
        found = store.all_experiments()
    ids = {e.experiment_id: e.name for e in found}
    running = store.search_runs(list(ids), "attributes.status = 'RUNNING'") if ids else []
    stale = [run for run in running if lease.is_stale(run, older_than_s)]
    return sorted(stale, key=lambda run: run.info.start_time or 0)


def reap(experiments: tuple[str, ...], older_than_s: float, dry_run: bool = False) -> list[Reaped]:
    """End the stale runs FAILED (see the module's contract); ``dry_run``: only list them."""
    names = {e.experiment_id: e.name for e in store.all_experiments()}
    reaped = []
    for run in stale_runs(experiments, older_than_s):
        try:
            # Refuses a live holder here; sets no tag (a zombie must not look alive).
            held = lease.hold(run.info.run_id, run, announce=False, stale_after_s=older_than_s)
        except RunLocked:
            continue
        try:
            if dry_run:
                reason = f"stale: no heartbeat for {lease.heartbeat_age_s(run) / 60:.0f} min"
            else:
                reason = lease.reap(run, older_than_s)
        finally:
            held.release()
        experiment = names.get(run.info.experiment_id, run.info.experiment_id)
        reaped.append(Reaped(run.info.run_id, run.info.run_name or "", experiment, reason))
    return reaped
