"""schema.sql and the SQLAlchemy models describe the same database, on SQLite and PostgreSQL."""

import dataclasses
import re
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine, make_url

from callguard.store import (
    TRANSPORT_EMAIL,
    Base,
    DecisionRecord,
    HangupRecord,
    LiveShares,
    LiveSpendRow,
    Money,
    PerMinuteRate,
    OutboxRecord,
    Store,
    StoreError,
    UTCDateTime,
)
from callguard.store.models import Block, LiveSpend
from callguard.store.records import RESULT_DENY
from callguard.store.schema import create_schema

SCHEMA_SQL = Path(__file__).resolve().parent.parent / "schema.sql"
T0 = datetime(2024, 6, 14, 12, 0, tzinfo=timezone.utc)
SEED_QUERIES = (
    "SELECT version FROM schema_version",
    "SELECT name, last_id FROM id_counters ORDER BY name",
)


@pytest.fixture
def twin_url(db_url, tmp_path):
    """Yield a second, empty database on the same backend as ``db_url``."""
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'from-schema-sql.db'}"
        return

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url.difference_update_query(["options"]))
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    twin = url.update_query_dict({"options": f"-csearch_path={schema}"})
    yield twin.render_as_string(hide_password=False)
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def engines(db_url, twin_url):
    """Yield (engine for create_all, engine for schema.sql)."""
    from_models = create_engine(db_url)
    from_sql = create_engine(twin_url)
    yield from_models, from_sql
    from_models.dispose()
    from_sql.dispose()


def sql_statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def run_schema_sql(engine: Engine, sql: str) -> None:
    with engine.begin() as conn:
        for statement in sql_statements(sql):
            conn.exec_driver_sql(statement)


def create_from_models(engine: Engine) -> None:
    """Create the schema with metadata.create_all, plus its version and id counter rows."""
    with engine.begin() as conn:
        create_schema(conn)


def squash(sql: str | None) -> str:
    return re.sub(r"\s+", " ", sql or "").strip()


def describe(engine: Engine) -> dict:
    """Reflect the parts of a schema that must agree, in comparable form."""
    inspector = inspect(engine)
    tables = {}
    for table in sorted(inspector.get_table_names()):
        columns = [
            (
                column["name"],
                column["type"].compile(dialect=engine.dialect),
                column["nullable"],
            )
            for column in inspector.get_columns(table)
        ]
        primary_key = inspector.get_pk_constraint(table)
        tables[table] = {
            "columns": columns,
            "primary_key": (primary_key["name"], primary_key["constrained_columns"]),
            "unique": sorted(
                (unique["name"], unique["column_names"])
                for unique in inspector.get_unique_constraints(table)
            ),
            "indexes": sorted(
                (index["name"], index["column_names"], index["unique"])
                for index in inspector.get_indexes(table)
            ),
            "checks": sorted(
                (check["name"], squash(check["sqltext"]))
                for check in inspector.get_check_constraints(table)
            ),
            "foreign_keys": inspector.get_foreign_keys(table),
        }
        if engine.dialect.name == "sqlite":
            tables[table]["declared"] = sqlite_declared_types(engine, table)
    return tables


def sqlite_declared_types(engine: Engine, table: str) -> list[tuple[str, str]]:
    # SQLAlchemy reflects TIMESTAMP WITH TIME ZONE as NUMERIC (SQLite's type
    # affinity), so compare the declared type names as well.
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f'PRAGMA table_info("{table}")').all()
    return [(row.name, row.type) for row in rows]


def seeds(engine: Engine) -> list[list[tuple]]:
    with engine.connect() as conn:
        return [
            [tuple(row) for row in conn.execute(text(query))] for query in SEED_QUERIES
        ]


