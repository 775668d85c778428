"""The suite's own machinery (conftest.py): under CI=true no test may be skipped unseen; the
longest modules start first. And the Makefile's install (scripts/venv_install.py)."""

from __future__ import annotations

import pytest
import torch  # noqa: F401 - see below

from . import conftest

pytestmark = pytest.mark.fast

INNER_CONFTEST = "from tests.conftest import pytest_make_collect_report, pytest_runtest_makereport"
SKIPPED_TEST = """
import pytest

def test_needs_a_service():
    pytest.skip("no service here")

@pytest.mark.gpu
def test_needs_cuda():
    pytest.skip("no CUDA device")
"""
SKIPPED_MODULE = """
import pytest

pytest.skip("module needs what is missing", allow_module_level=True)

def test_never_collected():
    pass
"""


@pytest.mark.parametrize("in_ci", [True, False], ids=["CI", "elsewhere"])
def test_a_skip_fails_under_ci_unless_it_is_a_gpu_test_without_cuda(pytester, monkeypatch, in_ci):
    """Under CI=true a test skipped while it runs fails, and a module skipped while it is
    collected is an error; a ``gpu`` test may still skip where there is no CUDA device.
    Elsewhere all three are skips, with their reasons."""
    # torch is imported with this module, before pytester snapshots sys.modules: the modules
    # imported after the snapshot are dropped again, and torch cannot be imported twice.
    cuda = conftest._cuda_available()
    monkeypatch.setattr(conftest, "IN_CI", in_ci)
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_runs=SKIPPED_TEST, test_module=SKIPPED_MODULE)
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-rfEs", "--continue-on-collection-errors"
    )  # fmt: skip
    if in_ci:
        # On a CUDA machine a skipped gpu test fails too: that machine has what it needs.
        result.assert_outcomes(failed=1 + cuda, skipped=int(not cuda), errors=1)
        result.stdout.fnmatch_lines(
            ["*skipped under CI=true, which must run every test: Skipped: no service here*"]
        )
        result.stdout.fnmatch_lines(["*skipped under CI=true*module needs what is missing*"])
    else:
        result.assert_outcomes(skipped=3)


def test_the_longest_first_order_names_modules_that_exist():
    """``MODULE_SECONDS`` orders the modules by name: a renamed or removed module would drop
    out of the order silently (and start last), so every name in it must be a test module."""
    names = {path.name for path in conftest.TESTS.glob("test_*.py")}
    assert set(conftest.MODULE_SECONDS) <= names, set(conftest.MODULE_SECONDS) - names


def test_collecting_the_suite_imports_no_lightning():
    """No test module imports Lightning where it is collected (each worker collects all):
    ``import mlflow.pytorch`` at the top of one cost every worker 2.4 s."""
    assert conftest.imported_at_collection == [], (
        f"{conftest.imported_at_collection} imported while collecting the suite; import "
        "mlflow.pytorch through mnist_tracker.serving.import_mlflow_pytorch inside the test"
    )


def test_venv_install_splits_the_wheels_in_two_halves_of_about_equal_size(tmp_path):
    """scripts/venv_install.py (the Makefile's install): the wheels pip resolved go to two pip
    processes of about equal download size, each URL with the hash pip reported (so the second
    pip installs the very file the resolver chose)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "venv_install", conftest.REPO / "scripts" / "venv_install.py"
    )
    venv_install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(venv_install)
    sizes = {"torch": 900, "nvidia_a": 700, "nvidia_b": 500, "triton": 400, "numpy": 150}
    for name, kib in sizes.items():
        (tmp_path / f"{name}.whl").write_bytes(b"\0" * kib * 1024)
    urls = [(tmp_path / f"{name}.whl").as_uri() for name in sizes]
    groups = venv_install.halves(urls)
    assert sorted(u for g in groups for u in g) == sorted(urls)
    totals = sorted(sum(venv_install.size(u) for u in g) // 1024 for g in groups)
    assert totals == [1300, 1350]  # {torch, triton} | {nvidia_a, nvidia_b, numpy}
    item = {"download_info": {"url": urls[0], "archive_info": {"hash": "sha256=ab12"}}}
    assert venv_install.wheel_url(item) == urls[0] + "#sha256=ab12"
