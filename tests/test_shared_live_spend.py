"""Two PBX nodes on one PostgreSQL store count each other's calls while they are up."""

import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy import create_engine, event, select
from sqlalchemy.engine import make_url

from callguard.cli.inspect import check_number, print_check
from callguard.daemon.app import Application
from callguard.daemon.sharing import (
    LIVE_SPEND_EXPIRY_SECONDS,
    LIVE_SPEND_PURGE_SECONDS,
    LIVE_SPEND_SECONDS,
    LIVE_SPEND_STALE_SECONDS,
)
from callguard.policy.decision import CallRequest
from callguard.store import LiveSpendRow, Store
from callguard.store.models import LiveSpend
from live_support import Pbx, answered_call, eventually

pytestmark = pytest.mark.postgres

START = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
DAY = "2024-06-14"

TRUNK = """\
[trunk gamma]
bar = premium, international
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""
# Landlines at 1.00 a minute, so a call begins a block of 1.00 every 60 s,
# and mobiles at 3.00, whose first block fits in 6.00 but not in 2.00.
RATES = ("prefix,description,rate,connection_fee,increments\n"
         "44,United Kingdom,1.00,,60/60\n"
         "447,United Kingdom mobile,3.00,,60/60\n")
MOBILE = "07700900123"
CAPPED_TRUNK = TRUNK + "max_concurrent_calls = 3\n"


async def start_nodes(tmp_path, urls: dict[str, str],
                      node_names: dict[str, str] | None = None,
                      trunks: str = TRUNK) -> list[Pbx]:
    """Start one node per name in ``urls``, each on its database URL and own clock.

    A node is stored as ``pbx-NAME`` unless ``node_names`` names it otherwise.
    """
    started = []
    for name, url in urls.items():
        directory = tmp_path / name
        directory.mkdir()
        pbx = Pbx(directory, START, trunks=trunks, rates=RATES, database=url)
        pbx.ari.system_name = f"pbx-{name}"
        pbx.app_settings = {"node": (node_names or {}).get(name, f"pbx-{name}")}
        await pbx.start()
        started.append(pbx)
    return started


@pytest.fixture
async def nodes(tmp_path, pg_url):
    started = await start_nodes(tmp_path, {"a": pg_url, "b": pg_url})
    yield started
    for pbx in started:
        await pbx.stop()


@pytest.fixture
async def capped_nodes(tmp_path, pg_url):
    started = await start_nodes(tmp_path, {"a": pg_url, "b": pg_url}, trunks=CAPPED_TRUNK)
    yield started
    for pbx in started:
        await pbx.stop()


@pytest.fixture
async def cut_off_nodes(tmp_path, pg_url, proxy):
    """Start node a on the store and node b on it through ``proxy``."""
    through_proxy = make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    started = await start_nodes(tmp_path, {
        "a": pg_url, "b": through_proxy.render_as_string(hide_password=False)})
    yield started
    if not proxy.listening:
        await proxy.listen()
    for pbx in started:
        await pbx.stop()


async def step_to(nodes: list[Pbx], seconds: float) -> None:
    """Move every running node's clock to START + ``seconds`` one second at a
    time, letting each node act after every step."""
    running = [pbx for pbx in nodes if pbx.app is not None]
    target = START + timedelta(seconds=seconds)
    while running[0].clock.now() < target:
        for pbx in running:
            pbx.clock.advance(1)
        for pbx in running:
            await pbx.settle()


async def test_check_counts_other_node_calls(nodes):
    a, b = nodes
    await answered_call(a, "01632960123")
    await answered_call(b, "01632960124", endpoint="1002")

    # Four blocks begun on each call, at 0, 60, 120 and 180 s: 8.00 in all,
    # so 2.00 is left, less than the mobile's first block. b counts a's
    # block at 180 s within two rounds.
    await step_to(nodes, 180 + 2 * LIVE_SPEND_SECONDS)
    _, result = await b.call(MOBILE, endpoint="1003")

    assert result["CALLGUARD_RESULT"] == "DENY"
    assert result["CALLGUARD_REASON"] == "limit:daily"
    assert b.app.ledger.live("gamma", "day", DAY) == Decimal("4.00")
    assert b.app.ledger.others("gamma", "day", DAY) == Decimal("4.00")


async def test_guards_hang_up_at_combined_limit(nodes):
    a, b = nodes
    call_a = await answered_call(a, "01632960123")
    await step_to(nodes, 30)
    call_b = await answered_call(b, "01632960124", endpoint="1002")

    # a begins blocks at 0, 60, ... and b at 30, 90, .... With b's block at
    # 270 s the two have begun ten, so a's block at 300 s cannot be paid and
    # a hangs up 1 s before it. b's next block, at 330 s, cannot be paid either.
    await step_to(nodes, 298)
    a_before_limit = list(a.ari.deletes)
    await step_to(nodes, 299)
    await eventually(lambda: len(a.ari.deletes) == 1, what="a's hang-up")
    await eventually(lambda: not a.legs(), what="a's leg to end")

    await step_to(nodes, 328)
    b_before_limit = list(b.ari.deletes)
    await step_to(nodes, 329)
    await eventually(lambda: len(b.ari.deletes) == 1, what="b's hang-up")
    await eventually(lambda: not b.legs(), what="b's leg to end")
    await a.app.guard.drain()
    await b.app.guard.drain()

    assert a_before_limit == []
    assert a.ari.deletes[0][0] == call_a.trunk_id
    assert b_before_limit == []
    assert b.ari.deletes[0][0] == call_b.trunk_id
    assert a.spend("day", DAY) == Decimal("10.00")


async def test_stale_node_stops_counting(nodes):
    a, b = nodes
    await answered_call(a, "01632960123")
    # Eight blocks begun by 420 s, so 2.00 is left once b has read them.
    await step_to(nodes, 420 + 2 * LIVE_SPEND_SECONDS)
    _, while_fresh = await b.call(MOBILE)
    await a.crash()

    crashed_at = 420 + 2 * LIVE_SPEND_SECONDS
    await step_to(nodes, crashed_at + LIVE_SPEND_STALE_SECONDS - 2 * LIVE_SPEND_SECONDS)
    _, before_stale = await b.call(MOBILE, endpoint="1002")
    await step_to(nodes, crashed_at + LIVE_SPEND_STALE_SECONDS + LIVE_SPEND_SECONDS)
    _, once_stale = await b.call(MOBILE, endpoint="1003")

    assert while_fresh["CALLGUARD_REASON"] == "limit:daily"
    assert before_stale["CALLGUARD_REASON"] == "limit:daily"
    assert once_stale["CALLGUARD_RESULT"] == "ALLOW"
    assert b.app.ledger.others("gamma", "day", DAY) == Decimal(0)


async def test_store_outage_keeps_shares(cut_off_nodes, proxy, caplog):
    a, b = cut_off_nodes
    await answered_call(a, "01632960123")
    await answered_call(b, "01632960124", endpoint="1002")
    await step_to(cut_off_nodes, 185)
    await proxy.refuse()

    # b still counts a's four blocks as read last, and its own four.
    with caplog.at_level(logging.ERROR, logger="callguard.daemon.sharing"):
        await step_to(cut_off_nodes, 190)
    _, during_outage = await b.call(MOBILE, endpoint="1003")
    await proxy.listen()
    await step_to(cut_off_nodes, 195)

    assert "failed to store this node's live spend" in caplog.text
    assert "failed to read the live spend of the other nodes" in caplog.text
    assert during_outage["CALLGUARD_RESULT"] == "DENY"
    assert during_outage["CALLGUARD_REASON"] == "limit:daily"
    assert a.app.ledger.others("gamma", "day", DAY) == Decimal("4.00")
    assert b.app.ledger.others("gamma", "day", DAY) == Decimal("4.00")


async def test_ended_calls_leave_no_share(nodes):
    a, b = nodes
    await b.app.status()  # reads the day's total, which b then keeps current
    call = await answered_call(a, "01632960123")
    await step_to(nodes, 90)
    await a.ari.hangup(call)
    await eventually(lambda: not a.legs(), what="a's leg to end")
    await step_to(nodes, 95)

    with Store(a.config.general.database) as store:
        shared_with_b = store.others_live_spend("pbx-b", START)

    assert shared_with_b.spend == {}
    assert shared_with_b.calls == {}
    assert b.app.ledger.others("gamma", "day", DAY) == Decimal(0)
    assert b.app.ledger.committed("gamma", "day", DAY) == Decimal("2.00")


async def test_offline_check_counts_shared_spend(nodes):
    a, b = nodes
    await answered_call(a, "01632960123")
    await answered_call(b, "01632960124", endpoint="1002")
    await step_to(nodes, 180 + 2 * LIVE_SPEND_SECONDS)

    # Both nodes' four blocks, as they shared them: 2.00 is left, less than
    # the mobile's first block.
    report = await check_number(b.config, CallRequest(trunk="gamma", dialled=MOBILE),
                                clock=b.clock)

    assert report["result"] == "DENY"
    assert report["reason"] == "limit:daily"


async def answer_two_calls(nodes: list[Pbx]) -> None:
    """Answer two calls on the first node, and step every node's clock until
    the others have read them."""
    for number, endpoint in (("01632960123", "1001"), ("01632960124", "1002")):
        await answered_call(nodes[0], number, endpoint=endpoint)
    await step_to(nodes, 2 * LIVE_SPEND_SECONDS)


async def test_concurrent_cap_counts_other_node(capped_nodes):
    a, b = capped_nodes
    await answer_two_calls(capped_nodes)
    _, first = await b.call("01632960125", endpoint="1003")
    _, second = await b.call("01632960126", endpoint="1004")
    # a reads b's ringing call within two more.
    await step_to(capped_nodes, 4 * LIVE_SPEND_SECONDS)
    _, on_a = await a.call("01632960127", endpoint="1005")
    status = await b.app.status()

    assert b.app.ledger.others_calls("gamma") == 2
    assert status["trunks"]["gamma"]["other_nodes_calls"] == 2
    assert first["CALLGUARD_RESULT"] == "ALLOW"
    assert second["CALLGUARD_RESULT"] == "DENY"
    assert second["CALLGUARD_REASON"] == "limit:concurrent"
    assert a.app.ledger.others_calls("gamma") == 1
    assert on_a["CALLGUARD_RESULT"] == "DENY"
    assert on_a["CALLGUARD_REASON"] == "limit:concurrent"


async def test_stale_node_calls_stop_counting(capped_nodes):
    a, b = capped_nodes
    await answer_two_calls(capped_nodes)
    await answered_call(b, "01632960125", endpoint="1003")
    await a.crash()

    crashed_at = 2 * LIVE_SPEND_SECONDS
    await step_to(capped_nodes, crashed_at + LIVE_SPEND_STALE_SECONDS - 2 * LIVE_SPEND_SECONDS)
    _, before_stale = await b.call("01632960126", endpoint="1004")
    await step_to(capped_nodes, crashed_at + LIVE_SPEND_STALE_SECONDS + LIVE_SPEND_SECONDS)
    _, once_stale = await b.call("01632960127", endpoint="1005")

    assert before_stale["CALLGUARD_RESULT"] == "DENY"
    assert before_stale["CALLGUARD_REASON"] == "limit:concurrent"
    assert once_stale["CALLGUARD_RESULT"] == "ALLOW"
    assert b.app.ledger.others_calls("gamma") == 0


async def test_offline_check_counts_shared_calls(capped_nodes):
    a, b = capped_nodes
    await answered_call(b, "01632960125", endpoint="1003")
    await answer_two_calls(capped_nodes)

    report = await check_number(b.config, CallRequest(trunk="gamma", dialled="01632960126"),
                                clock=b.clock)

    assert report["result"] == "DENY"
    assert report["reason"] == "limit:concurrent"
    assert report["detail"] == "3 calls of 3 in progress, 3 of them on other nodes"


async def test_offline_check_source_names_shared(capped_nodes, capsys):
    b = capped_nodes[1]
    await answered_call(b, "01632960125", endpoint="1003")
    await answer_two_calls(capped_nodes)

    report = await check_number(b.config, CallRequest(trunk="gamma", dialled="01632960126"),
                                clock=b.clock)
    print_check(report, as_json=False)
    lines = capsys.readouterr().out.splitlines()
    source = [line for line in lines if line.startswith("source")]

    assert report["reason"] == "limit:concurrent"
    assert source == ["source     the config and the store only: the calls in progress and "
                      "checks waiting for Dial that the daemons last shared, without the "
                      "call-rate limits"]


async def test_restarted_node_shares_no_foreign_call(capped_nodes):
    # Node a restarts while its Asterisk is down, so it cannot ask which of the
    # calls it takes over from the store are its own. b's call must count once.
    a, b = capped_nodes
    call = await answered_call(b, "01632960123")
    await step_to(capped_nodes, 2 * LIVE_SPEND_SECONDS)
    await a.app.stop()
    await a.ari.stop()
    a.app = Application(a.config, clock=a.clock)
    a.app.node = "pbx-a"
    await a.app.start()
    taken_over = set(a.legs())

    # Two blocks begun on b's call, at 0 s and 60 s, and two rounds to share them.
    await step_to(capped_nodes, 60 + 4 * LIVE_SPEND_SECONDS)

    assert taken_over == {call.trunk_id}
    assert b.app.ledger.live("gamma", "day", DAY) == Decimal("2.00")
    assert b.app.ledger.others("gamma", "day", DAY) == Decimal("0")
    assert b.app.ledger.others_calls("gamma") == 0


def stored_nodes(url: str) -> set[str]:
    """Return the names of the nodes that have live_spend rows in the store at ``url``."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return set(conn.execute(select(LiveSpend.node).distinct()).scalars())
    finally:
        engine.dispose()


