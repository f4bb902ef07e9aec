"""The audit trail: operator changes, spend resets and reloads, and the reads that
merge them with decisions, blocks and hang-ups; functions over a connection."""

import ast
import re
from dataclasses import dataclass, fields
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, func, select

from callguard.money import format_amount
from callguard.store import blocks, spend
from callguard.store.audit_records import (
    ACTION_BLOCK,
    ACTION_RESET,
    ACTION_UNBLOCK,
    AuditRecord,
)
from callguard.store.models import Audit, Block, Decision, Hangup
from callguard.store.records import (
    BlockChange,
    BlockRecord,
    DecisionRecord,
    HangupRecord,
    check_count,
    check_text,
)
from callguard.store.schema import allocate_ids
from callguard.store.types import check_aware
from callguard.store.windows import check_window_key
from callguard.text import plural


def add_audit(conn: Connection, record: AuditRecord) -> int:
    """Insert ``record`` with a new id from ``id_counters``; returns the id."""
    if not isinstance(record, AuditRecord):
        raise TypeError(f"{record!r} is not an AuditRecord")
    if record.id is not None:
        raise ValueError(f"audit entry {record.id} is already stored")

    audit_id = allocate_ids(conn, Audit.__tablename__, 1)
    values = {field.name: getattr(record, field.name) for field in fields(record)}
    conn.execute(Audit.__table__.insert(), values | {"id": audit_id})
    return audit_id


def block_manually(
    conn: Connection,
    key_type: str,
    key: str,
    reason: str,
    at: datetime,
    expires_at: datetime | None,
    actor: str,
) -> BlockChange:
    """Store an operator's block, or renew the key's active block, with an audit entry.

    The entry of a renewal records the expiry and reason that it replaced.
    """
    check_text(reason, "reason")
    change = blocks.add_or_renew_block(conn, key_type, key, reason, at, expires_at, actor)
    _audit_block(conn, change, actor)
    return change


def block_automatically(
    conn: Connection,
    key_type: str,
    key: str,
    reason: str,
    at: datetime,
    expires_at: datetime,
    actor: str,
) -> BlockChange:
    """Store a block that callguard imposed, or renew the key's active block.

    A new block is its own record. A renewal also gets an audit entry, as an
    operator's does, because the renewed row keeps its first creator.
    """
    change = blocks.add_or_renew_block(conn, key_type, key, reason, at, expires_at, actor)
    if change.previous is not None:
        _audit_block(conn, change, actor)
    return change


def _audit_block(conn: Connection, change: BlockChange, actor: str) -> None:
    block = change.block
    at = block.created_at if change.previous is None else block.renewed_at
    add_audit(conn, AuditRecord(
        at=at, action=ACTION_BLOCK, actor=actor, subject=f"{block.key_type} {block.key}",
        reason=block.reason, detail=_block_detail(change),
    ))


def _block_detail(change: BlockChange) -> str:
    block, previous = change.block, change.previous
    if previous is None:
        return f"block {block.id} {_until(block.expires_at)}"
    action = "extended" if change.extended else "kept"
    return (f"{action} block {block.id} {_until(block.expires_at)} (was "
            f"{_until(previous.expires_at)}, reason {previous.reason!r})")


def _until(expires_at: datetime | None) -> str:
    return "until lifted" if expires_at is None else f"until {expires_at.isoformat()}"


# The detail that _block_detail writes for a renewal. The old reason is a Python
# string literal (repr), which runs to the final ")".
_RENEWAL_DETAIL = re.compile(
    r"(?:extended|kept) block (?P<block_id>\d+) until \S+ "
    r"\(was until (?P<until>\S+), reason (?P<reason>.+)\)"
)


@dataclass(frozen=True, slots=True)
class Renewal:
    """The expiry and reason that a renewal replaced on block ``block_id``."""

    block_id: int
    previous_expires_at: datetime | None  # None for a block until lifted
    previous_reason: str


def read_renewal(record: AuditRecord) -> Renewal | None:
    """Read what a renewal's audit entry records of the block before it.

    Returns None for the entry of a new block, for other actions, and for a
    detail that ``block_manually`` did not write.
    """
    if record.action != ACTION_BLOCK:
        return None
    match = _RENEWAL_DETAIL.fullmatch(record.detail)
    if match is None:
        return None

    try:
        reason = ast.literal_eval(match["reason"])
        until = match["until"]
        expires_at = None if until == "lifted" else datetime.fromisoformat(until)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(reason, str):
        return None
    return Renewal(int(match["block_id"]), expires_at, reason)


