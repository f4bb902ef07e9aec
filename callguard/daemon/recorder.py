"""Write decisions to the store in batches, off the decision path.

The queued decisions are written every ``interval`` seconds, or as soon as
``batch_size`` of them are queued, so a crash loses the decisions of the last
interval and of the write in progress. Decisions made while a write runs go
in the next write. Writing them at once would keep a busy daemon writing a
few rows per transaction without pause, and its store thread would then
compete with the FastAGI sessions for the GIL.

Each decision is queued as a row of column values and converted to driver
values in the store thread, a batch at a time. Converting one decision among
the FastAGI work of its check took the event loop about twice the CPU time
that the same conversion takes in a batch, where the same few functions run
back to back (an estimate from timing both on a 2-core machine). The store
thread lets the event loop take the GIL after every ROWS_BETWEEN_PAUSES
decisions it converts.

While the store fails, the decisions stay queued and the wait before the next
write doubles after each failure, up to ``max_retry_interval`` seconds. The
first write that succeeds brings the wait back to ``interval``.
"""

import asyncio
import logging
import math
from collections import deque

from callguard.clock import Clock
from callguard.numbers.errors import quote
from callguard.policy.decision import CallRequest, Decision
from callguard.repeats import RepeatLimiter, suppressed_note
from callguard.store.calls import DECISION_ROW_COLUMNS
from callguard.text import storable
from callguard.worker import StoreWorker, yield_gil

log = logging.getLogger(__name__)

# Written for a trunk or uniqueid that the dialplan did not give.
NONE = "-"

# Decisions kept in memory while the store is failing; the oldest go first.
MAX_QUEUED = 100_000
# The maximum wait, in seconds, between two writes while the store keeps failing.
MAX_RETRY_INTERVAL = 10.0
# Seconds between two writes of the queued decisions, which a crash can lose.
# A write delays the one or two FastAGI checks running beside it. At 500
# checks/s, the median p99 over 8 rounds was 4.14 ms with writes every 0.5 s
# against 5.24 ms every 0.2 s (benchmarks/README.md, seventeenth set).
WRITE_INTERVAL = 0.5
# Decisions queued that start a write before the interval ends. Each write
# has its own transaction, id allocation and hand-over to the store thread.
# At 3,700 checks/s a batch of 500 meant seven writes a second, and 4,000
# keeps one write per interval up to 8,000 checks/s. The store thread then
# used 15 us of CPU per check instead of 23 (benchmarks/README.md, nineteenth
# set).
BATCH_SIZE = 4000
# The number of decisions converted between two pauses that let the event loop
# take the GIL: an estimated 60 us of work, at 3.6 us a decision on a 2-core
# test machine.
ROWS_BETWEEN_PAUSES = 16