async def test_expired_rows_deleted(nodes, pg_url):
    a, b = nodes
    expired_at = START - timedelta(seconds=LIVE_SPEND_EXPIRY_SECONDS + 1)
    kept_at = START - timedelta(seconds=LIVE_SPEND_EXPIRY_SECONDS - 60)
    row = LiveSpendRow("gamma", "day", DAY, Decimal("1.00"), Decimal(0), 1)
    with Store(pg_url) as store:
        store.replace_live_spend("pbx-gone", [row], expired_at)
        store.replace_live_spend("pbx-late", [row], kept_at)
    await answered_call(a, "01632960123")

    await step_to(nodes, 2 * LIVE_SPEND_SECONDS)
    after_first_round = stored_nodes(pg_url)
    with Store(pg_url) as store:
        store.replace_live_spend("pbx-gone", [row], expired_at)
    await step_to(nodes, 4 * LIVE_SPEND_SECONDS)
    within_the_hour = stored_nodes(pg_url)
    # Only b's clock moves on, so a's rows are an hour old on it.
    b.clock.advance(LIVE_SPEND_PURGE_SECONDS)
    await b.settle()
    after_an_hour = stored_nodes(pg_url)

    assert after_first_round == {"pbx-a", "pbx-late"}
    assert within_the_hour == {"pbx-a", "pbx-late", "pbx-gone"}
    assert after_an_hour == {"pbx-a"}


