"""Hyper-parameter search: an Optuna study whose trials are ordinary training runs.

Contracts:
- The objective is the last epoch's validation accuracy on a seeded, class-balanced hold-out
  of the training set. The test files are not even read during the search.
- A trial's suggestions become a plain ``TrainConfig`` (``suggest_config``); models never see
  the trial.
- MLflow: one parent run per study (its id kept in the study's user attributes, so every
  worker nests its child runs under it), one child run per trial tagged
  ``optuna.study_name``, ``optuna.trial_number``, ``optuna.state``. Pruned trials end KILLED,
  failed ones FAILED, complete ones FINISHED.
- ``settings.trials`` is the study's total. Workers sharing a storage take a study-wide lock
  (a file lock for SQLite and journal files, an advisory lock for PostgreSQL) around "count
  the trials, then create the next one", so no trial is counted twice and none is missing.
- With an RDB storage, trials send heartbeats; a trial whose worker died is marked FAIL after
  the grace period and retried by the surviving workers, and the failed attempt does not
  count towards the total.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import os
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from . import data as data_mod
from . import runner, tracking
from .config import TrainConfig, format_param, resolve_config
from .models import get_spec

PARENT_ATTR = "mlflow_parent_run_id"
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
CONNECT_TIMEOUT_S = 5  # a storage that cannot be reached fails well within 10 s


class TuneError(Exception):
    """The search cannot start as asked (bad storage URL, unreachable database, ...)."""


@dataclass(frozen=True)
class TuneSettings:
    """What to search and how. ``epochs=None`` takes the model's recipe."""

    model: str
    trials: int = 20
    timeout: float | None = None
    epochs: int | None = None
    sampler: str = "tpe"
    pruner: str = "median"
    val_size: int = 5000
    storage: str | None = None
    study_name: str | None = None
    seed: int = 42
    final: bool = True
    limit_train: int | None = None
    limit_test: int | None = None
    image_size: int | None = None
    device: str | None = None
    precision: str | None = None
    experiment: str = tracking.DEFAULT_EXPERIMENT
    heartbeat_interval: int = 10
    grace_period: int = 30

    def validate(self) -> None:
        if self.trials < 1:
            raise TuneError(
                f"trials must be at least 1 (got {self.trials}); pass --trials 1 or more"
            )
        if self.timeout is not None and self.timeout <= 0:
            raise TuneError(f"timeout must be positive (got {self.timeout}); pass seconds > 0")
        if self.sampler not in SAMPLERS:
            raise TuneError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise TuneError(f"unknown pruner {self.pruner!r}; choose from {', '.join(PRUNERS)}")
        if self.val_size < 1:
            raise TuneError(
                f"val size must be at least 1 (got {self.val_size}); the search needs it"
            )

    def base_config(self) -> TrainConfig:
        """The model's recipe with these settings applied (before any suggestion)."""
        return resolve_config(
            self.model,
            epochs=self.epochs,
            val_size=self.val_size,
            seed=self.seed,
            limit_train=self.limit_train,
            limit_test=self.limit_test,
            image_size=self.image_size,
            device=self.device,
            precision=self.precision,
        )

    def resolved_study_name(self) -> str:
        if self.study_name:
            return self.study_name
        if self.storage:
            return f"{self.model}-study"  # workers sharing a storage meet here by default
        return f"{self.model}-{dt.datetime.now():%Y%m%d-%H%M%S}"


@dataclass
class TuneOutcome:
    study: optuna.Study
    parent_run_id: str
    best_value: float | None
    best_params: dict
    final_run_id: str | None
    counts: dict[str, int]


# ---------------------------------------------------------------------------------------------
# Search space


def suggest_config(trial: optuna.Trial, base: TrainConfig) -> TrainConfig:
    """The config of one trial: the model's search space sampled on top of ``base``."""
    space = get_spec(base.model).search_space
    config_fields = set(asdict(base)) - {"extra"}
    changes, extra = {}, dict(base.extra)
    for name, spec in space.items():
        kind = spec[0]
        if kind == "float":
            value = trial.suggest_float(name, spec[1], spec[2], log=spec[3])
        elif kind == "int":
            value = trial.suggest_int(name, spec[1], spec[2])
        else:
            value = trial.suggest_categorical(name, spec[1])
        if name in config_fields:
            changes[name] = value
        else:
            extra[name] = value
    return base.replace(**changes, extra=extra)


