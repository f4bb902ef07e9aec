"""Reservations: the first block an allowed call holds until it is answered.

A reservation is taken in the same synchronous step as the headroom check, so
a burst of parallel decisions cannot all pass on the same last block of
budget. It ends when the trunk leg is answered (the reserved block becomes the
first charged block), when the checked channel ends, or after
``reservation_seconds`` when no trunk leg shows up. That time starts again
when the call's last trunk leg ends unanswered, because the dialplan may dial
another trunk for the same check.
"""

import heapq
import itertools
import logging
from typing import NamedTuple
from datetime import datetime, timedelta
from decimal import Decimal

from callguard.clock import Clock
from callguard.rating.fields import ZERO
from callguard.repeats import RepeatLimiter, suppressed_note
from callguard.tracked import LongLivedDict
from callguard.windows import DAY, WEEK

log = logging.getLogger(__name__)

# Lines a minute about reservations that expired. Further ones are counted.
# Without ARI every allowed call's reservation expires, so a busy trunk would
# otherwise log a line per call twice.
EXPIRY_LOG_BURST = 20


class Reservation(NamedTuple):
    """One allowed call's hold on its first block."""

    id: int
    trunk: str
    uniqueid: str
    amount: Decimal
    day_key: str
    week_key: str
    created_at: datetime
    expires_at: datetime
    dialled: bool = False     # a trunk leg exists: it no longer expires by time
    legs_ended: bool = False  # trunk legs were dialled, and all ended unanswered


