"""A Dial() that fails over: the first trunk is busy, and the same channel,
checked once, dials a second trunk. Calls cross the FastAGI server and the
ARI emulator over loopback, on a manual clock.
"""

import logging
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from live_support import Pbx, eventually, stored_calls

START = datetime(2024, 6, 12, 10, 0, tzinfo=timezone.utc)  # a Wednesday
TODAY = "2024-06-12"

TRUNKS = """\
[trunk gamma]
bar = premium, international
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv

[trunk delta]
bar = premium, international
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
    await pbx.restart_with_spend([("day", TODAY, "9.00")], START)
    yield pbx
    await pbx.stop()


async def busy_first_trunk(pbx):
    """Check NUMBER on gamma and dial it there; the trunk returns busy and the
    caller stays in the dialplan. Returns the failed call."""
    call, result = await pbx.call(NUMBER)
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the first Dial")
    await pbx.ari.fail(call, "BUSY", 17, caller_continues=True)
    await eventually(lambda: not pbx.legs(), what="the busy leg's end")
    await pbx.app.guard.drain()
    return call


async def test_busy_leg_keeps_hold(pbx):
    await busy_first_trunk(pbx)

    # The caller may still dial another trunk for its check, so the last
    # 1.00 of the budget stays held for it.
    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal("1.000000")
    assert pbx.app.reservations.pending_count("gamma") == 1
    _, other = await pbx.call(NUMBER, endpoint="1002", callerid="01632960011")
    assert other["CALLGUARD_RESULT"] == "DENY"
    assert other["CALLGUARD_REASON"] == "limit:daily"


async def test_failover_leg_linked_and_metered(pbx):
    failed = await busy_first_trunk(pbx)
    second = await pbx.ari.dial_again(failed, NUMBER, dialstring=f"{NUMBER}@gamma")
    await eventually(lambda: second.trunk_id in pbx.legs(), what="the second Dial")

    leg = pbx.legs()[second.trunk_id]
    assert leg.guarded
    assert leg.decision_uniqueid == failed.caller_id
    assert pbx.app.reservations.get(failed.caller_id).dialled
    assert pbx.app.reservations.pending_count("gamma") == 0

    await pbx.ari.answer(second)
    await eventually(lambda: pbx.legs()[second.trunk_id].state == "up", what="the answer")
    assert pbx.app.reservations.get(failed.caller_id) is None
    # 9.00 spent and 1.00 for the first block: the second block, at 60 s,
    # cannot be paid, so the hang-up comes at 59 s.
    pbx.clock.advance(59)
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up at 59 s")
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    assert pbx.ari.deletes[0][0] == second.trunk_id
    assert stored_calls(pbx)[failed.trunk_id].cost == Decimal(0)
    assert stored_calls(pbx)[second.trunk_id].cost == Decimal("1.00")
    assert pbx.spend("day", TODAY) == Decimal("10.00")


async def test_failover_other_trunk_releases_hold(pbx):
    # Checked for gamma, failed over to delta without a check for delta:
    # delta pays, judged on its own, and gamma's hold ends at the answer.
    failed = await busy_first_trunk(pbx)
    second = await pbx.ari.dial_again(failed, NUMBER, trunk="delta",
                                      dialstring=f"{NUMBER}@delta")
    await eventually(lambda: second.trunk_id in pbx.legs(), what="the second Dial")
    await pbx.ari.answer(second)
    await eventually(lambda: pbx.legs()[second.trunk_id].state == "up", what="the answer")

    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal(0)
    assert pbx.legs()[second.trunk_id].trunk == "delta"


async def test_caller_gone_after_busy_releases_hold(pbx):
    failed = await busy_first_trunk(pbx)
    await pbx.ari.end_waiting_caller(failed)
    await eventually(lambda: pbx.app.reservations.get(failed.caller_id) is None,
                     what="the release")

    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal(0)
    assert pbx.app.reservations.pending_count("gamma") == 0


async def test_failover_hold_expires(pbx):
    # A dialplan that neither dials again nor hangs up soon: the hold expires
    # reservation_seconds (120 s by default) after the failed leg ended.
    failed = await busy_first_trunk(pbx)
    pbx.clock.advance(121)
    pbx.app.reservations.expire(pbx.clock.now())

    assert pbx.app.reservations.get(failed.caller_id) is None
    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal(0)


async def test_caller_gone_after_busy_logged(pbx, caplog):
    caplog.set_level(logging.INFO, logger="callguard.metering.guard")
    failed = await busy_first_trunk(pbx)
    await pbx.ari.end_waiting_caller(failed)
    await eventually(lambda: pbx.app.reservations.get(failed.caller_id) is None,
                     what="the release")

    released = [record.getMessage() for record in caplog.records
                if "released its reservation" in record.getMessage()]
    assert len(released) == 1
    assert "before Dial" not in released[0]
    assert "after its last trunk leg ended unanswered" in released[0]


async def test_failover_hold_expiry_logged(pbx, caplog):
    caplog.set_level(logging.INFO, logger="callguard.policy.reservations")
    failed = await busy_first_trunk(pbx)
    pbx.clock.advance(121)
    pbx.app.reservations.expire(pbx.clock.now())

    expired = [record.getMessage() for record in caplog.records if "expired" in
               record.getMessage()]
    assert len(expired) == 1
    assert failed.caller_id in expired[0]
    assert "after its last trunk leg ended unanswered" in expired[0]
