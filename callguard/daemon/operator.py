"""Control socket commands that apply an operator's change to the running daemon.

``callguardctl`` stores each change (and its audit entry) first, so a change
made while the daemon is down applies at its next start; these commands only
bring the daemon's memory up to date at once.

Each request carries the identity of the store that ``callguardctl`` changed,
from ``store_identity``. The daemon rejects a request whose store is not its
own, because applying it would enforce a block or a reset that its store does
not contain.
"""

import logging
import os
import re
from datetime import datetime
from typing import TYPE_CHECKING, Callable

from sqlalchemy.engine import make_url

from callguard.config.offenders import OFFENDER_KEYS
from callguard.daemon.control import InvalidRequest
from callguard.windows import DAY, WEEK
from callguard.urls import mask_url

if TYPE_CHECKING:
    from callguard.daemon.app import Application

log = logging.getLogger(__name__)

COMMAND_BLOCK = "block"
COMMAND_UNBLOCK = "unblock"
COMMAND_RESET = "reset"
# The request field with the store identity, and the reply field that names the
# daemon's own store when it rejects a request for another one.
STORE_FIELD = "store"

BACKEND_SQLITE = "sqlite"
BACKEND_POSTGRESQL = "postgresql"
POSTGRESQL_DEFAULT_PORT = 5432

# The fields that tell PostgreSQL stores apart. The user and password do not:
# two users reach the same tables.
POSTGRESQL_FIELDS = ("host", "port", "database", "search_path")
# Host names that all reach the PostgreSQL server on this machine over TCP.
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*(\S+)")


def is_shared_store(database: str) -> bool:
    """Check whether ``database`` is a PostgreSQL store, which the daemons of several
    PBXs may share."""
    return make_url(database).get_backend_name() == BACKEND_POSTGRESQL


def operator_commands(app: "Application") -> dict:
    """Return the control commands ``block``, ``unblock`` and ``reset`` for ``app``."""
    commands = {COMMAND_BLOCK: _block, COMMAND_UNBLOCK: _unblock, COMMAND_RESET: _reset}
    return {name: _for_own_store(app, name, command) for name, command in commands.items()}


def store_identity(url: str) -> dict:
    """Describe the store at the database ``url`` for a control request.

    The field ``url`` is the URL with its password hidden, for messages, and no
    field contains the password. A SQLite store is its resolved file path, with
    the device and inode when the file exists, so different spellings of one
    path match. A PostgreSQL store is the server's host and port, the database
    and the ``search_path`` from ``options``, with the defaults that psycopg
    takes from ``PGHOST``, ``PGPORT`` and ``PGOPTIONS``.
    """
    parsed = make_url(url)
    url_for_messages = mask_url(url)
    if parsed.get_backend_name() == BACKEND_SQLITE:
        path = os.path.realpath(parsed.database or "")
        identity = {"url": url_for_messages, "backend": BACKEND_SQLITE, "path": path}
        try:
            info = os.stat(path)
        except OSError:
            return identity
        identity["device"] = info.st_dev
        identity["inode"] = info.st_ino
        return identity

    host = parsed.host or _query_value(parsed.query, "host") or os.environ.get("PGHOST", "")
    if not host.startswith("/"):  # a Unix socket directory keeps its case
        host = host.lower()
    port = str(parsed.port or _query_value(parsed.query, "port")
               or os.environ.get("PGPORT") or "")
    options = _query_value(parsed.query, "options") or os.environ.get("PGOPTIONS", "")
    search_path = _SEARCH_PATH.search(options)
    return {
        "url": url_for_messages,
        "backend": BACKEND_POSTGRESQL,
        "host": "localhost" if host in LOOPBACK_HOSTS else host,
        "port": int(port) if port.isdigit() else POSTGRESQL_DEFAULT_PORT,
        "database": parsed.database or "",
        "search_path": search_path[1] if search_path else "",
    }


def same_store(ours: dict, theirs: dict) -> bool:
    """Check whether two ``store_identity`` results name the same store."""
    backend = ours.get("backend")
    if backend != theirs.get("backend"):
        return False
    if backend == BACKEND_SQLITE:
        # The inode decides when both files exist, because one path may name
        # different files for two processes (systemd's PrivateTmp=).
        our_file, their_file = _file_id(ours), _file_id(theirs)
        if our_file is not None and their_file is not None:
            return our_file == their_file
        return ours.get("path") == theirs.get("path")
    return all(ours.get(field) == theirs.get(field) for field in POSTGRESQL_FIELDS)


