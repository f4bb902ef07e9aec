"""The ``Store`` methods of operator controls and the audit trail."""

from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection

from callguard.store import audit
from callguard.store.audit_records import AuditRecord
from callguard.store.records import (
    BlockChange,
    BlockRecord,
    DecisionRecord,
    HangupRecord,
)


@dataclass(frozen=True)
class AuditTrail:
    """What happened since a moment, each list newest first."""

    decisions: list[DecisionRecord]
    blocks: list[BlockRecord]
    hangups: list[HangupRecord]
    changes: list[AuditRecord]


class AuditMethods:
    """Manual blocks, spend resets, reload records and the audit trail.

    Each method runs in its own transaction. ``Store`` supplies ``_transaction``.
    """

    def _transaction(
        self, operation: str, *, write: bool = True
    ) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def add_audit(self, record: AuditRecord) -> int:
        """Store an audit entry, such as a config reload; returns its id."""
        with self._transaction(f"storing the {record.action} audit entry") as conn:
            return audit.add_audit(conn, record)

    def block_manually(
        self,
        key_type: str,
        key: str,
        reason: str,
        at: datetime,
        expires_at: datetime | None,
        actor: str,
    ) -> BlockChange:
        """Store an operator's block, or renew the key's active block, with an audit entry."""
        with self._transaction(f"blocking {key_type} {key}") as conn:
            return audit.block_manually(conn, key_type, key, reason, at, expires_at, actor)

    def block_automatically(
        self,
        key_type: str,
        key: str,
        reason: str,
        at: datetime,
        expires_at: datetime,
        actor: str,
    ) -> BlockChange:
        """Store a block that callguard imposed, or renew the key's active block."""
        with self._transaction(f"blocking {key_type} {key}") as conn:
            return audit.block_automatically(conn, key_type, key, reason, at, expires_at,
                                             actor)

    def unblock_manually(
        self, key_type: str, key: str, reason: str, at: datetime, actor: str
    ) -> int:
        """Lift the active blocks on a key with an audit entry; returns how many."""
        with self._transaction(f"unblocking {key_type} {key}") as conn:
            return audit.unblock_manually(conn, key_type, key, reason, at, actor)

    def reset_spend(
        self, trunk: str, window: str, key: str, reason: str, at: datetime, actor: str
    ) -> Decimal:
        """Clear one window's stored spend with an audit entry; returns the amount."""
        with self._transaction(f"resetting the {window} spend of trunk {trunk}") as conn:
            return audit.reset_spend(conn, trunk, window, key, reason, at, actor)

    def count_blocks(
        self, key_type: str, key: str, since: datetime, created_by: str
    ) -> int:
        """Count the blocks on a key by ``created_by`` since ``since``, never lifted."""
        with self._transaction("counting blocks", write=False) as conn:
            return audit.count_blocks(conn, key_type, key, since, created_by)

    def audit_trail(self, since: datetime, limit: int) -> AuditTrail:
        """Return at most ``limit`` entries of each kind since ``since``."""
        with self._transaction("reading the audit trail", write=False) as conn:
            return AuditTrail(
                decisions=audit.decisions_since(conn, since, limit),
                blocks=audit.blocks_since(conn, since, limit),
                hangups=audit.hangups_since(conn, since, limit),
                changes=audit.audit_since(conn, since, limit),
            )
