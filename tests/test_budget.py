"""How long a call may last on the budget left, across day and week boundaries."""

import random
from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from callguard.policy.budget import LIMIT_LEAD_SECONDS, MAX_SECONDS_CEILING, max_call_seconds

# The lead before the first unpaid block, by which a budget-limited call ends.
LEAD = LIMIT_LEAD_SECONDS
from callguard.rating import Increments, Tariff

LONDON = ZoneInfo("Europe/London")


def tariff(rate: str, increments: str = "60/60", fee: str = "0") -> Tariff:
    return Tariff("44", "test", Decimal(rate), Decimal(fee), Increments.parse(increments))


def budgets(daily: str | None, weekly: str | None = None, spent: dict | None = None):
    """Return a remaining() function over fixed limits and per-key spend."""
    spent = spent or {}

    def remaining(window: str, key: str) -> Decimal | None:
        limit = daily if window == "day" else weekly
        if limit is None:
            return None
        return Decimal(limit) - Decimal(spent.get((window, key), "0"))

    return remaining


def london(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON).astimezone(timezone.utc)


def test_call_across_midnight_gains_next_day():
    # 6.00 of 10.00 spent on 14 June; 0.50/min from 23:55 BST: five blocks
    # (2.50) on 14 June, then twenty (10.00) on 15 June, so the call ends
    # LEAD before 00:20, when the first unpaid block would begin.
    remaining = budgets("10.00", spent={("day", "2024-06-14"): "6.00"})

    seconds = max_call_seconds(tariff("0.50"), london(2024, 6, 14, 23, 55), LONDON,
                               remaining, None)

    assert seconds == 25 * 60 - LEAD


@pytest.mark.parametrize(
    "daily, spent, rate, increments, fee, expected",
    [
        ("10.00", "7.00", "1.00", "60/60", "0", 180 - LEAD),   # three blocks left
        ("10.00", "7.01", "1.00", "60/60", "0", 120 - LEAD),   # a penny short of the third
        ("10.00", "9.00", "1.00", "60/60", "0", 60 - LEAD),
        ("10.00", "9.01", "1.00", "60/60", "0", 0),     # not even the first block
        ("10.00", "7.00", "1.00", "60/60", "1.00", 120 - LEAD),  # the fee comes first
        ("1.00", "0", "0.006", "30/6", "0", 30 + 6 * 1661 - LEAD),
        ("10.00", "0", "0", "60/60", "0", MAX_SECONDS_CEILING),  # free: no budget limit
    ],
)
def test_seconds_within_one_day(daily, spent, rate, increments, fee, expected):
    start = london(2024, 6, 14, 10, 0)
    remaining = budgets(daily, spent={("day", "2024-06-14"): spent})

    seconds = max_call_seconds(tariff(rate, increments, fee), start, LONDON, remaining, None)

    assert seconds == expected


def test_cap_wins_over_budget():
    remaining = budgets("100.00")

    seconds = max_call_seconds(tariff("0.01"), london(2024, 6, 14, 10, 0), LONDON,
                               remaining, 7200)

    assert seconds == 7200


def test_no_limits_gets_ceiling():
    seconds = max_call_seconds(tariff("1.00"), london(2024, 6, 14, 10, 0), LONDON,
                               budgets(None), None)

    assert seconds == MAX_SECONDS_CEILING


def test_weekly_limit_binds_across_midnight():
    # Sunday 23:57 with 5.00 of the week left: three blocks before Monday
    # 00:00, then the new week's 2.00 pays two more.
    remaining = budgets(None, "100.00", spent={("week", "2024-W24"): "95.00"})
    remaining_fresh = budgets(None, "2.00")

    def combined(window, key):
        return remaining(window, key) if key == "2024-W24" else remaining_fresh(window, key)

    seconds = max_call_seconds(tariff("1.00"), london(2024, 6, 16, 23, 57), LONDON,
                               combined, None)

    assert seconds == (3 + 2) * 60 - LEAD


def test_window_ends_at_local_midnight_in_summer():
    # 23:30 BST on 31 March 2024 is 22:30 UTC. Local midnight comes after 30
    # minutes, not 90, so 1 April's budget pays the second half hour.
    remaining = budgets("30.00")

    seconds = max_call_seconds(tariff("1.00"), london(2024, 3, 31, 23, 30), LONDON,
                               remaining, None)

    assert seconds == 60 * 60 - LEAD


