"""An Optuna study as the tuner uses it: settings, search space, storage and the worker lock.

Contracts:
- A trial's suggestions become a plain ``TrainConfig`` (``suggest_config``); models never see
  the trial.
- ``open_storage`` opens ``--storage`` (a database URL or ``journal:PATH``) or fails within
  seconds with TuneError, the password hidden.
- Workers sharing a storage take a study-wide ``StudyLock`` (a file lock for SQLite and journal
  files, an advisory lock for PostgreSQL) around "count the trials, then create the next one",
  so ``settings.trials`` is the study's exact total.
- ``study_state`` counts trials as the total does: a failed attempt that was retried (its
  worker died, heartbeats; or it was stopped by a signal) does not count.
- A study searches one model: recorded in its user attributes (``MODEL_ATTR``) when created;
  ``claim_model`` refuses another model's worker before it runs a trial.
- A database storage waits out a restart or failover of up to ``OUTAGE_S`` (``PatientStorage``
  and ``StudyLock``); longer, ``storage_lost`` is the one-line error.
- A trial goes back to the study through ``queue_retry``: always after a signal or an outage,
  ``STALE_RETRIES`` times after its worker died (heartbeats, or a journal's worker files).
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import fcntl
import hashlib
import re
import sqlite3
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from .. import sqlite_file
from ..config import (
    TrainConfig,
    fit_to_data,
    resolve_config,
    validate_experiment_name,
    validate_seed,
)
from ..constants import DEFAULT_EXPERIMENT, PRUNERS, SAMPLERS
from ..errors import StoreError, TrackingUnavailable, TuneError, clip
from ..models import get_spec
from ..uris import redact, scrub

PARENT_ATTR = "mlflow_parent_run_id"
STORE_ATTR = "mlflow_tracking_uri"  # where the parent run is (password hidden)
MODEL_ATTR = "model"  # the registry name of the model the study searches
CONNECT_TIMEOUT_S = 5  # a storage that cannot be reached fails well within 10 s
# How often a trial whose worker died is retried: one that kills its worker each time (out of
# memory) fails for good after that, instead of killing workers for ever.
STALE_RETRIES = 3
DEATHS_ATTR = "mnist_tracker_deaths"  # a trial's system attribute: its params' dead workers


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
    experiment: str = DEFAULT_EXPERIMENT
    heartbeat_interval: int = 10
    grace_period: int = 30

    def validate(self) -> None:
        if self.trials < 1:
            raise TuneError(
                f"trials must be at least 1 (got {self.trials}); pass --trials 1 or more"
            )
        if self.timeout is not None and not self.timeout > 0:  # NaN too (no trial would run)
            raise TuneError(f"timeout must be positive (got {self.timeout}); pass seconds > 0")
        if self.sampler not in SAMPLERS:
            raise TuneError(f"unknown sampler {self.sampler!r}; choose from {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise TuneError(f"unknown pruner {self.pruner!r}; choose from {', '.join(PRUNERS)}")
        if self.val_size < 1:
            raise TuneError(
                f"val size must be at least 1 (got {self.val_size}); the search needs it"
            )
        if self.grace_period < 2 * self.heartbeat_interval:
            # A live trial between two heartbeats would be failed and run twice.
            raise TuneError(
                f"grace period {self.grace_period} s is shorter than two heartbeats "
                f"({self.heartbeat_interval} s apart): a running trial would be taken for dead; "
                f"pass --grace-period {2 * self.heartbeat_interval} or more"
            )
        validate_experiment_name(self.experiment)
        validate_seed(self.seed)

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


def search_base(base: TrainConfig, train_size: int) -> TrainConfig:
    """The trials' base config on a training split of ``train_size`` images: its limits as they
    run (``config.fit_to_data``); TuneError if the search space holds a batch size larger than
    that split, which would fail the trials that drew it."""
    space = get_spec(base.model).search_space.get("batch_size")
    sizes = [base.batch_size]
    if space is not None:
        sizes += list(space[1]) if space[0] == "categorical" else [space[2]]
    largest = max(sizes)
    if largest > train_size:
        limited = base.limit_train is not None and base.limit_train <= train_size
        fix = f"pass --limit-train {largest} or more" if limited else "pass a smaller --val-size"
        raise TuneError(
            f"the search tries batch sizes up to {largest}, more than the {train_size} training "
            f"images it has (after the --val-size hold-out); {fix}"
        )
    return fit_to_data(base, train_size, None)


def claim_model(study: optuna.Study, model: str, logged_model: str | None = None) -> None:
    """Record that ``study`` searches ``model`` (``MODEL_ATTR``), or raise TuneError if it was
    created for another one: its trials, parent run and best params are that model's.

    ``logged_model``: the model its parent run logged, for a study created before the
    attribute was recorded.
    """
    recorded = study.user_attrs.get(MODEL_ATTR) or logged_model
    if recorded is not None and recorded != model:
        raise TuneError(
            f"study {study.study_name!r} searches {recorded}, not {model}; pass --model "
            f"{recorded} to add trials to it, or a new --study-name to search {model}"
        )
    if MODEL_ATTR not in study.user_attrs:
        study.set_user_attr(MODEL_ATTR, model)


def check_direction(study: optuna.Study) -> None:
    """TuneError unless ``study`` maximizes one objective, as the tuner's val_accuracy needs:
    a study made elsewhere to minimize would take the worst trial for the best."""
    if study.directions != [optuna.study.StudyDirection.MAXIMIZE]:
        found = ", ".join(d.name.lower() for d in study.directions)
        raise TuneError(
            f"study {study.study_name!r} was created to {found}, not to maximize validation "
            "accuracy; pass a new --study-name"
        )


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


def journal_path(url: str) -> Path | None:
    """The file of a ``journal:PATH`` storage URL; None for any other."""
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
    shown = redact(url)
    journal = journal_path(url)
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
            return PatientStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=settings.heartbeat_interval,
                grace_period=settings.grace_period,
                heartbeat_stale_trial_callback=retry_stale,
            )
    except TuneError:
        raise
    except Exception as exc:
        reason = scrub(clip(f"{type(exc).__name__}: {exc}", 300), url)
        raise TuneError(
            f"cannot open storage {shown} ({reason}); check the URL and that the database "
            "is running"
        ) from exc


def _database(url: str) -> tuple[str | None, str | None]:
    """(backend, database) of an SQLAlchemy URL, as SQLAlchemy reads it: ``sqlite+pysqlite``
    is sqlite, ``postgresql+psycopg`` postgresql; (None, None) when it is not one."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None, None
    return parsed.get_backend_name(), parsed.database