NAMESAKE_ERROR = "another daemon stores its live spend under this node's name"


async def test_namesake_node_reported(tmp_path, pg_url, caplog):
    started = await start_nodes(tmp_path, {"a": pg_url, "b": pg_url},
                                node_names={"a": "pbx", "b": "pbx"})
    try:
        a, b = started
        # Two hosts' clocks never agree to the microsecond, as these would.
        b.clock.advance(0.25)
        await answered_call(a, "01632960123")
        await answered_call(b, "01632960124", endpoint="1002")
        with caplog.at_level(logging.ERROR, logger="callguard.daemon.sharing"):
            await step_to(started, 4 * LIVE_SPEND_SECONDS)
    finally:
        for pbx in started:
            await pbx.stop()

    assert NAMESAKE_ERROR in caplog.text
    assert "'pbx'" in caplog.text


def test_namesake_insert_after_delete_reported(pg_url):
    """Two daemons under one name write at once: the second's DELETE found no
    rows, but the first inserted its rows before the second's INSERT."""
    row = LiveSpendRow("gamma", "day", DAY, Decimal("1.00"), Decimal(0), 1)
    theirs = START + timedelta(seconds=0.25)
    with Store(pg_url) as store, Store(pg_url) as namesake:
        inserted = []

        def namesake_inserts_first(conn, cursor, statement, *args):
            if statement.startswith("INSERT INTO live_spend") and not inserted:
                inserted.append(namesake.replace_live_spend("pbx", [row], theirs))

        event.listen(store._engine, "before_cursor_execute", namesake_inserts_first)
        replaced = store.replace_live_spend("pbx", [row], START)
        event.remove(store._engine, "before_cursor_execute", namesake_inserts_first)
        stored = store.others_live_spend(None, START)

    assert inserted == [set()]
    assert replaced == {theirs}
    # The rows are taken over, so the daemon goes on writing.
    assert stored.calls == {"gamma": 1}