def config_from_params(base: TrainConfig, params: dict) -> TrainConfig:
    """Rebuild a trial's config from its Optuna params (for the final run)."""
    config_fields = set(asdict(base)) - {"extra"}
    changes = {k: v for k, v in params.items() if k in config_fields}
    extra = dict(base.extra) | {k: v for k, v in params.items() if k not in config_fields}
    return base.replace(**changes, extra=extra)


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1))
    return optuna.pruners.NopPruner()


# ---------------------------------------------------------------------------------------------
# Storage and the study-wide lock


def _journal_path(url: str) -> Path | None:
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:").removeprefix("//"))
    return None


def open_storage(settings: TuneSettings) -> optuna.storages.BaseStorage | None:
    """The Optuna storage for ``settings.storage`` (None: in memory), reachable or TuneError.

    ``journal:PATH`` is a journal file for workers on one machine; anything else is an
    SQLAlchemy URL (``postgresql://...``, ``sqlite:///...``).
    """
    url = settings.storage
    if not url:
        return None
    shown = tracking.redact(url)
    journal = _journal_path(url)
    try:
        if journal is not None:
            from optuna.storages.journal import JournalFileBackend

            return optuna.storages.JournalStorage(JournalFileBackend(str(journal)))
        engine_kwargs: dict = {"pool_pre_ping": True}
        if url.startswith("postgresql"):
            engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        elif url.startswith("sqlite"):
            engine_kwargs["connect_args"] = {"timeout": 60}  # wait on the other writers
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
            )
    except TuneError:
        raise
    except Exception as exc:
        reason = tracking.scrub(" ".join(f"{type(exc).__name__}: {exc}".split())[:300], url)
        raise TuneError(
            f"cannot open storage {shown} ({reason}); check the URL and that the database "
            "is running"
        ) from exc


class StudyLock:
    """A lock shared by every worker of one study; ``acquire`` blocks, ``release`` is idempotent.

    In memory: a thread lock. SQLite or journal file: ``flock`` on a file beside it.
    PostgreSQL: a session-level advisory lock keyed by the study name.
    """

    def __init__(self, storage_url: str | None, study_name: str):
        self._thread_lock = threading.Lock()
        self._file = None
        self._pg = None
        self._held = False
        self._key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big") >> 1
        path = None
        if storage_url:
            journal = _journal_path(storage_url)
            if journal is not None:
                path = journal.with_name(journal.name + ".lock")
            elif storage_url.startswith("sqlite:///"):
                db = Path(storage_url.removeprefix("sqlite:///"))
                path = db.with_name(db.name + ".lock")
            elif storage_url.startswith("postgresql"):
                import sqlalchemy

                engine = sqlalchemy.create_engine(
                    storage_url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
                )
                self._pg = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        if path is not None:
            self._file = open(path, "a+")  # noqa: SIM115 - held for the worker's lifetime

    @classmethod
    def open(cls, storage_url: str | None, study_name: str) -> StudyLock:
        """A lock for the study, or TuneError (password redacted) if its storage is out of
        reach: within CONNECT_TIMEOUT_S for PostgreSQL."""
        if storage_url:
            journal = _journal_path(storage_url)
            if journal is not None and not journal.parent.is_dir():
                raise TuneError(
                    f"storage {tracking.redact(storage_url)}: folder {journal.parent} does not "
                    "exist; create it or pass another journal path"
                )
        try:
            return cls(storage_url, study_name)
        except Exception as exc:
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise TuneError(
                f"cannot open storage {tracking.redact(storage_url)} "
                f"({tracking.scrub(reason, storage_url)}); check the URL and that the database "
                "is running"
            ) from exc

    def acquire(self) -> None:
        self._thread_lock.acquire()
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_EX)
        elif self._pg is not None:
            import sqlalchemy

            self._pg.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": self._key})
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        elif self._pg is not None:
            import sqlalchemy

            self._pg.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": self._key})
        self._thread_lock.release()

    @contextlib.contextmanager
    def held(self):
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def close(self) -> None:
        self.release()
        if self._file is not None:
            self._file.close()
        if self._pg is not None:
            self._pg.close()


