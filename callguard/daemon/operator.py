"""Control socket commands that apply an operator's change to the running daemon.

``callguardctl`` stores each change (and its audit entry) first, so a change
made while the daemon is down applies at its next start; these commands only
bring the daemon's memory up to date at once.
"""

import logging
from datetime import datetime
from typing import TYPE_CHECKING

from callguard.config.offenders import OFFENDER_KEYS

if TYPE_CHECKING:
    from callguard.daemon.app import Application

log = logging.getLogger(__name__)

COMMAND_BLOCK = "block"
COMMAND_UNBLOCK = "unblock"
COMMAND_RESET = "reset"


def operator_commands(app: "Application") -> dict:
    """Return the control commands ``block``, ``unblock`` and ``reset`` for ``app``."""
    return {
        COMMAND_BLOCK: lambda request: _block(app, request),
        COMMAND_UNBLOCK: lambda request: _unblock(app, request),
        COMMAND_RESET: lambda request: _reset(app, request),
    }


def _identity(request: dict) -> tuple[str, str]:
    key_type = request.get("key_type")
    key = request.get("key")
    if key_type not in OFFENDER_KEYS:
        raise ValueError(f"key_type {key_type!r} is invalid; use one of "
                         f"{', '.join(OFFENDER_KEYS)}")
    if not isinstance(key, str) or not key:
        raise ValueError(f"key {key!r} is invalid; give the blocked key as text")
    return key_type, key


def _block(app: "Application", request: dict) -> dict:
    key_type, key = _identity(request)
    expires_text = request.get("expires_at")
    expires_at = None if expires_text is None else datetime.fromisoformat(expires_text)
    if expires_at is not None and expires_at.tzinfo is None:
        raise ValueError(f"expires_at {expires_text!r} has no time zone; send ISO 8601 "
                         "with an offset")

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
    if trunk not in app.config.trunks:
        raise ValueError(f"trunk {trunk!r} is not in the config; use one of "
                         f"{', '.join(sorted(app.config.trunks))}")

    # The next decision on the trunk reads its spend from the store again.
    app.ledger.forget(trunk)
    log.warning("operator reset the spend of trunk %s; reloading it from the store", trunk)
    return {"applied": True}
