"""The store on SQLite and on the local PostgreSQL server: types, schema, and every operation."""

import dataclasses
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import psycopg
import pytest
import sqlalchemy
from sqlalchemy import Column, MetaData, Table, create_engine, text
from sqlalchemy.dialects import postgresql, sqlite

from callguard.store import (
    SCHEMA_VERSION,
    AuditRecord,
    STATE_ENDED,
    STATE_UP,
    CallRecord,
    DecisionRecord,
    HangupRecord,
    Money,
    Store,
    StoreError,
    UTCDateTime,
    window_keys,
)
from callguard.store.audit import Renewal, read_renewal
from callguard.store import engine as engine_module
from callguard.store import types as types_module
from callguard.store.engine import SQLITE_BUSY_TIMEOUT_MS, build_engine, parse_url
from callguard.store.models import Block, Call, Decision, Hangup
from callguard.store.records import BlockRecord
from callguard.urls import mask_url
from support import free_port

UTC = timezone.utc
T0 = datetime(2024, 6, 14, 12, 0, 0, tzinfo=UTC)
PLUS_TWO = timezone(timedelta(hours=2))


@pytest.fixture
def engine(db_url):
    created = create_engine(db_url)
    yield created
    created.dispose()


def decision(n: int, **changes) -> DecisionRecord:
    values = dict(
        decided_at=T0 + timedelta(seconds=n),
        trunk="gamma",
        uniqueid=f"1718366400.{n}",
        channel=f"PJSIP/1001-{n:08x}",
        caller="1001",
        dialled="09011234567",
        e164="+449011234567",
        category="premium",
        result="DENY",
        reason="category premium is barred",
        node="pbx1",
    )
    return DecisionRecord(**(values | changes))


def call(uniqueid: str = "1718366400.20", **changes) -> CallRecord:
    values = dict(
        uniqueid=uniqueid,
        decision_uniqueid="1718366400.19",
        trunk="gamma",
        channel="PJSIP/gamma-00000014",
        caller="1001",
        dialled="02079460000",
        e164="+442079460000",
        category="geographic",
        tariff_prefix="4420",
        rate=Decimal("0.006"),
        connection_fee=Decimal("0.05"),
        first_increment=30,
        later_increment=6,
        created_at=T0,
        guarded=True,
    )
    return CallRecord(**(values | changes))


def ended_call(uniqueid: str = "1718366400.20", **changes) -> CallRecord:
    values = dict(
        state=STATE_ENDED,
        answered_at=T0 + timedelta(seconds=5),
        ended_at=T0 + timedelta(seconds=65),
        cost=Decimal("0.056"),
        hangup_cause=16,
        hangup_reason="Normal Clearing",
    )
    return call(uniqueid, **(values | changes))


def hangup(n: int, **changes) -> HangupRecord:
    values = dict(
        requested_at=T0 + timedelta(minutes=n),
        trunk="gamma",
        uniqueid=f"1718366400.{n}",
        channel=f"PJSIP/gamma-{n:08x}",
        number="+449011234567",
        reason="limit:daily",
        daily_spend=Decimal("50.000001"),
        weekly_spend=Decimal("120.5"),
        call_cost=Decimal("3.141593"),
        outcome="requested",
    )
    return HangupRecord(**(values | changes))


CHARGES = {
    ("day", "2024-06-14"): Decimal("0.056"),
    ("week", "2024-W24"): Decimal("0.056"),
}


def spend_rows(engine) -> list[tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            text('SELECT trunk, "window", window_key, amount FROM spend ORDER BY 2, 3')
        )
        return [tuple(row) for row in rows]


# Column types.


def probe_table(engine) -> Table:
    metadata = MetaData()
    table = Table(
        "type_probe",
        metadata,
        Column("id", sqlalchemy.Integer, primary_key=True, autoincrement=False),
        Column("amount", Money),
        Column("at", UTCDateTime),
    )
    metadata.create_all(engine)
    return table


@pytest.mark.parametrize(
    "stored, expected",
    [
        (Decimal("0.000001"), Decimal("0.000001")),
        (Decimal("12345678.901234"), Decimal("12345678.901234")),
        (Decimal("0"), Decimal("0")),
        (Decimal("-1.5"), Decimal("-1.5")),
        (Decimal("9223372036854.775807"), Decimal("9223372036854.775807")),
        (Decimal("0.0000001"), Decimal("0.000001")),  # rounded up to the micro-unit
    ],
)
def test_money_round_trip(engine, stored, expected):
    table = probe_table(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), {"id": 1, "amount": stored})
        raw = conn.execute(text("SELECT amount FROM type_probe")).scalar_one()
        back = conn.execute(sqlalchemy.select(table.c.amount)).scalar_one()

    assert raw == int(expected * 1_000_000)
    assert isinstance(back, Decimal)
    assert back == expected


@pytest.mark.parametrize(
    "bad, error",
    [
        (0.0036, TypeError),
        (1, TypeError),
        ("0.0036", TypeError),
        (Decimal("NaN"), ValueError),
        (Decimal("Infinity"), ValueError),
        (Decimal("9223372036854.775808"), ValueError),
        (Decimal("1E+30"), ValueError),
    ],
)
def test_money_rejects(engine, bad, error):
    table = probe_table(engine)
    with pytest.raises(sqlalchemy.exc.StatementError) as caught:
        with engine.begin() as conn:
            conn.execute(table.insert(), {"id": 1, "amount": bad})
    assert isinstance(caught.value.orig, error)


DIALECTS = (sqlite.dialect(), postgresql.psycopg.dialect())


@pytest.mark.parametrize("dialect", DIALECTS, ids=lambda dialect: dialect.name)
def test_money_cache_rejects_floats_and_ints(dialect):
    """Cached amounts are found by value, but an equal float or int still raises."""
    process = Money().dialect_impl(dialect).bind_processor(dialect)
    assert process(Decimal("0.5")) == 500_000
    assert process(Decimal("0.500000")) == 500_000
    assert process(Decimal("1")) == 1_000_000
    assert process(Decimal("0.0000001")) == 1
    assert process(None) is None
    for bad, error in [(0.5, TypeError), (1, TypeError), (True, TypeError),
                       (Decimal("NaN"), ValueError), (Decimal("sNaN"), ValueError),
                       (Decimal("-Infinity"), ValueError),
                       (Decimal("9223372036854.775808"), ValueError)]:
        with pytest.raises(error):
            process(bad)
    # The valid amounts are cached, 0.5 and 0.500000 as one entry. The
    # rejected ones are not.
    assert sorted(cached_amounts(process)) == [Decimal("0.0000001"), Decimal("0.5"),
                                               Decimal("1")]


def cached_amounts(process) -> dict:
    """Return the dict of micro-units that a Money bind processor keeps in its closure."""
    cells = [cell.cell_contents for cell in process.__closure__]
    return next(value for value in cells if isinstance(value, dict))


def test_money_cache_empties_when_full(monkeypatch):
    monkeypatch.setattr(types_module, "MAX_CACHED_AMOUNTS", 8)
    dialect = sqlite.dialect()
    process = Money().dialect_impl(dialect).bind_processor(dialect)
    for round_ in range(3):
        for micros in range(50):
            amount = Decimal(micros) / 1_000_000
            assert process(amount) == micros, (round_, amount)
            assert len(cached_amounts(process)) <= 8, (round_, amount)


