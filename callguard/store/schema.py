"""Creation and version check of the schema, id allocation, and per-dialect upserts."""

import logging
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, inspect, select, text, update
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import ProgrammingError
from sqlalchemy.dialects import postgresql, sqlite

from callguard.store.engine import StoreError
from callguard.store.models import (
    COUNTED_TABLES,
    SCHEMA_VERSION,
    Base,
    Block,
    IdCounter,
    LiveSpend,
    SchemaVersion,
)

log = logging.getLogger(__name__)

# Key of the PostgreSQL advisory lock taken while the schema is created, so two
# daemons starting at once on an empty database do not both create it.
# The value is the ASCII of "cgsc" (callguard schema).
PG_SCHEMA_LOCK = 0x63677363


def lock_transaction(conn: Connection, key: int) -> None:
    """Take PostgreSQL's advisory lock ``key`` until the transaction ends,
    waiting while another transaction holds it.

    Advisory locks belong to the whole database, so the lock is taken on
    ``key`` and a hash of the schema that callguard's tables are in. Stores in
    other schemas of the same database then do not wait for each other.

    NOTE: earlier releases took the lock on ``key`` alone. During a rolling
    upgrade, an import on a node that runs one of them and an import on a
    node that runs this code therefore do not wait for each other.

    The wait ends after the session's ``lock_timeout``. A node whose peer
    holds the lock for a long import, or vanished holding it, then fails the
    transaction instead of waiting. The daemon starts on the files it loaded,
    and an import by hand can be run again.

    SQLite needs none: its writers start with BEGIN IMMEDIATE, which
    serializes them already.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(_ADVISORY_LOCK, {"key": key})


# The two-key form takes two int4 values, so ``key`` must fit in a signed 32-bit integer.
_ADVISORY_LOCK = text(
    "SELECT pg_advisory_xact_lock(:key, hashtext(coalesce(current_schema(), '')))"
)


def ensure_schema(
    conn: Connection, *, create: bool = True, database: str = "the database"
) -> bool:
    """Create the schema in an empty database or upgrade an older one, else check its version.

    Returns True when the schema was created. Raises ``StoreError`` when the
    database contains only part of the schema, a version newer than this
    code's or older without an upgrade, or no id counters. With ``create``
    False it neither creates nor upgrades, and raises ``StoreError`` instead,
    naming ``database`` in the message.
    """
    lock_transaction(conn, PG_SCHEMA_LOCK)

    existing = set(inspect(conn).get_table_names())
    expected = set(Base.metadata.tables)
    if not existing & expected:
        if not create:
            raise StoreError(
                f"{database} has no callguard schema (none of its tables). Check "
                "--database or database in [general], or start the callguard daemon "
                "once to create the schema"
            )
        create_schema(conn)
        return True

    if SchemaVersion.__tablename__ not in existing:
        raise StoreError(
            f"the database has callguard tables ({', '.join(sorted(existing & expected))}) "
            "but no schema_version table; restore it from a backup or point callguard "
            "at an empty database"
        )
    version = _read_version(conn)
    if version in UPGRADES and create:
        upgrade_schema(conn, version, database)
        existing |= {name for step in range(version, SCHEMA_VERSION)
                     for name in ADDED_TABLES.get(step, ())}
    else:
        _check_version(version, database)

    missing = expected - existing
    if missing:
        raise StoreError(
            f"the database lacks the tables {', '.join(sorted(missing))}; create them "
            "from schema.sql or point callguard at an empty database"
        )
    _check_counters(conn)
    return False


def create_schema(conn: Connection) -> None:
    """Create every table and index and write the version and id counter rows."""
    Base.metadata.create_all(conn)
    conn.execute(SchemaVersion.__table__.insert(), {"version": SCHEMA_VERSION})
    conn.execute(
        IdCounter.__table__.insert(),
        [{"name": name, "last_id": 0} for name in COUNTED_TABLES],
    )
    log.info("created database schema version %d", SCHEMA_VERSION)


def _read_version(conn: Connection) -> int:
    versions = conn.execute(select(SchemaVersion.version)).scalars().all()
    if len(versions) != 1:
        raise StoreError(
            f"schema_version must have exactly one row but has {len(versions)}; "
            f"set it to the database's schema version ({SCHEMA_VERSION} for a "
            "database made from this release's schema.sql)"
        )
    return versions[0]


def _check_version(version: int, database: str) -> None:
    if version in UPGRADES:
        raise StoreError(
            f"{database} has schema version {version}, older than version "
            f"{SCHEMA_VERSION} of this callguard. Start the callguard daemon once "
            "to upgrade it, then run this command again"
        )
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, newer than version "
            f"{SCHEMA_VERSION} that this callguard supports; upgrade callguard"
        )
    if version < SCHEMA_VERSION:
        raise StoreError(
            f"the database has schema version {version}, older than version "
            f"{SCHEMA_VERSION}, and no upgrade exists for it; recreate it from "
            "schema.sql"
        )


# Columns that each schema version added, by the version that lacks them.
UPGRADES: dict[int, tuple[tuple[str, tuple[str, ...]], ...]] = {
    1: ((Block.__tablename__, ("renewed_at", "renewed_by", "first_reason")),),
    2: (),
    3: ((LiveSpend.__tablename__, ("calls",)),),
}
# Tables that each schema version added, by the version that lacks them.
ADDED_TABLES: dict[int, tuple[str, ...]] = {
    2: (LiveSpend.__tablename__,),
}


def upgrade_schema(conn: Connection, version: int, database: str = "the database") -> None:
    """Add to a database of ``version`` the columns and tables of every later version.

    Each added column is nullable and no added table is needed by older code,
    so a daemon of the older version that still runs against the database
    goes on working. Raises ``StoreError`` naming ``database`` and the
    upgrade by hand when PostgreSQL rejects an ALTER TABLE or CREATE TABLE, as
    it does for a user that does not own the tables or may not create any.
    """
    preparer = conn.dialect.identifier_preparer
    # A table created by an earlier step has every column of the models already.
    created: set[str] = set()
    for step in range(version, SCHEMA_VERSION):
        for table_name, columns in UPGRADES[step]:
            if table_name in created:
                continue
            table = Base.metadata.tables[table_name]
            for name in columns:
                column_type = table.columns[name].type.compile(dialect=conn.dialect)
                statement = text(f"ALTER TABLE {preparer.quote(table_name)} "
                                 f"ADD COLUMN {preparer.quote(name)} {column_type}")
                _run_upgrade(conn, version, database,
                             lambda statement=statement: conn.execute(statement))
        for table_name in ADDED_TABLES.get(step, ()):
            table = Base.metadata.tables[table_name]
            _run_upgrade(conn, version, database,
                         lambda table=table: table.create(conn, checkfirst=True))
            created.add(table_name)
    conn.execute(update(SchemaVersion).values(version=SCHEMA_VERSION))
    log.info("upgraded database schema from version %d to %d", version, SCHEMA_VERSION)


def _run_upgrade(conn: Connection, version: int, database: str,
                 statement: Callable[[], object]) -> None:
    """Run one upgrade ``statement``, explaining the upgrade by hand if the database rejects it."""
    try:
        statement()
    except ProgrammingError as exc:
        cause = str(exc.orig).strip().splitlines()[0]
        raise StoreError(
            f"{database} has schema version {version}, and upgrading it to "
            f"version {SCHEMA_VERSION} failed ({cause}). Run the upgrade "
            "statements at the top of schema.sql as the owner of the tables, "
            "then try again"
        ) from None


def _check_counters(conn: Connection) -> None:
    present = set(conn.execute(select(IdCounter.name)).scalars())
    missing = [name for name in COUNTED_TABLES if name not in present]
    if missing:
        raise StoreError(
            f"id_counters has no row for {', '.join(missing)}; insert one per table "
            "with last_id set to the table's highest id (0 when empty)"
        )


def allocate_ids(conn: Connection, table: str, count: int) -> int:
    """Reserve ``count`` consecutive ids for ``table`` and return the first.

    The UPDATE locks the counter row until the transaction ends, so concurrent
    writers on PostgreSQL never get the same ids.
    """
    last = conn.execute(
        _ALLOCATE_IDS, {"counter": table, "count": count}
    ).scalar_one_or_none()
    if last is None:
        raise StoreError(f"id_counters has no row for {table}; the schema is damaged")
    return last - count + 1


def lock_id_counters(conn: Connection, tables: Sequence[str]) -> None:
    """Lock the id counters of ``tables`` until the transaction ends, in name order.

    A transaction that allocates ids for several tables locks their counters
    one by one as it goes. Two such transactions that reach the counters in
    opposite orders deadlock on PostgreSQL, so each locks them all first, in
    one order. SQLAlchemy leaves FOR UPDATE out on SQLite, whose writers
    start with BEGIN IMMEDIATE and run one at a time.
    """
    for table in sorted(tables):
        conn.execute(_LOCK_COUNTER, {"counter": table})


_LOCK_COUNTER = (
    select(IdCounter.last_id)
    .where(IdCounter.name == bindparam("counter"))
    .with_for_update()
)

# One statement object for every allocation, so SQLAlchemy compiles it once.
_ALLOCATE_IDS = (
    update(IdCounter)
    .where(IdCounter.name == bindparam("counter"))
    .values(last_id=IdCounter.last_id + bindparam("count"))
    .returning(IdCounter.last_id)
)


def dialect_insert(dialect: Dialect, model: type[Base]) -> Any:
    """Return an INSERT for ``model`` that supports ``on_conflict_do_update``."""
    return dialect_insert_for(dialect.name, model)


def dialect_insert_for(dialect_name: str, model: type[Base]) -> Any:
    """Return the INSERT of ``dialect_name`` for ``model``, with its upsert clauses."""
    if dialect_name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)
