"""Hang-ups that callguard requested on trunk legs, as functions over a connection."""

from collections.abc import Sequence
from dataclasses import fields

from sqlalchemy import Connection, select

from callguard.store.models import Hangup
from callguard.store.records import HangupRecord, check_count, check_text
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