def test_schema_sql_matches_models(engines):
    from_models, from_sql = engines
    create_from_models(from_models)
    run_schema_sql(from_sql, SCHEMA_SQL.read_text())

    models, sql = describe(from_models), describe(from_sql)

    assert sorted(models) == sorted(Base.metadata.tables)
    assert sorted(sql) == sorted(models)
    for table in models:
        for part in models[table]:
            assert sql[table][part] == models[table][part], (table, part)
    assert seeds(from_sql) == seeds(from_models)


@pytest.mark.parametrize(
    "old, new",
    [
        ("    node TEXT NOT NULL,", "    node TEXT,"),
        ("    reserved BIGINT NOT NULL,", "    reserved INTEGER NOT NULL,"),
        ("CREATE INDEX ix_calls_state ON calls (state);", ""),
        (
            "CHECK (state IN ('ringing', 'up', 'ended'))",
            "CHECK (state IN ('ringing', 'up'))",
        ),
        ("CONSTRAINT uq_calls_uniqueid UNIQUE (uniqueid),", ""),
        (
            "    imported_at TIMESTAMP WITH TIME ZONE NOT NULL,",
            "    imported_at TEXT NOT NULL,",
        ),
        (
            "CREATE INDEX ix_hangups_trunk_requested_at ON hangups "
            "(trunk, requested_at);",
            "",
        ),
        ("    daily_spend BIGINT,", "    daily_spend BIGINT NOT NULL,"),
        ("'requested', 'gone', 'failed'", "'requested', 'gone'"),
        (
            "CONSTRAINT uq_outbox_dedupe_key_transport UNIQUE (dedupe_key, transport),",
            "",
        ),
        ("    pending_recipients TEXT,", "    pending_recipients TEXT NOT NULL,"),
        ("    next_attempt_at TIMESTAMP WITH TIME ZONE,", "    next_attempt_at TEXT,"),
        ("'pending', 'sent', 'failed'", "'pending', 'sent'"),
        (
            "CREATE INDEX ix_outbox_state_next_attempt_at ON outbox "
            "(state, next_attempt_at);",
            "",
        ),
    ],
)
def test_comparison_detects_drift(engines, old, new):
    from_models, from_sql = engines
    sql = SCHEMA_SQL.read_text()
    assert old in sql
    create_from_models(from_models)
    run_schema_sql(from_sql, sql.replace(old, new, 1))

    assert describe(from_sql) != describe(from_models)


def test_column_types_per_backend(engines):
    from_models, _ = engines
    create_from_models(from_models)
    described = describe(from_models)

    money = [
        (table.name, column.name)
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, Money)
    ]
    times = [
        (table.name, column.name)
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, UTCDateTime)
    ]
    rates = [
        (table.name, column.name)
        for table in Base.metadata.sorted_tables
        for column in table.columns
        if isinstance(column.type, PerMinuteRate)
    ]
    assert len(money) == 10
    assert len(times) == 17
    assert sorted(rates) == [("calls", "rate"), ("decisions", "rate"), ("rates", "rate")]

    for table, name in money:
        types = {column[0]: column[1] for column in described[table]["columns"]}
        assert types[name] == "BIGINT", (table, name)
    for table, name in rates:
        types = {column[0]: column[1] for column in described[table]["columns"]}
        assert types[name] == "TEXT", (table, name)
    for table, name in times:
        if from_models.dialect.name == "sqlite":
            types = dict(described[table]["declared"])
        else:
            types = {column[0]: column[1] for column in described[table]["columns"]}
        assert types[name] == "TIMESTAMP WITH TIME ZONE", (table, name)


