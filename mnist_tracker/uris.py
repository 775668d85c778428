"""URIs with passwords: hide them before anything is printed, logged or tagged; tracking URIs
that MLflow could not open, refused before anything starts (``validate_tracking_uri``).

Standard library only, so that the CLI modules can use it without loading MLflow or torch.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import tempfile
import traceback
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from .errors import ConfigError

# ``scheme://user:password@``, read as SQLAlchemy reads a database URL: the password runs to
# the first "@" and may hold "/", "?" or "#" (``openssl rand -base64`` makes such passwords),
# where ``urlsplit`` would see a host and a path and no password at all. Hiding by this rule
# hides at least what either reader takes for the password.
_USERINFO = r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/\s:@]*:)(?P<password>[^\s@]+)@"
_URL_PASSWORD = re.compile(_USERINFO)


def password(uri: str | None) -> str | None:
    """The password in ``uri`` (``scheme://user:password@host...``), or None."""
    match = _URL_PASSWORD.match(uri or "")
    return None if match is None else match["password"]


def redact(uri: str | None) -> str:
    """``uri`` with any password replaced by ``***`` (safe to print, log or tag)."""
    if not uri:
        return ""
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***@", uri, count=1)


# Secrets MLflow and the stack read from the environment; a message may quote them.
SECRET_ENV = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "AWS_SECRET_ACCESS_KEY")


def scrub(text: str, uri: str | None = None) -> str:
    """``text`` with every password hidden: ``uri``'s, any ``scheme://user:password@`` URL's,
    and the values of the ``SECRET_ENV`` variables (safe to print, log or tag)."""
    if uri:
        text = text.replace(uri, redact(uri))
        secret = password(uri)
        if secret:
            text = text.replace(secret, "***")
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}***@", text)
    for name in SECRET_ENV:
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:  # a one-letter "secret" would blank the message
            text = text.replace(secret, "***")
    return text


_scrubbing = False