def test_sqlite_utc_text_matches_general_path():
    """The short path for UTC times writes exactly what SQLAlchemy's DATETIME writes."""
    dialect = sqlite.dialect()
    impl = UTCDateTime().dialect_impl(dialect)
    process = impl.bind_processor(dialect)
    general = super(UTCDateTime, impl).bind_processor(dialect)
    assert process is not general
    rng = random.Random(1796)
    times = [datetime(1, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
             datetime(999, 3, 4, 5, 6, 7, tzinfo=UTC), T0, T0.replace(microsecond=1)]
    for _ in range(5000):
        times.append(datetime(rng.randint(1, 9999), rng.randint(1, 12), rng.randint(1, 28),
                              rng.randint(0, 23), rng.randint(0, 59), rng.randint(0, 59),
                              rng.choice([0, rng.randint(0, 999_999)]), tzinfo=UTC))
    for value in times:
        assert process(value) == general(value), value
        assert len(process(value)) == 26
    # Other zones, UTC from zoneinfo among them, take the general path.
    for value in [datetime(2024, 6, 14, 14, 0, tzinfo=PLUS_TWO),
                  datetime(2024, 6, 14, 12, 0, 0, 5, tzinfo=ZoneInfo("UTC")),
                  datetime(2024, 12, 31, 23, 30, tzinfo=ZoneInfo("America/New_York"))]:
        assert process(value) == general(value)
    assert process(datetime(2024, 6, 14, 14, 0, tzinfo=PLUS_TWO)) == "2024-06-14 12:00:00.000000"
    assert process(None) is None
    with pytest.raises(ValueError, match="naive"):
        process(datetime(2024, 6, 14, 12, 0))


def test_datetime_naive_rejected(engine):
    table = probe_table(engine)
    with pytest.raises(sqlalchemy.exc.StatementError) as caught:
        with engine.begin() as conn:
            conn.execute(table.insert(), {"id": 1, "at": datetime(2024, 6, 14, 12, 0)})
    assert isinstance(caught.value.orig, ValueError)
    assert "naive" in str(caught.value.orig)


@pytest.mark.parametrize(
    "stored",
    [
        T0,
        datetime(2024, 6, 14, 14, 0, 0, 123456, tzinfo=PLUS_TWO),
        datetime(
            1999, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5))
        ),
    ],
)
def test_datetime_aware_round_trip(engine, stored):
    table = probe_table(engine)
    with engine.begin() as conn:
        conn.execute(table.insert(), {"id": 1, "at": stored})
        back = conn.execute(sqlalchemy.select(table.c.at)).scalar_one()

    assert back == stored
    assert back.utcoffset() == timedelta(0)


def test_datetime_compares_in_utc(engine):
    table = probe_table(engine)
    with engine.begin() as conn:
        conn.execute(
            table.insert(),
            [{"id": 1, "at": T0}, {"id": 2, "at": T0 + timedelta(hours=1)}],
        )
        # 13:30 at +02:00 is 11:30 UTC, before both rows.
        later = sqlalchemy.select(table.c.id).where(
            table.c.at > datetime(2024, 6, 14, 13, 30, tzinfo=PLUS_TWO)
        )
        found = conn.execute(later.order_by(table.c.id)).scalars().all()
    assert found == [1, 2]


def test_store_rejects_float(store):
    with pytest.raises(TypeError, match="float"):
        store.add_spend("gamma", "day", "2024-06-14", 0.0036, T0)


def test_store_rejects_naive(store):
    with pytest.raises(ValueError, match="naive"):
        store.add_spend(
            "gamma", "day", "2024-06-14", Decimal("1"), datetime(2024, 6, 14)
        )


# Schema creation and version.


def test_open_creates_schema(store, engine):
    tables = set(sqlalchemy.inspect(engine).get_table_names())
    with engine.connect() as conn:
        version = (
            conn.execute(text("SELECT version FROM schema_version")).scalars().all()
        )

    assert {"decisions", "calls", "spend", "blocks", "rates", "prefixes"} <= tables
    assert version == [SCHEMA_VERSION]


def test_reopen_keeps_data(db_url):
    with Store(db_url) as first:
        first.add_spend("gamma", "day", "2024-06-14", Decimal("1.25"), T0)
    with Store(db_url) as second:
        assert second.get_spend("gamma", "day", "2024-06-14") == Decimal("1.25")


@pytest.mark.parametrize(
    "damage, message",
    [
        (f"UPDATE schema_version SET version = {SCHEMA_VERSION + 1}", "newer"),
        ("UPDATE schema_version SET version = 0", "older"),
        ("DELETE FROM schema_version", "exactly one row"),
        ("DROP TABLE schema_version", "no schema_version table"),
        ("DROP TABLE blocks", "lacks the tables blocks"),
        ("DELETE FROM id_counters WHERE name = 'calls'", "no row for calls"),
        ("DROP TABLE hangups", "lacks the tables hangups"),
        ("DELETE FROM id_counters WHERE name = 'hangups'", "no row for hangups"),
    ],
)
def test_open_rejects_damaged_schema(db_url, engine, damage, message):
    with Store(db_url):
        pass
    with engine.begin() as conn:
        conn.execute(text(damage))

    damaged = Store(db_url)
    with pytest.raises(StoreError, match=message):
        damaged.open()
    with pytest.raises(StoreError, match="not open"):
        damaged.get_spend("gamma", "day", "2024-06-14")


def test_closed_store_raises(db_url):
    closed = Store(db_url)
    with pytest.raises(StoreError, match="call open"):
        closed.list_prefixes()


def test_records_mirror_tables():
    for record, model in (
        (DecisionRecord, Decision),
        (CallRecord, Call),
        (BlockRecord, Block),
        (HangupRecord, Hangup),
    ):
        names = [field.name for field in dataclasses.fields(record)]
        assert names == [column.name for column in model.__table__.columns]


# Spend windows.


def test_spend_threads_sum_exactly(db_url, monkeypatch):
    # SQLite does not queue waiting writers: each polls for the lock, up to
    # 100 ms apart (sqliteDefaultBusyCallback), and another writer can take it
    # between two polls. On a loaded machine one of eight writers can then
    # wait past the 5 s busy timeout. The daemon writes from one store thread,
    # so only this test needs the longer timeout, set before any connection.
    monkeypatch.setattr(engine_module, "SQLITE_BUSY_TIMEOUT_MS", 120_000)
    store = Store(db_url)
    store.open()
    errors = []

    def add_many():
        try:
            for _ in range(200):
                store.add_spend("gamma", "day", "2024-06-14", Decimal("0.0036"), T0)
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add_many) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    total = store.get_spend("gamma", "day", "2024-06-14")
    store.close()

    assert errors == []
    assert total == Decimal("5.76")


def test_add_spend_returns_total(store):
    totals = [
        store.add_spend("gamma", "week", "2024-W24", amount, T0)
        for amount in (Decimal("0.0036"), Decimal("1.5"), Decimal("-0.0036"))
    ]
    assert totals == [Decimal("0.0036"), Decimal("1.5036"), Decimal("1.5")]


def test_spend_windows_independent(store):
    store.add_spend("gamma", "day", "2024-06-14", Decimal("2.00"), T0)
    store.add_spend("gamma", "day", "2024-06-15", Decimal("0.50"), T0)
    store.add_spend("gamma", "week", "2024-W24", Decimal("2.50"), T0)
    store.add_spend("delta", "day", "2024-06-14", Decimal("9.99"), T0)

    cases = [
        ("gamma", "day", "2024-06-14", Decimal("2.00")),
        ("gamma", "day", "2024-06-15", Decimal("0.50")),
        ("gamma", "day", "2024-06-16", Decimal("0")),
        ("gamma", "week", "2024-W24", Decimal("2.50")),
        ("gamma", "week", "2024-W25", Decimal("0")),
        ("delta", "day", "2024-06-14", Decimal("9.99")),
        ("delta", "week", "2024-W24", Decimal("0")),
    ]
    for trunk, window, key, expected in cases:
        assert store.get_spend(trunk, window, key) == expected, (trunk, window, key)

    both = store.spend_for("gamma", window_keys(date(2024, 6, 15)))
    assert both == {"day": Decimal("0.50"), "week": Decimal("2.50")}