@dataclass
class StudyState:
    counted: int  # trials that count towards the total (a retried failure does not)
    waiting: int
    running: int
    complete: int
    pruned: int
    failed: int  # failures that count (raised in the objective, or out of retries)


def study_state(study: optuna.Study) -> StudyState:
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials} - {None}
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried]
    by_state = {s: sum(1 for t in trials if t.state == s) for s in TrialState}
    return StudyState(
        counted=len(trials) - (by_state[TrialState.FAIL] - len(failed)),
        waiting=by_state[TrialState.WAITING],
        running=by_state[TrialState.RUNNING],
        complete=by_state[TrialState.COMPLETE],
        pruned=by_state[TrialState.PRUNED],
        failed=len(failed),
    )


def heartbeat_enabled(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)


# ---------------------------------------------------------------------------------------------
# MLflow parent run


def _ensure_parent(study: optuna.Study, settings: TuneSettings) -> str:
    """The study's parent run id, creating the run (and logging the settings) if absent.

    Call with the study lock held. Under ``mlflow run`` the run MLflow created is the parent.
    """
    existing = study.user_attrs.get(PARENT_ATTR)
    if existing:
        return existing
    client = MlflowClient()
    tags = {"optuna.study_name": study.study_name, "mnist_tracker.role": "study"}
    run_id = tracking.attached_run_id()
    if run_id is None:
        experiment_id = tracking.experiment_id_for(settings.experiment)
        run_id = client.create_run(experiment_id, run_name=study.study_name, tags=tags).info.run_id
    else:
        client.log_batch(run_id, tags=[mlflow.entities.RunTag(k, v) for k, v in tags.items()])
    params = {
        "model": settings.model,
        "trials": settings.trials,
        "timeout": settings.timeout,
        "epochs": settings.base_config().epochs,
        "sampler": settings.sampler,
        "pruner": settings.pruner,
        "val_size": settings.val_size,
        "seed": settings.seed,
        "limit_train": settings.limit_train,
        "storage": tracking.redact(settings.storage) or "memory",
        "study_name": study.study_name,
        "objective": "val_accuracy (maximize)",
    }
    tracking.log_params(run_id, {k: format_param(v) for k, v in params.items()})
    study.set_user_attr(PARENT_ATTR, run_id)
    return run_id


def _finalize_parent(study: optuna.Study, parent_run_id: str, state: StudyState) -> None:
    """Log the study's results and figures to the parent run and end it FINISHED."""
    client = MlflowClient()
    metrics = {"n_complete": state.complete, "n_pruned": state.pruned, "n_failed": state.failed}
    params = {}
    if state.complete:
        best = study.best_trial
        metrics["best_value"] = best.value
        metrics["best_trial_number"] = best.number
        params = {f"best_{k}": format_param(v) for k, v in best.params.items()}
    tracking.log_run_metrics(parent_run_id, metrics)
    if params:
        tracking.log_params(parent_run_id, params)
    for name, html in study_figures(study, state).items():
        client.log_text(parent_run_id, html, f"optuna/{name}.html")
    client.set_terminated(parent_run_id, "FINISHED")


def study_figures(study: optuna.Study, state: StudyState) -> dict[str, str]:
    """Optuna's plotly figures as standalone HTML (plotly.js from its CDN)."""
    from optuna import visualization as vis

    makers: dict[str, Callable] = {}
    if state.complete:
        makers["optimization_history"] = vis.plot_optimization_history
        makers["parallel_coordinate"] = vis.plot_parallel_coordinate
    if state.complete >= 2:
        makers["param_importances"] = vis.plot_param_importances
    if state.complete + state.pruned:
        makers["intermediate_values"] = vis.plot_intermediate_values
    figures = {}
    for name, make in makers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                figures[name] = make(study).to_html(include_plotlyjs="cdn")
            except (ValueError, RuntimeError):
                continue  # e.g. importances when every trial sampled the same values
    return figures


# ---------------------------------------------------------------------------------------------
# The worker


