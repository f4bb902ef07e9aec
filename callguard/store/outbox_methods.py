"""The ``Store`` methods of the alert outbox, apart from the call and spend methods."""

from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import datetime

from sqlalchemy import Connection

from callguard.store import outbox
from callguard.store.outbox_records import OutboxRecord


class OutboxMethods:
    """Queueing, claiming and recording the delivery of alerts.

    Each method runs in its own transaction. ``Store`` supplies ``_transaction``.
    """

    def _transaction(
        self, operation: str, *, write: bool = True
    ) -> AbstractContextManager[Connection]:
        raise NotImplementedError

    def queue_alert(self, rows: Sequence[OutboxRecord]) -> list[int]:
        """Store the rows of one alert, one per transport, unless its dedupe key exists.

        Returns the new ids, or an empty list when a row with the same dedupe
        key is already in the outbox in any state.
        """
        outbox.check_alert_rows(rows)
        with self._transaction(f"queueing the {rows[0].kind} alert") as conn:
            return outbox.queue_alert(conn, rows)

    def claim_alert(
        self, transport: str, now: datetime, lease_until: datetime
    ) -> OutboxRecord | None:
        """Take the oldest due row of ``transport`` for an attempt.

        The claim counts the attempt and keeps the row claimed until ``lease_until``.
        Returns None when no row of ``transport`` is due.
        """
        with self._transaction(f"claiming a {transport} alert") as conn:
            return outbox.claim_alert(conn, transport, now, lease_until)

    def mark_alert_sent(
        self, outbox_id: int, at: datetime, reply: str, refused: str | None = None
    ) -> bool:
        """Record the delivery of alert ``outbox_id``; False if it was not pending."""
        with self._transaction(f"marking alert {outbox_id} sent") as conn:
            return outbox.mark_sent(conn, outbox_id, at, reply, refused)

    def reschedule_alert(
        self,
        outbox_id: int,
        error: str,
        next_attempt_at: datetime,
        pending_recipients: tuple[str, ...] | None = None,
        refused: str | None = None,
    ) -> bool:
        """Record a failed attempt and when to try again; False if it was not pending.

        ``pending_recipients`` narrows the next attempt to the addresses that
        a partial delivery did not reach.
        """
        with self._transaction(f"rescheduling alert {outbox_id}") as conn:
            return outbox.reschedule(
                conn, outbox_id, error, next_attempt_at, pending_recipients, refused
            )

    def mark_alert_failed(
        self, outbox_id: int, error: str, refused: str | None = None
    ) -> bool:
        """Give alert ``outbox_id`` up for good; False if it was not pending."""
        with self._transaction(f"marking alert {outbox_id} failed") as conn:
            return outbox.mark_failed(conn, outbox_id, error, refused)

    def defer_alerts(self, transport: str, until: datetime) -> int:
        """Postpone the pending rows of ``transport`` due before ``until`` to ``until``.

        Returns the number of rows postponed.
        """
        with self._transaction(f"deferring {transport} alerts") as conn:
            return outbox.defer_alerts(conn, transport, until)

    def next_alert_due(self) -> datetime | None:
        """Return when the earliest pending alert is due, None if none is pending."""
        with self._transaction("reading the outbox", write=False) as conn:
            return outbox.next_due(conn)

    def recent_alerts(
        self, limit: int = 50, state: str | None = None
    ) -> list[OutboxRecord]:
        """Return the latest outbox rows, newest first, optionally in one state only."""
        with self._transaction("reading alerts", write=False) as conn:
            return outbox.recent_alerts(conn, limit, state)

    def count_alerts(self) -> dict[str, int]:
        """Return the number of outbox rows in each state."""
        with self._transaction("counting alerts", write=False) as conn:
            return outbox.count_alerts(conn)