@pytest.mark.parametrize(
    "window, key",
    [
        ("day", "2024-6-14"),
        ("day", "2024-02-30"),
        ("day", "2024-W24"),
        ("week", "2024-W54"),
        ("week", "2023-W53"),
        ("week", "2024-06-14"),
        ("month", "2024-06"),
    ],
)
def test_spend_rejects_bad_key(store, window, key):
    with pytest.raises(ValueError, match="invalid|not a real date"):
        store.add_spend("gamma", window, key, Decimal("1"), T0)


@pytest.mark.parametrize(
    "day, expected",
    [
        (date(2024, 6, 14), {"day": "2024-06-14", "week": "2024-W24"}),
        (date(2024, 12, 30), {"day": "2024-12-30", "week": "2025-W01"}),
        (date(2021, 1, 1), {"day": "2021-01-01", "week": "2020-W53"}),
    ],
)
def test_window_keys(day, expected):
    assert window_keys(day) == expected


# Prefix table and rate decks.


def deck(count: int, rate: str = "0.006"):
    for n in range(count):
        yield (str(4400000 + n), f"UK {n}", Decimal(rate), Decimal("0"), 30, 6)


def test_prefixes_replace_and_list(store):
    first = [("09", "premium", "Premium rate"), ("+", "international", "Anywhere else")]
    second = [
        ("07", "mobile", "Mobile"),
        ("+870", "satellite", "Inmarsat"),
        ("999", "emergency", ""),
    ]

    assert store.replace_prefixes(first, "prefixes-gb.csv") == 2
    assert store.list_prefixes() == sorted(first)
    assert store.replace_prefixes(second, "etc/prefixes-gb.csv") == 3
    assert store.list_prefixes() == sorted(second)

    imports = {
        (record.dataset, record.trunk): record for record in store.list_imports()
    }
    assert imports[("prefixes", "")].source == "etc/prefixes-gb.csv"
    assert imports[("prefixes", "")].row_count == 3


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [("09", "premium", "a"), ("09", "premium", "b")],
            "row 2: prefix '09' is a duplicate",
        ),
        ([("9a", "premium", "a")], "prefix '9a' is invalid"),
        ([("", "premium", "a")], "prefix '' is invalid"),
        ([("09", "", "a")], "row 1 .*category is empty"),
        ([("09", "premium")], "expected 3 fields"),
    ],
)
def test_prefixes_reject_bad_rows(store, rows, message):
    store.replace_prefixes([("07", "mobile", "Mobile")], "good.csv")
    with pytest.raises(ValueError, match=message):
        store.replace_prefixes(rows, "bad.csv")
    assert store.list_prefixes() == [("07", "mobile", "Mobile")]


def test_rates_replace_atomically(store):
    store.replace_rates(
        "gamma", [("44", "UK", Decimal("0.01"), Decimal("0"), 60, 60)], "a.csv"
    )
    store.replace_rates(
        "delta", [("1", "NANP", Decimal("0.02"), Decimal("0.1"), 1, 1)], "d.csv"
    )
    new_deck = [
        ("447", "UK mobile", Decimal("0.05"), Decimal("0.10"), 30, 6),
        ("4420", "London", Decimal("0.0060"), Decimal("0"), 1, 1),
    ]

    assert store.replace_rates("gamma", new_deck, "b.csv") == 2
    assert store.list_rates("gamma") == sorted(new_deck)
    assert store.list_rates("delta") == [
        ("1", "NANP", Decimal("0.02"), Decimal("0.1"), 1, 1)
    ]
    assert store.rate_trunks() == {"delta": 1, "gamma": 2}


def test_rates_failed_replace_keeps_old(store):
    store.replace_rates("gamma", deck(50), "good.csv")
    bad_deck = list(deck(1000, rate="0.5")) + [
        ("4499", "bad", Decimal("-1"), Decimal("0"), 60, 60)
    ]

    with pytest.raises(
        ValueError, match=r"bad.csv: row 1001 \(prefix 4499\): rate -1 is negative"
    ):
        store.replace_rates("gamma", bad_deck, "bad.csv")

    assert store.list_rates("gamma") == list(deck(50))
    imports = store.list_imports()
    assert [(record.source, record.row_count) for record in imports] == [
        ("good.csv", 50)
    ]


@pytest.mark.parametrize(
    "row, message",
    [
        (("+44", "UK", Decimal("0.01"), Decimal("0"), 60, 60), "without +"),
        (("short:", "UK", Decimal("0.01"), Decimal("0"), 60, 60), "short: and 1 to 15"),
        (("short:1a", "UK", Decimal("0.01"), Decimal("0"), 60, 60), "short: and 1 to 15"),
        (("short:+1", "UK", Decimal("0.01"), Decimal("0"), 60, 60), "short: and 1 to 15"),
        (("SHORT:118", "UK", Decimal("0.01"), Decimal("0"), 60, 60), "short: and 1 to 15"),
        (
            ("short:1234567890123456", "UK", Decimal("0.01"), Decimal("0"), 60, 60),
            "short: and 1 to 15",
        ),
        (("44", "UK", 0.01, Decimal("0"), 60, 60), "float"),
        (
            ("44", "UK", Decimal("0.01"), Decimal("-0.5"), 60, 60),
            "connection_fee -0.5 is negative",
        ),
        (
            ("44", "UK", Decimal("0.01"), Decimal("0"), 0, 60),
            "first_increment 0 is below",
        ),
        (
            ("44", "UK", Decimal("0.01"), Decimal("0"), 60, 6.0),
            "later_increment 6.0 is a float",
        ),
        (("44", "UK", Decimal("sNaN"), Decimal("0"), 60, 60), "not a finite number"),
    ],
)
def test_rates_reject_bad_rows(store, row, message):
    with pytest.raises((TypeError, ValueError), match=message):
        store.replace_rates("gamma", [row], "bad.csv")
    assert store.rate_trunks() == {}


SHORT_CODE_DECK = [
    ("44", "UK", Decimal("0.0085"), Decimal("0"), 1, 1),
    ("44118", "Reading", Decimal("0.0090"), Decimal("0"), 1, 1),
    ("short:118", "Directory", Decimal("4.50"), Decimal("4.50"), 60, 60),
    ("short:118500", "Directory 118500", Decimal("3.00"), Decimal("1.00"), 60, 60),
]


def test_rates_short_code_rows_round_trip(store):
    assert store.replace_rates("gamma", SHORT_CODE_DECK, "short.csv") == 4

    assert store.list_rates("gamma") == sorted(SHORT_CODE_DECK)
    assert store.list_rates("gamma", prefix="short:") == SHORT_CODE_DECK[2:]
    assert store.list_rates("gamma", prefix="short:1185") == SHORT_CODE_DECK[3:]
    assert store.list_rates("gamma", prefix="44") == SHORT_CODE_DECK[:2]
    assert store.list_rates("gamma", prefix="118") == []


@pytest.mark.parametrize(
    "prefix", ["short", "short:1a", "short:+1", "SHORT:118", "4_", "44%", "+44", ""]
)
def test_rates_list_rejects_bad_prefix(store, prefix):
    store.replace_rates("gamma", SHORT_CODE_DECK, "short.csv")

    with pytest.raises(ValueError, match=re.escape(f"prefix {prefix!r} is invalid")):
        store.list_rates("gamma", prefix=prefix)


def test_rates_import_100k(store):
    assert store.replace_rates("gamma", deck(100_000), "big.csv") == 100_000
    assert store.rate_trunks() == {"gamma": 100_000}

    assert store.list_rates("gamma", limit=2) == list(deck(2))
    last = store.list_rates("gamma", prefix="4499999")
    assert last == [("4499999", "UK 99999", Decimal("0.006"), Decimal("0"), 30, 6)]
    assert len(store.list_rates("gamma", prefix="440123")) == 10


# Decisions.


