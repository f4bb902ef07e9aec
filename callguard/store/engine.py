"""Engines for SQLite and PostgreSQL, and the translation of driver errors to ``StoreError``."""

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DBAPIError,
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
    StatementError,
    TimeoutError as PoolTimeoutError,
)

from callguard.urls import MASK, mask_url

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 5000
# 3.35 added RETURNING; 3.24 added INSERT .. ON CONFLICT DO UPDATE.
SQLITE_MIN_VERSION = (3, 35, 0)
PG_APPLICATION_NAME = "callguard"
# A statement that waits longer for a lock (a table, a row or an advisory
# lock) fails, as a SQLite writer does after its busy timeout. A lock held
# elsewhere then cannot stall the store thread, or the daemon's stop.
PG_LOCK_TIMEOUT_MS = SQLITE_BUSY_TIMEOUT_MS
# libpq connection parameters that callguard sets unless the database URL's
# query string gives them. TCP keepalives probe a connection that waits for a
# reply after 10 s of silence, every 5 s, and drop it after 3 unanswered
# probes. tcp_user_timeout (milliseconds, libpq 12 or newer) drops it when
# sent data stays unacknowledged as long. Either way a store whose host
# vanished fails a statement within about 25 s, instead of after the kernel's
# defaults of more than two hours idle or about 15 minutes of retransmission.
PG_CONNECTION_DEFAULTS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 25000,
}
PG_DRIVER = "postgresql+psycopg"

# Execution option that makes a SQLite transaction start with BEGIN IMMEDIATE, so
# a writer takes the write lock up front and waits in busy_timeout instead of
# failing with "database is locked" when it later upgrades a read lock.
WRITE_OPTION = "callguard_write"

class StoreError(RuntimeError):
    """A database operation failed; the message names the database without its password.

    ``transient`` is True when the database could not be reached or was busy
    (a refused or lost connection, a locked SQLite file), so the same
    operation may succeed later; it is False for an operation the database
    rejected.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


# Errors of a database that is down, unreachable or busy, not of the statement.
_TRANSIENT_ERRORS = (OperationalError, InterfaceError, DisconnectionError, PoolTimeoutError,
                     psycopg.OperationalError, psycopg.InterfaceError)


def parse_url(url: str) -> URL:
    """Parse and check a database URL; plain ``postgresql://`` gets the psycopg driver."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        # SQLAlchemy raises ValueError for a port that is not a number.
        raise StoreError(
            f"database URL {mask_url(url)!r} is invalid; write it like "
            "sqlite:////var/lib/callguard/callguard.db or "
            "postgresql+psycopg://callguard@127.0.0.1/callguard"
        ) from None

    backend = parsed.get_backend_name()
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername=PG_DRIVER)
    if parsed.drivername not in ("sqlite", "sqlite+pysqlite", PG_DRIVER):
        raise StoreError(
            f"database URL {mask_url(url)!r} uses {parsed.drivername!r}, which "
            f"callguard does not support; use sqlite:///PATH or {PG_DRIVER}://..."
        )

    if backend == "sqlite":
        _check_sqlite_path(parsed)
    return parsed


def _check_sqlite_path(url: URL) -> None:
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        raise StoreError(
            "an in-memory SQLite database loses spend totals and blocks on restart; "
            "give a file, e.g. sqlite:////var/lib/callguard/callguard.db"
        )
    if sqlite3.sqlite_version_info < SQLITE_MIN_VERSION:
        needed = ".".join(str(part) for part in SQLITE_MIN_VERSION)
        raise StoreError(
            f"SQLite {sqlite3.sqlite_version} is too old; callguard needs {needed} "
            "or newer (for RETURNING); upgrade libsqlite3 or use PostgreSQL"
        )

    path = Path(database)
    try:
        is_directory = path.is_dir()
        parent_is_directory = path.parent.is_dir()
    except OSError as exc:
        # is_dir() returns False only for a missing path. A folder that this
        # user may not search, or a name that is too long, raises instead.
        raise StoreError(
            f"cannot check the SQLite database path {path} ({exc.strerror}); let the "
            "user that callguard runs as search every folder above it, or change the "
            "database URL"
        ) from None
    if is_directory:
        raise StoreError(
            f"SQLite database path {path} is a directory; give a file name in it, "
            f"e.g. {path / 'callguard.db'}"
        )
    if not parent_is_directory:
        raise StoreError(
            f"directory {path.parent} does not exist, so the SQLite database {path} "
            "cannot be created; create the directory, writable by the user callguard "
            "runs as, or change the database URL"
        )


