"""Store records from peers' data: decisions recorded in batches, and call records."""

import asyncio
import logging
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from callguard.clock import ManualClock
from callguard.daemon.recorder import DecisionRecorder
from callguard.metering.legs import Leg
from callguard.metering.records import call_record, hangup_record
from callguard.policy.decision import CallRequest, Decision
from callguard.rating import Increments, Tariff
from callguard.store import Store, engine
from callguard.store import calls as calls_module
from callguard.worker import StoreWorker
from support import sqlite_write_locked

NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
RECORDER_LOGGER = "callguard.daemon.recorder"


@pytest.fixture
def worker(store):
    worker = StoreWorker(store)
    yield worker
    worker.shutdown()


def allowed(request: CallRequest) -> Decision:
    return Decision("ALLOW", "ok", request.trunk, request.dialled, category="geographic",
                    e164="+441632960123", max_seconds=600, reserved=Decimal("0.0100"))


async def test_recorder_stores_batch(store, worker):
    recorder = DecisionRecorder(worker, ManualClock(NOW), "pbx1")
    requests = [CallRequest("gamma", f"0163296012{n}", uniqueid=f"1718355600.{n}")
                for n in range(3)]

    for request in requests:
        recorder.record(request, allowed(request))
    await recorder.flush()

    stored = store.recent_decisions()
    assert [record.uniqueid for record in stored] == [r.uniqueid for r in reversed(requests)]
    assert stored[0].decided_at == NOW
    assert stored[0].reserved == Decimal("0.0100")
    assert stored[0].node == "pbx1"
    assert recorder.dropped == 0


async def test_recorder_stores_every_column(store, worker):
    # The recorder queues each decision as a bare row of values, so a value
    # written in the wrong position would land in another column.
    recorder = DecisionRecorder(worker, ManualClock(NOW), "pbx7")
    request = CallRequest("gamma", "0044 20 7946 0123", caller="01632960001",
                          uniqueid="1718355600.9", channel="PJSIP/1001-00000009")
    tariff = Tariff("4420", "London", Decimal("0.0125"), Decimal("0.05"),
                    Increments.parse("30/6"))
    decision = Decision("ALLOW", "ok", "gamma", request.dialled, category="geographic",
                        e164="+442079460123", tariff=tariff, max_seconds=3599,
                        reserved=Decimal("0.056250"))

    recorder.record(request, decision)
    await recorder.flush()

    [stored] = store.recent_decisions()
    assert (stored.decided_at, stored.trunk, stored.uniqueid, stored.channel, stored.caller,
            stored.dialled, stored.e164, stored.category, stored.result, stored.reason,
            stored.max_seconds, stored.rate, stored.reserved, stored.node) == (
        NOW, "gamma", "1718355600.9", "PJSIP/1001-00000009", "01632960001",
        "0044 20 7946 0123", "+442079460123", "geographic", "ALLOW", "ok",
        3599, Decimal("0.0125"), Decimal("0.056250"), "pbx7")


async def test_recorder_escapes_nul_from_peer(store, worker):
    recorder = DecisionRecorder(worker, ManualClock(NOW), "pbx1")
    # PostgreSQL text cannot contain NUL, so a batch containing it would fail whole.
    request = CallRequest("gamma", "0163\x00296", caller="\x00", uniqueid="1718355600.1",
                          channel="PJSIP/10\x0001-00000001")

    recorder.record(request, allowed(request))
    await recorder.flush()

    [stored] = store.recent_decisions()
    assert stored.dialled == "0163\\x00296"
    assert stored.caller == "\\x00"
    assert stored.channel == "PJSIP/10\\x0001-00000001"
    assert recorder.dropped == 0


async def test_recorder_drops_unstorable_decision(store, worker, caplog):
    recorder = DecisionRecorder(worker, ManualClock(NOW), "pbx1")
    good = CallRequest("gamma", "01632960123", uniqueid="1718355600.1")
    bad = CallRequest("gamma\x1b[2J", "01632960123", uniqueid="1718355600.2")
    broken = Decision("ALLOW", "ok", bad.trunk, bad.dialled, max_seconds=-1)

    with caplog.at_level(logging.ERROR, logger="callguard.daemon.recorder"):
        recorder.record(bad, broken)
        recorder.record(good, allowed(good))
    await recorder.flush()

    assert [record.uniqueid for record in store.recent_decisions()] == ["1718355600.1"]
    assert recorder.dropped == 1
    assert "failed to convert the decision ALLOW ok" in caplog.text
    assert "max_seconds -1 is below the minimum 0" in caplog.text
    # The trunk came from the peer: its escape sequence is written out, not sent raw.
    assert "gamma\\x1b[2J" in caplog.text
    assert "\x1b" not in caplog.text


class BusyPbxWorker(StoreWorker):
    """A store worker on a busy PBX: two more decisions arrive while each write runs."""

    def __init__(self, store):
        super().__init__(store)
        self.recorder: DecisionRecorder | None = None
        self.busy = True
        self.writes = 0
        self.arrived = 0

    async def call(self, fn, *args, **kwargs):
        result = await super().call(fn, *args, **kwargs)
        self.writes += 1
        for _ in range(2 if self.busy else 0):
            self.arrived += 1
            request = CallRequest("gamma", "01632960123", uniqueid=f"1718355601.{self.arrived}")
            self.recorder.record(request, allowed(request))
        return result