def _file_id(identity: dict) -> tuple | None:
    if identity.get("device") is None or identity.get("inode") is None:
        return None
    return identity["device"], identity["inode"]


def _query_value(query, name: str) -> str | None:
    """Return the first value of ``name`` in a URL's query, which may repeat a name."""
    value = query.get(name)
    if isinstance(value, tuple):
        value = value[0] if value else None
    return value


def _for_own_store(
    app: "Application", name: str, command: Callable[["Application", dict], dict]
) -> Callable[[dict], dict]:
    """Wrap ``command`` so that it runs only for a request about the daemon's own store."""

    def run(request: dict) -> dict:
        ours = store_identity(app.database)
        theirs = request.get(STORE_FIELD)
        if not isinstance(theirs, dict):
            log.warning("rejected the control command %s: the request names no store", name)
            return {"error": "the request names no store, so the daemon cannot check "
                             "that the change is in its own store. Use the callguardctl "
                             "installed with this daemon"}
        if not same_store(ours, theirs):
            their_url = str(theirs.get("url", "an unnamed store"))
            log.warning("rejected the control command %s for the store %s: this daemon "
                        "uses %s", name, their_url, ours["url"])
            return {
                "error": f"callguardctl changed the store {their_url}, but this daemon "
                         f"uses {ours['url']}, so it did not apply the change. Run "
                         "callguardctl with the daemon's config, or with --database "
                         "naming that store",
                STORE_FIELD: ours["url"],
            }
        return command(app, request)

    return run


def _identity(request: dict) -> tuple[str, str]:
    key_type = request.get("key_type")
    key = request.get("key")
    if key_type not in OFFENDER_KEYS:
        raise InvalidRequest(f"key_type {key_type!r} is invalid; use one of "
                             f"{', '.join(OFFENDER_KEYS)}")
    if not isinstance(key, str) or not key:
        raise InvalidRequest(f"key {key!r} is invalid; give the blocked key as text")
    return key_type, key


def _block(app: "Application", request: dict) -> dict:
    key_type, key = _identity(request)
    expires_text = request.get("expires_at")
    expires_at = None
    if expires_text is not None:
        try:
            expires_at = datetime.fromisoformat(expires_text)
        except (TypeError, ValueError):
            raise InvalidRequest(f"expires_at {expires_text!r} is not an ISO 8601 time; "
                                 "send one like 2026-12-05T14:00:00+00:00") from None
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidRequest(f"expires_at {expires_text!r} has no time zone; send ISO "
                             "8601 with an offset")

    app.blocks.add(key_type, key, expires_at)
    log.warning("operator blocked %s %s until %s", key_type, key,
                "lifted" if expires_at is None else expires_at.isoformat())
    return {"applied": True}


def _unblock(app: "Application", request: dict) -> dict:
    key_type, key = _identity(request)
    app.blocks.remove(key_type, key)
    app.offenders.forget(key_type, key)
    log.warning("operator unblocked %s %s", key_type, key)
    return {"applied": True}


def _reset(app: "Application", request: dict) -> dict:
    trunk = request.get("trunk")
    if not isinstance(trunk, str) or trunk not in app.config.trunks:
        raise InvalidRequest(f"trunk {trunk!r} is not in the config; use one of "
                             f"{', '.join(sorted(app.config.trunks))}")

    window, key = request.get("window"), request.get("key")
    if window is not None or key is not None:
        if window not in (DAY, WEEK) or not isinstance(key, str) or not key:
            raise InvalidRequest(f"window {window!r} and key {key!r} are invalid; send "
                                 f"window {DAY!r} or {WEEK!r} and the window's key as text")
        app.alerts.spend_reset(trunk, window, key, app.clock.now())
    # The trunk's spend is read from the store again, at once, so that status
    # does not show an empty week while it waits for the next decision.
    app.ledger.forget(trunk)
    log.warning("operator reset the spend of trunk %s; reloading it from the store", trunk)
    app.reload_spend(trunk)
    return {"applied": True}
