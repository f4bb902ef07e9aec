"""The decision recorder while PostgreSQL refuses connections, and after it is back.

The store reaches PostgreSQL through a TCP proxy on loopback that the test
starts. Closing the proxy's listener and its connections makes the server
unreachable, as a stopped PostgreSQL is, and listening again brings it back.
"""

import asyncio
import logging
import time
from datetime import datetime, timezone

import pytest
from sqlalchemy.engine import make_url

from callguard.clock import ManualClock
from callguard.daemon import recorder as recorder_module
from callguard.daemon.recorder import DecisionRecorder
from callguard.policy.decision import CallRequest, Decision
from callguard.repeats import LOG_BURST, LOG_INTERVAL
from callguard.store import Store
from callguard.worker import StoreWorker

pytestmark = pytest.mark.postgres

NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
RECORDER_LOGGER = "callguard.daemon.recorder"
FAILED = "failed to store"
RECOVERED = "storing decisions works again"
# Seconds that a test waits at most for the recorder to catch up.
SETTLE_TIMEOUT = 10.0


class CountingWorker(StoreWorker):
    """A store worker that counts the batches of decisions it was asked to write."""

    def __init__(self, store: Store):
        super().__init__(store)
        self.writes = 0

    async def call(self, fn, *args, **kwargs):
        if fn == self.store.add_prepared_decisions:
            self.writes += 1
        return await super().call(fn, *args, **kwargs)


@pytest.fixture
async def proxied_store(pg_url, proxy):
    url = make_url(pg_url).set(host="127.0.0.1", port=proxy.port)
    store = Store(url.render_as_string(hide_password=False))
    # The proxy runs in this event loop, so blocking store calls go to a thread.
    await asyncio.to_thread(store.open)
    yield store
    await asyncio.to_thread(store.close)


@pytest.fixture
def worker(proxied_store):
    started = CountingWorker(proxied_store)
    yield started
    started.shutdown()


def decision_for(number: int) -> tuple[CallRequest, Decision]:
    request = CallRequest("gamma", "01632960123", uniqueid=f"1718355600.{number}")
    return request, Decision("ALLOW", "ok", request.trunk, request.dialled)


async def stored_uniqueids(store: Store) -> list[str]:
    records = await asyncio.to_thread(store.recent_decisions, 1000)
    return [record.uniqueid for record in reversed(records)]


def log_lines(caplog, text: str) -> list[str]:
    return [record.getMessage() for record in caplog.records if text in record.getMessage()]


async def test_recorder_outage_limits_errors(proxied_store, proxy, worker, caplog):
    clock = ManualClock(NOW)
    recorder = DecisionRecorder(worker, clock, "pbx1", interval=0.2,
                                max_retry_interval=10.0)
    await proxy.refuse()
    for number in range(3):
        recorder.record(*decision_for(number))

    delays = []
    with caplog.at_level(logging.INFO, logger=RECORDER_LOGGER):
        for _ in range(12):
            await recorder.flush()
            delays.append(recorder.retry_delay)

        assert delays == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]
        assert len(log_lines(caplog, FAILED)) == LOG_BURST
        assert recorder.queued == 3
        assert "storing 3 decisions failed on postgresql+psycopg://" in log_lines(caplog, FAILED)[0]

        # A new window admits a line again, which counts the lines left out.
        clock.advance(LOG_INTERVAL)
        await recorder.flush()
        assert len(log_lines(caplog, FAILED)) == LOG_BURST + 1
        suppressed = 12 - LOG_BURST
        assert f"({suppressed} similar messages suppressed)" in log_lines(caplog, FAILED)[-1]

        await proxy.listen()
        for number in range(3, 5):
            recorder.record(*decision_for(number))
        await recorder.flush()

    assert await stored_uniqueids(proxied_store) == [f"1718355600.{n}" for n in range(5)]
    assert recorder.queued == 0
    assert recorder.dropped == 0
    assert recorder.retry_delay == 0.2
    [recovered] = log_lines(caplog, RECOVERED)
    assert "stored 5 decisions" in recovered
    assert "after 13 failed writes" in recovered


async def test_recorder_run_backs_off(proxied_store, proxy, worker, caplog):
    # Each decision fills a batch, which wakes the writer at once while the store works.
    recorder = DecisionRecorder(worker, ManualClock(NOW), "pbx1", interval=0.01,
                                batch_size=1, max_retry_interval=0.08)
    await proxy.refuse()
    recorder.start()
    try:
        with caplog.at_level(logging.INFO, logger=RECORDER_LOGGER):
            # One decision every 5 ms for 0.6 s or more, while the store is unreachable.
            started = time.monotonic()
            for number in range(120):
                recorder.record(*decision_for(number))
                await asyncio.sleep(0.005)
            elapsed = time.monotonic() - started

            # Waits of 0.01, 0.02, 0.04 and then 0.08 s fit about 10 writes into 0.6 s,
            # where a writer that did not back off would try 120 times. A busy
            # machine stretches the loop, and the waits fit more writes into it.
            assert worker.writes <= elapsed / 0.08 + 5
            assert worker.writes < 60
            assert recorder.retry_delay == 0.08
            # The decision that a write attempt is storing is not in the queue.
            assert recorder.queued in (119, 120)
            assert recorder.dropped == 0
            assert len(log_lines(caplog, FAILED)) <= LOG_BURST

            await proxy.listen()
            # The queue is empty while its last batch is being written, so wait
            # for the line that ends the outage.
            deadline = time.monotonic() + SETTLE_TIMEOUT
            while not log_lines(caplog, RECOVERED) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
    finally:
        await recorder.stop()

    assert await stored_uniqueids(proxied_store) == [f"1718355600.{n}" for n in range(120)]
    assert recorder.dropped == 0
    [recovered] = log_lines(caplog, RECOVERED)
    assert "stored 120 decisions" in recovered


async def test_recorder_overflow_logged(proxied_store, proxy, worker, caplog, monkeypatch):
    monkeypatch.setattr(recorder_module, "MAX_QUEUED", 4)
    recorder = DecisionRecorder(worker, ManualClock(NOW), "pbx1")
    await proxy.refuse()

    with caplog.at_level(logging.ERROR, logger=RECORDER_LOGGER):
        for number in range(6):
            recorder.record(*decision_for(number))
        await recorder.flush()
        recorder.record(*decision_for(6))

        await proxy.listen()
        await recorder.flush()

    dropped = log_lines(caplog, "dropped")
    assert recorder.dropped == 3
    assert await stored_uniqueids(proxied_store) == [f"1718355600.{n}" for n in range(3, 7)]
    assert len(dropped) == 3
    assert dropped[0] == ("4 decisions are waiting for the store, so the oldest is "
                          "dropped from the audit trail; 1 dropped so far")
    assert dropped[-1].endswith("; 3 dropped so far")