class Reservations:
    """Pending reservations, with running totals per trunk and window.

    Totals and counts are kept up to date on every change, and expiry pops a
    heap ordered by expiry time, so no operation scans every reservation.

    Reservations are stored as plain tuples and uniqueids map to ids. A busy
    trunk can hold a hundred thousand reservations for reservation_seconds.
    The garbage collector stops tracking tuples of plain values, so a full
    collection walks the dict of them but not each reservation's fields.
    That dict is a LongLivedDict, which stays out of the young collections.
    """

    def __init__(self, clock: Clock | None = None) -> None:
        self._expiry_log = RepeatLimiter(burst=EXPIRY_LOG_BURST, clock=clock)
        self._by_id: dict[int, tuple] = LongLivedDict()
        self._by_uniqueid: dict[str, int] = {}
        # (trunk, window) -> window key -> money held by reservations taken in it.
        self._held: dict[tuple[str, str], dict[str, Decimal]] = {}
        self._count: dict[str, int] = {}
        self._expiry: list[tuple[datetime, int]] = []
        self._ids = itertools.count(1)
        # The last lifetime that add() was given, and the same as a timedelta.
        # It changes only on a reload.
        self._lifetime: float | None = None
        self._lifetime_delta = timedelta(0)

    def add(self, trunk: str, uniqueid: str, amount: Decimal, keys: dict[str, str],
            now: datetime, lifetime: float) -> None:
        if uniqueid and uniqueid in self._by_uniqueid:
            # A second check on the same channel replaces the first one's hold.
            self._remove(self._stored(self._by_uniqueid[uniqueid]))

        reservation_id = next(self._ids)
        day_key, week_key = keys[DAY], keys[WEEK]
        if lifetime != self._lifetime:
            self._lifetime, self._lifetime_delta = lifetime, timedelta(seconds=lifetime)
        expires_at = now + self._lifetime_delta
        # The fields of Reservation, in its order.
        row = (reservation_id, trunk, uniqueid, amount, day_key, week_key, now, expires_at,
               False, False)
        self._by_id[reservation_id] = row
        if uniqueid:
            self._by_uniqueid[uniqueid] = reservation_id
        self._adjust(trunk, day_key, week_key, amount, 1)
        heapq.heappush(self._expiry, (expires_at, reservation_id))

    def release(self, uniqueid: str) -> Reservation | None:
        """Drop the reservation of the channel ``uniqueid`` and return it."""
        reservation = self.get(uniqueid)
        if reservation is not None:
            self._remove(reservation)
        return reservation

    def get(self, uniqueid: str) -> Reservation | None:
        reservation_id = self._by_uniqueid.get(uniqueid)
        return None if reservation_id is None else self._stored(reservation_id)

    def mark_dialled(self, uniqueid: str) -> Reservation | None:
        """Note that the call of ``uniqueid`` has a trunk leg now.

        Its hold stays until the leg is answered or ends, however long it
        rings, and the leg itself counts toward the concurrent-call cap from
        here on, so the reservation stops counting.
        """
        reservation = self.get(uniqueid)
        if reservation is not None and not reservation.dialled:
            reservation = reservation._replace(dialled=True)
            self._by_id[reservation.id] = tuple(reservation)
            self._count_change(reservation.trunk, -1)
        return reservation

    def redial(self, uniqueid: str, now: datetime, lifetime: float) -> Reservation | None:
        """Note that the last trunk leg of the call of ``uniqueid`` ended unanswered.

        Dial() then returns to the dialplan, which may dial another trunk for
        the same check. The hold stays, counts as a call without a trunk leg
        again, and expires ``lifetime`` seconds from ``now`` unless a leg
        shows up first.
        """
        reservation = self.get(uniqueid)
        if reservation is None or not reservation.dialled:
            return reservation
        reservation = reservation._replace(dialled=False, legs_ended=True,
                                           expires_at=now + timedelta(seconds=lifetime))
        self._by_id[reservation.id] = tuple(reservation)
        self._count_change(reservation.trunk, 1)
        heapq.heappush(self._expiry, (reservation.expires_at, reservation.id))
        return reservation

    def expire(self, now: datetime) -> list[Reservation]:
        expired = []
        while self._expiry and self._expiry[0][0] <= now:
            _, reservation_id = heapq.heappop(self._expiry)
            reservation = self._stored(reservation_id)
            if reservation is None or reservation.dialled:
                continue  # released earlier, or held until its leg ends
            if reservation.expires_at > now:
                continue  # given a later expiry by redial(), which has its own entry
            self._remove(reservation)
            expired.append(reservation)
            suppressed = self._expiry_log.admit()
            if suppressed is not None:
                circumstance = ("after its last trunk leg ended unanswered"
                                if reservation.legs_ended else "without a trunk leg")
                log.info(
                    "%s %s: reservation of %s expired %s; releasing it%s",
                    reservation.trunk, reservation.uniqueid or "-", reservation.amount,
                    circumstance, suppressed_note(suppressed),
                )
        return expired

    def pending_count(self, trunk: str) -> int:
        """Return the reservations of ``trunk`` whose call has no trunk leg yet."""
        return self._count.get(trunk, 0)

    def undialled(self) -> list[str]:
        """Return the uniqueids of reservations whose call has no trunk leg yet."""
        reservations = map(Reservation._make, self._by_id.values())
        return [r.uniqueid for r in reservations if r.uniqueid and not r.dialled]

    def pending(self, trunk: str) -> list[Reservation]:
        reservations = map(Reservation._make, self._by_id.values())
        return [r for r in reservations if r.trunk == trunk]

    def held(self, trunk: str, window: str, key: str) -> Decimal:
        """Return the money that pending reservations may charge to one window.

        A reservation's first block is charged in the window where the call is
        answered, so a hold taken before midnight that is still pending counts
        in the next day's and any later window too. Window keys are ISO dates
        and weeks, which sort in time order.
        """
        by_key = self._held.get((trunk, window))
        if not by_key:
            return ZERO
        total = ZERO
        for held_key, amount in by_key.items():
            if held_key <= key:
                total += amount
        return total

    def __len__(self) -> int:
        return len(self._by_id)

    def _remove(self, reservation: Reservation) -> None:
        del self._by_id[reservation.id]
        if self._by_uniqueid.get(reservation.uniqueid) == reservation.id:
            del self._by_uniqueid[reservation.uniqueid]
        self._adjust(reservation.trunk, reservation.day_key, reservation.week_key,
                     -reservation.amount, 0 if reservation.dialled else -1)

    def _stored(self, reservation_id: int) -> Reservation | None:
        row = self._by_id.get(reservation_id)
        return None if row is None else Reservation._make(row)

    def _adjust(self, trunk: str, day_key: str, week_key: str, amount: Decimal,
                count: int) -> None:
        """Add ``amount`` to the money held in two windows and ``count`` to the trunk's count."""
        held = self._held
        for window, key in ((DAY, day_key), (WEEK, week_key)):
            by_key = held.get((trunk, window))
            if by_key is None:
                by_key = held[(trunk, window)] = {}
            total = by_key.get(key, ZERO) + amount
            if total:
                by_key[key] = total
            else:
                by_key.pop(key, None)
            if not by_key:
                del held[(trunk, window)]
        self._count_change(trunk, count)

    def _count_change(self, trunk: str, count: int) -> None:
        remaining = self._count.get(trunk, 0) + count
        if remaining:
            self._count[trunk] = remaining
        else:
            self._count.pop(trunk, None)
