"""Blocks added or lifted in the store by another node reach a running daemon."""

from datetime import datetime, timedelta, timezone

import pytest

from callguard.clock import ManualClock
from callguard.config import load_config
from callguard.daemon.app import Application
from callguard.policy.blocks import BlockList
from callguard.store import Store
from live_support import free_port
from support import write_config
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


async def check(port: int, uniqueid: str) -> str:
    call = AGICall(extension="01632960123", uniqueid=uniqueid, callerid="01632960010",
                   channel="PJSIP/3001-00000001", arguments=("01632960123", "gamma"))
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

    blocks.sync({("caller", "+441632960010"): None}, set())

    assert blocks.blocked([("endpoint", "1001")], NOW) == ("endpoint", "1001")
    assert blocks.blocked([("caller", "+441632960010")], NOW) == ("caller", "+441632960010")


def test_sync_drops_block_lifted_elsewhere():
    blocks = BlockList()
    blocks.replace([("endpoint", "1001", LATER), ("endpoint", "1002", LATER)])

    blocks.sync({("endpoint", "1002"): NOW + timedelta(minutes=5)},
                {("endpoint", "1001"), ("endpoint", "1002")})

    assert blocks.blocked([("endpoint", "1001")], NOW) is None
    assert blocks.blocked([("endpoint", "1002")], NOW + timedelta(minutes=10)) is None
    assert blocks.blocked([("endpoint", "1002")], NOW) == ("endpoint", "1002")
