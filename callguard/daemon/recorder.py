"""Write decisions to the store in batches, off the decision path.

A batch is written every ``interval`` seconds or when ``batch_size`` rows are
waiting, so a crash loses at most the decisions of the last interval. Each
decision is converted to driver values as it is recorded: the store thread
then only executes the INSERT, and holds the GIL for less time per batch,
which FastAGI sessions in flight would otherwise wait for.
"""

import asyncio
import logging
from collections import deque

from callguard.clock import Clock
from callguard.numbers.errors import quote
from callguard.policy.decision import CallRequest, Decision
from callguard.repeats import RepeatLimiter, suppressed_note
from callguard.store import DecisionRecord
from callguard.text import storable
from callguard.worker import StoreWorker

log = logging.getLogger(__name__)

# Written for a trunk or uniqueid that the dialplan did not give.
NONE = "-"

# Decisions kept in memory while the store is failing; the oldest go first.
MAX_QUEUED = 100_000


class DecisionRecorder:
    def __init__(self, worker: StoreWorker, clock: Clock, node: str, *,
                 interval: float = 0.2, batch_size: int = 500):
        self._worker = worker
        self._clock = clock
        self._node = node
        self._interval = interval
        self._batch_size = batch_size
        # Decisions as the store's prepared rows.
        self._queue: deque[tuple] = deque(maxlen=MAX_QUEUED)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.dropped = 0
        self._unstorable = RepeatLimiter()

    def record(self, request: CallRequest, decision: Decision) -> None:
        try:
            record = to_record(request, decision, self._clock, self._node)
            row = self._worker.store.prepare_decision(record)
        except (TypeError, ValueError) as exc:
            self.dropped += 1
            suppressed = self._unstorable.admit()
            if suppressed is not None:
                log.error("%s %s: failed to convert the decision %s %s for the store, "
                          "so it is not recorded: %s%s", quote(request.trunk or NONE),
                          quote(request.uniqueid or NONE), decision.result, decision.reason,
                          quote(str(exc)), suppressed_note(suppressed))
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(row)
        if len(self._queue) >= self._batch_size:
            self._wakeup.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="decision-recorder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        await self.flush()

    async def flush(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))]
            try:
                await self._worker.call(self._worker.store.add_prepared_decisions, batch)
            except Exception as exc:
                # Put the batch back and try again on the next round.
                self._queue.extendleft(reversed(batch))
                log.error("failed to store %d decisions, keeping them queued: %s",
                          len(batch), exc)
                return

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self._interval)
            except TimeoutError:
                pass
            self._wakeup.clear()
            await self.flush()


def to_record(request: CallRequest, decision: Decision, clock: Clock, node: str) -> DecisionRecord:
    return DecisionRecord(
        id=None,
        decided_at=clock.now(),
        trunk=storable(request.trunk) or NONE,
        uniqueid=storable(request.uniqueid) or NONE,
        channel=storable(request.channel),
        caller=storable(request.caller),
        dialled=storable(request.dialled),
        e164=decision.e164 or None,
        category=decision.category or None,
        result=decision.result,
        reason=decision.reason,
        max_seconds=decision.max_seconds,
        rate=decision.rate,
        reserved=decision.reserved,
        node=node,
    )