def test_store_opens_schema_sql(twin_url):
    engine = create_engine(twin_url)
    run_schema_sql(engine, SCHEMA_SQL.read_text())
    engine.dispose()
    decision = DecisionRecord(
        decided_at=T0,
        trunk="gamma",
        uniqueid="1718366400.1",
        channel="PJSIP/1001-00000001",
        caller="1001",
        dialled="09011234567",
        result=RESULT_DENY,
        reason="category premium is barred",
    )

    hangup = HangupRecord(
        requested_at=T0,
        trunk="gamma",
        uniqueid="1718366400.2",
        channel="PJSIP/gamma-00000002",
        number="+442079460000",
        reason="limit:daily",
        daily_spend=Decimal("50.0036"),
        weekly_spend=None,
        call_cost=Decimal("0.0036"),
        outcome="requested",
    )

    alert = OutboxRecord(
        created_at=T0,
        kind="warning",
        trunk="gamma",
        transport=TRANSPORT_EMAIL,
        dedupe_key="warning:gamma:day:2024-06-14:80",
        subject="[callguard] gamma: daily spend 80%",
        body="",
        recipients=("noc@example.com",),
        next_attempt_at=T0,
    )

    with Store(twin_url) as store:
        block_id = store.add_block("caller", "1001", "fraud", T0, None, "admin")
        store.add_decisions([decision])
        spent = store.add_spend("gamma", "day", "2024-06-14", Decimal("0.0036"), T0)
        hangup_id = store.add_hangup(hangup)
        alert_ids = store.queue_alert([alert])

        assert block_id == 1
        assert hangup_id == 1
        assert alert_ids == [1]
        assert store.recent_alerts() == [dataclasses.replace(alert, id=1)]
        assert store.recent_hangups() == [dataclasses.replace(hangup, id=1)]
        assert [record.id for record in store.recent_decisions()] == [1]
        assert spent == Decimal("0.0036")


# The columns that version 2 added to blocks, as schema.sql declares them.
VERSION_2_LINES = (
    "    renewed_at TIMESTAMP WITH TIME ZONE,\n",
    "    renewed_by TEXT,\n",
    "    first_reason TEXT,\n",
)


# The column that version 4 added to live_spend, as schema.sql declares it.
VERSION_4_LINE = "    calls INTEGER,\n"


def version_3_sql() -> str:
    """Return schema.sql as it was at version 3, before live_spend shared call counts."""
    sql = SCHEMA_SQL.read_text()
    assert VERSION_4_LINE in sql
    sql = sql.replace(VERSION_4_LINE, "")
    seed = "INSERT INTO schema_version (version) VALUES (4);"
    assert seed in sql
    return sql.replace(seed, "INSERT INTO schema_version (version) VALUES (3);")


def version_2_sql() -> str:
    """Return schema.sql as it was at version 2, before the live_spend table."""
    sql = version_3_sql()
    start = sql.index("\nCREATE TABLE live_spend (")
    end = sql.index(");", start) + len(");")
    sql = sql[:start] + sql[end:]
    seed = "INSERT INTO schema_version (version) VALUES (3);"
    assert seed in sql
    return sql.replace(seed, "INSERT INTO schema_version (version) VALUES (2);")


def version_1_sql() -> str:
    """Return schema.sql as it was at version 1, before blocks recorded renewals."""
    sql = version_2_sql()
    for line in VERSION_2_LINES:
        assert line in sql
        sql = sql.replace(line, "")
    seed = "INSERT INTO schema_version (version) VALUES (2);"
    assert seed in sql
    return sql.replace(seed, "INSERT INTO schema_version (version) VALUES (1);")


def create_older_and_current(engines: tuple[Engine, Engine], older_sql: str) -> None:
    """Create the current schema with the first engine and ``older_sql`` with the second."""
    from_models, from_sql = engines
    create_from_models(from_models)
    run_schema_sql(from_sql, older_sql)


def test_store_upgrades_version_1(engines, twin_url):
    from_models, from_sql = engines
    create_older_and_current(engines, version_1_sql())
    with from_sql.begin() as conn:
        conn.execute(Block.__table__.insert(), {
            "id": 1, "key_type": "endpoint", "key": "1001", "reason": "fraud",
            "created_at": T0, "expires_at": None, "created_by": "alice",
        })
        conn.execute(text("UPDATE id_counters SET last_id = 1 WHERE name = 'blocks'"))

    with Store(twin_url) as store:
        (old,) = store.active_blocks(T0)
        renewal = store.block_manually("endpoint", "1001", "more fraud",
                                       T0 + timedelta(hours=1), None, "bob")

    assert describe(from_sql) == describe(from_models)
    assert seeds(from_sql)[0] == [(4,)]
    assert old.renewed_by is None
    assert old.first_reason is None
    assert renewal.block.id == 1
    assert renewal.block.renewed_by == "bob"
    assert renewal.block.first_reason == "fraud"


