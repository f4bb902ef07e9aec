"""Blocks on callers, numbers and other keys, as functions over a connection."""

from dataclasses import replace
from datetime import datetime

from sqlalchemy import ColumnElement, Connection, and_, or_, select, update

from callguard.store.models import Block, IdCounter
from callguard.store.records import BlockChange, BlockRecord, check_text
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
    _check_block(key_type, key, reason, created_at, expires_at, created_by)
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


def add_or_renew_block(
    conn: Connection,
    key_type: str,
    key: str,
    reason: str,
    created_at: datetime,
    expires_at: datetime | None,
    created_by: str,
) -> BlockChange:
    """Block ``key``, or renew its active block so the key keeps one block.

    A renewed block takes ``reason`` and the later of its own expiry and
    ``expires_at``, None (permanent) being the latest. Its id, creator and
    creation time stay. The arguments ``created_at`` and ``created_by``
    become its ``renewed_at`` and ``renewed_by``, and its ``first_reason``
    keeps the reason of its creation. When the key already has several active blocks,
    the newest is renewed and ends no earlier than any of them.
    """
    _check_block(key_type, key, reason, created_at, expires_at, created_by)
    # add_block's UPDATE of the blocks id counter locks that row on PostgreSQL.
    # Locking it first keeps two concurrent blocks on one key from both finding
    # no active block. SQLite writers start with BEGIN IMMEDIATE, which
    # serializes them already, and SQLAlchemy leaves FOR UPDATE out there.
    conn.execute(
        select(IdCounter.last_id)
        .where(IdCounter.name == Block.__tablename__)
        .with_for_update()
    )
    active = conn.execute(
        select(Block.__table__)
        .where(Block.key_type == key_type, Block.key == key, _active(created_at))
        .order_by(Block.created_at, Block.id)
    ).all()
    if not active:
        block_id = add_block(
            conn, key_type, key, reason, created_at, expires_at, created_by
        )
        return BlockChange(block=BlockRecord(
            id=block_id, key_type=key_type, key=key, reason=reason,
            created_at=created_at, expires_at=expires_at, created_by=created_by,
        ))

    previous = BlockRecord(**active[-1]._mapping)
    expiries = [expires_at] + [row.expires_at for row in active]
    latest = None if None in expiries else max(expiries)
    renewal = {
        "reason": reason,
        "expires_at": latest,
        "renewed_at": created_at,
        "renewed_by": created_by,
        "first_reason": previous.creation_reason,
    }
    conn.execute(update(Block).where(Block.id == previous.id).values(**renewal))
    renewed = replace(previous, **renewal)
    return BlockChange(block=renewed, previous=previous)


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
    statement = (
        select(Block.__table__)
        .where(_active(now))
        .order_by(Block.created_at, Block.id)
    )
    return [BlockRecord(**row._mapping) for row in conn.execute(statement)]


def _check_block(
    key_type: str,
    key: str,
    reason: str,
    created_at: datetime,
    expires_at: datetime | None,
    created_by: str,
) -> None:
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


def _active(now: datetime) -> ColumnElement[bool]:
    not_lifted = or_(Block.lifted_at.is_(None), Block.lifted_at > now)
    return and_(not_lifted, _unexpired(now))


def _unexpired(now: datetime) -> ColumnElement[bool]:
    return or_(Block.expires_at.is_(None), Block.expires_at > now)
