"""Two PBX nodes, each with its own Asterisk and callguard, sharing trunks through PostgreSQL."""

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import sqlalchemy

from callguard.store import CallRecord, HangupRecord, Store
from live_support import Pbx, answered_call, eventually, stored_calls

pytestmark = pytest.mark.postgres

START = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
DAY = "2024-06-14"
WEEK = "2024-W24"

TRUNK = """\
[trunk gamma]
bar = premium, international
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""
RATE_1 = "prefix,description,rate,connection_fee,increments\n44,United Kingdom,1.00,,60/60\n"


@pytest.fixture
async def nodes(tmp_path, pg_url):
    """Start nodes a and b on one PostgreSQL store, each on its own clock at START."""
    started = []
    for name in ("a", "b"):
        directory = tmp_path / name
        directory.mkdir()
        pbx = Pbx(directory, START, trunks=TRUNK, rates=RATE_1, database=pg_url)
        pbx.ari.system_name = f"pbx-{name}"
        await pbx.start()
        started.append(pbx)
    yield started
    for pbx in started:
        await pbx.stop()


def advance(nodes: list[Pbx], seconds: float) -> None:
    for pbx in nodes:
        pbx.clock.advance(seconds)


async def test_calls_ending_together_both_charged(nodes):
    a, b = nodes
    call_a = await answered_call(a, "01632960123")
    call_b = await answered_call(b, "01632960124")
    advance(nodes, 90)

    await asyncio.gather(a.ari.hangup(call_a), b.ari.hangup(call_b))
    await eventually(lambda: not a.legs() and not b.legs(), what="both legs to end")
    await asyncio.gather(a.app.guard.drain(), b.app.guard.drain())
    await asyncio.gather(a.app.refresh_spend(), b.app.refresh_spend())

    # Two blocks begun on each call, at 0 s and 60 s.
    assert a.spend("day", DAY) == Decimal("4.00")
    assert a.spend("week", WEEK) == Decimal("4.00")
    assert a.app.ledger.committed("gamma", "day", DAY) == Decimal("4.00")
    assert b.app.ledger.committed("gamma", "day", DAY) == Decimal("4.00")
    assert b.app.ledger.committed("gamma", "week", WEEK) == Decimal("4.00")


async def test_other_node_spend_moves_hangup(nodes):
    a, b = nodes
    call_a = await answered_call(a, "01632960123")
    call_b = await answered_call(b, "01632960124", endpoint="1002")
    advance(nodes, 150)
    await a.ari.hangup(call_a)
    await eventually(lambda: not a.legs(), what="a's leg to end")
    await a.app.guard.drain()

    # b reads a's three blocks: with its own six blocks up to 300 s and one
    # more at 360 s the day reaches 10.00, so the block at 420 s cannot be paid.
    await b.app.refresh_spend()
    advance(nodes, 268)
    for pbx in nodes:
        await pbx.settle()
    before_limit = list(b.ari.deletes)
    advance(nodes, 1)
    await eventually(lambda: len(b.ari.deletes) == 1, what="b's hang-up")
    await eventually(lambda: not b.legs(), what="b's leg to end")
    await b.app.guard.drain()

    assert before_limit == []
    assert b.ari.deletes[0][0] == call_b.trunk_id
    assert b.spend("day", DAY) == Decimal("10.00")


async def test_block_reaches_other_node(nodes):
    a, b = nodes
    expires = START + timedelta(hours=1)
    with Store(a.config.general.database) as store:
        store.open()
        store.block_manually("endpoint", "1003", "fraud seen on a", START, expires, "root")
    a.app.blocks.add("endpoint", "1003", expires)

    _, refused_on_a = await a.call("01632960123", endpoint="1003")
    await b.app.refresh_blocks()
    _, refused_on_b = await b.call("01632960124", endpoint="1003")

    assert refused_on_a["CALLGUARD_REASON"] == "blocked:offender"
    assert refused_on_b["CALLGUARD_REASON"] == "blocked:offender"


async def test_reset_reaches_other_node(nodes):
    a, b = nodes
    call = await answered_call(a, "01632960123")
    advance(nodes, 541)  # ten blocks: the day's limit
    await a.ari.hangup(call)
    await eventually(lambda: not a.legs(), what="a's leg to end")
    await a.app.guard.drain()
    await b.app.refresh_spend()
    _, refused = await b.call("01632960124")

    with Store(a.config.general.database) as store:
        store.open()
        store.reset_spend("gamma", "day", DAY, "false alarm", a.clock.now(), "root")
    await b.app.refresh_spend()
    _, allowed = await b.call("01632960125", endpoint="1002")

    assert refused["CALLGUARD_REASON"] == "limit:daily"
    assert allowed["CALLGUARD_RESULT"] == "ALLOW"


async def test_restart_leaves_other_node_call(nodes):
    a, b = nodes
    call = await answered_call(b, "01632960123")
    advance(nodes, 30)

    await a.app.stop()
    await a.start_callguard()
    adopted = call.trunk_id in a.legs()
    live_on_a = a.app.ledger.live("gamma", "day", DAY)
    advance(nodes, 60)
    await b.ari.hangup(call)
    await eventually(lambda: not b.legs(), what="b's leg to end")
    await b.app.guard.drain()
    await a.app.guard.drain()
    record = stored_calls(b)[call.trunk_id]

    assert not adopted
    assert live_on_a == Decimal("0")
    assert record.ended_at == START + timedelta(seconds=90)
    # Two blocks begun, at 0 s and 60 s.
    assert record.cost == Decimal("2.00")
    assert b.spend("day", DAY) == Decimal("2.00")


async def test_restart_without_ari_leaves_calls(nodes, caplog):
    # A node started with [ari] enabled = no cannot ask its Asterisk which
    # calls are its own, so it leaves every call taken over from the store.
    a, b = nodes
    call = await answered_call(b, "01632960123")
    advance(nodes, 30)

    await a.app.stop()
    a.path.write_text(a.path.read_text().replace("enabled = yes", "enabled = no"))
    await a.start_callguard()
    after_start = stored_calls(b)[call.trunk_id].state
    advance(nodes, 60)
    await b.ari.hangup(call)
    await eventually(lambda: not b.legs(), what="b's leg to end")
    await b.app.guard.drain()
    record = stored_calls(b)[call.trunk_id]

    assert a.app.ari is None
    assert not a.legs()
    assert after_start == "up"
    assert "leaving 1 live call taken over from the store" in caplog.text
    assert record.ended_at == START + timedelta(seconds=90)
    assert record.cost == Decimal("2.00")
    assert b.spend("day", DAY) == Decimal("2.00")


async def test_restart_ends_own_unseen_call(nodes):
    a, b = nodes
    call = await answered_call(a, "01632960123")
    other = await answered_call(b, "01632960124")
    advance(nodes, 30)

    await a.crash()
    a.ari.hangup_unseen(call)
    advance(nodes, 60)
    await a.start_callguard()
    await a.app.guard.drain()
    record = stored_calls(a)[call.trunk_id]

    # Charged up to the restart, which never under-counts.
    assert record.state == "ended"
    assert record.ended_at == START + timedelta(seconds=90)
    assert record.cost == Decimal("2.00")
    assert other.trunk_id in b.legs()
    assert stored_calls(a)[other.trunk_id].state == "up"


def call_update(uniqueid: str) -> tuple[str, tuple]:
    """Return the update that stores an answered call, as a node writes it."""
    call = CallRecord(uniqueid=uniqueid, trunk="gamma", channel="PJSIP/gamma-00000001",
                      caller="01632960010", dialled="01632960123", created_at=START,
                      answered_at=START, state="up", guarded=True)
    return ("save", (call,))


def hangup_update(uniqueid: str) -> tuple[str, tuple]:
    """Return the update that records a hang-up that a limit requested."""
    hangup = HangupRecord(requested_at=START, trunk="gamma", uniqueid=uniqueid,
                          channel="PJSIP/gamma-00000002", number="+441632960124",
                          reason="limit:daily", daily_spend=Decimal("10.00"),
                          weekly_spend=Decimal("10.00"), call_cost=Decimal("2.00"),
                          outcome="requested")
    return ("hangup", (hangup,))


def blocked_backend(admin, blockers: list[int], exclude: list[int]) -> int | None:
    """Return a backend that waits for a lock held by one of ``blockers``, if any."""
    with admin.connect() as conn:
        return conn.execute(
            sqlalchemy.text("SELECT pid FROM pg_stat_activity "
                            "WHERE pg_blocking_pids(pid) && CAST(:blockers AS int[]) "
                            "AND NOT pid = ANY(CAST(:exclude AS int[]))"),
            {"blockers": blockers, "exclude": exclude},
        ).scalar()


async def wait_for_blocked(admin, blockers: list[int], exclude: list[int]) -> int:
    found: list[int] = []

    def blocked() -> bool:
        pid = blocked_backend(admin, blockers, exclude)
        if pid is not None:
            found.append(pid)
        return bool(found)

    await eventually(blocked, what=f"a backend waiting for {blockers}")
    return found[0]


async def test_concurrent_call_writes_do_not_deadlock(pg_url):
    # Node a saves an answered call, then records a hang-up. Node b does the
    # same in the other order. Both batches need the calls and the hangups id
    # counters. While a third transaction holds the calls counter, b takes the
    # hangups counter and a waits for the calls counter ahead of it.
    a, b = Store(pg_url), Store(pg_url)
    a.open()
    b.open()
    admin = sqlalchemy.create_engine(pg_url)
    holder = admin.connect()
    try:
        holder.begin()
        holder.execute(sqlalchemy.text(
            "SELECT last_id FROM id_counters WHERE name = 'calls' FOR UPDATE"))
        holder_pid = holder.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()

        writes_a = asyncio.ensure_future(asyncio.to_thread(
            a.write_calls, [call_update("pbx-a-1718355600.1"),
                            hangup_update("pbx-a-1718355600.3")]))
        pid_a = await wait_for_blocked(admin, [holder_pid], [])
        writes_b = asyncio.ensure_future(asyncio.to_thread(
            b.write_calls, [hangup_update("pbx-b-1718355600.3"),
                            call_update("pbx-b-1718355600.1")]))
        await wait_for_blocked(admin, [holder_pid, pid_a], [pid_a])
        holder.rollback()
        outcomes = await asyncio.gather(writes_a, writes_b, return_exceptions=True)
    finally:
        holder.close()
        admin.dispose()
        a.close()
        b.close()

    assert outcomes == [None, None]


async def test_resets_at_once_clear_once(pg_url):
    # Operators on nodes a and b reset the same day's 6.00 at once. Both
    # resets start while a third transaction has locked the spend row.
    a, b = Store(pg_url), Store(pg_url)
    a.open()
    b.open()
    a.add_spend("gamma", "day", DAY, Decimal("6.00"), START)
    admin = sqlalchemy.create_engine(pg_url)
    holder = admin.connect()
    try:
        holder.begin()
        holder.execute(sqlalchemy.text("SELECT amount FROM spend FOR UPDATE"))
        holder_pid = holder.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar()

        reset_a = asyncio.ensure_future(asyncio.to_thread(
            a.reset_spend, "gamma", "day", DAY, "false alarm", START, "root"))
        pid_a = await wait_for_blocked(admin, [holder_pid], [])
        reset_b = asyncio.ensure_future(asyncio.to_thread(
            b.reset_spend, "gamma", "day", DAY, "false alarm", START, "admin"))
        await wait_for_blocked(admin, [holder_pid, pid_a], [pid_a])
        holder.rollback()
        cleared = await asyncio.gather(reset_a, reset_b)
        total = a.get_spend("gamma", "day", DAY)
    finally:
        holder.close()
        admin.dispose()
        a.close()
        b.close()

    assert sorted(cleared) == [Decimal("0"), Decimal("6.00")]
    assert total == Decimal("0")
