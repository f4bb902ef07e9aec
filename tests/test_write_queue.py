"""The order of queued call updates when a write fails and is tried again."""

import asyncio
from datetime import datetime, timezone
from types import SimpleNamespace

from callguard.clock import ManualClock
from callguard.metering import guard as guard_module
from callguard.metering.guard import LiveGuard
from callguard.store.engine import StoreError

NOW = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)


def call_update(uniqueid: str) -> tuple[str, tuple]:
    return ("save", (SimpleNamespace(uniqueid=uniqueid),))


class LockedStoreWorker:
    """A store worker whose first write fails as a busy store would.

    While that write runs, the guard queues one more update, as an event
    handled during the write would.
    """

    def __init__(self) -> None:
        self.store = SimpleNamespace(write_calls=self._write_calls)
        self.guard: LiveGuard | None = None
        self.written: list[str] = []
        self.failures_left = 1

    async def call(self, fn, *args):
        await asyncio.sleep(0)
        if self.failures_left:
            self.failures_left -= 1
            self.guard._write(call_update("during-write"))
            raise StoreError("database is locked", transient=True)
        return fn(*args)

    def _write_calls(self, batch: list[tuple[str, tuple]]) -> None:
        self.written.extend(args[0].uniqueid for _, args in batch)


def queued_uniqueids(guard: LiveGuard) -> list[str]:
    return [args[0].uniqueid for _, args in guard._writes]


async def failed_write(clock: ManualClock) -> tuple[LiveGuard, LockedStoreWorker]:
    """Queue two updates whose write fails while a third is queued, and wait."""
    worker = LockedStoreWorker()
    guard = worker.guard = LiveGuard(None, None, None, clock, worker)
    guard._write(call_update("first"))
    guard._write(call_update("second"))
    await guard.drain()
    return guard, worker


async def test_failed_batch_kept_before_later_updates():
    clock = ManualClock(NOW)
    guard, worker = await failed_write(clock)

    assert queued_uniqueids(guard) == ["first", "second", "during-write"]
    assert worker.written == []

    clock.advance(guard_module.WRITE_RETRY_FIRST_SECONDS)
    await guard.drain()

    assert worker.written == ["first", "second", "during-write"]
    assert len(guard._writes) == 0


async def test_full_queue_after_failure_drops_oldest(monkeypatch):
    monkeypatch.setattr(guard_module, "MAX_QUEUED_WRITES", 2)
    guard, _ = await failed_write(ManualClock(NOW))

    # Three updates for two places: the oldest of the failed batch goes.
    assert queued_uniqueids(guard) == ["second", "during-write"]
    assert guard.dropped_writes == 1