def install_log_scrubber() -> None:
    """From now on, every log record of this process (MLflow's, urllib3's, ours) is
    ``scrub``bed, its traceback too, before any handler sees it. A record factory rather than
    a filter: filters miss records of child loggers and handlers added later. Idempotent."""
    global _scrubbing
    if _scrubbing:
        return
    _scrubbing = True
    make = logging.getLogRecordFactory()

    def scrubbed(*args, **kwargs) -> logging.LogRecord:
        record = make(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a malformed %-format: left to logging's own error report
            return record
        record.msg, record.args = scrub(message), ()
        if record.exc_info and record.exc_info[1] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = scrub(text)
        return record

    logging.setLogRecordFactory(scrubbed)


# The tracking stores MLflow has built in (mlflow/tracking/_tracking_service/utils.py): servers,
# SQLAlchemy databases ("postgresql+psycopg2://" too), Databricks and local folders (file:).
_SERVERS = ("http", "https")
_DATABASES = ("postgresql", "mysql", "mssql")
# Every scheme MLflow opens with SQLAlchemy (a database, not a server or a folder).
SQL_SCHEMES = ("sqlite", *_DATABASES)
_DATABRICKS = ("databricks", "databricks-uc", "uc")
SUPPORTED_STORES = (
    "http(s)://HOST:PORT (a tracking server), sqlite:///PATH, file:PATH (or a folder), "
    "postgresql://..., mysql://..., mssql://... or databricks"
)


def validate_tracking_uri(uri: str, source: str = "--tracking-uri") -> None:
    """Raise ConfigError unless MLflow can open ``uri`` as a tracking store: a scheme it knows
    (built in, or registered by an installed MLflow plugin), a server URL with a host, and for
    a local store (``sqlite:///PATH``, ``file:PATH``, a folder) a folder that exists or can be
    created and that can be written. ``source`` says where ``uri`` came from, for the message.

    Leaves nothing behind: the folder made to prove that a folder can be written is removed.
    """
    parts = urlsplit(uri)
    scheme = "" if len(parts.scheme) == 1 else parts.scheme.lower()  # C:\runs: a folder
    base = scheme.split("+", 1)[0]
    shown = f"{source} {redact(uri)}"
    if uri in _DATABRICKS or scheme in _DATABRICKS:  # "databricks" alone, or with a profile
        return
    if base in _SERVERS:
        if not parts.hostname:
            raise ConfigError(f"{shown} names no host; pass e.g. http://127.0.0.1:5000")
        try:
            parts.port  # noqa: B018 (urlsplit checks the port when it is read)
        except ValueError:
            port = parts.netloc.rsplit(":", 1)[-1]
            raise ConfigError(
                f"{shown} has port {port!r}, not a number from 0 to 65535; pass e.g. "
                "http://127.0.0.1:5000"
            ) from None
    elif base == "sqlite":
        _check_sqlite(uri, shown)
    elif scheme in ("", "file"):
        folder = local_path(uri)
        if folder.is_file():
            raise ConfigError(f"{shown}: {folder} is a file, not a folder; pass a folder path")
        check_folder(folder, shown)
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() not in ("true", "1"):
            raise ConfigError(
                f"{shown} is a file store, which MLflow refuses unless MLFLOW_ALLOW_FILE_STORE"
                "=true; pass --tracking-uri sqlite:///mlflow.db, or set that variable"
            )
    elif base not in _DATABASES and scheme not in _plugins():
        raise ConfigError(f"{shown}: unsupported scheme {scheme}://; pass {SUPPORTED_STORES}")


def store_scheme(uri: str) -> str:
    """A store URI's scheme without its driver, lowercase: ``sqlite+pysqlite:///m.db`` ->
    ``sqlite``, ``postgresql+psycopg://...`` -> ``postgresql``, ``http://...`` -> ``http``."""
    return uri.split(":", 1)[0].split("+", 1)[0].lower()


def store_noun(uri: str, bare: bool = False) -> str:
    """What a message calls the store at ``uri``: "tracking server" for an HTTP one, else
    "tracking store" (a SQLite file, a database, a folder); ``bare``: "server" / "store"."""
    word = "server" if store_scheme(uri) in _SERVERS else "store"
    return word if bare else f"tracking {word}"


def local_path(uri: str) -> Path | None:
    """The path a ``file:`` URI or a plain path names on this machine (a file store's folder,
    a model's folder); None for a URI with another scheme (``runs:/``, ``http://``, ...)."""
    parts = urlsplit(uri)
    scheme = "" if len(parts.scheme) == 1 else parts.scheme.lower()  # C:\runs: a folder
    if scheme == "file":
        return Path(url2pathname(parts.path))
    return Path(uri) if scheme == "" else None


def _plugins() -> set[str]:
    """The URI schemes that installed MLflow plugins add (entry points, as MLflow finds them)."""
    return {entry.name for entry in metadata.entry_points(group="mlflow.tracking_store")}


def sqlite_database(uri: str) -> str:
    """The database part of a ``sqlite://`` URI: a path (``sqlite:///m.db`` -> ``m.db``,
    ``sqlite:////abs/m.db`` -> ``/abs/m.db``), ``:memory:`` or empty (in memory too)."""
    return uri.split("://", 1)[1].split("?", 1)[0].removeprefix("/")


def _check_sqlite(uri: str, shown: str) -> None:
    """A SQLite file that exists, or a folder it can be created in (MLflow makes the folders)."""
    database = sqlite_database(uri)
    if database in ("", ":memory:"):
        return
    path = Path(database)
    if path.is_dir():
        raise ConfigError(f"{shown}: {path} is a folder, not a SQLite file; pass a file path")
    if not path.is_file():
        check_folder(path.parent, shown)


def check_folder(folder: Path, shown: str) -> None:
    """``folder`` exists or can be created, and can be written: proved by making (and
    removing) a folder in it or in its nearest existing parent (a read-only file system, a
    folder that takes no new entries); ConfigError naming it, after ``shown``, if not."""
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    hint = "pass a path in a folder you can write"
    if not existing.is_dir():
        raise ConfigError(f"{shown}: {existing} is a file, not a folder; {hint}")
    try:
        probe = tempfile.mkdtemp(prefix=".mnist-tracker-probe-", dir=existing)
    except OSError as exc:
        what = "cannot be written" if existing == folder else "cannot be created"
        reason = exc.strerror or exc
        if exc.errno == errno.ENOENT:  # an existing folder that takes no new entries (/proc)
            reason = f"{existing} takes no new files"
        raise ConfigError(f"{shown}: folder {folder} {what} ({reason}); {hint}") from None
    os.rmdir(probe)