def test_decisions_batch_round_trip(store):
    batch = [
        decision(1),
        decision(
            2,
            result="ALLOW",
            reason="allowed",
            max_seconds=3600,
            rate=Decimal("0.006"),
            reserved=Decimal("0.003"),
            category="geographic",
        ),
        decision(3, e164=None, category=None, reason="invalid number", dialled="*21*"),
    ]
    store.add_decisions(batch)
    store.add_decisions([decision(4, trunk="delta")])

    stored = store.recent_decisions()
    assert [record.id for record in stored] == [4, 3, 2, 1]
    assert [
        dataclasses.replace(record, id=None) for record in reversed(stored[1:])
    ] == batch
    assert [record.id for record in store.recent_decisions(trunk="gamma", limit=2)] == [
        3,
        2,
    ]


@pytest.mark.parametrize("count", [63, 64, 65, 130])
def test_decisions_batch_over_statement_size(store, count):
    # SQLite takes a batch as INSERTs of at most 64 rows, so these counts fill
    # one statement short, exactly, and with a remainder.
    batch = [
        decision(n, max_seconds=n, reserved=Decimal(n) / 1000, dialled=f"0{n}")
        for n in range(1, count + 1)
    ]
    store.add_decisions(batch)

    stored = store.recent_decisions(limit=1000)
    assert [record.id for record in stored] == list(range(count, 0, -1))
    assert [dataclasses.replace(record, id=None) for record in reversed(stored)] == batch


@pytest.mark.parametrize("count", [1, 65])
def test_prepared_decisions_round_trip(store, count):
    batch = [decision(n, reserved=Decimal(n) / 1000, dialled=f"0{n}")
             for n in range(1, count + 1)]
    store.add_decisions([decision(0)])

    store.add_prepared_decisions([store.prepare_decision(record) for record in batch])
    store.add_prepared_decisions([])

    stored = store.recent_decisions(limit=1000)
    assert [record.id for record in stored] == list(range(count + 1, 0, -1))
    assert [dataclasses.replace(record, id=None) for record in reversed(stored[:-1])] == batch


def _column_values(record: DecisionRecord) -> dict:
    values = {field.name: getattr(record, field.name) for field in dataclasses.fields(record)}
    del values["id"]
    return values


def test_decision_values_prepared_as_records(store):
    batch = [
        decision(1, reserved=Decimal("0.0036"), rate=Decimal("0.0333333"), max_seconds=7200,
                 result="ALLOW", reason="ok", category="geographic", e164="+441632960001"),
        decision(2, e164=None, category=None, caller="", channel=""),
        decision(3, decided_at=datetime(2024, 6, 14, 13, 0, tzinfo=ZoneInfo("Europe/London"))),
    ]
    rows = [store.prepare_decision_values(_column_values(record)) for record in batch]
    assert rows == [store.prepare_decision(record) for record in batch]

    store.add_prepared_decisions(rows)
    stored = store.recent_decisions(limit=10)
    assert [dataclasses.replace(record, id=None) for record in stored] == [
        dataclasses.replace(record, decided_at=record.decided_at.astimezone(timezone.utc))
        for record in sorted(batch, key=lambda record: record.decided_at, reverse=True)
    ]


@pytest.mark.parametrize("change, error, message", [
    ({"result": "MAYBE"}, ValueError, "result 'MAYBE' is invalid"),
    ({"decided_at": datetime(2024, 6, 14)}, ValueError, "naive"),
    ({"reserved": 0.5}, TypeError, "float"),
    ({"rate": Decimal("-0.01")}, ValueError, "negative"),
    ({"rate": Decimal("NaN")}, ValueError, "not a finite number"),
    ({"max_seconds": -1}, ValueError, "below the minimum"),
    ({"max_seconds": True}, TypeError, "expected int"),
])
def test_decision_values_rejected(store, change, error, message):
    with pytest.raises(error, match=message):
        store.prepare_decision_values(_column_values(decision(1)) | change)


def test_prepare_decision_rejects_stored_record(store):
    with pytest.raises(ValueError, match="already stored"):
        store.prepare_decision(decision(1, id=7))
    with pytest.raises(TypeError, match="not a DecisionRecord"):
        store.prepare_decision(("ALLOW", "ok"))


def test_decisions_reject_bad_records(store):
    with pytest.raises(ValueError, match="result 'MAYBE' is invalid"):
        decision(1, result="MAYBE")
    with pytest.raises(ValueError, match="naive"):
        decision(1, decided_at=datetime(2024, 6, 14))
    with pytest.raises(TypeError, match="float"):
        decision(1, reserved=0.5)
    # Rejected on SQLite too, so both stores keep the same rows.
    with pytest.raises(ValueError, match="dialled '0\\\\x001' contains a NUL"):
        decision(1, dialled="0\x001")

    store.add_decisions([])
    assert store.recent_decisions() == []


def test_node_decisions_since_newest_first(store):
    since = T0 + timedelta(seconds=2)
    store.add_decisions([
        decision(1),  # before since
        decision(2),  # at since
        decision(3, node="pbx2"),
        decision(4, result="ALLOW", reason="ok", rate=Decimal("0.006")),
        # Made at the same time as decision 4: the higher id comes first.
        decision(5, decided_at=T0 + timedelta(seconds=4)),
    ])

    stored = store.node_decisions_since("pbx1", since, 10)
    assert [record.id for record in stored] == [5, 4, 2]
    assert stored[1] == dataclasses.replace(
        decision(4, result="ALLOW", reason="ok", rate=Decimal("0.006")), id=4)
    assert [record.id for record in store.node_decisions_since("pbx1", since, 2)] == [5, 4]
    # The same instant in another zone.
    in_plus_two = since.astimezone(PLUS_TWO)
    assert [record.id for record in store.node_decisions_since("pbx1", in_plus_two, 10)] == [
        5, 4, 2]
    assert [record.id for record in store.node_decisions_since("pbx2", since, 10)] == [3]
    assert store.node_decisions_since("pbx3", since, 10) == []


def test_node_decisions_since_rejects_bad_arguments(store):
    with pytest.raises(ValueError, match="naive"):
        store.node_decisions_since("pbx1", datetime(2024, 6, 14), 10)
    with pytest.raises(ValueError, match="limit 0 is below the minimum 1"):
        store.node_decisions_since("pbx1", T0, 0)
    with pytest.raises(TypeError, match="node None is a NoneType"):
        store.node_decisions_since(None, T0, 10)


# Calls.


def test_call_upsert_by_uniqueid(store):
    answered = T0 + timedelta(seconds=5)
    ended = T0 + timedelta(seconds=65)

    store.save_call(call())
    store.save_call(call(state=STATE_UP, answered_at=answered, cost=Decimal("0.053")))
    assert [(record.id, record.state) for record in store.live_calls()] == [
        (1, STATE_UP)
    ]

    final = call(
        state=STATE_ENDED,
        answered_at=answered,
        ended_at=ended,
        cost=Decimal("0.056"),
        hangup_cause=16,
        hangup_reason="Normal Clearing",
        created_at=T0 + timedelta(days=1),
    )
    store.save_call(final)

    assert store.live_calls() == []
    assert store.recent_calls() == [dataclasses.replace(final, id=1, created_at=T0)]


def test_ended_call_stays_ended(store, caplog):
    ended = call(state=STATE_ENDED, answered_at=T0, ended_at=T0 + timedelta(seconds=9))
    store.save_call(ended)
    store.save_call(call(state=STATE_UP, answered_at=T0))

    assert store.recent_calls() == [dataclasses.replace(ended, id=1)]
    assert "has ended; ignoring the update to state up" in caplog.text


def test_live_calls_ordered(store):
    store.save_call(call("1.3", created_at=T0 + timedelta(seconds=2), guarded=False))
    store.save_call(call("1.1", created_at=T0))
    store.save_call(
        call(
            "1.2",
            created_at=T0 + timedelta(seconds=1),
            state=STATE_ENDED,
            answered_at=T0,
            ended_at=T0 + timedelta(seconds=3),
        )
    )
    store.save_call(
        call(
            "1.4",
            created_at=T0 + timedelta(seconds=3),
            tariff_prefix=None,
            rate=None,
            connection_fee=None,
            first_increment=None,
            later_increment=None,
        )
    )

    live = store.live_calls()
    assert [record.uniqueid for record in live] == ["1.1", "1.3", "1.4"]
    assert [record.guarded for record in live] == [True, False, True]
    assert live[2].rate is None
    assert [record.uniqueid for record in store.recent_calls(limit=2)] == ["1.4", "1.3"]