async def test_recorder_writes_once_per_interval(store):
    busy = BusyPbxWorker(store)
    recorder = busy.recorder = DecisionRecorder(busy, ManualClock(NOW), "pbx1", interval=0.05)
    request = CallRequest("gamma", "01632960123", uniqueid="1718355600.1")
    recorder.record(request, allowed(request))
    try:
        recorder.start()
        await asyncio.sleep(0.5)
        busy.busy = False
        writes = busy.writes
        await recorder.stop()
    finally:
        busy.shutdown()

    # One write per interval while decisions keep arriving. Writing each
    # arrival at once made hundreds of small transactions in this time.
    assert 2 <= writes <= 0.5 / 0.05 + 2
    # stop() writes the decisions still queued.
    assert recorder.queued == 0
    assert len(store.recent_decisions(limit=100_000)) == 1 + busy.arrived


async def test_recorder_full_batch_writes_early(store, worker):
    # With an interval of 60 s, only a full batch starts a write.
    recorder = DecisionRecorder(worker, ManualClock(NOW), "pbx1", interval=60.0,
                                batch_size=5)
    recorder.start()
    try:
        record_decisions(recorder, 4)
        await asyncio.sleep(0.2)
        assert store.recent_decisions() == []

        record_decisions(recorder, 1)
        await until(lambda: len(store.recent_decisions()) == 5)
        assert len(store.recent_decisions()) == 5
        assert recorder.queued == 0
    finally:
        await recorder.stop()


@pytest.fixture
def locking_store(tmp_path, monkeypatch):
    """Yield an open SQLite store that gives up on a held lock after 400 ms, and its path."""
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 400)
    path = tmp_path / "callguard.db"
    opened = Store(f"sqlite:///{path}")
    opened.open()
    yield opened, path
    opened.close()


async def until(condition, timeout=5.0):
    """Wait until ``condition()`` is true, or ``timeout`` seconds have passed."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)


def record_decisions(recorder, count):
    for n in range(count):
        request = CallRequest("gamma", "01632960123", uniqueid=f"1718355600.{n}")
        recorder.record(request, allowed(request))


async def test_recorder_stop_keeps_failed_write(locking_store):
    store, path = locking_store
    worker = StoreWorker(store)
    recorder = DecisionRecorder(worker, ManualClock(NOW), "pbx1", interval=0.01)
    record_decisions(recorder, 3)
    try:
        with sqlite_write_locked(path):
            recorder.start()
            await until(lambda: recorder.queued == 0)  # the write waits for the lock
            periodic = recorder._task
            # stop() cancels the periodic task during the write, which fails in
            # the store thread after the 400 ms busy timeout and puts its batch
            # back. The lock is released as soon as that task has ended, so the
            # final write finds it free however late the first one began.
            stopping = asyncio.create_task(recorder.stop())
            await until(periodic.done)
        await stopping
    finally:
        worker.shutdown()

    assert len(store.recent_decisions()) == 3
    assert recorder.queued == 0


async def test_recorder_stop_logs_unstored(locking_store, caplog):
    store, path = locking_store
    worker = StoreWorker(store)
    recorder = DecisionRecorder(worker, ManualClock(NOW), "pbx1")
    record_decisions(recorder, 3)
    try:
        with sqlite_write_locked(path), caplog.at_level(logging.INFO, logger=RECORDER_LOGGER):
            await recorder.stop()
    finally:
        worker.shutdown()

    assert recorder.queued == 3
    [line] = [r.getMessage() for r in caplog.records if r.name == RECORDER_LOGGER]
    assert line.startswith("stopping with 3 decisions not stored, because the store failed")
    assert "trying again" not in caplog.text


def test_call_records_escape_nul_from_ari():
    leg = Leg(id="1718355600.\x002", trunk="gamma", channel="PJSIP/gam\x00ma-00000002",
              created_at=NOW, number="0163\x00296", caller="\x00",
              decision_uniqueid="1718355600.\x001")

    call = call_record(leg, Decimal(0))
    hangup = hangup_record(leg, "limit:daily", NOW, None, None, Decimal(0), "requested")

    assert call.uniqueid == "1718355600.\\x002"
    assert call.decision_uniqueid == "1718355600.\\x001"
    assert call.channel == "PJSIP/gam\\x00ma-00000002"
    assert call.dialled == "0163\\x00296"
    assert call.caller == "\\x00"
    assert hangup.uniqueid == "1718355600.\\x002"
    assert hangup.channel == "PJSIP/gam\\x00ma-00000002"
    assert hangup.number == "0163\\x00296"


def test_column_order_mismatch_stops_open(monkeypatch, tmp_path):
    # The recorder queues bare rows in DECISION_ROW_COLUMNS order. An INSERT
    # that lists the columns otherwise must stop the start, not every write.
    monkeypatch.setattr(calls_module, "DECISION_ROW_COLUMNS",
                        tuple(reversed(calls_module.DECISION_ROW_COLUMNS)))
    calls_module._decision_insert.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="lists the decision columns"):
            Store(f"sqlite:///{tmp_path}/callguard.db").open()
    finally:
        calls_module._decision_insert.cache_clear()
