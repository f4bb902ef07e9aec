"""The spend of an answered call, block by block, in the windows where blocks begin.

A block is charged the moment it begins, and counts in the day and week window
(in the trunk's time zone) in which it begins. A call that runs across local
midnight therefore spends from both days.
"""

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from zoneinfo import ZoneInfo

from callguard.rating import Tariff
from callguard.windows import DAY, WEEK, next_day_start, window_keys

WindowKey = tuple[str, str]  # (window, key), e.g. ("day", "2024-06-14")
MICROSECONDS = Decimal(1_000_000)


def elapsed_micros(start: datetime, instant: datetime) -> int:
    """Return the whole microseconds from ``start`` to ``instant`` (negative if before)."""
    delta = instant - start
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def elapsed_seconds(start: datetime, instant: datetime) -> Decimal:
    """Return the exact seconds from ``start`` to ``instant`` (negative if before)."""
    return Decimal(elapsed_micros(start, instant)) / MICROSECONDS


def blocks_started_by(tariff: Tariff, elapsed: Decimal) -> int:
    """Return how many blocks begin at or before ``elapsed`` seconds after answer."""
    if elapsed < 0:
        return 0
    return tariff.blocks_begun(elapsed)


def blocks_started_before(tariff: Tariff, elapsed: Decimal) -> int:
    """Return how many blocks begin strictly before ``elapsed`` seconds after answer."""
    if elapsed <= 0:
        return 0
    first = tariff.increments.first
    if elapsed <= first:
        return 1
    later = tariff.increments.later
    return 1 + int(((elapsed - first) / later).to_integral_value(rounding=ROUND_CEILING))


def blocks_started_before_micros(tariff: Tariff, micros: int) -> int:
    """Return how many blocks begin strictly before ``micros`` microseconds after the answer.

    It is the count of blocks_started_before in integer arithmetic, because the
    decision and the meter need it for every call.
    """
    if micros <= 0:
        return 0
    first = tariff.increments.first * 1_000_000
    if micros <= first:
        return 1
    return 1 + -(-(micros - first) // (tariff.increments.later * 1_000_000))


@dataclass
class AnsweredCall:
    """The part of a live call that costs money: its tariff and answer time."""

    tariff: Tariff
    tz: ZoneInfo
    answered_at: datetime
    blocks_charged: int = 0
    charges: dict[WindowKey, Decimal] = field(default_factory=dict)
    # When the first block not charged yet begins. Every event makes the
    # trunk's live calls catch up, so most calls have nothing to add.
    _next_block_at: datetime | None = field(default=None, repr=False, compare=False)

    def block_instant(self, index: int) -> datetime:
        return self.answered_at + timedelta(seconds=self.tariff.block_start(index))

    def charges_for(self, first: int, last: int) -> dict[WindowKey, Decimal]:
        """Return the cost of blocks ``first`` to ``last - 1`` by the windows they begin in."""
        result: dict[WindowKey, Decimal] = {}
        index = first
        while index < last:
            start = self.block_instant(index)
            keys = window_keys(start, self.tz)
            boundary = elapsed_micros(self.answered_at, next_day_start(start, self.tz))
            end = min(last, blocks_started_before_micros(self.tariff, boundary))
            end = max(end, index + 1)

            amount = self.tariff.cost_of_blocks(end) - self.tariff.cost_of_blocks(index)
            for window in (DAY, WEEK):
                key = (window, keys[window])
                result[key] = result.get(key, Decimal(0)) + amount
            index = end
        return result

    def charge_until(self, instant: datetime) -> dict[WindowKey, Decimal]:
        """Charge every block begun by ``instant``; return what this call adds."""
        if self._next_block_at is not None and instant < self._next_block_at:
            return {}
        target = blocks_started_by(self.tariff, elapsed_seconds(self.answered_at, instant))
        if target <= self.blocks_charged:
            return {}
        added = self.charges_for(self.blocks_charged, target)
        self.blocks_charged = target
        self._next_block_at = self.block_instant(target)
        for key, amount in added.items():
            self.charges[key] = self.charges.get(key, Decimal(0)) + amount
        return added

    def final_charges(self, ended_at: datetime) -> dict[WindowKey, Decimal]:
        """Return the billed cost of the call ended at ``ended_at``, by window."""
        duration = elapsed_seconds(self.answered_at, ended_at)
        if duration <= 0:
            return {}
        return self.charges_for(0, self.tariff.blocks_billed(duration))

    def cost_by(self, window_start: datetime, instant: datetime) -> Decimal:
        """Return the cost of blocks that begin in [``window_start``, ``instant``]."""
        before = blocks_started_before(
            self.tariff, elapsed_seconds(self.answered_at, window_start)
        )
        by = blocks_started_by(self.tariff, elapsed_seconds(self.answered_at, instant))
        if by <= before:
            return Decimal(0)
        return self.tariff.cost_of_blocks(by) - self.tariff.cost_of_blocks(before)

    @property
    def total(self) -> Decimal:
        return self.tariff.cost_of_blocks(self.blocks_charged)
