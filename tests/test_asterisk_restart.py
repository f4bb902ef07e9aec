"""Live calls when Asterisk restarts: every channel ends and uniqueids start again."""

import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from live_support import Pbx, answered_call, eventually, originate_local, stored_calls

NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
TODAY = "2024-06-14"

RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,1.00,,60/60
33,France,1.00,,60/60
"""

TRUNKS = """\
[trunk gamma]
bar = premium, international
daily_limit = 100.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
opt_out = 01632960050
"""
FRANCE = "0033123456789"
LOCAL_CONTEXT = "outbound-trunk"


@pytest.fixture
async def pbx(tmp_path):
    pbx = Pbx(tmp_path, NOW, trunks=TRUNKS, rates=RATES)
    await pbx.start()
    yield pbx
    await pbx.stop()


async def restart_asterisk(pbx: Pbx, *, at: datetime, reconnect_at: datetime) -> None:
    """Restart Asterisk at ``at`` while callguard cannot connect, and let callguard
    reconnect at ``reconnect_at``."""
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    pbx.clock.set(at)
    await pbx.ari.restart()
    pbx.clock.set(reconnect_at)
    pbx.ari.allow_events()
    await eventually(lambda: pbx.app.ari.connected, timeout=10, what="the reconnect")
    await pbx.app.guard.drain()


async def test_call_lost_in_restart_charged_to_start(pbx):
    call = await answered_call(pbx, "01632960123")
    restarted = NOW + timedelta(minutes=5, seconds=30)

    await restart_asterisk(pbx, at=restarted, reconnect_at=restarted + timedelta(minutes=5))

    assert pbx.legs() == {}
    stored = stored_calls(pbx)[call.trunk_id]
    # The channel ended with the old Asterisk process, by its new start at the
    # latest, so it began 6 blocks, not the 11 begun by the reconnect.
    assert stored.ended_at == restarted
    assert stored.cost == Decimal("6.00")
    assert pbx.spend("day", TODAY) == Decimal("6.00")


async def test_restored_call_charged_to_asterisk_start(pbx):
    # The PBX host reboots: callguard and Asterisk stop together.
    call = await answered_call(pbx, "01632960123")
    pbx.clock.set(NOW + timedelta(minutes=3, seconds=10))
    await pbx.crash()
    restarted = NOW + timedelta(minutes=4, seconds=30)
    pbx.clock.set(restarted)
    await pbx.ari.restart()
    pbx.clock.set(restarted + timedelta(minutes=2))

    await pbx.start_callguard()
    await pbx.app.guard.drain()

    assert pbx.legs() == {}
    stored = stored_calls(pbx)[call.trunk_id]
    assert stored.ended_at == restarted
    assert stored.cost == Decimal("5.00")


async def test_restart_ends_no_later_call(pbx):
    # A call placed after the restart is up in the new process and goes on.
    first = await answered_call(pbx, "01632960123")
    restarted = NOW + timedelta(minutes=1, seconds=30)
    await restart_asterisk(pbx, at=restarted, reconnect_at=restarted + timedelta(seconds=5))
    second = await answered_call(pbx, "01632960124")

    assert first.trunk_id != second.trunk_id
    assert second.trunk_name == first.trunk_name
    assert list(pbx.legs()) == [second.trunk_id]
    assert stored_calls(pbx)[first.trunk_id].cost == Decimal("2.00")


async def test_reused_local_name_not_linked(pbx):
    # Before the restart, an opted-out caller dials France through a Local pair.
    check = pbx.checker(FRANCE, callerid="01632960050")
    before = await pbx.ari.dial_out(FRANCE, tech="Local", callerid="01632960050",
                                    dialstring=f"{FRANCE}@{LOCAL_CONTEXT}", check=check)
    assert pbx.results[before.caller_id]["CALLGUARD_REASON"] == "opted-out"
    restarted = NOW + timedelta(minutes=1)
    await restart_asterisk(pbx, at=restarted, reconnect_at=restarted + timedelta(seconds=5))

    # The new Asterisk gives an originated Local pair the same name, and its
    # ;2 half dials France on the trunk without a check.
    local = await originate_local(pbx, FRANCE, LOCAL_CONTEXT)
    assert local.trunk_name == before.trunk_name
    trunk = await pbx.ari.dial_onward(local, FRANCE, dialstring=f"{FRANCE}@gamma")
    await eventually(lambda: pbx.ari.deletes, what="the hang-up")

    assert pbx.ari.deletes[0][0] == trunk.trunk_id
    leg = pbx.legs().get(trunk.trunk_id) or next(
        leg for leg in pbx.app.guard.recent if leg.id == trunk.trunk_id)
    assert not leg.guarded
    assert leg.protected
    assert leg.hangup_requested == "barred:international"