async def test_distinct_nodes_not_reported(nodes, caplog):
    a, b = nodes
    await answered_call(a, "01632960123")
    await answered_call(b, "01632960124", endpoint="1002")
    with caplog.at_level(logging.ERROR, logger="callguard.daemon.sharing"):
        await step_to(nodes, 4 * LIVE_SPEND_SECONDS)
        # A restarted node finds the rows of its own last run, which are no namesake's.
        await a.crash()
        await a.start_callguard()
        await answered_call(a, "01632960125", endpoint="1003")
        await step_to(nodes, 8 * LIVE_SPEND_SECONDS)

    assert NAMESAKE_ERROR not in caplog.text


async def test_sqlite_node_writes_no_rows(tmp_path, sqlite_url):
    pbx = Pbx(tmp_path, START, trunks=TRUNK, rates=RATES, database=sqlite_url)
    await pbx.start()
    try:
        await answered_call(pbx, "01632960123")
        for _ in range(3):
            pbx.clock.advance(LIVE_SPEND_SECONDS)
            await pbx.settle()
        with Store(sqlite_url) as store:
            rows = store.others_live_spend("another-node", START)
    finally:
        await pbx.stop()

    assert rows.spend == {}
    assert rows.calls == {}


async def test_sqlite_node_caps_own_calls(tmp_path, sqlite_url):
    pbx = Pbx(tmp_path, START, trunks=TRUNK + "max_concurrent_calls = 2\n", rates=RATES,
              database=sqlite_url)
    await pbx.start()
    try:
        await answered_call(pbx, "01632960123")
        await answered_call(pbx, "01632960124", endpoint="1002")
        pbx.clock.advance(LIVE_SPEND_SECONDS)
        await pbx.settle()
        _, third = await pbx.call("01632960125", endpoint="1003")
        with Store(sqlite_url) as store:
            rows = store.others_live_spend(None, START)
    finally:
        await pbx.stop()

    assert third["CALLGUARD_RESULT"] == "DENY"
    assert third["CALLGUARD_REASON"] == "limit:concurrent"
    assert rows.calls == {}