def tune(
    settings: TuneSettings,
    *,
    data_dir: str | os.PathLike | None = None,
    echo: Callable[[str], None] | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    epoch_hook: Callable[[optuna.Trial, int, dict], None] | None = None,
) -> TuneOutcome:
    """Run one worker of the study until the study holds ``settings.trials`` finished trials
    (or this worker's ``timeout`` passes), then, if this worker saw the study finish, log the
    results to the parent run and (``final``) train the best config on the full training set.

    Raises TuneError / ConfigError / DataError before any MLflow run when the input is bad.
    ``pruner`` overrides ``settings.pruner``; ``epoch_hook(trial, epoch, metrics)`` runs after
    each epoch of each trial (tests use it to make a trial fail).
    """
    settings.validate()
    base = settings.base_config()
    say = echo or (lambda _line: None)
    study_name = settings.resolved_study_name()
    lock = StudyLock.open(settings.storage, study_name)  # also proves the database answers
    try:
        mnist = data_mod.load_mnist(data_dir, include_test=False)  # the search never reads test
        splits = data_mod.split_data(
            mnist, seed=base.seed, limit_train=base.limit_train, val_size=base.val_size
        )
        seed = settings.seed if settings.storage is None else None  # shared: each worker its own
        with lock.held():
            # Under the lock: the first workers to meet would otherwise race to create
            # Optuna's tables, the study and the parent run.
            storage = open_storage(settings)
            study = optuna.create_study(
                study_name=study_name,
                storage=storage,
                sampler=make_sampler(settings.sampler, seed),
                pruner=pruner or make_pruner(settings.pruner, base.epochs),
                direction="maximize",
                load_if_exists=True,
            )
            parent_run_id = _ensure_parent(study, settings)
        say(f"study {study_name}: parent run {parent_run_id}")
        objective = _Objective(
            base, splits, study_name, parent_run_id, settings, lock, say, epoch_hook
        )
        finished = _work(study, settings, lock, objective, say)
        state = study_state(study)
        final_run_id = None
        owner = False
        if finished:
            # The first worker to see the study full logs its results; the others just stop.
            with lock.held():
                if not study.user_attrs.get("results_logged"):
                    _finalize_parent(study, parent_run_id, state)
                    study.set_user_attr("results_logged", True)
                    owner = True
            if owner and settings.final and state.complete:
                final_run_id = _train_final(study, base, settings, data_dir, parent_run_id, say)
        best = study.best_trial if state.complete else None
        return TuneOutcome(
            study=study,
            parent_run_id=parent_run_id,
            best_value=None if best is None else best.value,
            best_params={} if best is None else dict(best.params),
            final_run_id=final_run_id,
            counts={"complete": state.complete, "pruned": state.pruned, "failed": state.failed},
        )
    finally:
        lock.close()


def _work(study, settings: TuneSettings, lock: StudyLock, objective, say) -> bool:
    """Run trials until the study is full.

    True when this worker saw the study full with no trial left running, so it is the one to
    log the results. False when it timed out, or stops while other workers' last trials run
    (they log the results when they end).
    """
    deadline = None if settings.timeout is None else time.monotonic() + settings.timeout
    heartbeat = heartbeat_enabled(study)
    checked: set[int] = set()
    while deadline is None or time.monotonic() < deadline:
        lock.acquire()
        try:
            if heartbeat:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)  # may enqueue retries
                _close_dead_trial_runs(study, objective.parent_run_id, say, checked)
            state = study_state(study)
            if state.waiting == 0 and state.counted >= settings.trials:
                if not state.running:
                    return True
                if not heartbeat:
                    say("the study is full; other workers finish its last trials")
                    return False
                # With heartbeats, wait: the running trial either ends, or its worker died and
                # it goes stale and comes back as a retry that this worker then runs.
                lock.release()
                time.sleep(min(2.0, settings.heartbeat_interval))
                continue
            # optuna creates (or pops the waiting) trial, then calls the objective, which
            # releases the lock first thing: creation happens under the lock, training not.
            study.optimize(objective, n_trials=1, catch=(Exception,))
        finally:
            lock.release()
    say("timeout reached: this worker stops; the study goes on with the others")
    return False


