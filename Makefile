# Two entry points for a fresh clone (Python 3.11 and pip are all it needs):
#   make run    create .venv, install the package, train the lab's cnn, tracked in ./mlflow.db
#   make test   create .venv, install with test extras, lint, run the test suite
#   make test-fast   lint + the tests marked `fast` and not `slow` (no servers, no
#                    subprocesses, no learning runs; < 2 minutes)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=

.PHONY: install install-test run test test-fast lint format ui clean
# Both install targets write the one .venv: never two at once (make -j).
.NOTPARALLEL:

# `make run` installs the package alone; the test extras (pytest, ruff, scikit-learn, and the
# peer benchmark's PyTorch Lightning) only come with the targets that need them, with the
# package on a fresh clone (one resolve, not two). scripts/venv_install.py is pip's install of
# the package, its unpacking of the wheels (6 GB, PyTorch's) split over two pip processes: a
# fresh `make install-test` took 58 s instead of 78 here.
# pip byte-compiles what it installs on one core, and the compile cannot be skipped (where
# PYTHONDONTWRITEBYTECODE is set, as on CI, an uncompiled torch is compiled again at every
# import: 15 s instead of 6). compileall -j 0 does it on every core: a fresh install took 64 s
# instead of 82 here. Like pip, it leaves files it cannot compile (torch ships a Python 3.12
# test file) uncompiled, hence `|| true`. The installed packages' own test suites (a fifth of
# the source: sympy's, scipy's, torch.testing._internal, ...) are never imported by the
# package or its tests, so they are not compiled.
define venv_install
	test -x $(BIN)/python || { $(PYTHON) -m venv $(VENV) && $(BIN)/pip install --quiet --upgrade pip; }
	$(BIN)/python scripts/venv_install.py '$(1)'
	$(BIN)/python -m compileall -q -j 0 -x '/(tests?|testing/_internal)/' $(VENV)/lib >/dev/null || true
endef

$(BIN)/mnist-tracker: pyproject.toml
	$(call venv_install,.)
	@touch $@

$(VENV)/.test-extras: pyproject.toml
	$(call venv_install,.[test])
	@touch $@ $(BIN)/mnist-tracker

install: $(BIN)/mnist-tracker

install-test: $(VENV)/.test-extras

run: install
	$(BIN)/mnist-tracker train --model cnn $(ARGS)

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The suite runs on PYTEST_WORKERS pytest-xdist workers, torch at one thread in each: on the
# 2-core machine two one-thread workers do the same tests in far less time than one process
# with two threads (whose OpenMP threads spent CPU waiting on each other's). Each test module
# runs on one worker (--dist loadfile): tests/test_deploy.py's share one server and database;
# modules start in the order tests/conftest.py sorts them, longest first, so that neither
# worker ends alone on a long module (xdist's default starts the modules with most tests first).
# (xdist_group marks were ignored under pytest 9.2 + xdist 3.8.) PYTEST_WORKERS=0: one process.
PYTEST_WORKERS ?= 2
WORKER_ENV = $(if $(filter 0,$(PYTEST_WORKERS)),,OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1})

test: lint
	$(WORKER_ENV) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: lint
	$(BIN)/python -m pytest -m 'fast and not slow' $(PYTEST_ARGS)

format: install-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Without MLflow's job runner (its GenAI jobs; nothing here uses them): it started 8 more
# processes, 1.3 GB and 8 s of CPU more (2026-12-07, this 2-core machine), as the tests' and the
# compose stack's servers already run.
ui: install
	@echo "MLflow UI: open http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (its Model training view)"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db \
		--host 127.0.0.1 --port 5000

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