class DecisionRecorder:
    def __init__(self, worker: StoreWorker, clock: Clock, node: str, *,
                 interval: float = WRITE_INTERVAL, batch_size: int = BATCH_SIZE,
                 max_retry_interval: float = MAX_RETRY_INTERVAL):
        self._worker = worker
        self._clock = clock
        self._node = node
        self._interval = interval
        self._batch_size = batch_size
        self._max_retry_interval = max(interval, max_retry_interval)
        self._retry_delay = interval
        self._failures = 0
        # Decisions stored since the first of the failed writes in a row.
        self._stored_after_failure = 0
        self._last_error: Exception | None = None
        self._stopping = False
        self._store_errors = RepeatLimiter(clock=clock)
        # Decisions as their rows (decision_row()).
        self._queue: deque[tuple] = deque(maxlen=MAX_QUEUED)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.dropped = 0
        self._unstorable = RepeatLimiter()
        self._overflow = RepeatLimiter(clock=clock)

    def record(self, request: CallRequest, decision: Decision) -> None:
        if len(self._queue) == self._queue.maxlen:
            self._note_dropped(1)
        self._queue.append(decision_row(request, decision, self._clock, self._node))
        if len(self._queue) >= self._batch_size:
            self._wakeup.set()

    @property
    def queued(self) -> int:
        """Decisions waiting to be stored."""
        return len(self._queue)

    @property
    def retry_delay(self) -> float:
        """Seconds between writes: ``interval``, or longer after failed writes."""
        return self._retry_delay

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-recorder")

    async def stop(self) -> None:
        """Stop the periodic writes and store what is queued, saying what could not be."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()
        if self._queue:
            log.error("stopping with %d decisions not stored, because the store failed: "
                      "%s; they are missing from the audit trail", len(self._queue),
                      self._last_error)

    async def flush(self, count: int | None = None) -> None:
        """Store queued decisions in batches until a write fails.

        With ``count``, at most the first ``count`` are stored; without it, the
        queue is written until it is empty.
        """
        left = math.inf if count is None else count
        while self._queue and left > 0:
            size = min(self._batch_size, len(self._queue), left)
            batch = [self._queue.popleft() for _ in range(size)]
            left -= size
            if not await self._write(batch):
                return
            if self._failures:
                self._stored_after_failure += len(batch)

        if self._failures:
            log.info("storing decisions works again after %d failed writes: stored %d "
                     "decisions that were queued", self._failures,
                     self._stored_after_failure)
            self._failures = 0
            self._stored_after_failure = 0
            self._retry_delay = self._interval

    async def _write(self, batch: list[tuple]) -> bool:
        """Store ``batch``; on failure put it back at the front of the queue and return False.

        The store thread finishes a write that has begun even when stop()
        cancels the periodic task, so a cancelled write is waited for, and put
        back if it fails, before the cancellation goes on.
        """
        write = asyncio.ensure_future(self._worker.call(self._store_batch, batch))
        try:
            rejected = await asyncio.shield(write)
        except asyncio.CancelledError:
            await asyncio.wait([write])
            if write.cancelled() or write.exception() is not None:
                self._requeue(batch)
            else:
                self._note_rejected(write.result())
            raise
        except Exception as exc:
            self._requeue(batch)
            self._note_failure(len(batch), exc)
            return False
        self._note_rejected(rejected)
        return True

    def _store_batch(self, batch: list[tuple]) -> list[tuple[tuple, Exception]]:
        """Convert and insert ``batch`` in the store thread, and return the
        decisions that failed to convert, with their errors.

        Those are left out, because each would fail every batch it is in.
        When the INSERT fails, the whole batch is queued again and converted
        again at the next write.
        """
        store = self._worker.store
        rows = []
        rejected = []
        for converted, row in enumerate(batch, start=1):
            if converted % ROWS_BETWEEN_PAUSES == 0:
                yield_gil()
            try:
                rows.append(store.prepare_decision_row(row))
            except (TypeError, ValueError) as exc:
                rejected.append((row, exc))
        store.add_prepared_decisions(rows)
        return rejected

    def _note_rejected(self, rejected: list[tuple[tuple, Exception]]) -> None:
        """Count and log the decisions left out of a batch, in a few lines a minute."""
        for row, exc in rejected:
            values = dict(zip(DECISION_ROW_COLUMNS, row))
            self.dropped += 1
            suppressed = self._unstorable.admit()
            if suppressed is not None:
                log.error("%s %s: failed to convert the decision %s %s for the store, "
                          "so it is not recorded: %s%s", quote(values["trunk"]),
                          quote(values["uniqueid"]), values["result"], values["reason"],
                          quote(str(exc)), suppressed_note(suppressed))

    def _requeue(self, batch: list[tuple]) -> None:
        """Put a batch that failed back at the front of the queue, in its order.

        Decisions recorded during the write may have filled the queue. Then the
        oldest of the batch are dropped, as a full queue drops its oldest.
        """
        overflow = len(self._queue) + len(batch) - self._queue.maxlen
        if overflow > 0:
            self._note_dropped(overflow)
            batch = batch[overflow:]
        self._queue.extendleft(reversed(batch))

    def _note_dropped(self, count: int) -> None:
        """Count decisions dropped from a full queue and log them, in at most
        LOG_BURST lines a minute."""
        self.dropped += count
        suppressed = self._overflow.admit()
        if suppressed is not None:
            log.error("%d decisions are waiting for the store, so the oldest is dropped "
                      "from the audit trail; %d dropped so far%s", self._queue.maxlen,
                      self.dropped, suppressed_note(suppressed))

    def _note_failure(self, batch_size: int, exc: Exception) -> None:
        self._failures += 1
        self._last_error = exc
        if self._failures > 1:
            self._retry_delay = min(self._retry_delay * 2, self._max_retry_interval)
        if self._stopping:
            return  # stop() logs what is left, because no write follows.
        suppressed = self._store_errors.admit()
        if suppressed is not None:
            log.error("failed to store %d decisions, keeping %d queued and trying again "
                      "in %g s: %s%s", batch_size, len(self._queue), self._retry_delay, exc,
                      suppressed_note(suppressed))

    async def _run(self) -> None:
        while True:
            if self._failures:
                # A full batch does not cut the wait short while the store fails.
                await asyncio.sleep(self._retry_delay)
            else:
                try:
                    await asyncio.wait_for(self._wakeup.wait(), self._interval)
                except TimeoutError:
                    pass
            self._wakeup.clear()
            await self.flush(len(self._queue))


def decision_row(request: CallRequest, decision: Decision, clock: Clock, node: str) -> tuple:
    """Return the ``decisions`` row of ``decision`` without its id, in DECISION_ROW_COLUMNS order.

    A tuple takes a quarter of the memory of a dict of the same values, and
    a busy daemon queues a few thousand of them between two writes.
    """
    return (
        decision.decided_at or clock.now(),    # decided_at
        storable(request.trunk) or NONE,       # trunk
        storable(request.uniqueid) or NONE,    # uniqueid
        storable(request.channel),             # channel
        storable(request.caller),              # caller
        storable(request.dialled),             # dialled
        storable(decision.e164) or None,       # e164
        decision.category or None,             # category
        decision.result,                       # result
        storable(decision.reason),             # reason
        decision.max_seconds,                  # max_seconds
        decision.rate,                         # rate
        decision.reserved,                     # reserved
        storable(node),                        # node
    )