def test_others_live_calls_skip_stale(store):
    fresh = START + timedelta(seconds=LIVE_SPEND_STALE_SECONDS)
    store.replace_live_spend("pbx-a", [
        LiveSpendRow("gamma", "day", DAY, Decimal("1.50"), Decimal(0), 2),
        LiveSpendRow("gamma", "week", "2024-W24", Decimal("1.50"), Decimal(0)),
    ], START)
    store.replace_live_spend("pbx-b", [
        LiveSpendRow("gamma", "day", DAY, Decimal(0), Decimal(0), 1),
    ], fresh)
    store.replace_live_spend("pbx-c", [
        LiveSpendRow("gamma", "day", DAY, Decimal(0), Decimal("0.50"), 4),
        LiveSpendRow("delta", "day", DAY, Decimal(0), Decimal(0), 1),
    ], fresh)

    assert store.others_live_spend("pbx-b", START).calls == {"gamma": 6, "delta": 1}
    assert store.others_live_spend("pbx-b", fresh).calls == {"gamma": 4, "delta": 1}
    assert store.others_live_spend(None, fresh).calls == {"gamma": 5, "delta": 1}
    # A row of counts alone adds no spend.
    assert store.others_live_spend("pbx-c", fresh).spend == {}


def test_delete_live_spend_before(store):
    row = LiveSpendRow("gamma", "day", DAY, Decimal("1.00"), Decimal(0), 1)
    store.replace_live_spend("pbx-a", [
        row, LiveSpendRow("gamma", "week", "2024-W24", Decimal("1.00"), Decimal(0)),
    ], START)
    store.replace_live_spend("pbx-b", [row], START + timedelta(seconds=1))

    deleted = store.delete_live_spend_before(START + timedelta(seconds=1))

    assert deleted == 2
    assert store.others_live_spend(None, START).calls == {"gamma": 1}
    assert store.delete_live_spend_before(START + timedelta(seconds=1)) == 0


def test_others_live_spend_skips_stale(store):
    fresh = START + timedelta(seconds=LIVE_SPEND_STALE_SECONDS)
    store.replace_live_spend("pbx-a", [
        LiveSpendRow("gamma", "day", DAY, Decimal("1.50"), Decimal("0.25")),
        LiveSpendRow("gamma", "week", "2024-W24", Decimal("1.50"), Decimal("0.25")),
    ], START)
    store.replace_live_spend("pbx-b", [
        LiveSpendRow("gamma", "day", DAY, Decimal("2.00"), Decimal(0)),
    ], fresh)
    store.replace_live_spend("pbx-c", [
        LiveSpendRow("gamma", "day", DAY, Decimal("4.00"), Decimal(0)),
    ], fresh)

    assert store.others_live_spend("pbx-b", START).spend == {
        ("gamma", "day", DAY): Decimal("5.75"),
        ("gamma", "week", "2024-W24"): Decimal("1.75"),
    }
    assert store.others_live_spend("pbx-b", fresh).spend == {
        ("gamma", "day", DAY): Decimal("4.00"),
    }

    store.replace_live_spend("pbx-c", [], fresh)
    assert store.others_live_spend("pbx-b", fresh).spend == {}
