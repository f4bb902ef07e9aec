"""How long a call may last on the budget that is left, across window boundaries.

Blocks are charged when they begin and count in the window in which they
begin, so a call that runs past local midnight starts paying from the next
day's budget at midnight. The walk below goes one window segment at a time
and counts whole blocks in each with arithmetic, not one block at a time, so
its cost does not grow with the call's length.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Callable
from zoneinfo import ZoneInfo

from callguard.metering.charges import blocks_started_before_micros, elapsed_micros
from callguard.rating import Tariff
from callguard.windows import WINDOWS, day_bounds

# The longest CALLGUARD_MAXSECS ever returned: Dial() sets no limit for an empty
# S(), so an unlimited call still gets a finite one.
MAX_SECONDS_CEILING = 86_400

# Seconds by which a call that its budget limits ends before the first block
# that no budget can pay. The carrier counts from its own answer until the BYE
# reaches it, which is longer than Asterisk's count by the signalling delay in
# both directions; a call ended exactly at a block start would be billed that
# block. One second is an estimate that covers delays of hundreds of
# milliseconds.
LIMIT_LEAD_SECONDS = 1


@dataclass(frozen=True)
class Limits:
    daily: Decimal | None
    weekly: Decimal | None


# Returns the money still free in one window: (window, key) -> remaining.
RemainingFn = Callable[[str, str], Decimal | None]


def _blocks_affordable(count: int, first_cost: Decimal, later_cost: Decimal,
                       includes_first: bool, budget: Decimal | None) -> int:
    """Return how many of ``count`` consecutive blocks ``budget`` pays for."""
    if budget is None:
        return count

    affordable = 0
    if includes_first:
        if budget < first_cost:
            return 0
        budget -= first_cost
        affordable = 1
        count -= 1

    if count <= 0:
        return affordable
    if later_cost == 0:
        return affordable + count
    if budget < later_cost:
        return affordable
    return affordable + min(count, int(budget // later_cost))


def _cost_of(count: int, first_cost: Decimal, later_cost: Decimal,
             includes_first: bool) -> Decimal:
    if count == 0:
        return Decimal(0)
    if includes_first:
        return first_cost + later_cost * (count - 1)
    return later_cost * count


def max_call_seconds(
    tariff: Tariff,
    start: datetime,
    tz: ZoneInfo,
    remaining: RemainingFn,
    cap_seconds: int | None,
) -> int:
    """Return the longest a call answered at ``start`` can run on the budgets left.

    ``remaining(window, key)`` gives the free money of that day or week window
    (None when the trunk sets no limit for it). The result is
    ``LIMIT_LEAD_SECONDS`` before the start of the first block that no budget
    can pay (at least 1), at most ``cap_seconds`` and at most
    ``MAX_SECONDS_CEILING``; 0 means not even the first block is affordable.
    """
    horizon = MAX_SECONDS_CEILING if cap_seconds is None else min(cap_seconds, MAX_SECONDS_CEILING)
    # A call cut at the horizon is billed as long as one cut by the budget, so
    # the blocks that begin up to the lead past it must be paid too.
    horizon_end = start + timedelta(seconds=horizon + LIMIT_LEAD_SECONDS)
    keys, day_end = day_bounds(start, tz)
    if horizon_end > day_end:
        return _walk_windows(tariff, start, tz, remaining, horizon, horizon_end)

    # Most calls cannot run past local midnight. The windows of ``start`` then
    # pay every block, and _walk_windows() would make a single pass.
    count = blocks_started_before_micros(tariff, (horizon + LIMIT_LEAD_SECONDS) * 1_000_000)
    budget = None
    for window in WINDOWS:
        free = remaining(window, keys[window])
        if free is not None and (budget is None or free < budget):
            budget = free
    paid = _blocks_affordable(count, tariff.first_block_cost(), tariff.later_block_cost(),
                              True, budget)
    return horizon if paid == count else _end_before_block(tariff, paid, horizon)


def _walk_windows(tariff: Tariff, start: datetime, tz: ZoneInfo, remaining: RemainingFn,
                  horizon: int, horizon_end: datetime) -> int:
    """Return max_call_seconds() for a horizon that may reach later windows.

    The walk goes one local day at a time. Each day's blocks are paid from
    the budgets of that day and its week, less what earlier days of the walk
    spent in the same windows.
    """
    first_cost = tariff.first_block_cost()
    later_cost = tariff.later_block_cost()

    spent_here: dict[tuple[str, str], Decimal] = {}
    segment_start = start
    next_block = 0

    while segment_start < horizon_end:
        keys, day_end = day_bounds(segment_start, tz)
        segment_end = min(day_end, horizon_end)

        # Blocks that begin before segment_end begin in this segment.
        blocks_by_end = blocks_started_before_micros(tariff, elapsed_micros(start, segment_end))
        count = max(0, blocks_by_end - next_block)

        budget = None
        for window in WINDOWS:
            free = remaining(window, keys[window])
            if free is not None:
                free -= spent_here.get((window, keys[window]), 0)
                if budget is None or free < budget:
                    budget = free

        includes_first = next_block == 0
        paid = _blocks_affordable(count, first_cost, later_cost, includes_first, budget)
        if paid < count:
            return _end_before_block(tariff, next_block + paid, horizon)

        cost = _cost_of(count, first_cost, later_cost, includes_first)
        for window in WINDOWS:
            key = (window, keys[window])
            spent_here[key] = spent_here.get(key, 0) + cost
        next_block += count
        segment_start = segment_end
    return horizon


def _end_before_block(tariff: Tariff, block: int, horizon: int) -> int:
    """Return the call length that ends ``LIMIT_LEAD_SECONDS`` before block
    ``block`` begins, at least 1 and at most ``horizon``, or 0 for block 0."""
    unpaid_start = tariff.block_start(block)
    if unpaid_start == 0:
        return 0
    return min(max(unpaid_start - LIMIT_LEAD_SECONDS, 1), horizon)
