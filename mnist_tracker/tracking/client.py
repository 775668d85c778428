"""The connection to MLflow: the one place an ``MlflowClient`` is built, and outage checks.

Contracts:
- ``client(uri)`` is the only constructor of ``MlflowClient`` in the package (a test holds it
  so); ``uri=None`` is the current tracking URI. A SQLite store that does not exist yet is
  created there, from ``fresh_store``'s template.
- ``set_tracking_uri(uri)`` points the process at ``uri`` (else ``$MLFLOW_TRACKING_URI``, else
  MLflow's default) and returns the URI in force.
- ``is_unreachable(exc)`` tells an outage (no answer, only transient errors such as 503, or a
  database store that cannot serve now: ``database_trouble``) from a refusal (an answer that
  says no); ``answered(exc)`` tells the second kind of outage.
- ``tracking_failure(exc)`` is the one line (with its fix) for an MLflow error that says the
  store cannot serve the command now (auth refused, only server errors, no answer, its
  database locked or gone), or None; ``read_failure(exc)`` the same for a read.
- ``check_reachable(uri)`` fails within seconds with TrackingUnavailable when an HTTP server
  does not answer or refuses the credentials, or a database store cannot be opened (no
  answer, no driver, a file that is not SQLite); a SQLite file still to be made and local
  folders pass. ``writes=True`` (a run's probe of a store it lost) also fails while another
  process holds a SQLite store's write lock.
- ``env_vars`` scopes environment variables (MLflow reads its HTTP settings at each call).
- ``delete_run_artifacts`` deletes a folder of a run's artifacts, best effort.
- ``note_refusal(message, run_id, store)`` puts why a command stopped with exit 2 on the run
  ``mlflow run`` created for it (its description), best effort and within seconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sqlite3
import sys

import mlflow
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE, ErrorCode
from mlflow.tracking import MlflowClient

from .. import sqlite_file
from ..errors import TrackingUnavailable, clip
from ..uris import SQL_SCHEMES, local_path, redact, scrub, store_scheme
from . import fresh_store


def _drop_database_tracebacks(record: logging.LogRecord) -> bool:
    # MLflow's database store logs each OperationalError with its traceback, 100 lines quoting
    # the SQL, and then raises it. For an outage (a locked SQLite file, a PostgreSQL gone) the
    # user needs the one line ``tracking_failure`` prints, or the run's outbox taking over;
    # any other (a missing table, a read-only file) keeps its log, its only trace.
    error = record.exc_info[1] if record.exc_info else None
    return error is None or not _is_outage(error)


logging.getLogger("mlflow.store.db.utils").addFilter(_drop_database_tracebacks)


def client(uri: str | None = None) -> MlflowClient:
    """An MLflow client for ``uri`` (default: the current tracking URI).

    MLflow prints "View run ... at: URL" when a run ends, the URL with any password in it;
    every client this package uses is made here, so this is where that is switched off,
    whatever the environment said (the CLI prints its own link, password hidden). It is also
    where a new SQLite store is made: copied from a template, not migrated (``fresh_store``).
    """
    os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    fresh_store.materialize(uri or mlflow.get_tracking_uri())
    try:
        return MlflowClient(uri)
    except Exception as exc:
        if not _is_outage(exc):
            raise
        raise _as_mlflow_outage(exc) from exc


def _as_mlflow_outage(error: BaseException) -> mlflow.exceptions.MlflowException:
    """SQLAlchemy's outage ``error`` as MLflow raises it from a later call: opening a database
    store (a SQLite file locked past its 5 s wait, a PostgreSQL gone) raises it bare."""
    wrapped = mlflow.exceptions.MlflowException(str(error), error_code=TEMPORARILY_UNAVAILABLE)
    wrapped.__cause__ = error
    return wrapped


def attached_run_id() -> str | None:
    """The run ``mlflow run`` created for this process, if any."""
    return os.environ.get("MLFLOW_RUN_ID") or None


def note_refusal(message: str, run_id: str, store: str | None, timeout_s: int = 3) -> None:
    """``message`` (the line an exit 2 printed) as the description of run ``run_id``, the one
    ``mlflow run`` created in ``store`` (its ``$MLFLOW_TRACKING_URI``, read before the command
    ran: MLflow's ``set_tracking_uri`` rewrites the variable). MLflow ends that run FAILED,
    and its page in the UI said nothing of why. Best effort, within about ``timeout_s``: the
    store may be what was refused, so a database is asked once with a connect timeout (MLflow
    retried an unreachable one for 100 s), a SQLite file or folder not there is not made, and
    a description the run already has is kept."""
    if not store:
        return
    scheme = store_scheme(store)
    if scheme in ("http", "https"):
        pass  # a server: asked once below, within the timeout
    elif scheme == "sqlite":
        database = fresh_store.sqlite_path(store)
        if database is None or not database.is_file():
            return
    elif scheme in SQL_SCHEMES:
        try:
            _check_database(store, timeout_s)
        except TrackingUnavailable:
            return
    elif (folder := local_path(store)) is None or not folder.is_dir():
        return  # MLflow's file store is used, never made here; other stores are not known
    with env_vars(quick(timeout_s, retries=0)), contextlib.suppress(Exception):
        c = client(store)
        if NOTE_TAG not in c.get_run(run_id).data.tags:
            c.set_tag(run_id, NOTE_TAG, f"Stopped with exit code 2: {message}")


NOTE_TAG = "mlflow.note.content"  # a run's description in the UI


def quick(timeout_s: int, retries: int = 1) -> dict[str, str]:
    """MLflow's HTTP settings for a call that must answer within about ``timeout_s`` each try,
    tried ``retries`` more times a second apart (one by default, so that one 503 of a
    restarting server is not an outage)."""
    return {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(retries),
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s),
    }


def set_tracking_uri(uri: str | None) -> str:
    """Use ``uri`` if given (else ``$MLFLOW_TRACKING_URI``, else MLflow's default); return it."""
    if uri:
        mlflow.set_tracking_uri(uri)
    return mlflow.get_tracking_uri()


def delete_run_artifacts(mlflow_client: MlflowClient, run_id: str, artifact_path: str) -> bool:
    """Delete run ``run_id``'s artifacts under ``artifact_path`` (a finished run's
    checkpoints); True when they are gone. Best effort: a store that cannot delete (or a
    server that does not answer) keeps them, and False says so."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        artifact_uri = mlflow_client.get_run(run_id).info.artifact_uri
        get_artifact_repository(artifact_uri).delete_artifacts(artifact_path)
    except Exception:  # e.g. NotImplementedError of a read-only store
        return False
    return True


@contextlib.contextmanager
def env_vars(env: dict[str, str], override: bool = True):
    """Environment variables set to ``env`` inside the block, restored after; with
    ``override=False`` those the user set are left alone. MLflow reads its settings (e.g.
    ``MLFLOW_HTTP_REQUEST_*``) at each call, so this scopes them to a few calls."""
    saved = {k: os.environ.get(k) for k in env}
    for key, value in env.items():
        if override or key not in os.environ:
            os.environ[key] = value
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_UNREACHABLE = (
    "Max retries exceeded",
    "Failed to establish a new connection",
    "Connection refused",
    "Connection aborted",
    "Read timed out",
    "RemoteDisconnected",
    "NameResolutionError",
    # A response cut short (the server or a proxy died mid-answer): no answer either.
    "Connection broken",
    "IncompleteRead",
    "ChunkedEncodingError",
)


# What MLflow retries as passing trouble (its default retry codes): still such an answer after
# the retries (or at once, for a write MLflow will not send twice) means the server or a proxy
# in front of it is there but cannot serve now: an outage that answers.
TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
SERVER_ERRORS = frozenset({500, 502, 503, 504})

# How MLflow words an answer with an HTTP error status after its retries: up to 3.17, urllib3's
# "Max retries exceeded ... (Caused by ResponseError('too many 503 error responses'))"; from
# 3.18 on, the answer itself ("... failed with error code 503 != 200. Response body: ...").
_STATUS_IN_MESSAGE = re.compile(r"too many (\d{3}) error responses|failed with error code (\d{3})")
_ERROR_CODES = frozenset(ErrorCode.keys())


def error_status(exc: BaseException) -> int | None:
    """The HTTP status of the error answer behind ``exc``, after MLflow's retries; None when
    ``exc`` is not an answer with an error status known here (no answer at all, not MLflow's,
    or a JSON answer without an MLflow error code: MLflow keeps no status for it, and calls
    a gateway's ``{"message": "Unauthorized"}`` an internal error). A JSON answer with one
    (MLflow's own server) gives the status that code stands for."""
    if isinstance(exc, mlflow.exceptions.RestException):
        code = str(exc.json.get("error_code", "")) if isinstance(exc.json, dict) else ""
        if code.isdigit():  # a proxy's JSON with the HTTP status as its code
            return int(code)
        return exc.get_http_status_code() if code in _ERROR_CODES else None
    if not isinstance(exc, mlflow.exceptions.MlflowException):
        return None
    found = _STATUS_IN_MESSAGE.search(str(exc))
    return int(found.group(1) or found.group(2)) if found else None


# SQLite's primary result codes for a lock another connection holds (the extended codes keep
# them in their low byte). Its other errors (no such table, a read-only or full disk, I/O) are
# no passing trouble: waiting does not mend them.
_SQLITE_LOCK_CODES = frozenset({5, 6})  # SQLITE_BUSY, SQLITE_LOCKED
# A database server out of reach or going away, by SQLSTATE (psycopg's pgcode / sqlstate):
# connection exceptions (class 08), an administrator's or a crash's shutdown (57P01-57P03),
# too many connections (53300).
_LOST_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")
# The same, in the drivers' words, for errors raised before any answer (no SQLSTATE then).
_LOST_WORDS = (
    "connection refused",
    "could not connect",
    "connection failed",
    "server closed the connection",
    "terminating connection",
    "timeout expired",
    "could not translate host name",
    "can't connect to mysql",
    "lost connection to mysql",
    "mysql server has gone away",
)


def _is_outage(error: BaseException) -> bool:
    """Whether SQLAlchemy's OperationalError ``error`` means the database cannot serve now
    (locked by another connection, out of reach, going away), not that the store is broken
    (a missing table, a read-only file, a full disk: those are raised as they are)."""
    sqlalchemy = sys.modules.get("sqlalchemy")
    if sqlalchemy is None or not isinstance(error, sqlalchemy.exc.OperationalError):
        return False
    if getattr(error, "connection_invalidated", False):
        return True
    driver_error = getattr(error, "orig", None)
    code = getattr(driver_error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_LOCK_CODES
    state = getattr(driver_error, "pgcode", None) or getattr(driver_error, "sqlstate", None)
    if state:
        return str(state).startswith(_LOST_SQLSTATES)
    text = str(driver_error or error).lower()
    return any(words in text for words in _LOST_WORDS)


def database_trouble(exc: BaseException) -> str | None:
    """The database's own words (e.g. "database is locked") when ``exc`` is MLflow's database
    store failing to reach its database now (``_is_outage``): a SQLite file another process
    kept locked past MLflow's busy timeout (20 s), a PostgreSQL stopped or unreachable. MLflow
    raises those as TEMPORARILY_UNAVAILABLE from SQLAlchemy's OperationalError (``client``
    does so too where MLflow's opening of the store raised it bare); it raises every other
    OperationalError so as well, and those are None here, as is anything else."""
    if (
        not isinstance(exc, mlflow.exceptions.MlflowException)
        or isinstance(exc, mlflow.exceptions.RestException)
        or exc.error_code != "TEMPORARILY_UNAVAILABLE"
    ):
        return None
    cause = exc.__cause__
    if cause is None or not _is_outage(cause):
        return None
    words = str(getattr(cause, "orig", None) or cause).strip().splitlines()
    return clip(words[0].strip(), 200) if words else type(cause).__name__


def outage_reason(exc: BaseException, uri: str | None) -> str:
    """Why a store was lost, in one short line: the database's words for a database store
    (not MLflow's message, which quotes the SQL statement), else ``one_line``."""
    return database_trouble(exc) or one_line(exc, uri)


def is_unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the store could not be reached or served nothing (no answer, only
    transient errors such as 503 after MLflow's retries, or a database that cannot serve now:
    ``database_trouble``), not that it refused a call."""
    import requests

    transport = (
        requests.exceptions.ConnectionError,
        requests.exceptions.Timeout,
        requests.exceptions.ChunkedEncodingError,
    )
    if isinstance(exc, transport):
        return True
    if not isinstance(exc, mlflow.exceptions.MlflowException):
        return False
    return (
        answered(exc)
        or database_trouble(exc) is not None
        or any(marker in str(exc) for marker in _UNREACHABLE)
    )


def is_mlflow_error(exc: BaseException) -> bool:
    """Whether ``exc`` is MLflow's (the store refused or failed a call), not the caller's."""
    return isinstance(exc, mlflow.exceptions.MlflowException)


def answered(exc: BaseException) -> bool:
    """Whether ``exc`` is the server answering with transient errors (``TRANSIENT_STATUSES``,
    e.g. a 500 or 503) after MLflow's retries: it is there, but does not serve this call."""
    return error_status(exc) in TRANSIENT_STATUSES


def permission_refusal(exc: BaseException, uri: str | None = None) -> str | None:
    """The one-line message for a write the tracking server's auth refused this login (HTTP
    403: MLflow's auth app answers "Permission denied"), or None for anything else. ``uri``:
    the server's (default: the current tracking URI)."""
    if not isinstance(exc, mlflow.exceptions.MlflowException):
        return None
    text = str(exc)
    if exc.error_code != "PERMISSION_DENIED" and not (
        "403" in text and "Permission denied" in text
    ):
        return None
    login = os.environ.get("MLFLOW_TRACKING_USERNAME") or "this login"
    return (
        f"the tracking server {redact(uri or mlflow.get_tracking_uri())} refused {login!r} a write "
        "(403 Permission denied): another login owns the experiment, and the team server gives "
        "others READ; ask its admin for EDIT on it (the auth API's "
        "create_experiment_permission), or pass an --experiment of your own"
    )


def is_login_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the server's auth refusing this login (401)."""
    return isinstance(exc, mlflow.exceptions.MlflowException) and (
        exc.error_code == "UNAUTHENTICATED" or error_status(exc) == 401
    )


def is_auth_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` is the server's auth refusing this login (401) or this call (403)."""
    return is_login_refusal(exc) or (
        isinstance(exc, mlflow.exceptions.MlflowException)
        and (exc.error_code == "PERMISSION_DENIED" or error_status(exc) == 403)
    )


def _outage_line(exc: BaseException, uri: str) -> str | None:
    """The line for a server that is there but cannot serve (5xx or busy after MLflow's
    retries) or does not answer, with the fix; None for anything else. One wording for the
    start-up check and for a store that fails later."""
    shown, reason = redact(uri), one_line(exc, uri)
    status = error_status(exc)
    again = "then run the same command again"
    trouble = database_trouble(exc)
    if trouble is not None:
        if "locked" in trouble:  # SQLite: another process held the file's write lock
            return (
                f"tracking store {shown} stayed locked by another process ({trouble}); wait "
                f"until that process is done, {again} (for many writers at once, track to a "
                "server: `make ui` or docker compose)"
            )
        return (
            f"tracking database {shown} cannot serve now ({trouble}); start it or check it, {again}"
        )
    if status in (408, 429) or getattr(exc, "error_code", None) == "REQUEST_LIMIT_EXCEEDED":
        return f"tracking server {shown} is too busy to answer ({reason}); wait a while, {again}"
    if status in SERVER_ERRORS:
        return (
            f"tracking server {shown} answers only with server errors ({reason}); check its "
            f"log, or wait until it serves again, {again}"
        )
    if is_unreachable(exc):
        return (
            f"tracking server {shown} is not reachable ({reason}); start it, or pass another "
            f"--tracking-uri, {again}"
        )
    return None


def tracking_failure(exc: BaseException, uri: str | None = None) -> str | None:
    """The one-line message for an MLflow error that says the tracking store cannot serve this
    command now, with its fix: a write refused to this login (``permission_refusal``), the
    login refused (401), only server errors after MLflow's retries, no answer at all, or a
    database store locked or gone (``database_trouble``). None for anything else (a bug of
    ours or MLflow's keeps its traceback). ``check_reachable`` says the same before a
    command starts; this is for a store that fails it later.
    ``uri``: the store's (default: the current tracking URI)."""
    if not isinstance(exc, mlflow.exceptions.MlflowException):
        return None
    refused = permission_refusal(exc, uri)
    if refused is not None:
        return refused
    uri = uri or mlflow.get_tracking_uri()
    shown, reason = redact(uri), one_line(exc, uri)
    if is_login_refusal(exc):
        return (
            f"tracking server {shown} refused the login ({reason}); check "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN)"
        )
    if is_auth_refusal(exc):  # a 403 other than MLflow auth's "Permission denied" (a gateway)
        return (
            f"tracking server {shown} refused this call to this login ({reason}); ask its "
            "admin for access, or pass another --tracking-uri"
        )
    return _outage_line(exc, uri)


def read_failure(exc: BaseException, uri: str | None = None) -> str | None:
    """``tracking_failure``'s line for a read (a query, a model's download): a refused login
    or a store that cannot serve now, a bare SQLAlchemy outage of MLflow opening the store
    included; None for anything else, a 403 too (its line is for a refused write)."""
    if _is_outage(exc):
        exc = _as_mlflow_outage(exc)
    if is_auth_refusal(exc) and not is_login_refusal(exc):
        return None
    return tracking_failure(exc, uri)


def one_line(exc: BaseException, uri: str | None, limit: int = 200) -> str:
    """``exc`` as one line, at most ``limit`` characters, with ``uri``'s password hidden."""
    return scrub(clip(str(exc), limit), uri)


def check_reachable(uri: str, timeout_s: int = 5, writes: bool = False) -> None:
    """Raise TrackingUnavailable within about ``timeout_s`` (plus a second for one retry, so
    one 503 of a restarting server is not an outage) when an HTTP tracking server
    does not answer, answers only with server errors, or refuses the credentials; or when a
    database store cannot be opened (``_check_database``). Folders always pass. ``writes``:
    a SQLite store whose write lock another process holds for ``timeout_s`` fails too (not at
    a command's start, where a lock held for a moment is MLflow's to wait out)."""
    if store_scheme(uri) in SQL_SCHEMES:
        _check_database(uri, timeout_s, writes)
        return
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with env_vars(quick(timeout_s)):
            client(uri).search_experiments(max_results=1)
    except Exception as exc:
        outage = _outage_line(exc, uri)
        if outage is not None:
            raise TrackingUnavailable(outage) from exc
        raise TrackingUnavailable(
            f"tracking server {redact(uri)} refused the request ({one_line(exc, uri)}); check "
            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
        ) from exc


# The drivers that take ``connect_timeout`` in their URL's query (PostgreSQL's libpq-based
# psycopg and psycopg2, MySQL's mysqlclient and PyMySQL); pg8000 and others refuse it.
_TIMEOUT_DRIVERS = ("psycopg", "psycopg2", "mysqldb", "pymysql")


def _check_database(uri: str, timeout_s: int, writes: bool = False) -> None:
    """TrackingUnavailable, in one line, where MLflow would retry for minutes and then raise
    SQLAlchemy's traceback: a database server that does not answer within ``timeout_s``, a
    driver that is not installed, a SQLite file that is not a database (or, with ``writes``,
    whose write lock stays taken). A SQLite file that does not exist yet passes (it is made
    on first use)."""
    import sqlalchemy

    shown = redact(uri)
    if uri.lower().startswith("sqlite:"):
        path = fresh_store.sqlite_path(uri)
        if path is None or not path.is_file():  # in memory, or a store still to be made
            return
        # The standard library's sqlite3: a millisecond, where SQLAlchemy takes more. With
        # ``writes`` the lock probe below does the waiting: this read does not wait too.
        try:
            sqlite_file.table_names(path, 0.0 if writes else timeout_s)
        except sqlite3.DatabaseError as exc:
            if sqlite_file.is_no_database(exc):  # only that: MLflow recovers the others
                raise TrackingUnavailable(
                    f"tracking store {shown} cannot be opened as a SQLite database ({exc}); "
                    "pass the --tracking-uri of your store, or a new file's path"
                ) from None
        if not writes:
            return
        try:
            free = sqlite_file.write_lock_free(path, timeout_s)
        except sqlite3.Error as exc:  # a read-only folder of a WAL database, say
            raise TrackingUnavailable(f"tracking store {shown} cannot be written ({exc})") from None
        if not free:
            raise TrackingUnavailable(
                f"tracking store {shown} is locked by another process; wait until it is done"
            )
        return
    engine = None
    try:
        url = sqlalchemy.engine.make_url(uri)
        if url.get_driver_name() in _TIMEOUT_DRIVERS and "connect_timeout" not in url.query:
            url = url.update_query_dict({"connect_timeout": str(timeout_s)})
        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect():
            pass
    except (ImportError, sqlalchemy.exc.NoSuchModuleError) as exc:
        missing = getattr(exc, "name", None) or one_line(exc, uri)
        raise TrackingUnavailable(
            f"tracking store {shown} needs a database driver that is not installed ({missing}); "
            "install it (PostgreSQL: pip install 'psycopg[binary]'; MySQL: pip install "
            "mysqlclient), or pass another --tracking-uri"
        ) from None
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = re.sub(
            r"\(Background on this error at: \S+\)",
            "",
            one_line(getattr(exc, "orig", None) or exc, uri, 300),
        )
        raise TrackingUnavailable(
            f"tracking database {shown} cannot be opened ({reason.strip()}); start it or check "
            "the URI's host, port, database and login, or pass another --tracking-uri"
        ) from None
    except Exception:  # not the store's answer (a driver's own quirk): MLflow opens it itself
        return
    finally:
        if engine is not None:
            engine.dispose()
