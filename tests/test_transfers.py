"""Answered trunk calls that a phone transfers to another phone: the trunk leg
stays up in a new bridge, is metered on and is hung up at the limit."""

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from live_support import Pbx, answered_call, eventually, stored_calls, stored_hangups

START = datetime(2024, 6, 12, 10, 0, tzinfo=timezone.utc)  # a Wednesday
TODAY = "2024-06-12"

TRUNK = """\
[trunk gamma]
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""
RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,1.00,,60/60
"""
# The first block that the 10.00 cannot pay begins at 10:10, so the call is
# hung up a second before it.
HANGUP_AT = START + timedelta(minutes=10) - timedelta(seconds=1)


@pytest.fixture
async def pbx(tmp_path):
    pbx = Pbx(tmp_path, START, trunks=TRUNK, rates=RATES)
    await pbx.start()
    yield pbx
    await pbx.stop()


async def run_to_limit(pbx: Pbx, call) -> None:
    """Move the clock a minute at a time up to the hang-up and check that it comes then."""
    while pbx.clock.now() + timedelta(minutes=1) < HANGUP_AT:
        pbx.clock.advance(60)
        await pbx.settle()
    assert pbx.ari.deletes == []
    pbx.clock.set(HANGUP_AT)
    await eventually(lambda: not pbx.legs(), what="the hang-up")
    await pbx.app.guard.drain()


@pytest.mark.parametrize("transfer", ["blind_transfer", "attended_transfer"])
async def test_transferred_leg_hung_up(pbx, transfer):
    call = await answered_call(pbx, "01632960123")
    pbx.clock.advance(150)
    await getattr(pbx.ari, transfer)(call, "1002")
    await eventually(lambda: call.caller_id not in pbx.ari.channels,
                     what="the transferring phone to hang up")
    await pbx.settle()

    assert list(pbx.legs()) == [call.trunk_id]
    await run_to_limit(pbx, call)

    assert pbx.ari.deletes == [(call.trunk_id, {"reason_code": "16"})]
    assert pbx.ari.channels == {}
    assert stored_hangups(pbx)[0].reason == "limit:daily"
    stored = stored_calls(pbx)[call.trunk_id]
    assert stored.ended_at == HANGUP_AT
    assert stored.hangup_cause == 16
    assert pbx.spend("day", TODAY) == Decimal("10.00")


@pytest.mark.parametrize("transfer", ["blind_transfer", "attended_transfer"])
async def test_transfer_while_blind_metered_on(pbx, transfer):
    call = await answered_call(pbx, "01632960123")
    pbx.clock.advance(150)
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    await getattr(pbx.ari, transfer)(call, "1002")
    pbx.clock.advance(60)
    pbx.ari.allow_events()
    await eventually(lambda: pbx.app.ari.connected, timeout=10, what="the reconnect")

    assert list(pbx.legs()) == [call.trunk_id]
    await run_to_limit(pbx, call)
    assert pbx.spend("day", TODAY) == Decimal("10.00")


async def test_transferred_call_ends_normally(pbx):
    call = await answered_call(pbx, "01632960123")
    pbx.clock.advance(150)
    await pbx.ari.blind_transfer(call, "1002")
    pbx.clock.advance(60)
    await pbx.ari.hangup(call)       # the phone that took the call hangs up
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    assert pbx.ari.deletes == []
    assert pbx.ari.channels == {}
    assert stored_calls(pbx)[call.trunk_id].cost == Decimal("4.00")