def test_ended_calls_among_uniqueids(store):
    store.save_call(call("1.1", answered_at=T0))
    store.save_call(call("1.2", state=STATE_ENDED, answered_at=T0,
                         ended_at=T0 + timedelta(seconds=3)))
    store.save_call(call("1.3", state=STATE_ENDED, answered_at=T0,
                         ended_at=T0 + timedelta(seconds=5)))

    assert store.ended_calls(["1.1", "1.2", "1.9"]) == {"1.2"}
    assert store.ended_calls([]) == set()


def test_accepted_hangups_latest_per_leg(store):
    leg = "1718366400.1"
    for record in [
        hangup(1, uniqueid=leg),
        hangup(3, uniqueid=leg),
        # Asterisk no longer had the channel, or the request failed.
        hangup(5, uniqueid=leg, outcome="gone"),
        hangup(6, uniqueid=leg, outcome="failed"),
        hangup(2, uniqueid="1718366400.2", outcome="failed"),
        hangup(4, uniqueid="1718366400.4"),
    ]:
        store.add_hangup(record)

    accepted = store.accepted_hangups([leg, "1718366400.2", "1718366400.9"])

    assert accepted == {leg: T0 + timedelta(minutes=3)}
    assert accepted[leg].utcoffset() == timedelta(0)
    assert store.accepted_hangups([]) == {}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"state": STATE_UP}, "up but has no answered_at"),
        ({"state": STATE_ENDED}, "ended but has no ended_at"),
        ({"state": "busy"}, "state 'busy' is invalid"),
        ({"rate": None}, "partial tariff snapshot; set rate"),
        ({"cost": 0.1}, "float"),
        ({"guarded": 1}, "not a bool"),
    ],
)
def test_call_record_checks(changes, message):
    with pytest.raises((TypeError, ValueError), match=message):
        call(**changes)


# Finishing calls.


@pytest.mark.parametrize("saved_first", [True, False])
def test_finish_call_charges_spend(store, saved_first):
    store.add_spend("gamma", "day", "2024-06-14", Decimal("1.5"), T0)
    if saved_first:
        store.save_call(call(state=STATE_UP, answered_at=T0 + timedelta(seconds=5)))
    final = ended_call(created_at=T0 + timedelta(days=1))

    assert store.finish_call(final, CHARGES, T0 + timedelta(seconds=65)) is True

    expected_created = T0 if saved_first else final.created_at
    assert store.recent_calls() == [
        dataclasses.replace(final, id=1, created_at=expected_created)
    ]
    assert store.live_calls() == []
    assert store.spend_for("gamma", {"day": "2024-06-14", "week": "2024-W24"}) == {
        "day": Decimal("1.556"),
        "week": Decimal("0.056"),
    }


def test_finish_call_twice_charges_once(store, engine, caplog):
    caplog.set_level(logging.INFO, logger="callguard.store.store")
    first = ended_call()
    again = ended_call(cost=Decimal("0.1"), hangup_cause=17, hangup_reason="Busy")

    assert store.finish_call(first, CHARGES, T0) is True
    assert store.finish_call(again, CHARGES, T0 + timedelta(minutes=1)) is False

    assert store.recent_calls() == [dataclasses.replace(first, id=1)]
    assert spend_rows(engine) == [
        ("gamma", "day", "2024-06-14", 56_000),
        ("gamma", "week", "2024-W24", 56_000),
    ]
    assert "had already ended; not charging it again" in caplog.text


def test_finish_call_after_save_ended(store):
    # An ended call stored by save_call has been charged elsewhere, if at all.
    store.save_call(ended_call())

    assert store.finish_call(ended_call(), CHARGES, T0) is False
    assert store.get_spend("gamma", "day", "2024-06-14") == Decimal("0")


def test_finish_call_skips_zero(store, engine):
    charges = {
        ("day", "2024-06-14"): Decimal("0.000001"),
        ("week", "2024-W24"): Decimal("0"),
    }

    assert store.finish_call(ended_call(cost=Decimal("0.000001")), charges, T0)
    assert spend_rows(engine) == [("gamma", "day", "2024-06-14", 1)]
    assert store.finish_call(ended_call("1718366400.21"), {}, T0) is True
    assert [record.state for record in store.recent_calls()] == [STATE_ENDED] * 2


@pytest.mark.parametrize(
    "charges, error, message",
    [
        (
            {("day", "2024-6-14"): Decimal("1")},
            ValueError,
            "key '2024-6-14' is invalid",
        ),
        ({("month", "2024-06"): Decimal("1")}, ValueError, "window 'month' is invalid"),
        ({("week", "2023-W53"): Decimal("1")}, ValueError, "not a real date"),
        ({"day": Decimal("1")}, ValueError, "charge key 'day' is invalid"),
        ({("day", "2024-06-14"): 0.056}, TypeError, "is a float"),
        ({("day", "2024-06-14"): Decimal("-0.056")}, ValueError, "is negative"),
        ({("day", "2024-06-14"): Decimal("NaN")}, ValueError, "not a finite number"),
        ([(("day", "2024-06-14"), Decimal("1"))], TypeError, "expected a mapping"),
    ],
)
def test_finish_call_bad_charge(store, engine, charges, error, message):
    live = call(state=STATE_UP, answered_at=T0)
    store.save_call(live)
    # A valid charge comes first, so a partial write would show in spend.
    mixed = charges
    if isinstance(charges, dict):
        mixed = {("day", "2024-06-15"): Decimal("1")} | charges

    with pytest.raises(error, match=message):
        store.finish_call(ended_call(), mixed, T0)

    assert store.live_calls() == [dataclasses.replace(live, id=1)]
    assert spend_rows(engine) == []


@pytest.mark.parametrize(
    "record, at, message",
    [
        (call(state=STATE_UP, answered_at=T0), T0, "in state up, but only an ended"),
        (call(), T0, "in state ringing"),
        (ended_call(), datetime(2024, 6, 14, 12, 1), "naive"),
        ("1718366400.20", T0, "is not a CallRecord"),
    ],
)
def test_finish_call_rejects(store, record, at, message):
    with pytest.raises((TypeError, ValueError), match=message):
        store.finish_call(record, CHARGES, at)
    assert store.recent_calls() == []


def test_finish_call_rolls_back(store, engine):
    live = call(state=STATE_UP, answered_at=T0)
    store.save_call(live)
    # Without the spend table the call's update succeeds and the spend upsert fails.
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE spend RENAME TO spend_hidden"))

    try:
        with pytest.raises(StoreError, match="finishing call 1718366400.20 failed"):
            store.finish_call(ended_call(), CHARGES, T0)
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE spend_hidden RENAME TO spend"))

    assert store.live_calls() == [dataclasses.replace(live, id=1)]
    assert spend_rows(engine) == []
    assert store.finish_call(ended_call(), CHARGES, T0) is True
    assert store.get_spend("gamma", "week", "2024-W24") == Decimal("0.056")


@pytest.mark.parametrize("saved_first", [True, False])
def test_finish_call_races_once(store, saved_first):
    if saved_first:
        store.save_call(call(state=STATE_UP, answered_at=T0))
    start = threading.Barrier(8)
    results = []
    errors = []

    def finish():
        start.wait()
        try:
            results.append(store.finish_call(ended_call(), CHARGES, T0))
        except StoreError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=finish) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(results) == [False] * 7 + [True]
    assert store.get_spend("gamma", "day", "2024-06-14") == Decimal("0.056")
    assert store.get_spend("gamma", "week", "2024-W24") == Decimal("0.056")
    assert len(store.recent_calls()) == 1


# Hang-ups.


