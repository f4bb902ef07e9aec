"""The sender: delivers the due rows of the outbox and records each attempt.

Each pass drains the e-mail and the webhook rows side by side, one row at a
time per transport. Between passes the sender sleeps until the injected clock
reaches the next due row, until it is woken, or for SAFETY_POLL_SECONDS of
real time, whichever comes first.
"""

import asyncio
import logging
from datetime import datetime, timedelta

from callguard.clock import Clock
from callguard.config import Config
from callguard.notify.delivery import (
    FAILED,
    SENT,
    Delivery,
    attempt,
    backoff,
    give_up_after,
    join_refusals,
    lease_seconds,
)
from callguard.notify.webhook import shown_url
from callguard.store import (
    TRANSPORT_EMAIL,
    TRANSPORT_WEBHOOK,
    TRANSPORTS,
    OutboxRecord,
    StoreError,
)
from callguard.text import plural
from callguard.worker import StoreWorker

log = logging.getLogger(__name__)

TRANSPORT_NAMES = {TRANSPORT_EMAIL: "e-mail", TRANSPORT_WEBHOOK: "webhook"}
STORE_RETRY_SECONDS = 1.0
# Rows that other callguard nodes queue are seen within this many seconds.
SAFETY_POLL_SECONDS = 60.0
BUSY_POLL_SECONDS = 0.2


class OutboxSender:
    """Delivers due outbox rows with the settings of ``config``, until stopped.

    ``pass_serial`` counts the passes started, and ``idle_serial`` is the
    serial of the latest pass that left no row due. After a server failure,
    the transport is paused: rows queued meanwhile wait for the same retry
    instead of each trying the server again.
    """

    def __init__(self, config: Config, worker: StoreWorker, clock: Clock):
        self.config = config
        self.pass_serial = 0
        self.idle_serial = 0
        self.wake = asyncio.Event()
        self.stopping = False
        self._paused: dict[str, datetime] = {}
        self._worker = worker
        self._store = worker.store
        self._clock = clock

    async def run(self) -> None:
        """Send due rows and wait between passes, until ``stopping`` is set."""
        while not self.stopping:
            self.wake.clear()
            self.pass_serial += 1
            serial = self.pass_serial
            try:
                attempted = await self._send_due()
                next_due = await self._worker.call(self._store.next_alert_due)
            except StoreError as exc:
                log.error(
                    "cannot read or update the alert outbox, retrying in %g s: %s",
                    STORE_RETRY_SECONDS,
                    exc,
                )
                await asyncio.sleep(STORE_RETRY_SECONDS)
                continue

            if next_due is not None and next_due <= self._clock.now():
                if not attempted:
                    # Due but not claimable, e.g. claimed under another node's lease.
                    await self._wait(BUSY_POLL_SECONDS)
                continue

            self.idle_serial = serial
            timer = None
            if next_due is not None:
                timer = self._clock.call_at(next_due, self.wake.set)
            try:
                await self._wait(SAFETY_POLL_SECONDS)
            finally:
                if timer is not None:
                    timer.cancel()

    def reconfigure(self, config: Config) -> None:
        """Use new settings; the next attempt tries each server again."""
        self.config = config
        self._paused.clear()

    async def _wait(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self.wake.wait(), seconds)
        except TimeoutError:
            pass

    async def _send_due(self) -> int:
        results = await asyncio.gather(
            *(self._drain(transport) for transport in TRANSPORTS),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(results)

    async def _drain(self, transport: str) -> int:
        """Send the due rows of one transport, oldest first, until none is due."""
        attempted = 0
        while not self.stopping:
            config = self.config
            now = self._clock.now()
            paused_until = self._paused.get(transport)
            if paused_until is not None and now < paused_until:
                await self._defer(transport, paused_until)
                return attempted

            lease = timedelta(seconds=lease_seconds(config, transport))
            claim = self._store.claim_alert
            row = await self._worker.call(claim, transport, now, now + lease)
            if row is None:
                return attempted

            attempted += 1
            result = await attempt(row, config)
            wait_until = await self._record(row, result, config)
            if result.server_down and wait_until is not None:
                self._paused[transport] = wait_until
                await self._defer(transport, wait_until)
                return attempted

            self._paused.pop(transport, None)
        return attempted

    async def _defer(self, transport: str, until: datetime) -> None:
        moved = await self._worker.call(self._store.defer_alerts, transport, until)
        if moved:
            log.warning(
                "%s wait until %s",
                plural(moved, f"more {TRANSPORT_NAMES[transport]} alert"),
                until.isoformat(timespec="seconds"),
            )

    async def _record(
        self, row: OutboxRecord, result: Delivery, config: Config
    ) -> datetime | None:
        """Store the outcome of an attempt.

        Returns the time until which the transport's other rows should wait
        if the attempt failed, None if it succeeded.
        """
        now = self._clock.now()
        refused = join_refusals(row.refused, result.refused)
        if result.refused:
            log.warning(
                "alert %d (trunk %s): the server refused %s",
                row.id,
                row.trunk or "-",
                "; ".join(result.refused),
            )

        if result.outcome == SENT:
            mark = self._store.mark_alert_sent
            stored = await self._worker.call(mark, row.id, now, result.detail, refused)
            log.info(
                "sent alert %d (%s, trunk %s) by %s to %s: %s",
                row.id,
                row.kind,
                row.trunk or "-",
                TRANSPORT_NAMES[row.transport],
                self._target(row),
                result.detail,
            )
            _check_stored(stored, row)
            return None

        deadline = row.created_at + give_up_after(config, row.transport)
        if result.outcome == FAILED or now >= deadline:
            return await self._give_up(row, result, refused, now)

        next_at = min(now + backoff(row.attempts), deadline)
        pending = result.retry_recipients or row.pending_recipients
        reschedule = self._store.reschedule_alert
        stored = await self._worker.call(
            reschedule, row.id, result.detail, next_at, pending, refused
        )
        log.warning(
            "alert %d (%s, trunk %s) by %s failed on attempt %d, next at %s: %s",
            row.id,
            row.kind,
            row.trunk or "-",
            TRANSPORT_NAMES[row.transport],
            row.attempts,
            next_at.isoformat(timespec="seconds"),
            result.detail,
        )
        _check_stored(stored, row)
        return next_at

    async def _give_up(
        self, row: OutboxRecord, result: Delivery, refused: str | None, now: datetime
    ) -> datetime:
        error = result.detail
        if result.outcome != FAILED:
            error = f"gave up after {row.attempts} attempts: {error}"

        mark = self._store.mark_alert_failed
        stored = await self._worker.call(mark, row.id, error, refused)
        log.error(
            "alert %d (%s, trunk %s) by %s failed for good: %s",
            row.id,
            row.kind,
            row.trunk or "-",
            TRANSPORT_NAMES[row.transport],
            error,
        )
        _check_stored(stored, row)
        return now + backoff(row.attempts)

    def _target(self, row: OutboxRecord) -> str:
        if row.transport == TRANSPORT_EMAIL:
            return ", ".join(row.waiting_recipients)
        webhook = self.config.webhook
        return "-" if webhook is None else shown_url(webhook.url)


def _check_stored(stored: bool, row: OutboxRecord) -> None:
    if not stored:
        log.warning(
            "alert %d (trunk %s) was no longer pending when its attempt ended; "
            "another callguard node may have handled it after its lease ran out",
            row.id,
            row.trunk or "-",
        )
