"""The search for the moment a trunk's budget runs out, against a plain bisection."""

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from callguard.metering.charges import AnsweredCall
from callguard.metering.meter import _Costing, first_over, to_us
from callguard.rating import Increments, Tariff

UTC = timezone.utc
WINDOW_START = datetime(2024, 6, 14, 0, 0, tzinfo=UTC)
INCREMENTS = ["1/1", "60/60", "30/6", "60/1", "3600/60", "1/60", "6/6"]


def costing(answered_at: datetime, increments: str, rate: str, fee: str = "0") -> _Costing:
    tariff = Tariff("44", "UK", Decimal(rate), Decimal(fee), Increments.parse(increments))
    return _Costing(AnsweredCall(tariff, ZoneInfo("Europe/London"), answered_at))


def bisected_first_over(costings, window_start, budget, low, high):
    """The search as a bisection over every microsecond: slow, plainly right."""
    def over(instant):
        return sum(c.cost_between(window_start, instant) for c in costings) > budget

    if over(low):
        return low
    if not over(high):
        return None
    while high - low > 1:
        middle = (low + high) // 2
        if over(middle):
            high = middle
        else:
            low = middle
    return high


def random_case(rng: random.Random):
    window_start = to_us(WINDOW_START)
    calls = []
    # Some calls share an answer time, so their blocks start together.
    shared = WINDOW_START + timedelta(microseconds=rng.randrange(0, 7_200_000_000))
    for _ in range(rng.randrange(0, 40)):
        if rng.random() < 0.2:
            answered = shared
        else:
            answered = WINDOW_START + timedelta(
                microseconds=rng.randrange(-3_600_000_000, 10_800_000_000))
        rate = rng.choice(["0", "0.0001", "0.006", "0.05", "1.00", "2.40"])
        fee = rng.choice(["0", "0", "0.10"])
        calls.append(costing(answered, rng.choice(INCREMENTS), rate, fee))
    low = window_start + rng.randrange(0, 7_200_000_000)
    high = low + rng.choice([1, 2, 1_000_000, 3_600_000_000, 86_400_000_000 - 1])
    # Mostly a budget that runs out inside [low, high], sometimes one that
    # runs out before low or lasts past high.
    at_low = sum(c.cost_between(window_start, low) for c in calls)
    at_high = sum(c.cost_between(window_start, high) for c in calls)
    budget = rng.randrange(at_low - 5, at_high + 5)
    return calls, window_start, budget, low, high


@pytest.mark.parametrize("seed", range(40))
def test_search_matches_bisection(seed):
    rng = random.Random(seed)
    for _ in range(40):
        case = random_case(rng)

        assert first_over(*case) == bisected_first_over(*case), case[2:]


def test_tied_block_starts_count_together():
    answered = WINDOW_START + timedelta(hours=9)
    calls = [costing(answered, "60/60", "1.00") for _ in range(3)]
    window_start = to_us(WINDOW_START)
    # Three calls of 1.00 per minute: 3.00 at answer, 6.00 a minute later.
    budget = 5_000_000

    found = first_over(calls, window_start, budget, to_us(answered) + 1,
                       to_us(answered) + 3_600_000_000)

    assert found == to_us(answered + timedelta(minutes=1))


def test_search_with_many_calls_lists_few_starts():
    rng = random.Random(7)
    window_start = to_us(WINDOW_START)
    calls = [costing(WINDOW_START + timedelta(seconds=rng.randrange(0, 3600)), "1/1", "0.006")
             for _ in range(300)]
    low = window_start + 3_600_000_000
    high = window_start + 86_400_000_000 - 1
    budget = sum(c.cost_between(window_start, low) for c in calls) + 4_000_000

    assert first_over(calls, window_start, budget, low, high) == bisected_first_over(
        calls, window_start, budget, low, high)


def test_many_calls_starting_together_narrow_to_one_instant():
    # A hundred calls answered at once start each block together, so the
    # bracket narrows to one microsecond with a hundred starts inside.
    answered = WINDOW_START + timedelta(hours=9)
    calls = [costing(answered, "60/60", "1.00") for _ in range(100)]
    window_start = to_us(WINDOW_START)
    budget = 250_000_000  # 2.5 minutes of all hundred

    found = first_over(calls, window_start, budget, to_us(answered) + 1,
                       to_us(answered) + 86_400_000_000 // 4)

    assert found == to_us(answered + timedelta(minutes=2))
    assert found == bisected_first_over(calls, window_start, budget, to_us(answered) + 1,
                                        to_us(answered) + 86_400_000_000 // 4)
