"""Blocks on callers, numbers and other keys, as functions over a connection."""

from datetime import datetime

from sqlalchemy import ColumnElement, Connection, or_, select, update

from callguard.store.models import Block
from callguard.store.records import BlockRecord, check_text
from callguard.store.schema import allocate_ids
from callguard.store.types import check_aware


def add_block(
    conn: Connection,
    key_type: str,
    key: str,
    reason: str,
    created_at: datetime,
    expires_at: datetime | None,
    created_by: str,
) -> int:
    """Insert a block, permanent when ``expires_at`` is None; returns its id."""
    check_text(key_type, "key_type")
    check_text(key, "key")
    check_text(reason, "reason", empty=True)
    check_text(created_by, "created_by")
    created = check_aware(created_at, "created_at")
    if expires_at is not None and check_aware(expires_at, "expires_at") <= created:
        raise ValueError(
            f"expires_at {expires_at.isoformat()} is not after created_at "
            f"{created_at.isoformat()}; give a later expiry or None for a "
            "permanent block"
        )

    block_id = allocate_ids(conn, Block.__tablename__, 1)
    values = {
        "id": block_id,
        "key_type": key_type,
        "key": key,
        "reason": reason,
        "created_at": created_at,
        "expires_at": expires_at,
        "created_by": created_by,
    }
    conn.execute(Block.__table__.insert(), values)
    return block_id


def lift_block(
    conn: Connection, key_type: str, key: str, at: datetime, reason: str
) -> int:
    """Lift every block on ``key`` that is neither lifted nor expired at ``at``.

    Returns the number of blocks lifted.
    """
    check_text(key_type, "key_type")
    check_text(key, "key")
    check_aware(at, "at")
    check_text(reason, "reason", empty=True)

    statement = (
        update(Block)
        .where(
            Block.key_type == key_type,
            Block.key == key,
            Block.lifted_at.is_(None),
            _unexpired(at),
        )
        .values(lifted_at=at, lifted_reason=reason)
    )
    return conn.execute(statement).rowcount


def active_blocks(conn: Connection, now: datetime) -> list[BlockRecord]:
    """Return the blocks not lifted by ``now`` and not expired at ``now``, oldest first."""
    check_aware(now, "now")
    not_lifted = or_(Block.lifted_at.is_(None), Block.lifted_at > now)
    statement = (
        select(Block.__table__)
        .where(not_lifted, _unexpired(now))
        .order_by(Block.created_at, Block.id)
    )
    return [BlockRecord(**row._mapping) for row in conn.execute(statement)]


def _unexpired(now: datetime) -> ColumnElement[bool]:
    return or_(Block.expires_at.is_(None), Block.expires_at > now)
