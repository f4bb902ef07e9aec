"""The limit timer counts spend that the store contains but no check has read yet,
and spend that other daemons sharing the store add there, also when the store
cannot be reached for a while.

Each test uses a trunk with a daily limit of 10.00 and 1.00 a minute in 60/60
blocks, so the limit moment is the start of the first minute that the day's
budget cannot pay; the hang-up is due LIMIT_LEAD_SECONDS before it. The
emulated Asterisk and callguard run on a manual clock.
"""

import asyncio
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy.engine import make_url

from callguard.policy.budget import LIMIT_LEAD_SECONDS
from callguard.policy.ledger import MAX_SPEND_READS, Ledger
from callguard.store import Store
from callguard.worker import StoreWorker
from live_support import Pbx, eventually

LONDON = ZoneInfo("Europe/London")
TRUNKS = """\
[trunk gamma]
bar = premium, international
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
timezone = Europe/London
"""
RATES = ("prefix,description,rate,connection_fee,increments\n"
         "44,United Kingdom,1.00,,60/60\n"
         "1900,United States premium rate,2.50,0.25,60/60\n")


def london(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON).astimezone(timezone.utc)


@pytest.fixture
async def pbxs(tmp_path):
    started = []

    async def start(at: datetime, spent: tuple = ()) -> Pbx:
        pbx = Pbx(tmp_path, at, trunks=TRUNKS, rates=RATES)
        await pbx.start()
        if spent:
            await pbx.restart_with_spend(spent, at)
        started.append(pbx)
        return pbx

    yield start
    for pbx in started:
        await pbx.stop()


async def answer(pbx: Pbx, call) -> None:
    await pbx.ari.answer(call)
    await eventually(lambda: call.trunk_id in pbx.legs()
                     and pbx.legs()[call.trunk_id].state == "up", what="answer")


def limit_moment(pbx: Pbx) -> datetime:
    """Return the start of the first block that the budget cannot pay."""
    meter = pbx.app.guard.meters["gamma"]
    assert not meter.unloaded
    hangup_at = meter.next_deadline(pbx.clock.now()).at
    return hangup_at + timedelta(seconds=LIMIT_LEAD_SECONDS)


async def test_restart_counts_spend_of_ended_calls(pbxs):
    pbx = await pbxs(london(2024, 6, 14, 10, 0), spent=[("day", "2024-06-14", "7.00")])
    call, result = await pbx.call("01632960123")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await answer(pbx, call)

    pbx.clock.advance(30)
    await pbx.crash()
    await pbx.start_callguard()
    await pbx.settle()

    # 7.00 stored plus 10:00, 10:01 and 10:02: the block at 10:03 is not paid.
    assert limit_moment(pbx) == london(2024, 6, 14, 10, 3)


async def test_new_day_counts_calls_ended_after_midnight(pbxs):
    pbx = await pbxs(london(2024, 6, 14, 23, 58))
    first, _ = await pbx.call("01632960001")
    second, _ = await pbx.call("01632960002", endpoint="1002")
    await answer(pbx, first)
    await answer(pbx, second)

    pbx.clock.set(london(2024, 6, 15, 0, 2, 30))
    await pbx.settle()
    await pbx.ari.hangup(first)
    await eventually(lambda: first.trunk_id not in pbx.legs(), what="first call ended")
    await pbx.settle()

    # The new day: 3.00 from the first call (00:00 to 00:02), and the second
    # pays 00:00 to 00:06, so its block at 00:07 is the first not paid.
    assert limit_moment(pbx) == london(2024, 6, 15, 0, 7)


async def test_new_week_counts_stored_spend(pbxs):
    # Sunday night: the store already records 6.00 for the new week (and day),
    # as another call ended there would leave it.
    pbx = await pbxs(london(2024, 6, 16, 23, 59),
                     spent=[("day", "2024-06-17", "6.00"), ("week", "2024-W25", "6.00")])
    call, _ = await pbx.call("01632960001")
    await answer(pbx, call)
    await pbx.settle()

    # 23:59 on Sunday, then 00:00 to 00:03 on Monday: 6.00 + 4.00.
    assert limit_moment(pbx) == london(2024, 6, 17, 0, 4)