def test_hangups_round_trip(store, engine):
    records = [
        hangup(1),
        hangup(
            3,
            trunk="delta",
            number="",
            reason="barred:premium",
            daily_spend=None,
            weekly_spend=None,
            call_cost=Decimal("0"),
            outcome="gone",
        ),
        # 12:02 UTC written at +02:00.
        hangup(2, requested_at=datetime(2024, 6, 14, 14, 2, tzinfo=PLUS_TWO)),
        hangup(4, reason="limit:duration", outcome="failed"),
    ]

    assert [store.add_hangup(record) for record in records] == [1, 2, 3, 4]

    stored = store.recent_hangups()
    assert [record.id for record in stored] == [4, 2, 3, 1]
    assert stored[2] == dataclasses.replace(records[2], id=3)
    assert stored[2].requested_at.utcoffset() == timedelta(0)
    assert stored[3].daily_spend == Decimal("50.000001")
    assert stored[3].call_cost == Decimal("3.141593")
    assert stored[1].weekly_spend is None
    assert [record.id for record in store.recent_hangups(trunk="gamma")] == [4, 3, 1]
    assert [record.id for record in store.recent_hangups(2, "gamma")] == [4, 3]
    assert store.recent_hangups(trunk="epsilon") == []

    with engine.connect() as conn:
        raw = conn.execute(text("SELECT daily_spend FROM hangups WHERE id = 1"))
        assert raw.scalar_one() == 50_000_001


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"outcome": "hungup"}, "outcome 'hungup' is invalid"),
        ({"call_cost": 0.5}, "call_cost 0.5 is a float"),
        ({"daily_spend": 12}, "daily_spend 12 is a int"),
        ({"requested_at": datetime(2024, 6, 14)}, "naive"),
        ({"channel": ""}, "channel is empty"),
        ({"reason": ""}, "reason is empty"),
        ({"number": None}, "number None is a NoneType"),
    ],
)
def test_hangup_record_checks(changes, message):
    with pytest.raises((TypeError, ValueError), match=message):
        hangup(1, **changes)


def test_add_hangup_rejects(store):
    with pytest.raises(ValueError, match="hangup 7 is already stored"):
        store.add_hangup(hangup(1, id=7))
    with pytest.raises(TypeError, match="is not a HangupRecord"):
        store.add_hangup(ended_call())
    with pytest.raises(ValueError, match="limit 0 is below"):
        store.recent_hangups(limit=0)

    assert store.recent_hangups() == []


# Blocks.


def test_blocks_active_expired_lifted(store):
    hour = timedelta(hours=1)
    permanent = store.add_block("caller", "1001", "fraud", T0, None, "admin")
    expiring = store.add_block("number", "+449011234567", "spam", T0, T0 + hour, "auto")
    lifted = store.add_block("caller", "1002", "test", T0, None, "admin")

    assert store.lift_block("caller", "1002", T0 + timedelta(minutes=1), "cleared") == 1
    assert store.lift_block("caller", "1002", T0 + timedelta(minutes=2), "again") == 0

    cases = [
        (T0, [permanent, expiring, lifted]),
        (T0 + timedelta(minutes=30), [permanent, expiring]),
        (T0 + hour, [permanent]),
        # The same instant as T0 + 30 min, written at +02:00.
        (datetime(2024, 6, 14, 14, 30, tzinfo=PLUS_TWO), [permanent, expiring]),
    ]
    for now, expected in cases:
        assert [block.id for block in store.active_blocks(now)] == expected, now

    assert store.lift_block("number", "+449011234567", T0 + 2 * hour, "late") == 0


def test_block_record_fields(store):
    store.add_block("caller", "1001", "fraud", T0, T0 + timedelta(days=1), "admin")
    (block,) = store.active_blocks(T0)

    assert block.key == "1001"
    assert block.expires_at == T0 + timedelta(days=1)
    assert block.active_at(T0)
    assert not block.active_at(T0 + timedelta(days=1))


def test_block_expiry_must_follow_creation(store):
    with pytest.raises(ValueError, match="not after created_at"):
        store.add_block("caller", "1001", "fraud", T0, T0, "admin")


HOUR = timedelta(hours=1)
RENEWALS = [
    # first expiry, second expiry, expiry kept, whether the block was extended
    (T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 3 * HOUR, True),
    (T0 + 3 * HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR, False),
    (T0 + 2 * HOUR, None, None, True),
    (None, T0 + 2 * HOUR, None, False),
    (None, None, None, False),
]


@pytest.mark.parametrize("first, second, expected, extended", RENEWALS)
def test_block_manually_renews_active(store, first, second, expected, extended):
    created = store.block_manually("caller", "+441632960010", "fraud", T0, first, "alice")
    renewed = store.block_manually("caller", "+441632960010", "more fraud", T0 + HOUR,
                                   second, "bob")

    (block,) = store.active_blocks(T0 + HOUR)
    assert created.previous is None
    assert renewed.previous == created.block
    assert renewed.extended is extended
    assert renewed.block == block
    assert block.id == created.block.id
    assert block.expires_at == expected
    assert block.reason == "more fraud"
    assert block.created_at == T0
    assert block.created_by == "alice"


def test_block_renewal_records_renewer(store):
    store.block_manually("endpoint", "1001", "fraud", T0, T0 + 2 * HOUR, "alice")
    store.block_manually("endpoint", "1001", "more fraud", T0 + HOUR, None, "bob")
    store.block_manually("endpoint", "1001", "still more", T0 + 2 * HOUR, None, "carol")

    (block,) = store.active_blocks(T0 + 2 * HOUR)
    assert block.reason == "still more"
    assert block.renewed_by == "carol"
    assert block.renewed_at == T0 + 2 * HOUR
    assert block.created_by == "alice"
    assert block.created_at == T0
    assert block.first_reason == "fraud"


def test_new_block_not_renewed(store):
    store.block_manually("endpoint", "1001", "fraud", T0, None, "alice")

    (block,) = store.active_blocks(T0)
    assert block.renewed_by is None
    assert block.renewed_at is None
    assert block.first_reason is None


def test_block_manually_audits_renewal(store):
    created = store.block_manually("endpoint", "1001", "fraud", T0, T0 + 2 * HOUR,
                                   "alice")
    store.block_manually("endpoint", "1001", "more fraud", T0 + HOUR, None, "bob")

    changes = store.audit_trail(T0, 10).changes
    block_id = created.block.id
    assert [(c.action, c.actor, c.reason) for c in changes] == [
        ("block", "bob", "more fraud"),
        ("block", "alice", "fraud"),
    ]
    assert changes[0].detail == (f"extended block {block_id} until lifted (was until "
                                 "2024-06-14T14:00:00+00:00, reason 'fraud')")
    assert changes[1].detail == f"block {block_id} until 2024-06-14T14:00:00+00:00"


def test_block_manually_renews_automatic(store):
    automatic = store.add_block("caller", "+441632960010", "3 barred attempts", T0,
                                T0 + HOUR, "callguard")
    store.block_manually("caller", "+441632960010", "fraud", T0 + timedelta(minutes=1),
                         T0 + 2 * HOUR, "alice")

    (block,) = store.active_blocks(T0 + timedelta(minutes=1))
    (change,) = store.audit_trail(T0, 10).changes
    assert block.id == automatic
    assert block.created_by == "callguard"
    assert block.expires_at == T0 + 2 * HOUR
    assert store.count_blocks("caller", "+441632960010", T0, "callguard") == 1
    assert change.detail.endswith(", reason '3 barred attempts')")


@pytest.mark.parametrize("first, second, expected, extended", RENEWALS)
def test_renewal_entry_read_back(store, first, second, expected, extended):
    reason = "it's \"fraud\", (again)"
    created = store.block_manually("caller", "+441632960010", reason, T0, first, "alice")
    store.block_manually("caller", "+441632960010", "more fraud", T0 + HOUR, second,
                         "bob")

    renewal_entry, creation_entry = store.audit_trail(T0, 10).changes

    assert read_renewal(renewal_entry) == Renewal(created.block.id, first, reason)
    assert read_renewal(creation_entry) is None


