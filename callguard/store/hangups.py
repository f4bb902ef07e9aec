"""Hang-ups that callguard requested on trunk legs, as functions over a connection."""

from collections.abc import Sequence
from dataclasses import fields
from datetime import datetime

from sqlalchemy import Connection, select

from callguard.store.models import Hangup
from callguard.store.records import OUTCOME_REQUESTED, HangupRecord, check_count, check_text
from callguard.store.schema import allocate_ids


def check_hangup(record: HangupRecord) -> None:
    """Raise unless ``record`` is a ``HangupRecord`` that is not stored yet."""
    if not isinstance(record, HangupRecord):
        raise TypeError(f"{record!r} is not a HangupRecord")
    if record.id is not None:
        raise ValueError(f"hangup {record.id} is already stored")


def add_hangup(conn: Connection, record: HangupRecord) -> int:
    """Insert a hang-up with a new id from ``id_counters``; returns the id."""
    return add_hangups(conn, [record])[0]


def add_hangups(conn: Connection, records: Sequence[HangupRecord]) -> list[int]:
    """Insert hang-ups with consecutive new ids; returns the ids in order."""
    for record in records:
        check_hangup(record)
    if not records:
        return []

    first_id = allocate_ids(conn, Hangup.__tablename__, len(records))
    ids = [first_id + offset for offset in range(len(records))]
    rows = [
        {field.name: getattr(record, field.name) for field in fields(record)}
        | {"id": hangup_id}
        for record, hangup_id in zip(records, ids)
    ]
    conn.execute(Hangup.__table__.insert(), rows)
    return ids


def recent_hangups(
    conn: Connection, limit: int, trunk: str | None
) -> list[HangupRecord]:
    """Return the latest hang-ups, newest first, optionally of one trunk only."""
    check_count(limit, "limit", minimum=1)
    statement = select(Hangup.__table__)
    if trunk is not None:
        statement = statement.where(Hangup.trunk == check_text(trunk, "trunk"))
    statement = statement.order_by(Hangup.requested_at.desc(), Hangup.id.desc())

    rows = conn.execute(statement.limit(limit))
    return [HangupRecord(**row._mapping) for row in rows]


# Uniqueids per query. Each is one bound parameter, and SQLite before version
# 3.32 allowed 999 in a statement.
UNIQUEIDS_PER_QUERY = 500


def accepted_hangups(conn: Connection, uniqueids: Sequence[str]) -> dict[str, datetime]:
    """Return, for each trunk leg of ``uniqueids`` that has one, the latest hang-up
    of it that Asterisk accepted (outcome ``requested``)."""
    latest: dict[str, datetime] = {}
    for start in range(0, len(uniqueids), UNIQUEIDS_PER_QUERY):
        chunk = [check_text(uniqueid, "uniqueid")
                 for uniqueid in uniqueids[start:start + UNIQUEIDS_PER_QUERY]]
        statement = select(Hangup.uniqueid, Hangup.requested_at).where(
            Hangup.outcome == OUTCOME_REQUESTED, Hangup.uniqueid.in_(chunk))
        for uniqueid, requested_at in conn.execute(statement):
            if uniqueid not in latest or requested_at > latest[uniqueid]:
                latest[uniqueid] = requested_at
    return latest