def unblock_manually(
    conn: Connection, key_type: str, key: str, reason: str, at: datetime, actor: str
) -> int:
    """Lift the active blocks on a key and store the audit entry; returns the count."""
    check_text(reason, "reason")
    lifted = blocks.lift_block(conn, key_type, key, at, reason)
    add_audit(conn, AuditRecord(
        at=at, action=ACTION_UNBLOCK, actor=actor, subject=f"{key_type} {key}",
        reason=reason, detail=f"lifted {plural(lifted, 'active block')}",
    ))
    return lifted


def reset_spend(
    conn: Connection,
    trunk: str,
    window: str,
    key: str,
    reason: str,
    at: datetime,
    actor: str,
) -> Decimal:
    """Bring one window's stored spend to zero with a negative adjustment.

    Records the amount cleared in the audit trail and returns it.
    """
    check_text(reason, "reason")
    check_window_key(window, key)
    # Locked, so that a reset at the same time on another node waits and then
    # clears only what was spent since, instead of clearing the same amount again.
    cleared = spend.spend_for(conn, trunk, {window: key}, lock=True)[window]
    if cleared:
        spend.add_spend(conn, trunk, window, key, -cleared, at)
    add_audit(conn, AuditRecord(
        at=at, action=ACTION_RESET, actor=actor, subject=f"trunk {trunk} {window} {key}",
        reason=reason, detail=f"cleared {format_amount(cleared)}",
    ))
    return cleared


def count_blocks(
    conn: Connection, key_type: str, key: str, since: datetime, created_by: str
) -> int:
    """Count the blocks on a key by ``created_by`` since ``since`` that were never lifted."""
    check_text(key_type, "key_type")
    check_text(key, "key")
    check_aware(since, "since")
    statement = select(func.count()).select_from(Block).where(
        Block.key_type == key_type,
        Block.key == key,
        Block.created_by == created_by,
        Block.created_at >= since,
        Block.lifted_at.is_(None),
    )
    return conn.execute(statement).scalar_one()


def audit_since(conn: Connection, since: datetime, limit: int) -> list[AuditRecord]:
    """Return the audit entries at or after ``since``, newest first."""
    check_aware(since, "since")
    check_count(limit, "limit", minimum=1)
    statement = (
        select(Audit.__table__)
        .where(Audit.at >= since)
        .order_by(Audit.at.desc(), Audit.id.desc())
        .limit(limit)
    )
    return [AuditRecord(**row._mapping) for row in conn.execute(statement)]


def decisions_since(
    conn: Connection, since: datetime, limit: int
) -> list[DecisionRecord]:
    """Return the decisions at or after ``since``, newest first."""
    check_aware(since, "since")
    check_count(limit, "limit", minimum=1)
    statement = (
        select(Decision.__table__)
        .where(Decision.decided_at >= since)
        .order_by(Decision.decided_at.desc(), Decision.id.desc())
        .limit(limit)
    )
    return [DecisionRecord(**row._mapping) for row in conn.execute(statement)]


def blocks_since(conn: Connection, since: datetime, limit: int) -> list[BlockRecord]:
    """Return the blocks created at or after ``since``, newest first."""
    check_aware(since, "since")
    check_count(limit, "limit", minimum=1)
    statement = (
        select(Block.__table__)
        .where(Block.created_at >= since)
        .order_by(Block.created_at.desc(), Block.id.desc())
        .limit(limit)
    )
    return [BlockRecord(**row._mapping) for row in conn.execute(statement)]


def hangups_since(conn: Connection, since: datetime, limit: int) -> list[HangupRecord]:
    """Return the hang-ups requested at or after ``since``, newest first."""
    check_aware(since, "since")
    check_count(limit, "limit", minimum=1)
    statement = (
        select(Hangup.__table__)
        .where(Hangup.requested_at >= since)
        .order_by(Hangup.requested_at.desc(), Hangup.id.desc())
        .limit(limit)
    )
    return [HangupRecord(**row._mapping) for row in conn.execute(statement)]
