"""The outbox of alerts, as functions over a connection.

A sender claims a due row by moving its ``next_attempt_at`` to the end of a
lease. A second callguard node on the same PostgreSQL database then skips the
row while it is being sent, and the row is due again once the lease ends if
the sending node dies.
"""

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update

from callguard.store.models import Outbox
from callguard.store.outbox_records import (
    ALERT_FAILED,
    ALERT_PENDING,
    ALERT_SENT,
    ALERT_STATES,
    RECIPIENT_SEPARATOR,
    TRANSPORTS,
    OutboxRecord,
    check_recipients,
)
from callguard.store.records import check_count, check_text
from callguard.store.schema import allocate_ids, dialect_insert
from callguard.store.types import check_aware

RECIPIENT_COLUMNS = ("recipients", "pending_recipients")


def check_alert_rows(rows: Sequence[OutboxRecord]) -> None:
    """Raise unless ``rows`` are the new rows of one alert, one per transport."""
    if not rows:
        raise ValueError("an alert needs at least one outbox row")

    for row in rows:
        if not isinstance(row, OutboxRecord):
            raise TypeError(f"{row!r} is not an OutboxRecord")
        if row.id is not None:
            raise ValueError(f"outbox row {row.id} is already stored")
        if row.state != ALERT_PENDING:
            raise ValueError(f"a new outbox row must be pending, not {row.state}")

    keys = {row.dedupe_key for row in rows}
    if len(keys) > 1:
        shown = ", ".join(sorted(map(repr, keys)))
        raise ValueError(
            f"the rows of one alert have different dedupe keys ({shown}); "
            "give them the same key"
        )

    transports = [row.transport for row in rows]
    if len(set(transports)) != len(transports):
        raise ValueError(
            f"the rows of one alert repeat a transport ({', '.join(transports)}); "
            "give each transport one row"
        )


def queue_alert(conn: Connection, rows: Sequence[OutboxRecord]) -> list[int]:
    """Insert the rows of one alert unless a row with its dedupe key exists.

    Returns the new ids, or an empty list when the key was already stored in
    any state. A row that a concurrent writer inserted first is skipped.
    """
    check_alert_rows(rows)
    key = rows[0].dedupe_key
    if key is not None:
        existing = select(Outbox.id).where(Outbox.dedupe_key == key).limit(1)
        if conn.execute(existing).first() is not None:
            return []

    first_id = allocate_ids(conn, Outbox.__tablename__, len(rows))
    ids = []
    for offset, row in enumerate(rows):
        values = _to_columns(row) | {"id": first_id + offset}
        # RETURNING, because psycopg may report rowcount -1 for this INSERT.
        statement = (
            dialect_insert(conn.dialect, Outbox)
            .values(values)
            .on_conflict_do_nothing(index_elements=["dedupe_key", "transport"])
            .returning(Outbox.id)
        )
        inserted = conn.execute(statement).scalar_one_or_none()
        if inserted is not None:
            ids.append(inserted)
    return ids


