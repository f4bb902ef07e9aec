"""Trunk legs dialled through Local channels, linked back to the phone's check.

The phone runs the check and Dial(Local/<number>@outbound-trunk); the ;2 half
of that Local pair then dials the trunk. Calls cross the FastAGI server and
the ARI emulator over loopback, on a manual clock.
"""

import math
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from emulator.fastagi import AGICall, run_fastagi_call
from live_support import Pbx, eventually, originate_local, stored_calls

START = datetime(2024, 6, 12, 10, 0, tzinfo=timezone.utc)  # a Wednesday
TODAY = "2024-06-12"
LOCAL_CONTEXT = "outbound-trunk"

TRUNK = """\
[trunk gamma]
bar = premium, international
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
international_allow = IE
"""
RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,1.00,,60/60
33,France,1.00,,60/60
353,Ireland,1.00,,60/60
"""


@pytest.fixture
async def make_pbx(tmp_path):
    started = []

    async def make(*, trunks=TRUNK, spent=None):
        pbx = Pbx(tmp_path, START, trunks=trunks, rates=RATES)
        await pbx.start()
        if spent:
            await pbx.restart_with_spend(spent, START)
        started.append(pbx)
        return pbx

    yield make
    for pbx in started:
        await pbx.stop()


async def check_and_dial_local(pbx, number, *, callerid="01632960010"):
    """Check ``number`` on the phone's channel, then Dial(Local/<number>@outbound-trunk)
    if the check allows it. Returns the Local call and the check's variables."""
    check = pbx.checker(number, callerid=callerid)
    local = await pbx.ari.dial_out(number, tech="Local", callerid=callerid,
                                   dialstring=f"{number}@{LOCAL_CONTEXT}", check=check)
    return local, pbx.results[local.caller_id]


async def call_through_local(pbx, number, *, callerid="01632960010", onward=None):
    """Check ``number``, dial it through a Local pair, and let the pair's ;2 half
    dial ``onward`` (``number`` unless given) on the trunk.

    Returns the Local call, the trunk call and the check's variables, once
    callguard follows the trunk leg.
    """
    local, result = await check_and_dial_local(pbx, number, callerid=callerid)
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    onward = onward or number
    trunk = await pbx.ari.dial_onward(local, onward, dialstring=f"{onward}@gamma")
    await eventually(lambda: trunk.trunk_id in pbx.legs() or any(
        leg.id == trunk.trunk_id for leg in pbx.app.guard.recent), what="the trunk leg")
    return local, trunk, result


async def answer(pbx, call):
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs()[call.trunk_id].state == "up", what="the answer")


async def test_local_leg_linked_to_check(make_pbx):
    pbx = await make_pbx()
    local, trunk, result = await call_through_local(pbx, "01632960123")
    assert result["CALLGUARD_RESULT"] == "ALLOW"

    leg = pbx.legs()[trunk.trunk_id]
    assert leg.guarded
    assert leg.decision_uniqueid == local.caller_id
    assert leg.e164 == "+441632960123"
    assert pbx.app.reservations.get(local.caller_id).dialled

    await answer(pbx, trunk)
    assert pbx.app.reservations.get(local.caller_id) is None
    pbx.clock.advance(90)
    await pbx.ari.hangup(trunk, side="trunk")
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()
    record = stored_calls(pbx)[trunk.trunk_id]
    assert record.guarded
    assert record.cost == Decimal("2.00")


async def test_local_leg_last_block_not_cut(make_pbx):
    # 9.00 spent of 10.00: the check reserves the last 1.00 for the first
    # block. Once that block is charged, the reservation must not count too.
    pbx = await make_pbx(spent=[("day", TODAY, "9.00")])
    local, trunk, result = await call_through_local(pbx, "01632960123")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await answer(pbx, trunk)

    pbx.clock.advance(30)
    await pbx.settle()
    assert pbx.ari.deletes == []

    # The second block, at 60 s, cannot be paid: the hang-up comes at 59 s.
    pbx.clock.advance(29)
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up")
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()
    assert pbx.ari.deletes[0][0] == trunk.trunk_id
    assert pbx.spend("day", TODAY) == Decimal("10.00")


async def test_local_leg_opted_out_caller_kept(make_pbx):
    # An opted-out caller may dial France although international is barred.
    pbx = await make_pbx(trunks=TRUNK + "opt_out = 01632960050\n")
    local, trunk, result = await call_through_local(pbx, "0033123456789",
                                                    callerid="01632960050")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    assert result["CALLGUARD_REASON"] == "opted-out"
    await answer(pbx, trunk)
    pbx.clock.advance(30)
    await pbx.settle()

    assert pbx.ari.deletes == []
    leg = pbx.legs()[trunk.trunk_id]
    assert leg.guarded
    assert not leg.protected