def test_block_counts_in_window_where_it_begins():
    # 30/6 blocks from 23:59:00 with 0.0060 a day: the first block and five
    # 6 s blocks (offsets 30 to 54) use up 14 June; from 00:00:00 the next
    # day's 0.0060 pays ten more 6 s blocks, so the first unpaid block begins
    # at 120 s.
    start = london(2024, 6, 14, 23, 59, 0)
    remaining = budgets("0.0060")

    seconds = max_call_seconds(tariff("0.006", "30/6"), start, LONDON, remaining, None)

    assert seconds == 120 - LEAD


def test_partial_block_before_midnight():
    # 31 s before midnight with 30/6 blocks: blocks begin at 0 and 30 s on
    # 14 June (0.0036), then six 6 s blocks on 15 June (0.0036), so the
    # first unpaid block is the ninth, 72 s after answer.
    start = london(2024, 6, 14, 23, 59, 29)
    remaining = budgets("0.0036")

    seconds = max_call_seconds(tariff("0.006", "30/6"), start, LONDON, remaining, None)

    assert seconds == 72 - LEAD


def test_overspent_week_buys_nothing_more():
    # A week already 1.50 over its limit must stop the call at its next block,
    # even though the day has money left.
    remaining = budgets("10.00", "5.00", spent={("week", "2024-W24"): "6.50"})

    seconds = max_call_seconds(tariff("1.00"), london(2024, 6, 14, 10, 0), LONDON,
                               remaining, None)

    assert seconds == 0


def test_lead_leaves_at_least_one_second():
    # 0.60 a minute by the second: 0.01 pays only the first 1 s block.
    seconds = max_call_seconds(tariff("0.60", "1/1"), london(2024, 6, 14, 10, 0), LONDON,
                               budgets("0.01"), None)

    assert seconds == 1


def test_lead_applies_below_equal_cap():
    # 120.00 at 1.00 a minute pays exactly 7200 s, as long as the cap.
    seconds = max_call_seconds(tariff("1.00"), london(2024, 6, 14, 10, 0), LONDON,
                               budgets("120.00"), 7200)

    assert seconds == 7200 - LEAD


def test_one_day_shortcut_matches_walk():
    # max_call_seconds() skips the walk when the horizon ends before local
    # midnight. Over seeded random tariffs, budgets, start times and caps, on
    # both sides of midnight and of a week's end, its result must equal the walk's.
    from datetime import timedelta

    from callguard.policy.budget import _walk_windows

    rng = random.Random(20261206)
    starts = [london(2026, 12, 6, 0, 0), london(2026, 12, 6, 23, 58, 30),
              london(2026, 12, 7, 12, 0), london(2026, 3, 29, 0, 30),
              london(2026, 10, 25, 23, 0)]
    shortcuts = 0
    for _ in range(3000):
        start = rng.choice(starts) + timedelta(seconds=rng.randrange(-7200, 7200),
                                               microseconds=rng.randrange(1_000_000))
        charge = tariff(str(Decimal(rng.randrange(0, 3000)) / 1000),
                        rng.choice(["60/60", "1/1", "30/6", "60/1", "120/30"]),
                        str(Decimal(rng.randrange(0, 4)) / 10))
        daily = rng.choice([None, "0.50", "5.00", "50.00"])
        weekly = rng.choice([None, "1.00", "20.00", "200.00"])
        spent = {("day", day): str(Decimal(rng.randrange(0, 6000)) / 100)
                 for day in ("2026-12-05", "2026-12-06", "2026-12-07", "2026-03-29",
                             "2026-10-25", "2026-10-26")}
        spent.update({("week", week): str(Decimal(rng.randrange(0, 25000)) / 100)
                      for week in ("2026-W49", "2026-W50", "2026-W13", "2026-W43",
                                   "2026-W44")})
        cap = rng.choice([None, 1, 59, 600, 3600, 7200, 90_000])
        remaining = budgets(daily, weekly, spent)

        horizon = MAX_SECONDS_CEILING if cap is None else min(cap, MAX_SECONDS_CEILING)
        horizon_end = start + timedelta(seconds=horizon + LEAD)
        walked = _walk_windows(charge, start, LONDON, remaining, horizon, horizon_end)
        assert max_call_seconds(charge, start, LONDON, remaining, cap) == walked, (
            start, charge, daily, weekly, cap)
        shortcuts += horizon_end.astimezone(LONDON).date() == start.astimezone(LONDON).date()
    # Both the shortcut and the walk were taken many times.
    assert 500 < shortcuts < 2500
