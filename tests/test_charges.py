"""Charging answered calls block by block, in the windows where blocks begin."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from callguard.metering.charges import (
    AnsweredCall,
    blocks_started_before,
    blocks_started_before_micros,
)
from callguard.daemon.status import leg_status
from callguard.metering.legs import ENDED, Leg
from callguard.rating import Increments, Tariff

LONDON = ZoneInfo("Europe/London")


def tariff(rate: str, increments: str = "60/60", fee: str = "0") -> Tariff:
    return Tariff("44", "test", Decimal(rate), Decimal(fee), Increments.parse(increments))


def london(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON).astimezone(timezone.utc)


def test_call_across_midnight_spends_both_days():
    call = AnsweredCall(tariff("0.50"), LONDON, london(2024, 6, 14, 23, 55))

    call.charge_until(london(2024, 6, 15, 0, 19, 59))

    assert call.charges[("day", "2024-06-14")] == Decimal("2.50")
    assert call.charges[("day", "2024-06-15")] == Decimal("10.00")
    assert call.charges[("week", "2024-W24")] == Decimal("12.50")


def test_first_block_charged_at_answer():
    answered = london(2024, 6, 14, 10, 0)
    call = AnsweredCall(tariff("1.00", fee="0.25"), LONDON, answered)

    added = call.charge_until(answered)

    assert added[("day", "2024-06-14")] == Decimal("1.25")
    assert call.blocks_charged == 1


def test_block_charged_exactly_at_its_start():
    answered = london(2024, 6, 14, 10, 0)
    call = AnsweredCall(tariff("1.00", "30/6"), LONDON, answered)
    day = ("day", "2024-06-14")

    first = call.charge_until(answered + timedelta(seconds=10))
    just_before = call.charge_until(answered + timedelta(seconds=29, microseconds=999999))
    at_start = call.charge_until(answered + timedelta(seconds=30))
    again = call.charge_until(answered + timedelta(seconds=30))
    three_later = call.charge_until(answered + timedelta(seconds=48))

    assert first == {day: Decimal("0.50"), ("week", "2024-W24"): Decimal("0.50")}
    assert just_before == {}
    assert at_start[day] == Decimal("0.10")  # the second block begins at 30 s
    assert again == {}
    assert three_later[day] == Decimal("0.30")  # blocks at 36, 42 and 48 s
    assert call.blocks_charged == 5


def test_charging_twice_adds_nothing():
    answered = london(2024, 6, 14, 10, 0)
    call = AnsweredCall(tariff("1.00"), LONDON, answered)

    call.charge_until(answered + timedelta(seconds=130))
    again = call.charge_until(answered + timedelta(seconds=130))

    assert again == {}
    assert call.total == Decimal("3.00")


@pytest.mark.parametrize(
    "seconds, expected",
    [(0, "0"), (1, "0.003000"), (30, "0.003000"), (31, "0.003600"), (60, "0.006000"),
     (75, "0.007800")],
)
def test_final_charges_match_rating(seconds, expected):
    answered = london(2024, 6, 14, 10, 0)
    call = AnsweredCall(tariff("0.006", "30/6"), LONDON, answered)

    final = call.final_charges(answered + timedelta(seconds=seconds))

    assert final.get(("day", "2024-06-14"), Decimal(0)) == Decimal(expected)


def test_week_rolls_over_on_monday():
    call = AnsweredCall(tariff("1.00"), LONDON, london(2024, 6, 16, 23, 58))

    call.charge_until(london(2024, 6, 17, 0, 1, 30))

    assert call.charges[("week", "2024-W24")] == Decimal("2.00")
    assert call.charges[("week", "2024-W25")] == Decimal("2.00")


def test_cost_by_window_start():
    answered = london(2024, 6, 14, 23, 58)
    call = AnsweredCall(tariff("1.00"), LONDON, answered)
    midnight = london(2024, 6, 15, 0, 0)

    assert call.cost_by(midnight, midnight) == Decimal("1.00")
    assert call.cost_by(midnight, midnight - timedelta(seconds=1)) == Decimal(0)
    assert call.cost_by(answered, midnight - timedelta(milliseconds=1)) == Decimal("2.00")


@pytest.mark.parametrize(
    "elapsed, expected", [("0", 0), ("0.001", 1), ("30", 1), ("30.001", 2), ("36", 2),
                          ("36.5", 3)],
)
def test_blocks_started_before(elapsed, expected):
    assert blocks_started_before(tariff("1", "30/6"), Decimal(elapsed)) == expected
    micros = int(Decimal(elapsed) * 1_000_000)
    assert blocks_started_before_micros(tariff("1", "30/6"), micros) == expected


@pytest.mark.parametrize("increments", ["1/1", "30/6", "60/60", "60/1", "1/60"])
def test_blocks_started_before_agrees_in_micros(increments):
    rated = tariff("1", increments)
    first = rated.increments.first * 1_000_000
    later = rated.increments.later * 1_000_000
    # Each side of every block start in the first hour, and some instants between.
    edges = [first + n * later + d for n in range(-1, 3_600) for d in (-1, 0, 1)]
    for micros in [-1, 0, 1, *edges, *range(0, 7_200_000_000, 7_777_777)]:
        exact = blocks_started_before(rated, Decimal(micros) / 1_000_000)
        assert blocks_started_before_micros(rated, micros) == exact, micros


def test_status_ended_before_answer():
    # Asterisk stamps the answer, and callguard's clock the end of a call
    # found gone after an ARI outage. With Asterisk's clock ahead, the end
    # can come before the answer: the leg shows no time and the bill it got.
    answered = london(2024, 6, 14, 10, 0, 30)
    leg = Leg(id="1718355600.7", trunk="gamma", channel="PJSIP/gamma-00000007",
              created_at=answered - timedelta(seconds=20), state=ENDED,
              answered=AnsweredCall(tariff("1.00"), LONDON, answered),
              ended_at=answered - timedelta(seconds=2))
    leg.final_charges = leg.answered.final_charges(leg.ended_at)

    status = leg_status(leg, answered + timedelta(minutes=5))

    assert status["duration"] == 0
    assert status["cost"] == "0.00"


def test_status_ended_leg_bill():
    answered = london(2024, 6, 14, 23, 59, 30)
    leg = Leg(id="1718355600.8", trunk="gamma", channel="PJSIP/gamma-00000008",
              created_at=answered, state=ENDED,
              answered=AnsweredCall(tariff("1.00", fee="0.25"), LONDON, answered),
              ended_at=answered + timedelta(seconds=61))
    leg.final_charges = leg.answered.final_charges(leg.ended_at)

    status = leg_status(leg, answered + timedelta(hours=2))

    assert status["duration"] == 61
    assert status["cost"] == "2.25"
