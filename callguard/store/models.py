"""Declarative models of the callguard database; ``schema.sql`` is the same schema as DDL.

Row ids are allocated from ``id_counters`` instead of SERIAL or identity
columns, because SQLite and PostgreSQL share no syntax for generated keys and
``schema.sql`` must run unchanged on both.
"""

from datetime import datetime
from decimal import Decimal

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from callguard.store.audit_records import AUDIT_ACTIONS
from callguard.store.outbox_records import ALERT_STATES, TRANSPORTS
from callguard.store.records import (
    CALL_STATES,
    DECISION_RESULTS,
    HANGUP_OUTCOMES,
    WINDOWS,
)
from callguard.store.types import Money, PerMinuteRate, UTCDateTime

# Version 2 added the renewal columns of blocks, version 3 the live_spend
# table and version 4 its calls column. schema.upgrade_schema adds them to a
# database of an older version.
SCHEMA_VERSION = 4

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "pk": "pk_%(table_name)s",
}


def _sql_in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SchemaVersion(Base):
    """The single row that records which schema version the database has."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)


class IdCounter(Base):
    """The last id handed out for one table of ``COUNTED_TABLES``."""

    __tablename__ = "id_counters"

    name: Mapped[str] = mapped_column(Text, primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger)


class Prefix(Base):
    """One row of the prefix table that maps dialled prefixes to number categories."""

    __tablename__ = "prefixes"

    prefix: Mapped[str] = mapped_column(Text, primary_key=True)
    category: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)


class Rate(Base):
    """One row of a trunk's rate deck: a prefix and its tariff."""

    __tablename__ = "rates"
    __table_args__ = (
        PrimaryKeyConstraint("trunk", "prefix"),
        CheckConstraint("connection_fee >= 0", name="connection_fee_not_negative"),
        CheckConstraint("first_increment > 0", name="first_increment_positive"),
        CheckConstraint("later_increment > 0", name="later_increment_positive"),
    )

    trunk: Mapped[str] = mapped_column(Text)
    prefix: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text)
    rate: Mapped[Decimal] = mapped_column(PerMinuteRate)  # per minute
    connection_fee: Mapped[Decimal] = mapped_column(Money)
    first_increment: Mapped[int] = mapped_column(Integer)  # seconds
    later_increment: Mapped[int] = mapped_column(Integer)  # seconds


class Import(Base):
    """The last import of the prefix table or of one trunk's rate deck."""

    __tablename__ = "imports"
    __table_args__ = (PrimaryKeyConstraint("dataset", "trunk"),)

    dataset: Mapped[str] = mapped_column(Text)  # "prefixes" or "rates"
    trunk: Mapped[str] = mapped_column(Text)  # "" for the prefix table
    source: Mapped[str] = mapped_column(Text)
    row_count: Mapped[int] = mapped_column(Integer)
    imported_at: Mapped[datetime] = mapped_column(UTCDateTime)