@pytest.mark.parametrize("action, detail", [
    ("block", "block 3 until lifted"),
    ("block", ""),
    ("block", "extended block 3 until lifted (was until tomorrow, reason 'x')"),
    ("block", "extended block 3 until lifted (was until lifted, reason x)"),
    ("unblock", "extended block 3 until lifted (was until lifted, reason 'x')"),
])
def test_read_renewal_other_entries(action, detail):
    record = AuditRecord(at=T0, action=action, actor="alice", subject="endpoint 1001",
                         reason="r", detail=detail)

    assert read_renewal(record) is None


def test_unblock_detail_counts_blocks(store):
    store.add_block("endpoint", "1001", "fraud", T0, None, "alice")
    store.unblock_manually("endpoint", "1001", "cleared", T0 + HOUR, "alice")
    store.unblock_manually("endpoint", "1001", "again", T0 + HOUR, "alice")

    details = [change.detail for change in store.audit_trail(T0, 10).changes]

    assert details == ["lifted 0 active blocks", "lifted 1 active block"]


@pytest.mark.parametrize("ended", ["lifted", "expired"])
def test_block_manually_after_block_ended(store, ended):
    first = store.block_manually("endpoint", "1001", "fraud", T0, T0 + HOUR, "alice")
    if ended == "lifted":
        store.unblock_manually("endpoint", "1001", "false alarm", T0 + timedelta(minutes=30),
                               "alice")
    second = store.block_manually("endpoint", "1001", "again", T0 + 2 * HOUR, None,
                                  "alice")

    assert second.previous is None
    assert second.block.id != first.block.id
    assert [b.id for b in store.active_blocks(T0 + 2 * HOUR)] == [second.block.id]


def test_block_manually_other_key_untouched(store):
    store.block_manually("endpoint", "1001", "fraud", T0, None, "alice")
    other_type = store.block_manually("accountcode", "1001", "fraud", T0, None, "alice")
    other_key = store.block_manually("endpoint", "1002", "fraud", T0, None, "alice")

    assert other_type.previous is None
    assert other_key.previous is None
    assert len(store.active_blocks(T0)) == 3


def test_block_manually_renewal_checks_expiry(store):
    store.block_manually("endpoint", "1001", "fraud", T0, None, "alice")

    with pytest.raises(ValueError, match="not after created_at"):
        store.block_manually("endpoint", "1001", "again", T0 + HOUR, T0, "alice")
    (block,) = store.active_blocks(T0 + HOUR)
    assert block.reason == "fraud"


