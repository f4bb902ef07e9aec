"""Blocks added or lifted in the store by another node reach a running daemon."""

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy

from callguard.clock import ManualClock
from callguard.config import load_config
from callguard.daemon.app import Application
from callguard.policy.blocks import BlockList
from callguard.store import Store
from live_support import free_port
from support import TRUNK, with_lock_timeout, write_config
from emulator.fastagi import AGICall, run_fastagi_call

NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
LATER = NOW + timedelta(hours=1)


@pytest.fixture
async def node(tmp_path, db_url):
    port = free_port()
    app = Application(load_config(write_config(tmp_path, port=port, database=db_url)),
                      clock=ManualClock(NOW))
    await app.start()
    yield app, port, db_url
    await app.stop()


async def check(port: int, uniqueid: str, number: str = "01632960123") -> str:
    call = AGICall(extension=number, uniqueid=uniqueid, callerid="01632960010",
                   channel="PJSIP/3001-00000001", arguments=(number, "gamma"))
    outcome = await run_fastagi_call("127.0.0.1", port, call)
    return outcome.variables["CALLGUARD_REASON"]


async def test_block_from_other_node_applies(node):
    app, port, db_url = node
    other = Store(db_url)
    other.open()
    try:
        other.block_manually("endpoint", "3001", "fraud seen on node A", NOW, LATER, "root")
        await app.refresh_blocks()
        blocked = await check(port, "1718355600.1")

        other.unblock_manually("endpoint", "3001", "false alarm", NOW, "root")
        await app.refresh_blocks()
        lifted = await check(port, "1718355600.2")
    finally:
        other.close()

    assert blocked == "blocked:offender"
    assert lifted == "ok"


def test_sync_keeps_unwritten_local_block():
    blocks = BlockList()
    blocks.add("endpoint", "1001", LATER)   # this node's ban, not yet in the store

    blocks.sync([("caller", "+441632960010", None)])

    assert blocks.blocked([("endpoint", "1001")], NOW) == ("endpoint", "1001")
    assert blocks.blocked([("caller", "+441632960010")], NOW) == ("caller", "+441632960010")


def test_sync_drops_block_lifted_elsewhere():
    blocks = BlockList()
    blocks.replace([("endpoint", "1001", LATER), ("endpoint", "1002", LATER)])

    blocks.sync([("endpoint", "1002", NOW + timedelta(minutes=5))])

    assert blocks.blocked([("endpoint", "1001")], NOW) is None
    assert blocks.blocked([("endpoint", "1002")], NOW + timedelta(minutes=10)) is None
    assert blocks.blocked([("endpoint", "1002")], NOW) == ("endpoint", "1002")


def test_sync_drops_local_block_lifted_before_next_read():
    # Blocked here through the control socket, then lifted on another node
    # before this node read the store again: the second read without it ends it.
    blocks = BlockList()
    blocks.sync([])
    blocks.add("endpoint", "3001", None)

    blocks.sync([])
    after_one_read = blocks.blocked([("endpoint", "3001")], NOW)
    blocks.sync([])

    assert after_one_read == ("endpoint", "3001")
    assert blocks.blocked([("endpoint", "3001")], NOW) is None


def test_sync_keeps_unstored_block_until_removed():
    blocks = BlockList()
    blocks.add("endpoint", "3001", LATER)
    blocks.keep_unstored("endpoint", "3001")

    for _ in range(3):
        blocks.sync([])
    after_reads = blocks.blocked([("endpoint", "3001")], NOW)
    blocks.remove("endpoint", "3001")
    blocks.add("endpoint", "3001", LATER)
    blocks.sync([])
    blocks.sync([])

    assert after_reads == ("endpoint", "3001")
    assert blocks.blocked([("endpoint", "3001")], NOW) is None


def test_sync_keeps_written_local_block():
    blocks = BlockList()
    blocks.add("endpoint", "3001", LATER)

    blocks.sync([("endpoint", "3001", LATER)])
    blocks.sync([("endpoint", "3001", LATER)])

    assert blocks.blocked([("endpoint", "3001")], NOW) == ("endpoint", "3001")


async def test_own_block_lifted_elsewhere_ends(node):
    # Blocked through this node's control socket (stored, then applied here),
    # then lifted on another node before this node read the store again.
    app, port, db_url = node
    other = Store(db_url)
    other.open()
    try:
        other.block_manually("endpoint", "3001", "fraud", NOW, None, "root")
        app.blocks.add("endpoint", "3001", None)
        other.unblock_manually("endpoint", "3001", "false alarm", NOW, "root")
        await app.refresh_blocks()
        await app.refresh_blocks()
        reason = await check(port, "1718355600.3")
    finally:
        other.close()

    assert reason == "ok"


async def test_unstored_ban_outlasts_reads(tmp_path, pg_url, caplog):
    # The ban's write waits for the blocks id counter, which another node
    # holds past lock_timeout (300 ms here), so the write fails. The ban has
    # no row that another node could lift, so reads of the store keep it.
    database = with_lock_timeout(pg_url, "300ms")
    port = free_port()
    config = write_config(tmp_path, port=port, database=database,
                          trunks=TRUNK + "ban_after = 2\n")
    app = Application(load_config(config), clock=ManualClock(NOW))
    await app.start()
    admin = sqlalchemy.create_engine(pg_url)
    holder = admin.connect()
    try:
        holder.begin()
        holder.execute(sqlalchemy.text(
            "SELECT last_id FROM id_counters WHERE name = 'blocks' FOR UPDATE"))
        barred = [await check(port, f"1718355600.{n}", "09011234567") for n in (1, 2)]
        await app.offenders.drain()
        holder.rollback()
        await app.refresh_blocks()
        await app.refresh_blocks()
        after_reads = await check(port, "1718355600.3")
    finally:
        holder.close()
        admin.dispose()
        await app.stop()

    assert barred == ["barred:premium", "barred:premium"]
    assert "could not store the block on endpoint 3001" in caplog.text
    assert after_reads == "blocked:offender"