async def test_status_reads_new_week(pbxs):
    # The trunk sets no weekly limit, so nothing reads the new week's spend.
    # The store records 4.00 there, as another node would leave it, and the
    # call up since Sunday 23:55 has paid 00:00 to 00:05 on Monday.
    pbx = await pbxs(london(2024, 6, 16, 23, 55))
    call, _ = await pbx.call("01632960001")
    await answer(pbx, call)
    pbx.add_spend("week", "2024-W25", "4.00", london(2024, 6, 16, 23, 56))
    for minute in range(56, 60):
        pbx.clock.set(london(2024, 6, 16, 23, minute))
        await pbx.settle()
    for minute in range(6):
        pbx.clock.set(london(2024, 6, 17, 0, minute))
        await pbx.settle()
    pbx.clock.set(london(2024, 6, 17, 0, 5, 30))

    trunk = (await pbx.app.status())["trunks"]["gamma"]
    assert trunk["week"] == "2024-W25"
    assert trunk["weekly_spend"] == "10.00"
    assert trunk["daily_spend"] == "6.00"


async def test_emergency_leg_costs_nothing(pbxs):
    pbx = await pbxs(london(2024, 6, 14, 10, 0))
    normal, result = await pbx.call("01632960123")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    # The snippet sends 999 straight to Dial, without the check.
    emergency = await pbx.ari.dial_out("999", trunk="gamma", caller_endpoint="1005",
                                       callerid="01632960055", dialstring="999@gamma")
    await answer(pbx, normal)
    await answer(pbx, emergency)
    await pbx.settle()

    assert pbx.legs()[emergency.trunk_id].tariff.rate == Decimal(0)
    # The normal call alone: 10:00 to 10:09 paid, so 10:10 is the limit.
    assert limit_moment(pbx) == london(2024, 6, 14, 10, 10)

    pbx.clock.advance(5 * 60)
    await pbx.ari.hangup(emergency)
    await eventually(lambda: emergency.trunk_id not in pbx.legs(), what="999 ended")
    await pbx.app.guard.drain()
    with Store(pbx.config.general.database) as store:
        store.open()
        stored = {record.uniqueid: record for record in store.recent_calls(10)}
    assert stored[emergency.trunk_id].cost == Decimal(0)


async def test_spend_ended_by_another_node_counts(pbxs):
    pbx = await pbxs(london(2024, 6, 14, 10, 0))
    call, _ = await pbx.call("01632960123")
    await answer(pbx, call)
    await pbx.settle()
    assert limit_moment(pbx) == london(2024, 6, 14, 10, 10)

    # Another daemon sharing the store ends calls worth 6.00.
    pbx.add_spend("day", "2024-06-14", "6.00", london(2024, 6, 14, 10, 0, 30))
    await pbx.app.refresh_spend()
    await pbx.settle()

    assert limit_moment(pbx) == london(2024, 6, 14, 10, 4)


async def test_refresh_counts_unwritten_call_once(pbxs):
    pbx = await pbxs(london(2024, 6, 14, 10, 0))
    ledger = pbx.app.ledger
    window = ("gamma", "day", "2024-06-14")
    charges = {("day", "2024-06-14"): Decimal("2.00")}
    await ledger.load("gamma", {"day": "2024-06-14"})

    ledger.commit("gamma", charges)            # ended, not written yet
    assert await ledger.refresh([window]) == set()
    assert ledger.committed(*window) == Decimal("2.00")

    # The write lands, and the guard calls written() before any later read.
    pbx.add_spend("day", "2024-06-14", "2.00", london(2024, 6, 14, 10, 1))
    ledger.written("gamma", charges)
    assert await ledger.refresh([window]) == set()
    assert ledger.committed(*window) == Decimal("2.00")


async def test_load_counts_unwritten_call(pbxs):
    pbx = await pbxs(london(2024, 6, 14, 10, 0))
    ledger = pbx.app.ledger
    ledger.commit("gamma", {("day", "2024-06-15"): Decimal("3.00")})

    await ledger.load("gamma", {"day": "2024-06-15"})

    assert ledger.committed("gamma", "day", "2024-06-15") == Decimal("3.00")


async def test_unread_window_counts_ended_calls(pbxs):
    pbx = await pbxs(london(2024, 6, 14, 10, 0))
    ledger = pbx.app.ledger
    charges = {("day", "2024-06-15"): Decimal("3.00")}
    ledger.commit("gamma", charges)
    assert ledger.committed("gamma", "day", "2024-06-15") == Decimal("3.00")

    # Written while the window is still unread: the store now contains it.
    pbx.add_spend("day", "2024-06-15", "3.00", london(2024, 6, 15, 0, 5))
    ledger.written("gamma", charges)
    assert ledger.committed("gamma", "day", "2024-06-15") == Decimal("3.00")

    await ledger.load("gamma", {"day": "2024-06-15"})
    assert ledger.committed("gamma", "day", "2024-06-15") == Decimal("3.00")


