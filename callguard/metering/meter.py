"""Per trunk: the live legs, their running cost, and the moment a limit bites.

The limit bites at the first block start (of any live call) that the day's or
the week's remaining budget cannot pay. Spend is a step function of time that
rises only when a block begins. Probes that sum the calls' costs in closed
form bracket that moment. Each probe goes where the spend would cross the
budget if it rose evenly, and a bisection follows when two probes fail to
halve the bracket. Once few block starts remain inside the bracket, they are
listed and summed in time order.
"""

import logging
import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Callable

from callguard.config import TrunkConfig
from callguard.metering.charges import AnsweredCall
from callguard.metering.legs import Leg
from callguard.money import to_micros
from callguard.policy.budget import LIMIT_LEAD_SECONDS
from callguard.policy.ledger import Ledger
from callguard.windows import DAY, WEEK, local_midnight, next_day_start, window_keys

log = logging.getLogger(__name__)

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
# How far ahead the limit is looked for; the timer is set again when it fires.
SEARCH_HORIZON = timedelta(days=2)

REASON_DAILY = "limit:daily"
REASON_WEEKLY = "limit:weekly"
REASON_MAX_DURATION = "limit:duration"


def to_us(instant: datetime) -> int:
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class _Costing:
    """One answered call's block arithmetic in integer microseconds and micro-units."""

    __slots__ = ("start", "first", "later", "first_cost", "later_cost")

    def __init__(self, call: AnsweredCall):
        tariff = call.tariff
        self.start = to_us(call.answered_at)
        self.first = tariff.increments.first * 1_000_000
        self.later = tariff.increments.later * 1_000_000
        self.first_cost = to_micros(tariff.first_block_cost())
        self.later_cost = to_micros(tariff.block_cost(1))

    def cost(self, blocks: int) -> int:
        return 0 if blocks == 0 else self.first_cost + (blocks - 1) * self.later_cost

    def begun_by(self, instant: int) -> int:
        elapsed = instant - self.start
        if elapsed < 0:
            return 0
        if elapsed < self.first:
            return 1
        return 2 + (elapsed - self.first) // self.later

    def block_start(self, block: int) -> int:
        """Return the instant at which block ``block`` (0 for the first) begins."""
        if block == 0:
            return self.start
        return self.start + self.first + (block - 1) * self.later

    def begun_before(self, instant: int) -> int:
        elapsed = instant - self.start
        if elapsed <= 0:
            return 0
        if elapsed <= self.first:
            return 1
        return 1 + (elapsed - self.first + self.later - 1) // self.later

    def cost_between(self, window_start: int, instant: int) -> int:
        """Micro-units of the blocks that begin in [window_start, instant]."""
        by = self.begun_by(instant)
        before = self.begun_before(window_start)
        return self.cost(by) - self.cost(before) if by > before else 0


# Block starts inside the bracket below which first_over lists them.
MIN_LISTED_STARTS = 64

# How first_over places its next probe.
INTERPOLATE, STEP_PAST, BISECT = "interpolate", "step past", "bisect"