def test_block_manually_concurrent_once(store):
    thread_count = 8
    barrier = threading.Barrier(thread_count)
    errors = []

    def block(n: int) -> None:
        barrier.wait()
        try:
            store.block_manually("endpoint", "1001", f"report {n}", T0, None, f"op{n}")
        except Exception as exc:  # the assert on errors reports it
            errors.append(exc)

    threads = [threading.Thread(target=block, args=(n,)) for n in range(thread_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(store.active_blocks(T0)) == 1
    assert len(store.audit_trail(T0, 100).changes) == thread_count


# Connections and errors.


@pytest.mark.parametrize(
    "url, message",
    [
        (
            "sqlite:///{tmp}/missing/callguard.db",
            "missing does not exist, so the SQLite database",
        ),
        ("sqlite:///{tmp}", "is a directory"),
        # A name longer than NAME_MAX makes stat() fail, as a folder that the
        # user may not search does.
        (
            "sqlite:///{tmp}/" + "x" * 256 + "/callguard.db",
            r"cannot check the SQLite database path .*/callguard\.db \(File name too long\)",
        ),
        ("sqlite://", "in-memory"),
        ("mysql://callguard:s3cret@127.0.0.1/callguard", "does not support"),
        ("not a url", "is invalid"),
        ("postgresql://callguard:s3cret@127.0.0.1:port/callguard", "is invalid"),
    ],
)
def test_bad_url_rejected(tmp_path, url, message):
    with pytest.raises(StoreError, match=message) as caught:
        Store(url.format(tmp=tmp_path))
    assert "s3cret" not in str(caught.value)


@pytest.mark.postgres
def test_unreachable_database_message():
    unreachable = Store(
        f"postgresql://callguard:s3cret@127.0.0.1:{free_port()}/callguard"
    )

    with pytest.raises(StoreError, match="opening the database failed") as caught:
        unreachable.open()

    assert "s3cret" not in str(caught.value)
    assert "callguard:***@127.0.0.1" in str(caught.value)
    assert unreachable.url_for_logs.startswith("postgresql+psycopg://callguard:***@")


@pytest.mark.postgres
def test_unreachable_database_query_password_masked():
    # psycopg takes the password as a query parameter too.
    unreachable = Store(f"postgresql://callguard@127.0.0.1:{free_port()}/callguard"
                        "?password=Qs3cret&sslpassword=Ks3cret")

    with pytest.raises(StoreError, match="opening the database failed") as caught:
        unreachable.open()

    assert "Qs3cret" not in str(caught.value)
    assert "Ks3cret" not in str(caught.value)
    assert "Qs3cret" not in unreachable.url_for_logs
    assert "password=***" in unreachable.url_for_logs


@pytest.mark.parametrize("url, masked", [
    ("postgresql+psycopg://cg:s3cret@127.0.0.1/db", "postgresql+psycopg://cg:***@127.0.0.1/db"),
    ("postgresql+psycopg://cg@h/db?password=s3cret&sslmode=disable",
     "postgresql+psycopg://cg@h/db?password=***&sslmode=disable"),
    ("postgresql+psycopg://cg@h/db?SSLPassword=s3cret", "postgresql+psycopg://cg@h/db?SSLPassword=***"),
    ("not a url://cg:s3cret@h/db", "not a url://cg:***@h/db"),
    ("postgresql://cg:s3cret@h:port/db", "postgresql://cg:***@h:port/db"),
])
def test_mask_url(url, masked):
    assert mask_url(url) == masked


@pytest.mark.postgres
def test_reconnects_after_server_drop(pg_url):
    name = f"callguard-test-{uuid.uuid4().hex[:8]}"
    url = sqlalchemy.engine.make_url(pg_url).update_query_dict(
        {"application_name": name}
    )
    admin = create_engine(pg_url)

    with Store(url.render_as_string(hide_password=False)) as reconnecting:
        reconnecting.add_spend("gamma", "day", "2024-06-14", Decimal("1"), T0)
        with admin.begin() as conn:
            killed = conn.execute(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name"
                ),
                {"name": name},
            ).scalar_one()

        assert killed >= 1
        total = reconnecting.add_spend("gamma", "day", "2024-06-14", Decimal("1"), T0)
        assert total == Decimal("2")
    admin.dispose()


@pytest.mark.parametrize("rate", ["0.0333333", "0.123456789", "2.5", "0"])
def test_rates_kept_to_the_digit(db_url, rate):
    with Store(db_url) as store:
        store.open()
        store.replace_rates("gamma", [("44", "UK", Decimal(rate), Decimal("0.05"), 60, 60)],
                            "test")
        stored = store.list_rates("gamma")[0]

    assert stored[2] == Decimal(rate)
    assert str(stored[2]) == rate


def test_write_calls_in_one_batch(db_url):
    up = call(state=STATE_UP, answered_at=T0 + timedelta(seconds=5))
    charges = {("day", "2024-06-14"): Decimal("0.056"), ("week", "2024-W24"): Decimal("0.056")}
    with Store(db_url) as store:
        store.open()
        store.write_calls([
            ("save", (up,)),
            ("hangup", (hangup(1, uniqueid=up.uniqueid),)),
            ("finish", (ended_call(), charges, T0 + timedelta(seconds=65))),
            ("finish", (ended_call(), charges, T0 + timedelta(seconds=66))),  # again
        ])
        stored = store.recent_calls(5)
        hangups = store.recent_hangups(5)
        spent = store.get_spend("gamma", "day", "2024-06-14")

    assert [c.state for c in stored] == [STATE_ENDED]
    assert [h.uniqueid for h in hangups] == [up.uniqueid]
    assert spent == Decimal("0.056")


def test_write_calls_bad_update_writes_nothing(db_url):
    with Store(db_url) as store:
        store.open()
        with pytest.raises(ValueError):
            store.write_calls([("save", (call(),)), ("delete", (call(),))])
        stored = store.recent_calls(5)

    assert stored == []


def test_write_calls_sums_charges(db_url, caplog):
    """A limit that ends a hundred calls on two trunks, one of them across midnight."""
    operations = []
    for n in range(100):
        trunk = "gamma" if n % 2 else "delta"
        uniqueid = f"1718400000.{n}"
        operations.append(("save", (call(uniqueid, trunk=trunk, state=STATE_UP,
                                          answered_at=T0),)))
    for n in range(100):
        trunk = "gamma" if n % 2 else "delta"
        uniqueid = f"1718400000.{n}"
        charges = {("day", "2024-06-14"): Decimal("0.000001") * (n + 1),
                   ("week", "2024-W24"): Decimal("0.000001") * (n + 1)}
        if n == 7:
            charges[("day", "2024-06-15")] = Decimal("0.5")
        operations.append(("hangup", (hangup(n, uniqueid=uniqueid, trunk=trunk),)))
        operations.append(("finish", (ended_call(uniqueid, trunk=trunk), charges,
                                      T0 + timedelta(seconds=n))))
    # A late save as "up" of a call that ended in this same batch changes nothing.
    operations.append(("save", (call("1718400000.3", trunk="gamma", state=STATE_UP,
                                      answered_at=T0),)))
    # Ended twice: charged once.
    operations.append(("finish", (ended_call("1718400000.5", trunk="gamma"),
                                  {("day", "2024-06-14"): Decimal("9")}, T0)))

    caplog.set_level(logging.INFO, logger="callguard.store")
    with Store(db_url) as store:
        store.open()
        store.write_calls(operations)
        stored = store.recent_calls(200)
        hangups = store.recent_hangups(200)
        spend = {trunk: store.spend_for(trunk, {"day": "2024-06-14", "week": "2024-W24"})
                 for trunk in ("gamma", "delta")}
        next_day = store.get_spend("gamma", "day", "2024-06-15")

    # gamma has the odd n: the sum of n + 1 over them is 2 + 4 + ... + 100 = 2550.
    assert spend["gamma"] == {"day": Decimal("0.002550"), "week": Decimal("0.002550")}
    assert spend["delta"] == {"day": Decimal("0.002500"), "week": Decimal("0.002500")}
    assert next_day == Decimal("0.5")
    assert len(stored) == 100 and {c.state for c in stored} == {STATE_ENDED}
    assert len({c.id for c in stored}) == 100
    assert sorted(h.id for h in hangups) == list(range(1, 101))
    assert "has ended; ignoring the update to state up" in caplog.text
    assert "had already ended; not charging it again" in caplog.text


def test_decisions_round_trip_exactly(store):
    london = datetime(2024, 6, 14, 23, 59, 59, 999999,
                      tzinfo=timezone(timedelta(hours=1)))
    record = decision(1, decided_at=london, rate=Decimal("0.123456789"),
                      reserved=Decimal("999999999999.999999"), max_seconds=0)
    store.add_decisions([record])

    stored = store.recent_decisions()[0]
    assert stored.decided_at == london
    assert stored.decided_at.utcoffset() == timedelta(0)
    assert str(stored.rate) == "0.123456789"
    assert stored.reserved == Decimal("999999999999.999999")
    assert stored.max_seconds == 0


def connection_settings(url: str) -> tuple[dict[str, str], dict[str, int]]:
    """Return the libpq parameters of a store connection to ``url`` and the TCP
    options that the kernel applies to its socket."""
    engine = build_engine(parse_url(url))
    with engine.connect() as conn:
        dbapi_connection = conn.connection.dbapi_connection
        parameters = dbapi_connection.info.get_parameters()
        sock = socket.socket(fileno=os.dup(dbapi_connection.pgconn.socket))
    try:
        options = {
            "SO_KEEPALIVE": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "TCP_KEEPIDLE": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "TCP_KEEPINTVL": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "TCP_KEEPCNT": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "TCP_USER_TIMEOUT": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.close()
        engine.dispose()
    return parameters, options


@pytest.mark.postgres
def test_pg_connection_keepalive_defaults(pg_url):
    parameters, options = connection_settings(pg_url)

    assert parameters["keepalives_idle"] == "10"
    assert parameters["keepalives_interval"] == "5"
    assert parameters["keepalives_count"] == "3"
    assert parameters["tcp_user_timeout"] == "25000"
    assert parameters["connect_timeout"] == "10"
    assert options["SO_KEEPALIVE"] == 1
    assert options["TCP_KEEPIDLE"] == 10
    assert options["TCP_KEEPINTVL"] == 5
    assert options["TCP_KEEPCNT"] == 3
    assert options["TCP_USER_TIMEOUT"] == 25000


@pytest.mark.postgres
def test_pg_connection_keepalive_from_url(pg_url):
    url = sqlalchemy.engine.make_url(pg_url).update_query_dict({
        "keepalives_idle": "60", "keepalives_count": "5", "tcp_user_timeout": "0",
        "connect_timeout": "3",
    })
    parameters, options = connection_settings(url.render_as_string(hide_password=False))

    assert parameters["keepalives_idle"] == "60"
    assert parameters["keepalives_interval"] == "5"
    assert parameters["keepalives_count"] == "5"
    assert parameters["connect_timeout"] == "3"
    assert options["TCP_KEEPIDLE"] == 60
    assert options["TCP_KEEPINTVL"] == 5
    assert options["TCP_KEEPCNT"] == 5
    assert options["TCP_USER_TIMEOUT"] == 0


@pytest.mark.postgres
def test_pg_lock_wait_bounded(store_pg_locked):
    store, locker = store_pg_locked
    outcome = []

    def read_blocks():
        started = time.monotonic()
        try:
            store.active_blocks(T0)
            outcome.append(("read", time.monotonic() - started))
        except StoreError as exc:
            outcome.append((exc, time.monotonic() - started))

    reader = threading.Thread(target=read_blocks)
    reader.start()
    reader.join(SQLITE_BUSY_TIMEOUT_MS / 1000 + 5)
    finished = not reader.is_alive()
    locker.rollback()
    reader.join()

    ((error, waited),) = outcome
    assert finished
    assert isinstance(error, StoreError)
    assert error.transient
    assert "lock timeout" in str(error)
    assert waited >= SQLITE_BUSY_TIMEOUT_MS / 1000 - 0.5


@pytest.mark.postgres
def test_pg_lock_timeout_from_url(pg_url):
    options = sqlalchemy.engine.make_url(pg_url).query["options"]
    url = sqlalchemy.engine.make_url(pg_url).update_query_dict(
        {"options": f"{options} -clock_timeout=250ms"})

    engine = build_engine(parse_url(url.render_as_string(hide_password=False)))
    with engine.connect() as conn:
        lock_timeout = conn.exec_driver_sql("SHOW lock_timeout").scalar_one()
    engine.dispose()
    assert lock_timeout == "250ms"


@pytest.fixture
def store_pg_locked(pg_url):
    """Yield an open store and a connection that holds an exclusive lock on blocks."""
    with Store(pg_url) as store:
        locker = psycopg.connect(
            sqlalchemy.engine.make_url(pg_url).set(drivername="postgresql")
            .render_as_string(hide_password=False))
        locker.execute("LOCK TABLE blocks IN ACCESS EXCLUSIVE MODE")
        try:
            yield store, locker
        finally:
            locker.close()
