"""The benchmarks keep working: each script runs in its smoke mode on the committed subset.

They are run by hand for the figures in benchmarks/RESULTS.md; here only that they run to the
end and print their header (command, machine, software) and a table with at least one row.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(
    ("script", "table_header"),
    [
        ("throughput.py", "| model | image size | images | batch | lab img/s | ours img/s |"),
        ("time_to_accuracy.py", "| run | wall time (s) | final test accuracy |"),
        ("tracking_overhead.py", "| measure | seconds | overhead vs plain |"),
        ("compare_scale.py", "| runs | store (MB) | min (s) | median (s) | max (s) |"),
    ],
)
def test_benchmark_runs_in_smoke_mode(script, table_header, cli_env):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), "--smoke"],
        capture_output=True,
        text=True,
        env=cli_env,
        cwd=REPO,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for needed in ("command: ", "machine: ", "software: torch ", table_header):
        assert needed in proc.stdout, needed
    # The table has rows, each with as many cells as its header.
    lines = proc.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith(table_header))
    columns = lines[at].count("|")
    rows = []
    for line in lines[at + 2 :]:
        if not line.startswith("|"):
            break
        rows.append(line)
    assert rows, proc.stdout[-2000:]
    assert all(row.count("|") == columns for row in rows), rows
