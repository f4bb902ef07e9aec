"""One check, one Dial() that rings two trunk legs at once
(Dial(PJSIP/n@gamma&PJSIP/n@delta)): the first to answer wins and Asterisk
cancels the other. Calls cross the FastAGI server and the ARI emulator over
loopback, on a manual clock.
"""

from datetime import datetime, timezone
from decimal import Decimal

import pytest

from live_support import Pbx, eventually, stored_calls

START = datetime(2024, 6, 12, 10, 0, tzinfo=timezone.utc)  # a Wednesday
TODAY = "2024-06-12"

TRUNKS = """\
[trunk gamma]
daily_limit = 10.00
max_concurrent_calls = 5
channel_pattern = PJSIP/gamma-*
rates = rates.csv

[trunk delta]
daily_limit = 10.00
channel_pattern = PJSIP/delta-*
rates = rates.csv
"""
RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,1.00,,60/60
"""
NUMBER = "01632960123"


@pytest.fixture
async def pbx(tmp_path):
    pbx = Pbx(tmp_path, START, trunks=TRUNKS, rates=RATES)
    await pbx.start()
    yield pbx
    await pbx.stop()


async def ring_two(pbx, second_trunk):
    """Check NUMBER on gamma, then ring it on gamma and on ``second_trunk`` from
    the same Dial(). Returns both calls once callguard follows both legs."""
    first, result = await pbx.call(NUMBER)
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    second = await pbx.ari.dial_parallel(first, NUMBER, trunk=second_trunk,
                                         dialstring=f"{NUMBER}@{second_trunk}")
    await eventually(lambda: first.trunk_id in pbx.legs() and second.trunk_id in pbx.legs(),
                     what="both legs")
    return first, second


async def test_same_trunk_legs_share_one_hold(pbx):
    first, second = await ring_two(pbx, "gamma")

    assert pbx.legs()[first.trunk_id].guarded
    assert pbx.legs()[second.trunk_id].guarded
    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal("1.000000")
    assert pbx.app.reservations.pending_count("gamma") == 0
    assert pbx.app.guard.live_count("gamma") == 2

    await pbx.ari.answer(second)
    await eventually(lambda: first.trunk_id not in pbx.legs(), what="the cancelled leg's end")
    assert pbx.app.reservations.get(first.caller_id) is None
    assert pbx.app.guard.live_count("gamma") == 1

    pbx.clock.advance(90)
    await pbx.ari.hangup(second)
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    calls = stored_calls(pbx)
    assert calls[first.trunk_id].cost == Decimal(0)
    assert calls[first.trunk_id].hangup_cause == 26
    assert calls[second.trunk_id].cost == Decimal("2.00")
    assert pbx.spend("day", TODAY) == Decimal("2.00")
    assert pbx.ari.deletes == []


async def test_other_trunk_busy_keeps_hold(pbx):
    # The delta leg is busy while the gamma leg still rings for the check.
    gamma, delta = await ring_two(pbx, "delta")
    await pbx.ari.fail(delta, "BUSY", 17)
    await eventually(lambda: delta.trunk_id not in pbx.legs(), what="the busy leg's end")

    assert pbx.app.reservations.get(gamma.caller_id).dialled
    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal("1.000000")

    await pbx.ari.answer(gamma)
    await eventually(lambda: pbx.legs()[gamma.trunk_id].state == "up", what="the answer")
    assert pbx.app.reservations.get(gamma.caller_id) is None


async def test_other_trunk_answer_releases_hold(pbx):
    # The delta leg answers: delta pays, and gamma's hold ends.
    gamma, delta = await ring_two(pbx, "delta")
    await pbx.ari.answer(delta)
    await eventually(lambda: gamma.trunk_id not in pbx.legs(), what="the cancelled leg's end")
    pbx.clock.advance(30)
    await pbx.ari.hangup(delta)
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal(0)
    assert pbx.spend("day", TODAY, trunk="delta") == Decimal("1.00")
    assert pbx.spend("day", TODAY, trunk="gamma") == Decimal(0)
