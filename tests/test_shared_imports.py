"""Two nodes that store the same prefix table or rate deck at once, as at a joint start."""

import asyncio
import threading
import uuid
from datetime import datetime, timezone
from decimal import Decimal

import pytest
import sqlalchemy

from callguard.clock import ManualClock
from callguard.config import load_config
from callguard.daemon.app import Application
from callguard.store import Store
from callguard.store.decks import PG_IMPORT_LOCK
from callguard.store.schema import lock_transaction
from emulator.fastagi import AGICall, run_fastagi_call
from live_support import eventually, free_port
from support import with_lock_timeout, write_config

pytestmark = pytest.mark.postgres

RATES = [
    ("44", "United Kingdom", Decimal("0.01"), Decimal("0"), 60, 60),
    ("447", "United Kingdom mobile", Decimal("0.05"), Decimal("0"), 60, 60),
]
PREFIXES = [("01", "geographic", "Geographic"), ("07", "mobile", "Mobile")]
NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)


def with_application_name(url: str) -> tuple[str, str]:
    """Return ``url`` with an application_name of its own, and that name.

    Other test runs on the same server have backends named callguard too.
    """
    name = f"callguard-test-{uuid.uuid4().hex[:8]}"
    named = sqlalchemy.engine.make_url(url).update_query_dict({"application_name": name})
    return named.render_as_string(hide_password=False), name


def waiting_backends(admin, application_name: str) -> int:
    """Return how many backends named ``application_name`` wait for a lock."""
    with admin.connect() as conn:
        return conn.execute(sqlalchemy.text(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = :name AND wait_event_type = 'Lock'"
        ), {"name": application_name}).scalar()


async def test_rate_imports_at_once_both_succeed(pg_url):
    # Node a's import has deleted the old deck and waits before its rows.
    # Node b imports the same deck meanwhile, and then node a goes on.
    url, name = with_application_name(pg_url)
    a, b = Store(url), Store(url)
    a.open()
    b.open()
    admin = sqlalchemy.create_engine(pg_url)
    in_copy, go_on = threading.Event(), threading.Event()

    def held_rows():
        in_copy.set()
        go_on.wait(10)
        yield from RATES

    try:
        import_a = asyncio.ensure_future(
            asyncio.to_thread(a.replace_rates, "gamma", held_rows(), "rates.csv"))
        await eventually(in_copy.is_set, what="node a's import to start")
        import_b = asyncio.ensure_future(
            asyncio.to_thread(b.replace_rates, "gamma", iter(RATES), "rates.csv"))
        await eventually(lambda: import_b.done() or waiting_backends(admin, name) > 0,
                         what="node b's import to end or wait")
        go_on.set()
        outcomes = await asyncio.gather(import_a, import_b, return_exceptions=True)
        stored = b.list_rates("gamma")
    finally:
        go_on.set()
        admin.dispose()
        a.close()
        b.close()

    assert outcomes == [2, 2]
    assert [row[0] for row in stored] == ["44", "447"]


async def test_prefix_imports_at_once_both_succeed(pg_url):
    # The same race for the prefix table, run 20 times. Without a lock around
    # the import, two of them often insert the same prefixes.
    stores = [Store(pg_url), Store(pg_url)]
    for store in stores:
        store.open()
    try:
        for _ in range(20):
            outcomes = await asyncio.gather(
                *(asyncio.to_thread(store.replace_prefixes, PREFIXES, "prefixes.csv")
                  for store in stores),
                return_exceptions=True)
            assert outcomes == [2, 2]
        stored = stores[0].list_prefixes()
    finally:
        for store in stores:
            store.close()

    assert stored == PREFIXES


async def test_start_during_other_import(tmp_path, pg_url, caplog):
    # Another node's import of a large deck holds the import lock for longer
    # than this node's lock_timeout (500 ms here, 5 s by default). The daemon
    # decides from the files it loaded, so it starts and decides checks.
    database = with_lock_timeout(pg_url, "500ms")
    with Store(database):
        pass
    port = free_port()
    app = Application(load_config(write_config(tmp_path, port=port, database=database)),
                      clock=ManualClock(NOW))
    admin = sqlalchemy.create_engine(pg_url)
    importer = admin.connect()
    try:
        importer.begin()
        lock_transaction(importer, PG_IMPORT_LOCK)
        await app.start()
        try:
            outcome = await run_fastagi_call("127.0.0.1", port, AGICall(
                extension="01632960123", uniqueid="1718355600.1", callerid="01632960010",
                channel="PJSIP/3001-00000001", arguments=("01632960123", "gamma")))
        finally:
            await app.stop()
    finally:
        importer.rollback()
        importer.close()
        admin.dispose()

    assert outcome.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert "failed to copy the prefix table and rate decks to the store" in caplog.text


async def test_import_lock_per_schema(pg_url):
    # Advisory locks belong to the whole database. A store in another schema
    # of it is another store, so its long import must not make this one wait.
    other_schema = f"t_{uuid.uuid4().hex[:12]}"
    other_url = sqlalchemy.engine.make_url(pg_url).update_query_dict(
        {"options": f"-csearch_path={other_schema}"}).render_as_string(hide_password=False)
    admin = sqlalchemy.create_engine(pg_url)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f'CREATE SCHEMA "{other_schema}"'))
    with Store(other_url):
        pass
    store = Store(with_lock_timeout(pg_url, "300ms"))
    store.open()
    other = sqlalchemy.create_engine(other_url)
    importer = other.connect()
    try:
        importer.begin()
        lock_transaction(importer, PG_IMPORT_LOCK)
        stored = await asyncio.to_thread(store.replace_prefixes, PREFIXES, "prefixes.csv")
    finally:
        importer.rollback()
        importer.close()
        other.dispose()
        store.close()
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f'DROP SCHEMA "{other_schema}" CASCADE'))
        admin.dispose()

    assert stored == 2