def claim_alert(
    conn: Connection, transport: str, now: datetime, lease_until: datetime
) -> OutboxRecord | None:
    """Take the oldest due pending row of ``transport`` for one attempt.

    The claim counts the attempt, records ``now`` as its time and keeps the row
    claimed until ``lease_until``. Returns the claimed row, or None when none is due.
    """
    _check_transport(transport)
    if check_aware(lease_until, "lease_until") <= check_aware(now, "now"):
        raise ValueError("lease_until must be after now")

    due = (
        select(Outbox.id)
        .where(
            Outbox.state == ALERT_PENDING,
            Outbox.transport == transport,
            Outbox.next_attempt_at <= now,
        )
        .order_by(Outbox.next_attempt_at, Outbox.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    )
    outbox_id = conn.execute(due).scalar_one_or_none()
    if outbox_id is None:
        return None

    claim = (
        update(Outbox)
        .where(Outbox.id == outbox_id)
        .values(
            attempts=Outbox.attempts + 1,
            last_attempt_at=now,
            next_attempt_at=lease_until,
        )
        .returning(*Outbox.__table__.columns)
    )
    return _from_columns(conn.execute(claim).one()._mapping)


def mark_sent(
    conn: Connection, outbox_id: int, at: datetime, reply: str, refused: str | None
) -> bool:
    """Record the delivery of a pending row; returns False if it is not pending."""
    check_aware(at, "at")
    check_text(reply, "reply", empty=True)
    values = {
        "state": ALERT_SENT,
        "sent_at": at,
        "next_attempt_at": None,
        "pending_recipients": None,
        "reply": reply,
        "refused": refused,
    }
    return _update_pending(conn, outbox_id, values)


def reschedule(
    conn: Connection,
    outbox_id: int,
    error: str,
    next_attempt_at: datetime,
    pending_recipients: tuple[str, ...] | None,
    refused: str | None,
) -> bool:
    """Record a failed attempt and the time of the next; False if not pending."""
    check_text(error, "error")
    check_aware(next_attempt_at, "next_attempt_at")
    if pending_recipients is not None:
        check_recipients(pending_recipients, "pending_recipients")

    values = {
        "last_error": error,
        "next_attempt_at": next_attempt_at,
        "pending_recipients": _join(pending_recipients),
        "refused": refused,
    }
    return _update_pending(conn, outbox_id, values)


def mark_failed(
    conn: Connection, outbox_id: int, error: str, refused: str | None
) -> bool:
    """Give a pending row up for good; returns False if it is not pending."""
    check_text(error, "error")
    values = {
        "state": ALERT_FAILED,
        "last_error": error,
        "next_attempt_at": None,
        "refused": refused,
    }
    return _update_pending(conn, outbox_id, values)


def defer_alerts(conn: Connection, transport: str, until: datetime) -> int:
    """Move every pending row of ``transport`` due before ``until`` to ``until``.

    Returns the number of rows moved. The sender calls this when a server is
    down, so the other rows wait for it instead of failing one by one.
    """
    _check_transport(transport)
    check_aware(until, "until")
    statement = (
        update(Outbox)
        .where(
            Outbox.state == ALERT_PENDING,
            Outbox.transport == transport,
            Outbox.next_attempt_at < until,
        )
        .values(next_attempt_at=until)
    )
    return conn.execute(statement).rowcount


def next_due(conn: Connection) -> datetime | None:
    """Return the earliest ``next_attempt_at`` of a pending row, None if none waits."""
    statement = select(func.min(Outbox.next_attempt_at)).where(
        Outbox.state == ALERT_PENDING
    )
    return conn.execute(statement).scalar_one_or_none()


def recent_alerts(
    conn: Connection, limit: int, state: str | None
) -> list[OutboxRecord]:
    """Return the latest rows, newest first, optionally in one state only."""
    check_count(limit, "limit", minimum=1)
    statement = select(Outbox.__table__)
    if state is not None:
        _check_state(state)
        statement = statement.where(Outbox.state == state)
    statement = statement.order_by(Outbox.created_at.desc(), Outbox.id.desc())

    rows = conn.execute(statement.limit(limit))
    return [_from_columns(row._mapping) for row in rows]


def count_alerts(conn: Connection) -> dict[str, int]:
    """Return the number of rows in each state, 0 for a state without rows."""
    statement = select(Outbox.state, func.count()).group_by(Outbox.state)
    counts = {state: 0 for state in ALERT_STATES}
    for state, count in conn.execute(statement):
        counts[state] = count
    return counts


def _update_pending(conn: Connection, outbox_id: int, values: dict[str, Any]) -> bool:
    check_count(outbox_id, "outbox_id", minimum=1)
    statement = (
        update(Outbox)
        .where(Outbox.id == outbox_id, Outbox.state == ALERT_PENDING)
        .values(values)
    )
    return conn.execute(statement).rowcount == 1


def _check_transport(transport: str) -> None:
    if transport not in TRANSPORTS:
        raise ValueError(
            f"transport {transport!r} is invalid; use one of {', '.join(TRANSPORTS)}"
        )


def _check_state(state: str) -> None:
    if state not in ALERT_STATES:
        raise ValueError(
            f"state {state!r} is invalid; use one of {', '.join(ALERT_STATES)}"
        )


def _join(addresses: tuple[str, ...] | None) -> str | None:
    if addresses is None:
        return None
    return RECIPIENT_SEPARATOR.join(addresses)


def _split(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    if not text:
        return ()
    return tuple(text.split(RECIPIENT_SEPARATOR))


def _to_columns(record: OutboxRecord) -> dict[str, Any]:
    values = {field.name: getattr(record, field.name) for field in fields(record)}
    for column in RECIPIENT_COLUMNS:
        values[column] = _join(values[column])
    return values


def _from_columns(row: Any) -> OutboxRecord:
    values = dict(row)
    for column in RECIPIENT_COLUMNS:
        values[column] = _split(values[column])
    return OutboxRecord(**values)