def check_sqlite_exists(url: URL) -> None:
    """Raise ``StoreError`` when ``url`` names a SQLite file that does not exist.

    Connecting would create it. PostgreSQL needs no such check, because it
    rejects a connection to a database that does not exist.
    """
    if url.get_backend_name() != "sqlite":
        return
    path = Path(url.database or "")
    if not path.is_file():
        raise StoreError(
            f"SQLite database {path} does not exist. Check --database or database "
            "in [general], or start the callguard daemon once to create it"
        )


def build_engine(url: URL, *, echo: bool = False, set_wal: bool = True) -> Engine:
    """Create the engine for a URL from ``parse_url``; no connection is made yet.

    With ``set_wal`` False, SQLite connections leave the journal mode as the
    file has it, so that opening a file that is not callguard's writes nothing.
    """
    if url.get_backend_name() == "sqlite":
        engine = create_engine(url, echo=echo)
        event.listen(engine, "connect", _sqlite_connect if set_wal else _sqlite_connect_as_is)
        event.listen(engine, "begin", _sqlite_begin)
        return engine

    connect_args: dict[str, Any] = {
        name: value for name, value in PG_CONNECTION_DEFAULTS.items()
        if name not in url.query
    }
    if "application_name" not in url.query:
        connect_args["application_name"] = PG_APPLICATION_NAME
    # pool_pre_ping replaces connections that died, e.g. when PostgreSQL restarted.
    engine = create_engine(url, echo=echo, pool_pre_ping=True, connect_args=connect_args)
    event.listen(engine, "connect", _pg_connect)
    return engine


def _pg_connect(dbapi_connection: psycopg.Connection, record: Any) -> None:
    # A lock_timeout from the URL's options, PGOPTIONS or the role's or
    # database's settings is kept. PostgreSQL's default of 0 waits forever.
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        if cursor.fetchone()[0] == "0":
            cursor.execute(f"SET SESSION lock_timeout = {PG_LOCK_TIMEOUT_MS}")
    dbapi_connection.commit()


def _sqlite_connect(dbapi_connection: sqlite3.Connection, record: Any) -> None:
    _sqlite_connect_as_is(dbapi_connection, record)
    cursor = dbapi_connection.cursor()
    try:
        mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    finally:
        cursor.close()

    if mode.lower() != "wal":
        log.warning("SQLite kept journal mode %s instead of WAL", mode)


def _sqlite_connect_as_is(dbapi_connection: sqlite3.Connection, record: Any) -> None:
    # The driver must not issue BEGIN itself: _sqlite_begin does, so DDL is
    # transactional too.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    if conn.get_execution_options().get(WRITE_OPTION):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@contextmanager
def translated_errors(
    operation: str, url_for_logs: str, secrets: tuple[str, ...] = ()
) -> Iterator[None]:
    """Turn driver and SQLAlchemy errors raised inside the block into ``StoreError``.

    The message names the operation, the database URL without password, and
    the first line of the driver's message; each of ``secrets`` is masked if it
    appears.
    A ``TypeError`` or ``ValueError`` raised by a column type while binding a
    value is a caller's mistake, so it is re-raised as it is.
    """
    try:
        yield
    except StatementError as exc:
        if not isinstance(exc, DBAPIError) and isinstance(
            exc.orig, (TypeError, ValueError)
        ):
            raise exc.orig from None
        cause = exc.orig if exc.orig is not None else exc
        raise StoreError(_message(operation, url_for_logs, cause, secrets),
                         transient=isinstance(exc, _TRANSIENT_ERRORS)) from exc
    except SQLAlchemyError as exc:
        raise StoreError(_message(operation, url_for_logs, exc, secrets),
                         transient=isinstance(exc, _TRANSIENT_ERRORS)) from exc
    except psycopg.Error as exc:
        # Raised by COPY, which uses the psycopg connection directly.
        raise StoreError(_message(operation, url_for_logs, exc, secrets),
                         transient=isinstance(exc, _TRANSIENT_ERRORS)) from exc


def _message(
    operation: str, url_for_logs: str, cause: BaseException, secrets: tuple[str, ...]
) -> str:
    message = f"{operation} failed on {url_for_logs}: {_first_line(cause)}"
    for secret in secrets:
        message = message.replace(secret, MASK)
    return message