OUTAGE_S = 60.0  # how long a trial waits for its database to come back (a restart, failover)


def _lost_connection(exc: BaseException) -> bool:
    """Whether ``exc`` (Optuna's StorageInternalError) is the database out of reach."""
    import sqlalchemy

    return isinstance(exc.__cause__ or exc.__context__, sqlalchemy.exc.OperationalError)


# What PostgreSQL and psycopg say when a connection could not be made: nothing was sent.
_NOT_CONNECTED = ("connection failed", "Connection refused", "the database system is")


def _never_sent(exc: BaseException) -> bool:
    """Whether ``exc`` is a connection that could not be made (the call never reached the
    database), as opposed to one lost mid-call, whose write may have landed."""
    return _lost_connection(exc) and any(text in str(exc.__cause__) for text in _NOT_CONNECTED)


class PatientStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage that rides out a database restart or failover, up to OUTAGE_S: the
    writes and reads a running trial makes (its params, epoch reports, the pruner's reads, its
    result) and those that close the study (its user attributes, the best trial) are tried
    again, and a heartbeat that fails is skipped (the next one tries again) instead of ending
    Optuna's heartbeat thread, which left a live trial to be taken for dead.

    Only calls that can be repeated are retried: upserts, reads, a suggested param (a repeat
    of one that landed is refused as a duplicate), and the trial's final state (a repeat that
    finds the state already written is that write's success).

    Its stale trials include those that never sent a heartbeat (``_get_stale_trial_ids``).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._silent_since: dict[int, float] = {}  # trial id -> when first seen without one

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except optuna.exceptions.StorageInternalError as exc:
            if not _lost_connection(exc):
                raise

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Optuna's stale trials (heartbeats late), and the RUNNING trials that never sent a
        heartbeat, once this worker has seen them so for the grace period.

        A live trial sends its first heartbeat as it starts (Optuna's heartbeat thread), so
        one silent that long lost its worker between its creation and that heartbeat: a
        database restart while the trial was created (``_create_new_trial`` is not repeated
        once sent), or a kill. Optuna skips trials with no heartbeat, so such a trial stayed
        RUNNING, and every worker waited for it for ever. Timed by this worker's own clock
        (the database keeps no time for a trial that never beat), so a worker that joins
        later waits the grace period too.
        """
        stale = self._patiently(super()._get_stale_trial_ids, study_id)
        silent = self._patiently(self._silent_trial_ids, study_id)
        now = time.monotonic()
        self._silent_since = {t: self._silent_since.get(t, now) for t in silent}
        grace = self.grace_period or 2 * self.heartbeat_interval
        return stale + sorted(t for t, since in self._silent_since.items() if now - since >= grace)

    def _silent_trial_ids(self, study_id: int) -> set[int]:
        """The study's RUNNING trials with no heartbeat recorded."""
        from optuna.storages._rdb import models
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(self.scoped_session) as session:
            rows = (
                session.query(models.TrialModel.trial_id)
                .filter(models.TrialModel.study_id == study_id)
                .filter(models.TrialModel.state == TrialState.RUNNING)
                .filter(~models.TrialModel.heartbeats.any())
                .all()
            )
        return {row[0] for row in rows}

    def _patiently(self, call, *args, unsent_only: bool = False, **kwargs):
        deadline = time.monotonic() + OUTAGE_S
        pause = 0.5
        while True:
            try:
                return call(*args, **kwargs)
            except optuna.exceptions.StorageInternalError as exc:
                lost = _never_sent(exc) if unsent_only else _lost_connection(exc)
                if not lost or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 5.0)

    def set_trial_state_values(self, trial_id: int, state, values=None) -> bool:
        first = True

        def write():
            nonlocal first
            try:
                return super(PatientStorage, self).set_trial_state_values(trial_id, state, values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A repeat of a write that landed before its connection broke: done.
                if first or super(PatientStorage, self).get_trial(trial_id).state != state:
                    raise
                return True
            finally:
                first = False

        return self._patiently(write)


# The RDBStorage calls a worker makes in and between trials, all tried again while the database
# is away (``PatientStorage``): reads; upserts (attributes, a trial's reports); a suggested param
# (``_set_trial_param``: repeated after a write that landed, it is refused as a duplicate, not
# a lost connection, and that error ends the trial, which goes back to the study). The private
# ones are what Optuna's cache calls.
_REPEATABLE = (
    "get_trial", "get_all_trials", "_get_trials", "get_trial_system_attrs",
    "get_trial_id_from_study_id_trial_number", "_get_best_trial_id",
    "get_study_id_from_name", "get_study_directions", "get_study_user_attrs",
    "get_study_system_attrs", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "set_study_user_attr", "_set_trial_param",
)  # fmt: skip
# Not repeatable: tried again only when the connection could not be made (nothing was sent).
_REPEATABLE_UNSENT = ("_create_new_trial",)  # the next trial, ``study.ask``


def _patient(name: str, unsent_only: bool):
    def call(self, *args, **kwargs):
        method = getattr(super(PatientStorage, self), name)
        return self._patiently(method, *args, unsent_only=unsent_only, **kwargs)

    call.__name__ = name
    return call


for _name in _REPEATABLE + _REPEATABLE_UNSENT:
    setattr(PatientStorage, _name, _patient(_name, _name in _REPEATABLE_UNSENT))


# Tables only MLflow's tracking schema has: a storage that holds them is a tracking store, into
# which Optuna would write its own thirteen tables before refusing it.
_MLFLOW_TABLES = {"experiments", "runs", "latest_metrics", "experiment_tags"}


def _check_target(storage_url: str, tracking_uri: str | None = None) -> None:
    """TuneError, before a file is made beside it, for a storage that cannot be a study's: the
    tracking store's database (``tracking_uri``'s, made yet or not), a journal path that is a
    folder, no regular file (``/dev/null``) or no journal, a journal whose folder is missing,
    a SQLite file that is not a database or is an MLflow tracking store."""
    shown = redact(storage_url)
    journal = journal_path(storage_url)
    if journal is not None:
        if not journal.parent.is_dir():
            raise TuneError(
                f"storage {shown}: folder {journal.parent} does not exist; create it or pass "
                "another journal path"
            )
        if journal.exists() and not journal.is_file():
            raise TuneError(
                f"storage {shown}: {journal} is {'a folder' if journal.is_dir() else 'no file'}; "
                "pass the path of a journal file (it is made if missing)"
            )
        if journal.is_file() and not _journal_like(journal):
            raise TuneError(
                f"storage {shown}: {journal} is no Optuna journal; pass a new file's path or "
                "the study's journal"
            )
        return
    if tracking_uri and _same_database(storage_url, tracking_uri):
        raise _tracking_store(storage_url)
    backend, database = _database(storage_url)
    if backend != "sqlite" or database in (None, "", ":memory:") or database.startswith("file:"):
        return
    path = Path(database)
    if not path.is_file():
        return
    try:
        names = sqlite_file.table_names(path)
    except sqlite3.DatabaseError as exc:
        if sqlite_file.is_no_database(exc):
            raise TuneError(
                f"storage {shown}: {path} is not a SQLite database; pass a new file's path "
                "or the study's database"
            ) from None
        return  # locked, or a hot journal: Optuna's own open says what is wrong
    _refuse_if_mlflow(storage_url, names)


def _journal_like(path: Path) -> bool:
    """Whether ``path`` is empty or starts as an Optuna journal does: a JSON object a line."""
    with open(path, "rb") as fh:
        head = fh.read(1)
    return head in (b"", b"{")


def _same_database(a: str, b: str) -> bool:
    """Whether SQLAlchemy URLs ``a`` and ``b`` name one database: one SQLite file (the
    same path, resolved), or one database on one server."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url_a, url_b = make_url(a), make_url(b)
    except ArgumentError:
        return False
    if url_a.get_backend_name() != url_b.get_backend_name() or not url_a.database:
        return False
    if url_a.get_backend_name() == "sqlite":
        if ":memory:" in (url_a.database, url_b.database) or not url_b.database:
            return False
        return Path(url_a.database).resolve() == Path(url_b.database).resolve()
    return (url_a.host, url_a.port, url_a.database) == (url_b.host, url_b.port, url_b.database)


def _refuse_mlflow_tables(storage_url: str, connection) -> None:
    """``_check_target``'s MLflow check, for a database server's storage."""
    import sqlalchemy

    _refuse_if_mlflow(storage_url, set(sqlalchemy.inspect(connection).get_table_names()))


def _refuse_if_mlflow(storage_url: str, tables: set[str]) -> None:
    if _MLFLOW_TABLES.issubset(tables):
        raise _tracking_store(storage_url)


def _tracking_store(storage_url: str) -> TuneError:
    return TuneError(
        f"storage {redact(storage_url)} is an MLflow tracking store; give the study a "
        "database of its own (e.g. sqlite:///study.db, or another PostgreSQL database)"
    )


class StudyLock:
    """A lock shared by every worker of one study; ``acquire`` blocks, ``release`` is idempotent.

    In memory: a thread lock. SQLite or journal file: ``flock`` on a file beside it.
    PostgreSQL: a session-level advisory lock keyed by the study name. Other databases
    (MySQL, ...) are refused (TuneError): without a lock the total is not kept.
    """

    def __init__(self, storage_url: str | None, study_name: str):
        self._thread_lock = threading.Lock()
        self._url = storage_url
        self._file = None
        self._pg = self._engine = None
        self._pg_lost = False  # its session ended (a restart): any lock it held went with it
        self._held = False
        self._key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big") >> 1
        path = None
        if storage_url:
            journal = journal_path(storage_url)
            backend, database = _database(storage_url) if journal is None else (None, None)
            if journal is not None:
                # Not PATH.lock: that is the journal backend's own lock (a symlink), which
                # would wait 30 s on this file, then delete it.
                path = journal.with_name(journal.name + ".study-lock")
            elif backend == "sqlite" and database not in (None, "", ":memory:"):
                db = Path(database)
                path = db.with_name(db.name + ".lock")
            elif backend == "postgresql":
                import sqlalchemy

                self._engine = sqlalchemy.create_engine(
                    storage_url, connect_args={"connect_timeout": CONNECT_TIMEOUT_S}
                )
                self._pg = self._connect()
            elif backend not in (None, "sqlite"):  # an in-memory SQLite: this process alone
                # Workers would each create trials and parent runs unchecked.
                raise TuneError(
                    f"storage {redact(storage_url)}: {backend} has no study lock here, so "
                    "workers could not keep the total; pass postgresql://..., sqlite:///PATH "
                    "or journal:PATH"
                )
        if path is not None:
            self._file = open(path, "a+")  # noqa: SIM115 - held for the worker's lifetime

    @classmethod
    def open(
        cls, storage_url: str | None, study_name: str, tracking_uri: str | None = None
    ) -> StudyLock:
        """A lock for the study, or TuneError (password redacted) if its storage is out of
        reach (within CONNECT_TIMEOUT_S for PostgreSQL) or cannot be a study's: the tracking
        store ``tracking_uri`` among them (``_check_target``)."""
        if storage_url:
            _check_target(storage_url, tracking_uri)
        try:
            lock = cls(storage_url, study_name)
            if lock._pg is not None:
                try:
                    _refuse_mlflow_tables(storage_url, lock._pg)
                except BaseException:
                    lock.close()
                    raise
            return lock
        except TuneError:
            raise
        except Exception as exc:
            reason = clip(f"{type(exc).__name__}: {exc}", 300)
            raise TuneError(
                f"cannot open storage {redact(storage_url)} "
                f"({scrub(reason, storage_url)}); check the URL and that the database "
                "is running"
            ) from exc

    def acquire(self) -> None:
        """Block until this worker holds the lock. PostgreSQL: a session lost to a restart or
        failover is replaced, waiting up to OUTAGE_S for the database (then TuneError)."""
        self._thread_lock.acquire()
        try:
            if self._file is not None:
                fcntl.flock(self._file, fcntl.LOCK_EX)
            elif self._pg is not None:
                self._pg_lock()
        except BaseException:
            self._thread_lock.release()
            raise
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            if self._file is not None:
                fcntl.flock(self._file, fcntl.LOCK_UN)
            elif self._pg is not None and not self._pg_lost:
                import sqlalchemy

                try:
                    unlock = sqlalchemy.text("SELECT pg_advisory_unlock(:k)")
                    self._pg.execute(unlock, {"k": self._key})
                except sqlalchemy.exc.DBAPIError:
                    self._pg_lost = True  # the lock went with the session; reconnect next time
        finally:
            self._thread_lock.release()

    def _connect(self):
        return self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def _pg_lock(self) -> None:
        import sqlalchemy

        lock = sqlalchemy.text("SELECT pg_advisory_lock(:k)")
        deadline, pause = time.monotonic() + OUTAGE_S, 0.5
        while True:
            try:
                if self._pg_lost:
                    with contextlib.suppress(Exception):
                        self._pg.close()
                    self._pg = self._connect()
                    self._pg_lost = False
                self._pg.execute(lock, {"k": self._key})
                return
            except sqlalchemy.exc.DBAPIError as exc:
                self._pg_lost = True  # a new session next time: this one, and its lock, is gone
                late = time.monotonic() + pause > deadline
                if late or not isinstance(exc, sqlalchemy.exc.OperationalError):
                    raise storage_lost(self._url, exc) from None
            time.sleep(pause)  # a restart or failover: wait for it, as the trials do
            pause = min(pause * 2, 5.0)

    @contextlib.contextmanager
    def held(self):
        """The lock for the block; a block inside one that holds it already keeps it (the
        thread lock is not reentrant), and leaves it held."""
        if self._held:
            yield
            return
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
            with contextlib.suppress(Exception):  # a session the database already ended
                self._pg.close()


def storage_error(exc: BaseException) -> BaseException | None:
    """The study database's error behind ``exc`` (its own type, or what it was raised from or
    during: Optuna, failing to read a trial back after a failed write, raises
    UnboundLocalError), or None when the storage is not the cause. A database error behind an
    error of the tracking store's (MLflow's, or ours about it) is the tracking store's: a
    SQLite tracking file locked, a PostgreSQL tracking store gone."""
    import sqlalchemy

    from ..tracking.client import is_mlflow_error  # loaded already: tune tracks to MLflow

    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and len(chain) < 8:  # a chain is short; a cycle must not loop
        if is_mlflow_error(seen) or isinstance(seen, StoreError | TrackingUnavailable):
            break
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # The database's own words (connection refused) before Optuna's wrapper's ("invalid data
    # in the commit, e.g. exceeding max length", whatever the cause).
    for kind in (sqlalchemy.exc.OperationalError, optuna.exceptions.StorageInternalError):
        found = next((error for error in chain if isinstance(error, kind)), None)
        if found is not None:
            return found
    return None


def storage_lost(url: str | None, exc: BaseException) -> TuneError:
    """The one-line error for a study database gone out of reach mid-search."""
    text = re.sub(r"\(Background on this error at: \S+\)", "", f"{type(exc).__name__}: {exc}")
    reason = scrub(clip(text, 200), url)
    return TuneError(
        f"storage {redact(url)} is out of reach ({reason}); the study is kept there: start "
        "this worker again once the database is back"
    )


@dataclass
class StudyState:
    counted: int  # trials that count towards the total (a retried failure does not)
    waiting: int
    running: int
    complete: int
    pruned: int
    failed: int  # failures that count (raised in the objective, or out of retries)


def _retried(trials: list[FrozenTrial]) -> set[int]:
    """The numbers of every attempt a later trial retries: ``failed_trial`` names only the
    first of them, ``retry_history`` all (a retry that dies again is retried too)."""
    retried = set()
    for t in trials:
        retried.update(t.system_attrs.get("retry_history", ()))
        if t.system_attrs.get("failed_trial") is not None:
            retried.add(t.system_attrs["failed_trial"])
    return retried


def study_state(study: optuna.Study) -> StudyState:
    trials = study.get_trials(deepcopy=False)
    retried = _retried(trials)  # not counted: their retry is
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


def queue_retry(study: optuna.Study, trial: FrozenTrial, died: bool) -> bool:
    """Queue ``trial``'s params again, as a WAITING trial, the way Optuna's
    RetryHeartbeatStaleTrialCallback does (its ``failed_trial`` and ``retry_history`` system
    attributes, by which ``study_state`` does not count ``trial``); unless its worker ``died``
    and so did STALE_RETRIES workers before on these params: then it counts as failed. A trial
    given back by a signal or an outage (``died`` False) is always queued, and does not use
    that allowance up (Optuna's callback counted every retry, so three preempted containers
    left a trial no retry for a later kill). Returns whether it was queued.

    ``trial`` may still be RUNNING: queued before it is failed, a worker counting the study
    meanwhile finds it waiting, and never the study full with this trial counted failed.
    Queuing a trial twice queues it once.
    """
    # Queued already (by this worker before it failed, or by one that took it for dead):
    # queued twice, the study would run one trial too many.
    if trial.number in _retried(study.get_trials(deepcopy=False)):
        return True
    attrs = copy.deepcopy(trial.system_attrs)  # written below: never the storage's own copy
    deaths = attrs.get(DEATHS_ATTR, 0) + int(died)
    if deaths > STALE_RETRIES:
        return False
    attrs.setdefault("failed_trial", trial.number)
    attrs["retry_history"] = [*attrs.get("retry_history", ()), trial.number]
    attrs[DEATHS_ATTR] = deaths
    study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=trial.params,
            distributions=trial.distributions,
            user_attrs=trial.user_attrs,
            system_attrs=attrs,
        )
    )
    return True


def retry_stale(study: optuna.Study, trial: FrozenTrial) -> None:
    """The storages' heartbeat-stale callback: the trial's worker died (``queue_retry``)."""
    queue_retry(study, trial, died=True)


def heartbeat_enabled(study: optuna.Study) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(study._storage)