class Decision(Base):
    """The audit trail: one row for every result of the FastAGI check."""

    __tablename__ = "decisions"
    __table_args__ = (
        CheckConstraint(_sql_in("result", DECISION_RESULTS), name="result"),
        CheckConstraint("max_seconds >= 0", name="max_seconds_not_negative"),
        Index(None, "decided_at"),
        Index(None, "trunk", "decided_at"),
        Index(None, "uniqueid"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
    trunk: Mapped[str] = mapped_column(Text)
    uniqueid: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(Text)
    caller: Mapped[str] = mapped_column(Text)
    dialled: Mapped[str] = mapped_column(Text)
    e164: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(Text)
    result: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    max_seconds: Mapped[int | None] = mapped_column(Integer)
    rate: Mapped[Decimal | None] = mapped_column(PerMinuteRate)  # per minute
    reserved: Mapped[Decimal] = mapped_column(Money)
    node: Mapped[str] = mapped_column(Text)


class Call(Base):
    """A call on a guarded trunk, keyed by the uniqueid of its trunk leg."""

    __tablename__ = "calls"
    __table_args__ = (
        UniqueConstraint("uniqueid"),
        CheckConstraint(_sql_in("state", CALL_STATES), name="state"),
        Index(None, "state"),
        Index(None, "created_at"),
        Index(None, "decision_uniqueid"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    uniqueid: Mapped[str] = mapped_column(Text)
    decision_uniqueid: Mapped[str | None] = mapped_column(Text)
    trunk: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(Text)
    caller: Mapped[str] = mapped_column(Text)
    dialled: Mapped[str] = mapped_column(Text)
    e164: Mapped[str | None] = mapped_column(Text)
    category: Mapped[str | None] = mapped_column(Text)
    tariff_prefix: Mapped[str | None] = mapped_column(Text)
    rate: Mapped[Decimal | None] = mapped_column(PerMinuteRate)  # per minute
    connection_fee: Mapped[Decimal | None] = mapped_column(Money)
    first_increment: Mapped[int | None] = mapped_column(Integer)  # seconds
    later_increment: Mapped[int | None] = mapped_column(Integer)  # seconds
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    answered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    state: Mapped[str] = mapped_column(Text)
    cost: Mapped[Decimal] = mapped_column(Money)
    hangup_cause: Mapped[int | None] = mapped_column(Integer)  # Q.850 cause code
    hangup_reason: Mapped[str | None] = mapped_column(Text)
    guarded: Mapped[bool] = mapped_column(Boolean)


class Spend(Base):
    """The amount spent on a trunk in one day or ISO week.

    Each window has its own key, so a new day or week starts at zero without a
    reset job.
    """

    __tablename__ = "spend"
    __table_args__ = (
        PrimaryKeyConstraint("trunk", "window", "window_key"),
        CheckConstraint(_sql_in('"window"', WINDOWS), name="window"),
    )

    trunk: Mapped[str] = mapped_column(Text)
    window: Mapped[str] = mapped_column(Text)
    window_key: Mapped[str] = mapped_column(Text)  # "2024-06-14" or "2024-W24"
    amount: Mapped[Decimal] = mapped_column(Money)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)


class LiveSpend(Base):
    """The spend of one node's calls still up, and of its pending holds, in one window.

    Each node that shares the store replaces its own rows every few seconds,
    and the other nodes count the rows updated recently in their limits.
    """

    __tablename__ = "live_spend"
    __table_args__ = (
        PrimaryKeyConstraint("node", "trunk", "window", "window_key"),
        CheckConstraint(_sql_in('"window"', WINDOWS), name="window"),
    )

    node: Mapped[str] = mapped_column(Text)
    trunk: Mapped[str] = mapped_column(Text)
    window: Mapped[str] = mapped_column(Text)
    window_key: Mapped[str] = mapped_column(Text)  # "2024-06-14" or "2024-W24"
    # Blocks begun by calls still up, plus ended calls not yet in spend.
    live: Mapped[Decimal] = mapped_column(Money)
    held: Mapped[Decimal] = mapped_column(Money)  # first blocks of pending checks
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The node's calls up on the trunk plus its pending checks there, on the
    # day row only (0 on the week row). NULL in rows that a release before
    # schema version 4 writes, which shares no count. It is the last column,
    # where the upgrade from version 3 adds it.
    calls: Mapped[int | None] = mapped_column(Integer)


class Block(Base):
    """A block on a caller, number or other key, active until it expires or is lifted."""

    __tablename__ = "blocks"
    __table_args__ = (Index(None, "key_type", "key"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    key_type: Mapped[str] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_by: Mapped[str] = mapped_column(Text)
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lifted_reason: Mapped[str | None] = mapped_column(Text)
    # The last renewal, and the reason given when the block was created; NULL
    # for a block never renewed.
    renewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    renewed_by: Mapped[str | None] = mapped_column(Text)
    first_reason: Mapped[str | None] = mapped_column(Text)


class Hangup(Base):
    """A hang-up that callguard requested on a trunk leg, with the spend behind it."""

    __tablename__ = "hangups"
    __table_args__ = (
        CheckConstraint(_sql_in("outcome", HANGUP_OUTCOMES), name="outcome"),
        Index(None, "trunk", "requested_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime)
    trunk: Mapped[str] = mapped_column(Text)
    uniqueid: Mapped[str] = mapped_column(Text)
    channel: Mapped[str] = mapped_column(Text)
    number: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    daily_spend: Mapped[Decimal | None] = mapped_column(Money)
    weekly_spend: Mapped[Decimal | None] = mapped_column(Money)
    call_cost: Mapped[Decimal] = mapped_column(Money)
    outcome: Mapped[str] = mapped_column(Text)


class Outbox(Base):
    """An alert to deliver by e-mail or webhook, one row per transport, and its progress.

    Rows that share a ``dedupe_key`` belong to one alert, so the key is unique
    per transport. NULL keys never collide.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("dedupe_key", "transport"),
        CheckConstraint(_sql_in("transport", TRANSPORTS), name="transport"),
        CheckConstraint(_sql_in("state", ALERT_STATES), name="state"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
        Index(None, "state", "next_attempt_at"),
        Index(None, "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    kind: Mapped[str] = mapped_column(Text)
    trunk: Mapped[str | None] = mapped_column(Text)
    transport: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str | None] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    body: Mapped[str] = mapped_column(Text)
    data: Mapped[str] = mapped_column(Text)  # JSON object
    recipients: Mapped[str] = mapped_column(Text)  # comma-separated addresses
    pending_recipients: Mapped[str | None] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reply: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)
    refused: Mapped[str | None] = mapped_column(Text)


class Audit(Base):
    """An operator change (block, unblock, spend reset) or a config reload, and why."""

    __tablename__ = "audit"
    __table_args__ = (
        CheckConstraint(_sql_in("action", AUDIT_ACTIONS), name="action"),
        Index(None, "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    action: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    detail: Mapped[str] = mapped_column(Text)


# Tables whose ids come from id_counters, each seeded with last_id 0.
COUNTED_TABLES = (
    Decision.__tablename__,
    Call.__tablename__,
    Block.__tablename__,
    Hangup.__tablename__,
    Outbox.__tablename__,
    Audit.__tablename__,
)