def _close_dead_trial_runs(study: optuna.Study, parent_run_id: str, say, checked: set[int]) -> None:
    """End FAILED the MLflow runs of trials whose worker died (the trial went FAIL by
    heartbeat while its run still says RUNNING). Runs are found by their tags, so a run the
    worker created just before dying is found too. ``checked`` remembers trial numbers done."""
    client = MlflowClient()
    experiment_id = None
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.number in checked:
            continue
        checked.add(trial.number)
        experiment_id = experiment_id or client.get_run(parent_run_id).info.experiment_id
        runs = client.search_runs(
            [experiment_id],
            f"tags.mlflow.parentRunId = '{parent_run_id}' "
            f"and tags.`optuna.trial_number` = '{trial.number}' "
            "and attributes.status = 'RUNNING'",
        )
        for run in runs:
            run_id = run.info.run_id
            client.set_tag(run_id, "optuna.state", "FAIL")
            client.set_tag(run_id, "error", "worker stopped sending heartbeats; trial retried")
            client.set_terminated(run_id, "FAILED")
            say(f"trial {trial.number}: its worker died; run {run_id} marked FAILED, retried")


class _Objective:
    """One trial: suggest a config, train it as a child run, report val accuracy per epoch."""

    def __init__(self, base, splits, study_name, parent_run_id, settings, lock, say, epoch_hook):
        self.base, self.splits, self.study_name = base, splits, study_name
        self.parent_run_id, self.settings, self.lock = parent_run_id, settings, lock
        self.say, self.epoch_hook = say, epoch_hook

    def __call__(self, trial: optuna.Trial) -> float:
        self.lock.release()
        config = suggest_config(trial, self.base)
        self.say(f"trial {trial.number}: started")
        retry_of = trial.storage.get_trial_system_attrs(trial._trial_id).get("failed_trial")
        tags = {
            "optuna.study_name": self.study_name,
            "optuna.trial_number": str(trial.number),
            "optuna.state": "RUNNING",
        }
        if retry_of is not None:
            tags["optuna.retry_of"] = str(retry_of)

        def report(epoch: int, metrics: dict[str, float]) -> None:
            if self.epoch_hook is not None:
                self.epoch_hook(trial, epoch, metrics)
            trial.report(metrics["val_accuracy"], epoch)
            if trial.should_prune():
                raise tracking.EndRun("KILLED", {"optuna.state": "PRUNED"})

        try:
            outcome = runner.train(
                config,
                splits=self.splits,
                experiment=self.settings.experiment,
                run_name=f"{self.study_name}-trial-{trial.number}",
                extra_tags=tags,
                epoch_hook=report,
                parent_run_id=self.parent_run_id,
                attach=False,
                log_artifacts=False,
                checkpoints=False,  # a trial that stops is retried or pruned, never resumed
                status_tags={
                    "FINISHED": {"optuna.state": "COMPLETE"},
                    "FAILED": {"optuna.state": "FAIL"},
                },
                on_run_start=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id),
            )
        except tracking.EndRun:
            self.say(f"trial {trial.number}: pruned")
            raise optuna.TrialPruned() from None
        except Exception as exc:
            self.say(f"trial {trial.number}: failed ({type(exc).__name__}: {exc})")
            raise
        value = outcome.result.final["val_accuracy"]
        self.say(f"trial {trial.number}: val_accuracy {value:.4f}  {trial.params}")
        return value


def _train_final(study, base, settings, data_dir, parent_run_id, say) -> str:
    """Train the best trial's config on the whole training set, evaluate on test, log it."""
    config = config_from_params(base, study.best_trial.params).replace(val_size=0)
    say(
        f"final: training the best config (trial {study.best_trial.number}) on the full "
        "training set"
    )
    experiment = (
        MlflowClient().get_experiment(MlflowClient().get_run(parent_run_id).info.experiment_id).name
    )
    outcome = runner.train(
        config,
        data_dir=data_dir,
        experiment=experiment,
        run_name=f"{study.study_name}-best",
        extra_tags={
            "optuna.study_name": study.study_name,
            "optuna.best_trial": str(study.best_trial.number),
            "mnist_tracker.role": "study_result",
            "mnist_tracker.study_parent_run_id": parent_run_id,
        },
        attach=False,
        echo=say,
    )
    MlflowClient().set_tag(parent_run_id, "final_run_id", outcome.run_id)
    return outcome.run_id