def test_read_only_open_keeps_version_1(twin_url):
    engine = create_engine(twin_url)
    run_schema_sql(engine, version_1_sql())

    with pytest.raises(StoreError, match="has schema version 1, older than version 4"):
        Store(twin_url, create_schema=False).open()

    with engine.connect() as conn:
        version = conn.execute(text("SELECT version FROM schema_version")).scalar_one()
        columns = [column["name"] for column in inspect(conn).get_columns("blocks")]
    engine.dispose()
    assert version == 1
    assert "renewed_at" not in columns


def share_after_upgrade(twin_url: str, row: LiveSpendRow) -> LiveShares:
    """Open the store at ``twin_url``, which upgrades it, store ``row`` for
    pbx-a and return what pbx-b reads of the others."""
    with Store(twin_url) as store:
        store.replace_live_spend("pbx-a", [row], T0)
        return store.others_live_spend("pbx-b", T0)


def test_store_upgrades_version_2(engines, twin_url):
    from_models, from_sql = engines
    create_older_and_current(engines, version_2_sql())
    row = LiveSpendRow("gamma", "day", "2024-06-14", Decimal("1.50"), Decimal("0.20"))

    shared = share_after_upgrade(twin_url, row)

    assert describe(from_sql) == describe(from_models)
    assert seeds(from_sql)[0] == [(4,)]
    assert shared.spend == {("gamma", "day", "2024-06-14"): Decimal("1.70")}


def test_store_upgrades_version_3(engines, twin_url):
    from_models, from_sql = engines
    create_older_and_current(engines, version_3_sql())
    # A row that a node of version 3 stored before the upgrade, with no count.
    with from_sql.begin() as conn:
        conn.execute(LiveSpend.__table__.insert(), {
            "node": "pbx-c", "trunk": "gamma", "window": "day", "window_key": "2024-06-14",
            "live": Decimal("1.00"), "held": Decimal(0), "updated_at": T0,
        })
    row = LiveSpendRow("gamma", "day", "2024-06-14", Decimal("1.50"), Decimal("0.20"), 2)

    shared = share_after_upgrade(twin_url, row)

    assert describe(from_sql) == describe(from_models)
    assert seeds(from_sql)[0] == [(4,)]
    assert shared.spend == {("gamma", "day", "2024-06-14"): Decimal("2.70")}
    assert shared.calls == {"gamma": 2}


@pytest.fixture
def pg_version_1_for_user(pg_url):
    """Yield the URL of a version 1 schema made from schema.sql by its owner, for a
    role that may only read and write its rows, as schema.sql's header suggests
    for a daemon that may not create tables."""
    engine = create_engine(pg_url)
    run_schema_sql(engine, version_1_sql())
    schema = make_url(pg_url).query["options"].removeprefix("-csearch_path=")
    role = f"cg_{uuid.uuid4().hex[:12]}"
    with engine.begin() as conn:
        conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
        conn.execute(text(f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA '
                          f'"{schema}" TO "{role}"'))
    try:
        yield make_url(pg_url).set(username=role).render_as_string(hide_password=False)
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP OWNED BY "{role}"'))
            conn.execute(text(f'DROP ROLE "{role}"'))
        engine.dispose()


@pytest.mark.postgres
def test_upgrade_without_owner_rights_explained(pg_version_1_for_user):
    store = Store(pg_version_1_for_user)
    with pytest.raises(StoreError) as caught:
        store.open()
    store.close()

    message = str(caught.value)
    assert "schema version 1" in message
    assert "must be owner of table blocks" in message
    assert "schema.sql" in message