class LateReadWorker(StoreWorker):
    """A store worker that holds back the result of the first spend read.

    The read runs in the store thread at once, but its result reaches the
    caller only after ``release`` is set, as when the event loop first runs
    the callbacks of a write that the store thread ran after the read.
    """

    def __init__(self, store: Store):
        super().__init__(store)
        self.read_done = asyncio.Event()
        self.release = asyncio.Event()

    async def call(self, fn, *args, **kwargs):
        result = await super().call(fn, *args, **kwargs)
        if fn == self.store.get_spend and not self.read_done.is_set():
            self.read_done.set()
            await self.release.wait()
        return result


@pytest.fixture
async def late_read_worker(store):
    worker = LateReadWorker(store)
    yield worker
    worker.shutdown()


async def land_write_during_read(worker: LateReadWorker, ledger: Ledger,
                                 charges: dict) -> None:
    """Store the call of ``charges`` after the store read its window, and tell
    ``ledger`` before the read's result reaches it."""
    await worker.read_done.wait()
    for (window, key), amount in charges.items():
        await worker.call(worker.store.add_spend, "gamma", window, key, amount,
                          london(2024, 6, 15, 0, 5))
    ledger.written("gamma", charges)
    worker.release.set()


async def test_load_keeps_call_written_during_read(late_read_worker):
    ledger = Ledger(late_read_worker)
    charges = {("day", "2024-06-15"): Decimal("3.00")}
    ledger.commit("gamma", charges)   # ended, not written yet

    load = asyncio.ensure_future(ledger.load("gamma", {"day": "2024-06-15"}))
    await land_write_during_read(late_read_worker, ledger, charges)
    await load

    assert ledger.committed("gamma", "day", "2024-06-15") == Decimal("3.00")


async def test_refresh_keeps_call_written_during_read(late_read_worker):
    ledger = Ledger(late_read_worker)
    window = ("gamma", "day", "2024-06-15")
    charges = {("day", "2024-06-15"): Decimal("3.00")}
    late_read_worker.read_done.set()   # the load below reads at once
    await ledger.load("gamma", {"day": "2024-06-15"})
    late_read_worker.read_done.clear()
    ledger.commit("gamma", charges)

    refresh = asyncio.ensure_future(ledger.refresh([window]))
    await land_write_during_read(late_read_worker, ledger, charges)
    await refresh

    assert ledger.committed(*window) == Decimal("3.00")


class BusyWindowWorker(StoreWorker):
    """A store worker under which a call of 1.00 lands in the window during every read.

    The store runs each call's write before the read, so every total read
    already contains it, but the ledger hears of the write before the read's
    result arrives.
    """

    def __init__(self, store: Store):
        super().__init__(store)
        self.ledger: Ledger | None = None
        self.reads = 0

    async def call(self, fn, *args, **kwargs):
        if fn != self.store.get_spend:
            return await super().call(fn, *args, **kwargs)
        charges = {("day", "2024-06-15"): Decimal("1.00")}
        self.ledger.commit("gamma", charges)
        await super().call(self.store.add_spend, "gamma", "day", "2024-06-15",
                           Decimal("1.00"), london(2024, 6, 15, 0, 5))
        result = await super().call(fn, *args, **kwargs)
        self.reads += 1
        self.ledger.written("gamma", charges)
        return result


async def test_load_reads_busy_window_bounded(store):
    worker = BusyWindowWorker(store)
    ledger = worker.ledger = Ledger(worker)
    try:
        await asyncio.wait_for(ledger.load("gamma", {"day": "2024-06-15"}), 5)
    finally:
        worker.shutdown()

    assert worker.reads == MAX_SPEND_READS
    # The store contains 5.00. The call that landed during the last read counts
    # twice, which refuses calls early instead of letting them overspend.
    assert ledger.committed("gamma", "day", "2024-06-15") == Decimal("6.00")


@pytest.fixture
async def cut_off_pbx(tmp_path, pg_url, proxy):
    """Start a PBX at 23:57 whose callguard reaches PostgreSQL through ``proxy``."""
    url = make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    pbx = Pbx(tmp_path, london(2024, 6, 14, 23, 57), trunks=TRUNKS, rates=RATES,
              database=url.render_as_string(hide_password=False))
    await pbx.start()
    yield pbx
    await pbx.stop()