def first_over(costings: list[_Costing], window_start: int, budget: int,
               low: int, high: int) -> int | None:
    """Return the first instant in [low, high] at which the blocks begun since
    ``window_start`` cost more than ``budget``, or None if there is none.

    Instants are microseconds since the epoch, amounts micro-units, and
    ``window_start`` is at or before ``low``.
    """
    spent_low, begun_low = _spend(costings, window_start, low)
    if spent_low > budget:
        return low
    spent_high, begun_high = _spend(costings, window_start, high)
    if spent_high <= budget:
        return None

    # Invariant: the spend at low is within the budget and the spend at high is not.
    enumerable = max(MIN_LISTED_STARTS, 2 * len(costings))
    probe_kind = INTERPOLATE
    # The bracket's width two probes ago, one probe ago and now.
    widths = [math.inf, math.inf, high - low]
    while begun_high - begun_low > enumerable and high - low > 1:
        if widths[2] > widths[0] / 2:
            probe_kind = BISECT  # the last two probes did not halve the bracket
        if probe_kind == BISECT:
            probe = (low + high) // 2
        elif probe_kind == STEP_PAST:
            # Far enough past low to take in about half of the block starts
            # that may be listed.
            probe = low + (high - low) * (enumerable // 2) // (begun_high - begun_low)
        else:
            # Where the spend would pass the budget if it rose evenly.
            probe = low + (budget - spent_low + 1) * (high - low) // (spent_high - spent_low)
        probe = min(max(probe, low + 1), high - 1)

        spent, begun = _spend(costings, window_start, probe)
        if spent > budget:
            high, spent_high, begun_high = probe, spent, begun
            probe_kind = INTERPOLATE
        else:
            low, spent_low, begun_low = probe, spent, begun
            # Spend rises in steps, so an even-rise estimate tends to land
            # just short of the step that crosses the budget.
            probe_kind = STEP_PAST if probe_kind == INTERPOLATE else INTERPOLATE
        widths = [widths[1], widths[2], high - low]
    if high - low <= 1:
        return high
    return _first_listed_over(costings, budget - spent_low, low, high)




def _spend(costings: list[_Costing], window_start: int, instant: int) -> tuple[int, int]:
    """Return the cost of the blocks begun in [window_start, instant] and how many
    blocks have begun by ``instant`` in all."""
    spent = begun = 0
    for costing in costings:
        by = costing.begun_by(instant)
        before = costing.begun_before(window_start)
        if by > before:
            spent += costing.cost(by) - costing.cost(before)
        begun += by
    return spent, begun


def _first_listed_over(costings: list[_Costing], headroom: int, low: int,
                       high: int) -> int:
    """Return the first block start in (low, high] where the blocks starting in
    (low, instant] cost more than ``headroom``.

    The caller guarantees that such a start exists.
    """
    starts: list[tuple[int, int]] = []
    for costing in costings:
        for block in range(costing.begun_by(low), costing.begun_by(high)):
            starts.append((costing.block_start(block),
                           costing.first_cost if block == 0 else costing.later_cost))
    starts.sort()
    spent = 0
    for index, (at, cost) in enumerate(starts):
        spent += cost
        # Blocks that start at the same instant count together.
        next_at = starts[index + 1][0] if index + 1 < len(starts) else None
        if spent > headroom and next_at != at:
            return at
    raise AssertionError("the spend at high is over the headroom, so a start crosses it")


@dataclass(frozen=True)
class Deadline:
    at: datetime
    reason: str               # REASON_DAILY, REASON_WEEKLY or REASON_MAX_DURATION
    legs: tuple[str, ...]     # for REASON_MAX_DURATION, the legs past their maximum


class TrunkMeter:
    def __init__(self, config: TrunkConfig, ledger: Ledger,
                 held: Callable[[str, str, str], Decimal]):
        self.config = config
        self.ledger = ledger
        self._held = held
        self.legs: dict[str, Leg] = {}
        # The integer block arithmetic of each answered leg, built once per answer.
        self._costings: dict[str, tuple[AnsweredCall, _Costing]] = {}
        # (window, key) pairs that a search needed before the ledger had read
        # them from the store: the guard loads them and searches again.
        self.unloaded: set[tuple[str, str]] = set()

    @property
    def name(self) -> str:
        return self.config.name

    def live_count(self) -> int:
        return sum(1 for leg in self.legs.values() if leg.live)

    def answered_legs(self) -> list[Leg]:
        return [leg for leg in self.legs.values() if leg.live and leg.answered is not None]

    def has_answered_legs(self) -> bool:
        """Check whether any live leg is answered, without listing them all."""
        return any(leg.live and leg.answered is not None for leg in self.legs.values())

    def catch_up(self, now: datetime) -> None:
        """Charge every block that has begun by ``now`` to the ledger's live spend."""
        for leg in self.answered_legs():
            added = leg.answered.charge_until(now)
            if added:
                self.ledger.add_live(self.name, added)

    def next_deadline(self, now: datetime, skip: set[str] = frozenset()) -> Deadline | None:
        """Return the next moment callguard must hang up calls on this trunk, if any.

        Legs in ``skip`` (already being hung up) still count in the spend but
        set no deadline of their own.
        """
        candidates = []
        limit = self._limit_moment(now, skip)
        if limit is not None:
            candidates.append(limit)

        cap = self.config.max_call_seconds
        if cap is not None:
            by_time: dict[datetime, list[str]] = {}
            for leg in self.answered_legs():
                if not leg.protected or leg.id in skip:
                    continue
                at = leg.answered.answered_at + timedelta(seconds=cap)
                by_time.setdefault(at, []).append(leg.id)
            if by_time:
                first = min(by_time)
                candidates.append(Deadline(first, REASON_MAX_DURATION, tuple(by_time[first])))

        if not candidates:
            return None
        return min(candidates, key=lambda deadline: deadline.at)

    def _limit_moment(self, now: datetime, skip: set[str]) -> Deadline | None:
        limits = {DAY: self.config.daily_limit, WEEK: self.config.weekly_limit}
        if limits[DAY] is None and limits[WEEK] is None:
            return None
        legs = self.answered_legs()
        if not any(leg.protected and leg.id not in skip for leg in legs):
            return None  # nothing callguard may hang up

        def budget(window: str, key: str) -> int | None:
            limit = limits[window]
            if limit is None:
                return None
            elsewhere = self._spent_elsewhere(window, key)
            held = self._held(self.name, window, key)
            return to_micros(limit - elsewhere - held)

        found = self.first_moment(now, budget)
        return None if found is None else self._deadline(*found)

    def next_threshold(self, now: datetime,
                       threshold: Callable[[str, str], Decimal | None]) -> datetime | None:
        """Return when spend (committed plus live blocks) first reaches ``threshold(window,
        key)`` in some window, or None within the search horizon."""
        def budget(window: str, key: str) -> int | None:
            amount = threshold(window, key)
            if amount is None:
                return None
            return to_micros(amount - self._spent_elsewhere(window, key)) - 1

        found = self.first_moment(now, budget)
        return None if found is None else EPOCH + timedelta(microseconds=found[0])

    def _spent_elsewhere(self, window: str, key: str) -> Decimal:
        """Return the spend of a window that the live legs here do not contain:
        the committed spend and the live spend and holds of the other daemons.

        Their share is fixed at its last read, so the search does not count
        the blocks that their calls begin after it.
        """
        return self._committed(window, key) + self.ledger.others(self.name, window, key)

    def _committed(self, window: str, key: str) -> Decimal:
        """Return the committed spend of a window, noting it when not read from the store yet.

        Until it is read, the search counts 0 for it, which is too little after
        a restart or in a window that a check has not opened yet.
        """
        if not self.ledger.loaded(self.name, window, key):
            self.unloaded.add((window, key))
        return self.ledger.committed(self.name, window, key)

    def first_moment(self, now: datetime,
                     budget: Callable[[str, str], int | None]) -> tuple[int, str] | None:
        """Return (microseconds since the epoch, window) of the first instant at which
        the blocks begun by live calls in a window cost more than ``budget(window,
        key)`` micro-units, or None within the search horizon."""
        tz = self.config.timezone
        costings: list[_Costing] | None = None
        segment_start = now
        horizon = now + SEARCH_HORIZON

        while segment_start < horizon:
            keys = window_keys(segment_start, tz)
            local_date = segment_start.astimezone(tz).date()
            starts = {
                DAY: to_us(local_midnight(local_date, tz)),
                WEEK: to_us(local_midnight(local_date - timedelta(days=local_date.weekday()),
                                           tz)),
            }
            budgets = {window: budget(window, keys[window]) for window in (DAY, WEEK)}
            budgets = {window: amount for window, amount in budgets.items()
                       if amount is not None}
            if budgets and costings is None:
                costings = self._current_costings()

            segment_end = next_day_start(segment_start, tz)
            low = to_us(segment_start)
            high = to_us(segment_end) - 1
            found: tuple[int, str] | None = None
            # On a tie the day wins, as it is checked first.
            for window, amount in budgets.items():
                at = first_over(costings, starts[window], amount, low, high)
                if at is not None and (found is None or at < found[0]):
                    found = (at, window)
            if found is not None:
                return found
            segment_start = segment_end
        return None

    def _current_costings(self) -> list["_Costing"]:
        legs = self.answered_legs()
        cache = self._costings
        for leg_id in [leg_id for leg_id in cache if leg_id not in self.legs]:
            del cache[leg_id]
        result = []
        for leg in legs:
            cached = cache.get(leg.id)
            if cached is None or cached[0] is not leg.answered:
                cached = (leg.answered, _Costing(leg.answered))
                cache[leg.id] = cached
            result.append(cached[1])
        return result

    @staticmethod
    def _deadline(instant_us: int, window: str) -> Deadline:
        """Return the hang-up for a budget that cannot pay the block beginning at
        ``instant_us``. It is LIMIT_LEAD_SECONDS earlier, because the call ends
        later at the carrier than in Asterisk, and the carrier must not bill that
        block."""
        reason = REASON_DAILY if window == DAY else REASON_WEEKLY
        at = EPOCH + timedelta(microseconds=instant_us) - timedelta(seconds=LIMIT_LEAD_SECONDS)
        return Deadline(at, reason, ())