async def test_local_leg_other_number_judged(make_pbx):
    # The ;2 half dials another number than the one checked: it is judged
    # on its own number, as a call forward is.
    pbx = await make_pbx()
    local, trunk, result = await call_through_local(pbx, "01632960123",
                                                    onward="0033123456789")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up")
    assert pbx.ari.deletes[0][0] == trunk.trunk_id


async def test_local_leg_adopted_after_blind(make_pbx):
    # Dialled and answered while the events were lost: the channel list links
    # the leg to the check through the BRIDGEPEER of each bridged channel.
    pbx = await make_pbx(spent=[("day", TODAY, "9.00")])
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    local, result = await check_and_dial_local(pbx, "01632960123")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    trunk = await pbx.ari.dial_onward(local, "01632960123", dialstring="01632960123@gamma")
    await pbx.ari.answer(trunk)
    pbx.ari.allow_events()
    await eventually(lambda: trunk.trunk_id in pbx.legs(), timeout=10, what="the adoption")

    leg = pbx.legs()[trunk.trunk_id]
    assert leg.guarded
    assert leg.decision_uniqueid == local.caller_id
    assert leg.state == "up"
    assert pbx.app.reservations.get(local.caller_id) is None

    pbx.clock.advance(30)
    await pbx.settle()
    assert pbx.ari.deletes == []
    pbx.clock.advance(29)
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up at 59 s")


async def test_phone_gone_before_ringing_leg(make_pbx):
    # The phone hangs up while the trunk leg rings. Its Dial() hangs up the
    # Local ;1 half, and the ;2 half's own Dial() hangs up the trunk leg in
    # another thread (local_hangup() in main/core_local.c queues the hang-up
    # on the other half), so the phone can end before the leg. The leg's end
    # then releases the hold, with no further Dial() to keep it for.
    pbx = await make_pbx()
    local, trunk, _ = await call_through_local(pbx, "01632960123")
    phone = pbx.ari.channels[local.caller_id]
    pbx.app.tracker.on_event({"type": "ChannelDestroyed", "timestamp": "",
                              "cause": 16, "cause_txt": "Normal Clearing",
                              "channel": phone})
    assert pbx.app.reservations.get(local.caller_id).dialled

    await pbx.ari.fail(trunk, "CANCEL", 16)
    await eventually(lambda: not pbx.legs(), what="the end")

    assert pbx.app.reservations.get(local.caller_id) is None
    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal(0)
    assert pbx.app.reservations.pending_count("gamma") == 0


async def check_on_second_half(pbx, local, number, *, callerid="01632960010"):
    """Run the check of ``number`` on the ;2 half of the Local call ``local``.

    A dialplan does so when it checks in the Local channel's context. Returns
    the ;2 half's uniqueid and the check's variables.
    """
    second_name = local.trunk_name.removesuffix(";1") + ";2"
    second_id = next(channel_id for channel_id, channel in pbx.ari.channels.items()
                     if channel["name"] == second_name)
    outcome = await run_fastagi_call(
        "127.0.0.1", pbx.port,
        AGICall(extension=number, uniqueid=second_id, channel=second_name,
                callerid=callerid, arguments=(number, "gamma")))
    return second_id, outcome.variables


async def check_then_dial_while_blind(pbx, local, number, callerid):
    """Check ``number`` for an opted-out ``callerid`` on the ;2 half of ``local``,
    then let that half dial the trunk while the events are lost. Returns the ;2
    half's uniqueid and the trunk call, once callguard has read the channel list."""
    second_id, result = await check_on_second_half(pbx, local, number, callerid=callerid)
    assert result["CALLGUARD_REASON"] == "opted-out"
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    trunk = await pbx.ari.dial_onward(local, number, dialstring=f"{number}@gamma")
    pbx.ari.allow_events()
    await eventually(lambda: pbx.app.ari.connected, timeout=10, what="the reconnect")
    await pbx.app.guard.drain()
    return second_id, trunk


@pytest.mark.parametrize("placed_by", ["phone", "originate"])
async def test_second_half_check_linked_after_blind(make_pbx, placed_by):
    # A phone dials the Local channel without a check, or an originate places
    # it, and its ;2 half runs the check: an opted-out caller may dial France
    # although international is barred. The leg still rings when callguard
    # reads the channel list.
    pbx = await make_pbx(trunks=TRUNK + "opt_out = 01632960050\n")
    if placed_by == "phone":
        local = await pbx.ari.dial_out("0033123456789", tech="Local", callerid="01632960050",
                                       dialstring=f"0033123456789@{LOCAL_CONTEXT}")
    else:
        local = await originate_local(pbx, "0033123456789", LOCAL_CONTEXT)
    second_id, trunk = await check_then_dial_while_blind(pbx, local, "0033123456789",
                                                         "01632960050")

    assert pbx.ari.deletes == []
    leg = pbx.legs()[trunk.trunk_id]
    assert leg.decision_uniqueid == second_id
    assert leg.guarded
    assert not leg.protected