def stored_spend(pg_url: str, window: str, key: str) -> Decimal:
    """Read a window's spend past the proxy, which runs in the test's event loop."""
    with Store(pg_url) as store:
        store.open()
        return store.get_spend("gamma", window, key)


async def step_to(pbx: Pbx, instant: datetime, seconds: float = 1.0) -> None:
    """Move the clock to ``instant`` in steps, letting callguard act after each."""
    while pbx.clock.now() < instant:
        pbx.clock.set(min(pbx.clock.now() + timedelta(seconds=seconds), instant))
        await pbx.settle()


@pytest.mark.postgres
async def test_call_ended_while_store_down_counts(cut_off_pbx, proxy, pg_url):
    # Both calls are answered at 23:57, after the store went away, so the 15th
    # is never read. The first call ends at 00:04:30, having paid 00:00 to
    # 00:04 on the 15th. The second pays the same, so its block at 00:05 is
    # the first not paid.
    pbx = cut_off_pbx
    first, _ = await pbx.call("01632960001")
    second, _ = await pbx.call("01632960002", endpoint="1002")
    await proxy.refuse()
    await answer(pbx, first)
    await answer(pbx, second)

    await step_to(pbx, london(2024, 6, 15, 0, 4, 30), seconds=30)
    await pbx.ari.hangup(first)
    await eventually(lambda: first.trunk_id not in pbx.legs(), what="the first call's end")
    await step_to(pbx, london(2024, 6, 15, 0, 4, 58))
    assert pbx.ari.deletes == []

    pbx.clock.advance(1)
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up at 00:04:59")
    await eventually(lambda: not pbx.legs(), what="the second call's end")
    assert pbx.ari.deletes[0][0] == second.trunk_id

    await proxy.listen()
    await step_to(pbx, london(2024, 6, 15, 0, 6))
    await eventually(lambda: not pbx.app.guard._writes, what="the queued writes")
    await pbx.app.guard.drain()
    assert stored_spend(pg_url, "day", "2024-06-14") == Decimal("6.00")
    assert stored_spend(pg_url, "day", "2024-06-15") == Decimal("10.00")


@pytest.mark.postgres
async def test_unread_window_read_when_store_back(cut_off_pbx, proxy, pg_url):
    # The call is answered at 23:57, after the store went away. Another node
    # stores 6.00 for the 15th at 00:01, and the store is back at 00:02. The
    # call then pays 00:00 to 00:03 on the 15th, so 00:04 is not paid.
    pbx = cut_off_pbx
    call, _ = await pbx.call("01632960001")
    await proxy.refuse()
    await answer(pbx, call)

    await step_to(pbx, london(2024, 6, 15, 0, 1), seconds=30)
    with Store(pg_url) as store:
        store.open()
        store.add_spend("gamma", "day", "2024-06-15", Decimal("6.00"),
                        london(2024, 6, 15, 0, 1))
    await step_to(pbx, london(2024, 6, 15, 0, 2), seconds=30)
    await proxy.listen()
    await step_to(pbx, london(2024, 6, 15, 0, 3, 58))
    assert pbx.ari.deletes == []

    pbx.clock.advance(1)
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up at 00:03:59")
    await eventually(lambda: not pbx.legs(), what="the call's end")
    await step_to(pbx, london(2024, 6, 15, 0, 5))
    await eventually(lambda: not pbx.app.guard._writes, what="the queued writes")
    await pbx.app.guard.drain()
    assert stored_spend(pg_url, "day", "2024-06-15") == Decimal("10.00")


@pytest.mark.postgres
async def test_failed_reads_retry_once_per_trunk(cut_off_pbx, proxy):
    # Every search of the limit moment while the store is down reads the
    # missing window again and fails. Each failure used to set a retry timer
    # of its own, so every event on the trunk during an outage added a chain
    # of reads that ran until the store came back.
    pbx = cut_off_pbx
    call, _ = await pbx.call("01632960001")
    await proxy.refuse()
    await answer(pbx, call)
    await pbx.settle()
    guard = pbx.app.guard
    timers = len(guard._retry_timers)

    for _ in range(5):
        guard.reschedule("gamma")
        await pbx.settle()

    assert len(guard._retry_timers) == timers
