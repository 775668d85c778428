"""``runs reap``: end the runs whose process died (no heartbeat) as FAILED, saying why."""

from __future__ import annotations

import re

import click

from .errors import BadValue
from .options import check_experiments, connect, flag, option, tracking_uri_option

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(_ctx, _param, value: str) -> float:
    """``10m``, ``90s``, ``2h``, ``1d`` or plain seconds, as seconds (a usage error if not)."""
    match = _DURATION.match(value)
    if not match or float(match[1]) <= 0:
        raise BadValue(f"{value!r} is not a duration; pass e.g. 10m, 90s or 2h")
    return float(match[1]) * _UNIT_S[match[2]]


@click.group("runs")
def runs_group() -> None:
    """Look after runs in the tracking store."""


@runs_group.command("reap")
@option(
    "--older-than",
    default="10m",
    show_default=True,
    callback=parse_duration,
    help="A RUNNING run whose last heartbeat is older than this is dead (s, m, h, d).",
)
@option(
    "--experiment",
    "experiments",
    multiple=True,
    callback=check_experiments,
    help="Experiment(s) to look in; repeatable [default: all].",
)
@flag("dry_run", "Only list the runs that would be ended.")
@tracking_uri_option
def reap_cmd(older_than, experiments, dry_run, tracking_uri) -> None:
    """End RUNNING runs whose process died (SIGKILL, out of memory, power loss) as FAILED.

    MLflow has no heartbeat: mnist-tracker runs send one every 30 s while they train. A run
    whose heartbeat is older than --older-than, and which does not wait for `sync`, is
    ended FAILED with the tag mnist_tracker.reaped saying why and how to resume it.
    """
    from ..workflows.reap import reap

    connect(tracking_uri, existing=True)
    reaped = reap(experiments, older_than, dry_run=dry_run)
    for run in reaped:
        verb = "would end" if dry_run else "ended FAILED"
        click.echo(f"{verb} run {run.run_id} ({run.run_name}, {run.experiment}): {run.reason}")
    click.echo(f"{len(reaped)} stale run(s){' found' if dry_run else ' ended'}", err=True)
