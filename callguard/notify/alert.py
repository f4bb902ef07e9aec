"""An alert for the sysadmins, and its rows in the outbox, one per transport."""

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from callguard.config import Config
from callguard.config.addresses import EMAIL_PATTERN
from callguard.store import TRANSPORT_EMAIL, TRANSPORT_WEBHOOK, OutboxRecord
from callguard.text import escape_controls, escape_lines

log = logging.getLogger(__name__)

# A line break in a header would let a subject add headers of its own.
LINE_BREAKS = re.compile(r"[\r\n]+")


@dataclass(frozen=True)
class Alert:
    """A message for the sysadmins, e.g. a trunk's spend crossing a warning level.

    ``kind`` is open-ended: "warning", "limit", "unguarded", "ari-down", "test"
    and more. ``data`` contains the facts for the webhook as JSON values, money
    as strings. An alert whose ``dedupe_key`` is already in the outbox, in any
    state, is not queued again. ``recipients`` adds e-mail addresses to the
    ``[smtp]`` ``to`` list, e.g. a trunk's ``notify``.
    """

    kind: str
    trunk: str | None
    subject: str
    body: str
    data: Mapping[str, Any]
    dedupe_key: str | None = None
    recipients: tuple[str, ...] = ()


def outbox_rows(alert: Alert, config: Config, now: datetime) -> list[OutboxRecord]:
    """Build the outbox rows of ``alert``: e-mail if ``[smtp]`` is on, webhook if on.

    Returns an empty list when neither is configured. Raises ``TypeError`` or
    ``ValueError`` for an alert with fields of the wrong type or empty ones.
    """
    if not isinstance(alert, Alert):
        raise TypeError(f"{alert!r} is not an Alert")
    if not isinstance(alert.subject, str):
        raise TypeError(f"subject {alert.subject!r} is not a str")
    if not isinstance(alert.data, Mapping):
        raise TypeError(f"data {alert.data!r} is not a mapping")

    common = {
        "created_at": now,
        "kind": alert.kind,
        "trunk": alert.trunk,
        "dedupe_key": alert.dedupe_key,
        # Keys, numbers and reasons in alerts come from callers: escape their
        # control characters, keeping the body's own line breaks.
        "subject": escape_controls(LINE_BREAKS.sub(" ", alert.subject).strip()),
        "body": escape_lines(alert.body),
        "data": json.dumps(dict(alert.data), sort_keys=True, default=_json_value),
        "next_attempt_at": now,
    }

    rows = []
    if config.smtp is not None:
        recipients = merge_recipients(config.smtp.to, alert.recipients, alert.kind)
        rows.append(
            OutboxRecord(transport=TRANSPORT_EMAIL, recipients=recipients, **common)
        )
    if config.webhook is not None:
        rows.append(OutboxRecord(transport=TRANSPORT_WEBHOOK, **common))
    return rows


def merge_recipients(
    configured: tuple[str, ...], extra: tuple[str, ...], kind: str
) -> tuple[str, ...]:
    """Return ``configured`` plus the valid addresses of ``extra``, without repeats.

    Addresses compare case-insensitively. An invalid extra address is logged
    and left out, so one bad address does not stop the alert.
    """
    merged: list[str] = []
    seen: set[str] = set()
    for address in (*configured, *extra):
        if not isinstance(address, str) or not EMAIL_PATTERN.fullmatch(address):
            log.warning(
                "leaving the invalid address %r out of a %s alert", address, kind
            )
            continue

        if address.lower() not in seen:
            seen.add(address.lower())
            merged.append(address)
    return tuple(merged)


def _json_value(value: object) -> str:
    """Convert the values that ``json`` cannot write: money and times as strings."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    raise TypeError(
        f"{value!r} ({type(value).__name__}) cannot be written as JSON; give alert "
        "data as str, int, bool, None, Decimal, datetime, lists and dicts"
    )
