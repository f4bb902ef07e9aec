"""Check decisions read back from the store when the daemon starts.

A call checked before a restart and dialled after it must link to its check.
Calls cross the FastAGI server and the ARI emulator over loopback, on a
manual clock, and the daemon restarts on the same SQLite file.
"""

import logging
import socket
import sqlite3
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy.engine import make_url

from callguard.metering.decisions import DECISION_LIFETIME
from callguard.rating import Increments
from callguard.store import DecisionRecord, Store
from callguard.windows import DAY
from live_support import Pbx, eventually, stored_calls

START = datetime(2024, 6, 12, 10, 0, tzinfo=timezone.utc)  # a Wednesday
OPTED_OUT = "01632960050"
OVERRIDDEN = "01632960060"
FRANCE = "0033123456789"

TRUNK = f"""\
[trunk gamma]
bar = premium, international
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
opt_out = {OPTED_OUT}

[number {OVERRIDDEN}]
trunk = gamma
allow = international
"""
RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,1.00,,60/60
33,France,0.60,0.10,30/6
"""


@pytest.fixture
async def pbx(tmp_path):
    started = Pbx(tmp_path, START, trunks=TRUNK, rates=RATES)
    await started.start()
    yield started
    await started.stop()


async def dial_across_restart(pbx: Pbx, number: str, callerid: str, *, pause: float = 5):
    """Check ``number``, restart callguard ``pause`` seconds later, then Dial() it.

    Returns the call and the check's variables once callguard has seen the
    trunk leg.
    """
    check = pbx.checker(number, callerid=callerid)

    async def check_then_restart(caller_id: str) -> bool:
        allowed = await check(caller_id)
        await pbx.app.stop()
        pbx.clock.advance(pause)
        await pbx.start_callguard()
        return allowed

    call = await pbx.ari.dial_out(number, callerid=callerid, dialstring=f"{number}@gamma",
                                  check=check_then_restart)
    await eventually(lambda: call.trunk_id in pbx.legs() or any(
        leg.id == call.trunk_id for leg in pbx.app.guard.recent), what="the trunk leg")
    return call, pbx.results[call.caller_id]


@pytest.mark.parametrize("callerid, reason", [(OVERRIDDEN, "ok"), (OPTED_OUT, "opted-out")])
async def test_leg_after_restart_linked(pbx, caplog, callerid, reason):
    # International is barred on the trunk: only the calling number allows the call.
    caplog.set_level(logging.INFO)
    call, result = await dial_across_restart(pbx, FRANCE, callerid)
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    assert result["CALLGUARD_REASON"] == reason
    assert "restored 1 decision of node" in caplog.text

    leg = pbx.legs()[call.trunk_id]
    assert leg.guarded
    assert leg.decision_uniqueid == call.caller_id
    assert leg.caller == callerid
    assert leg.e164 == "+33123456789"
    assert leg.protected == (reason != "opted-out")
    assert not leg.hangup_requested
    assert "skipped the check" not in caplog.text
    assert leg.tariff.rate == Decimal("0.60")
    assert leg.tariff.connection_fee == Decimal("0.10")
    assert leg.tariff.increments == Increments(30, 6)

    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs()[call.trunk_id].state == "up", what="the answer")
    pbx.clock.advance(60)
    await pbx.ari.hangup(call)
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    assert pbx.ari.deletes == []
    record = stored_calls(pbx)[call.trunk_id]
    assert record.guarded
    assert record.decision_uniqueid == call.caller_id
    # The connection fee and two 30 s blocks at 0.60 a minute.
    assert record.cost == Decimal("0.70")


async def test_leg_after_window_judged_alone(pbx, caplog):
    # A check older than the window is not read back, so the leg is judged on
    # its own number, without the calling number, and international is barred.
    pause = DECISION_LIFETIME.total_seconds() + 1
    call, result = await dial_across_restart(pbx, FRANCE, OVERRIDDEN, pause=pause)
    assert result["CALLGUARD_RESULT"] == "ALLOW"

    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up")
    assert pbx.ari.deletes[0][0] == call.trunk_id
    assert "skipped the check" in caplog.text


def stored_decision(uniqueid: str, decided_at: datetime, **changes) -> DecisionRecord:
    values = dict(decided_at=decided_at, trunk="gamma", uniqueid=uniqueid,
                  channel="PJSIP/1001-00000001", caller=OVERRIDDEN, dialled=FRANCE,
                  e164="+33123456789", category="international", result="ALLOW",
                  reason="ok", rate=Decimal("0.55"), node=socket.gethostname())
    return DecisionRecord(**(values | changes))


async def test_restore_reads_own_recent_rows(pbx, caplog):
    caplog.set_level(logging.INFO)
    await pbx.app.stop()
    now = pbx.clock.now()
    with Store(pbx.config.general.database) as store:
        store.add_decisions([
            stored_decision("1718200000.1", now - timedelta(minutes=61)),
            stored_decision("1718200000.2", now - timedelta(minutes=59)),
            stored_decision("1718200000.3", now - timedelta(minutes=2), node="pbx2"),
            stored_decision("-", now - timedelta(minutes=2)),
            stored_decision("1718200000.4", now - timedelta(minutes=2), trunk="-"),
            stored_decision("1718200000.5", now - timedelta(minutes=2), result="DENY",
                            reason="barred:international"),
            # The same channel checked again: the later decision counts.
            stored_decision("1718200000.5", now - timedelta(minutes=1)),
            stored_decision("1718200000.6", now, dialled="01632960123", e164=None,
                            category=None),
        ])
    await pbx.start_callguard()
    book = pbx.app.guard.decisions

    assert f"restored 4 decisions of node {socket.gethostname()}" in caplog.text
    assert len(book) == 3
    for missing in ("1718200000.1", "1718200000.3", "-", "1718200000.4"):
        assert book.get(missing) is None
    request, decision = book.get("1718200000.2")
    assert request.caller == OVERRIDDEN
    assert request.dialled == FRANCE
    assert decision.e164 == "+33123456789"
    assert decision.category == "international"
    # The tariff comes from the current deck, not from the row's rate of 0.55.
    assert decision.tariff.rate == Decimal("0.60")
    assert decision.tariff.connection_fee == Decimal("0.10")
    assert decision.tariff.increments == Increments(30, 6)
    _, again = book.get("1718200000.5")
    assert again.result == "ALLOW"
    _, without_e164 = book.get("1718200000.6")
    assert without_e164.e164 == ""
    assert without_e164.category == ""
    assert without_e164.tariff.rate == Decimal("1.00")


# Each breaks the read of the decisions but not the opening of the store.
BROKEN_STORES = {
    "column dropped": ("ALTER TABLE decisions DROP COLUMN node",
                       "no such column: decisions.node"),
    "row invalid": ("INSERT INTO decisions (id, decided_at, trunk, uniqueid, channel, "
                    "caller, dialled, result, reason, reserved, node) VALUES (1000, "
                    "'2024-06-12 09:59:00.000000', 'gamma', '', '', '', '0', 'ALLOW', "
                    f"'ok', 0, '{socket.gethostname()}')",
                    "uniqueid is empty"),
}


@pytest.mark.parametrize("statement, error", BROKEN_STORES.values(), ids=BROKEN_STORES)
async def test_restore_store_failure_logged(pbx, caplog, statement, error):
    await pbx.app.stop()
    path = make_url(pbx.config.general.database).database
    with sqlite3.connect(path) as connection:
        connection.execute(statement)
    connection.close()
    await pbx.start_callguard()

    assert "failed to read the recent decisions of node" in caplog.text
    assert error in caplog.text
    assert ("trunk legs dialled for checks made before this start are judged on their own "
            "number") in caplog.text
    # The daemon started and still decides checks.
    assert pbx.app.fastagi is not None
    _, result = await pbx.call("01632960123")
    assert result["CALLGUARD_RESULT"] == "ALLOW"


# Room for one first block of 1.00 a day, and not for a second.
TIGHT_TRUNK = """\
[trunk gamma]
bar = premium, international
daily_limit = 1.50
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""
UK_NUMBER = "01632960123"


@pytest.fixture(params=[True, False], ids=["ari", "no-ari"])
async def tight_pbx(request, tmp_path):
    started = Pbx(tmp_path, START, trunks=TIGHT_TRUNK, rates=RATES, ari_enabled=request.param)
    await started.start()
    yield started
    await started.stop()


async def restart(pbx: Pbx, pause: float = 5) -> None:
    await pbx.app.stop()
    pbx.clock.advance(pause)
    await pbx.start_callguard()


async def answer_for(pbx: Pbx, call, seconds: float) -> Decimal:
    """Answer ``call``, wait until its check's hold is released, hang it up
    ``seconds`` later and return the cost stored for it."""
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.app.reservations.get(call.caller_id) is None,
                     what="the release")
    pbx.clock.advance(seconds)
    await pbx.ari.hangup(call)
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()
    return stored_calls(pbx)[call.trunk_id].cost


async def test_reservation_held_across_restart(tight_pbx, caplog):
    # The first call is checked, callguard restarts, and a second check comes
    # before the first call's Dial(): the first block is still held for it.
    pbx = tight_pbx
    caplog.set_level(logging.INFO)
    first = pbx.checker(UK_NUMBER)
    second: dict[str, bool] = {}

    async def check_restart_check(caller_id: str) -> bool:
        allowed = await first(caller_id)
        await restart(pbx)
        second["allowed"] = await pbx.checker(UK_NUMBER)("1718200000.99")
        return allowed

    if not pbx.ari_enabled:
        await check_restart_check("1718200000.1")
        assert pbx.results["1718200000.1"]["CALLGUARD_RESULT"] == "ALLOW"
        assert second["allowed"] is False
        assert pbx.results["1718200000.99"]["CALLGUARD_REASON"] == "limit:daily"
        assert "and 1 reservation" in caplog.text
        return

    call = await pbx.ari.dial_out(UK_NUMBER, callerid="01632960010",
                                  dialstring=f"{UK_NUMBER}@gamma", check=check_restart_check)
    assert pbx.results[call.caller_id]["CALLGUARD_RESULT"] == "ALLOW"
    assert second["allowed"] is False
    assert pbx.results["1718200000.99"]["CALLGUARD_REASON"] == "limit:daily"
    assert "and 1 reservation" in caplog.text

    await eventually(lambda: call.trunk_id in pbx.legs(), what="the trunk leg")
    reservation = pbx.app.reservations.get(call.caller_id)
    assert reservation.dialled
    assert reservation.amount == Decimal("1.00")

    # Once the leg is answered, the reserved block becomes its first charged block.
    assert await answer_for(pbx, call, 30) == Decimal("1.00")


async def test_reservation_of_gone_channel_released(tight_pbx):
    # The checked channel was never dialled and is gone when callguard starts
    # again: ARI's channel list releases the hold, and without ARI it expires.
    pbx = tight_pbx
    assert await pbx.checker(UK_NUMBER)("1718200000.1")
    await restart(pbx)

    if pbx.ari_enabled:
        assert pbx.app.reservations.get("1718200000.1") is None
        assert await pbx.checker(UK_NUMBER)("1718200000.2")
        return

    assert pbx.app.reservations.get("1718200000.1").amount == Decimal("1.00")
    assert not await pbx.checker(UK_NUMBER)("1718200000.2")
    # 5 s passed in the restart: the hold expires reservation_seconds after the check.
    pbx.clock.advance(pbx.config.general.reservation_seconds - 5)
    assert await pbx.checker(UK_NUMBER)("1718200000.3")


async def test_reservation_not_restored_when_charged(pbx):
    # An answered call is restored from the store as a live call that already
    # pays its first block, so its reservation is not held again.
    call, _ = await pbx.call(UK_NUMBER, callerid="01632960010")
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs()[call.trunk_id].state == "up", what="the answer")
    assert pbx.app.reservations.get(call.caller_id) is None
    await restart(pbx)

    assert call.trunk_id in pbx.legs()
    assert pbx.app.reservations.get(call.caller_id) is None
    assert len(pbx.app.reservations) == 0


async def test_restore_keeps_later_denial(tmp_path):
    # A channel checked again and denied has no reservation after the restart.
    # Without ARI, no channel list releases the reservations of missing channels.
    pbx = Pbx(tmp_path, START, trunks=TRUNK, rates=RATES, ari_enabled=False)
    await pbx.start()
    try:
        restored, reservations, now = await restore_denial_rows(pbx)
    finally:
        await pbx.stop()

    assert reservations.get("1718200000.7") is None
    # Older than reservation_seconds: expired before the restart.
    assert reservations.get("1718200000.9") is None
    assert restored.amount == Decimal("0.40")
    assert restored.created_at == now - timedelta(seconds=10)
    assert restored.expires_at == now + timedelta(seconds=110)


async def restart_with_decisions(pbx: Pbx, decisions: list[DecisionRecord]) -> None:
    """Stop callguard, store ``decisions`` as its own and start it again."""
    await pbx.app.stop()
    with Store(pbx.config.general.database) as store:
        store.add_decisions(decisions)
    await pbx.start_callguard()


async def restore_denial_rows(pbx: Pbx):
    """Store decisions of three channels, start callguard again and return its
    reservation for the second channel, all reservations and the time of the start."""
    now = pbx.clock.now()
    await restart_with_decisions(pbx, [
        stored_decision("1718200000.7", now - timedelta(seconds=30),
                        reserved=Decimal("0.40")),
        stored_decision("1718200000.7", now - timedelta(seconds=20), result="DENY",
                        reason="barred:international"),
        stored_decision("1718200000.8", now - timedelta(seconds=10),
                        reserved=Decimal("0.40")),
        stored_decision("1718200000.9", now - timedelta(seconds=200),
                        reserved=Decimal("0.40")),
    ])

    reservations = pbx.app.reservations
    return reservations.get("1718200000.8"), reservations, now


# Room for two calls at once and for two first blocks of 1.00 a day.
CAPPED_TRUNK = """\
[trunk gamma]
bar = premium, international
daily_limit = 2.50
max_concurrent_calls = 2
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""


@pytest.mark.parametrize("tech", ["PJSIP", "Local"])
async def test_reservation_of_leg_dialled_before_restart(tmp_path, tech):
    # The trunk leg rang before the restart, so no Dial event after it links
    # the leg to its check. The check's hold must not count a second time,
    # neither as a call in progress nor, once the leg is answered, as money.
    pbx = Pbx(tmp_path, START, trunks=CAPPED_TRUNK, rates=RATES)
    await pbx.start()
    try:
        call = await pbx.ari.dial_out(UK_NUMBER, tech=tech, dialstring=f"{UK_NUMBER}@gamma",
                                      check=pbx.checker(UK_NUMBER))
        leg = call
        if tech == "Local":
            leg = await pbx.ari.dial_onward(call, UK_NUMBER, dialstring=f"{UK_NUMBER}@gamma")
        await eventually(lambda: leg.trunk_id in pbx.legs(), what="the trunk leg")
        await restart(pbx)

        assert leg.trunk_id in pbx.legs()
        # Linked through the caller's extension, as a Dial event would link
        # it, also past a Local pair: the hold stays until the answer and
        # counts once.
        assert pbx.app.reservations.get(call.caller_id).dialled
        assert await pbx.checker(UK_NUMBER)("1718200000.2")

        await pbx.ari.answer(leg)
        await eventually(lambda: pbx.legs()[leg.trunk_id].state == "up", what="the answer")
        assert pbx.app.reservations.get(call.caller_id) is None
        # Only the second check holds a first block now.
        assert pbx.app.reservations.held("gamma", DAY, "2024-06-12") == Decimal("1.00")
    finally:
        await pbx.stop()


async def test_restore_later_check_on_removed_trunk(tmp_path):
    # The channel was checked again for a trunk since removed from the config.
    # That later check replaced the first check's hold, so none comes back.
    pbx = Pbx(tmp_path, START, trunks=TRUNK, rates=RATES, ari_enabled=False)
    await pbx.start()
    try:
        now = pbx.clock.now()
        await restart_with_decisions(pbx, [
            stored_decision("1718200000.7", now - timedelta(seconds=30),
                            reserved=Decimal("0.40")),
            stored_decision("1718200000.7", now - timedelta(seconds=20), trunk="delta",
                            reserved=Decimal("0.40")),
        ])

        assert "delta" not in pbx.config.trunks
        assert pbx.app.reservations.get("1718200000.7") is None
        assert len(pbx.app.reservations) == 0
    finally:
        await pbx.stop()


async def test_ringing_leg_linked_after_restart(pbx):
    # The call rings when callguard restarts. The channel list shows no
    # BRIDGEPEER yet, so the leg is linked to its check through the caller's
    # extension and caller ID, and the override that allowed it still counts.
    call = await pbx.ari.dial_out(FRANCE, callerid=OVERRIDDEN, dialstring=f"{FRANCE}@gamma",
                                  check=pbx.checker(FRANCE, callerid=OVERRIDDEN))
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the trunk leg")
    assert pbx.results[call.caller_id]["CALLGUARD_RESULT"] == "ALLOW"
    await restart(pbx)

    await eventually(lambda: call.trunk_id in pbx.legs(), what="the adopted leg")
    leg = pbx.legs()[call.trunk_id]
    assert leg.guarded
    assert leg.decision_uniqueid == call.caller_id
    assert not leg.hangup_requested
    assert pbx.app.reservations.get(call.caller_id).dialled

    # The connection fee and two 30 s blocks at 0.60 a minute.
    assert await answer_for(pbx, call, 60) == Decimal("0.70")
    assert pbx.ari.deletes == []


async def test_ringing_leg_without_caller_id_linked(pbx):
    # A caller without caller ID: the leg's connected line is empty as well.
    call = await pbx.ari.dial_out(UK_NUMBER, callerid="", dialstring=f"{UK_NUMBER}@gamma",
                                  check=pbx.checker(UK_NUMBER, callerid=""))
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the trunk leg")
    await restart(pbx)

    await eventually(lambda: call.trunk_id in pbx.legs(), what="the adopted leg")
    assert pbx.legs()[call.trunk_id].decision_uniqueid == call.caller_id


async def test_ringing_legs_of_two_callers_not_linked(pbx):
    # Two phones ring the same number with the same caller ID: neither leg can
    # be distinguished, so each is judged on its own number, as before.
    calls = [await pbx.ari.dial_out(UK_NUMBER, caller_endpoint=endpoint,
                                    callerid="01632960010", dialstring=f"{UK_NUMBER}@gamma",
                                    check=pbx.checker(UK_NUMBER, endpoint=endpoint))
             for endpoint in ("1001", "1002")]
    await eventually(lambda: all(c.trunk_id in pbx.legs() for c in calls), what="the legs")
    await restart(pbx)

    await eventually(lambda: all(c.trunk_id in pbx.legs() for c in calls),
                     what="the adopted legs")
    for call in calls:
        leg = pbx.legs()[call.trunk_id]
        assert not leg.guarded
        assert not leg.hangup_requested
        # Each leg pays its own first block when answered, so no hold stays.
        assert pbx.app.reservations.get(call.caller_id) is None


async def test_ringing_legs_linked_to_own_callers(pbx):
    # One phone sends a caller ID and the other none. Each leg shows its
    # caller's extension as caller ID and its caller's caller ID as connected
    # line, so each is linked to the phone that dialled it.
    calls = [await pbx.ari.dial_out(UK_NUMBER, caller_endpoint=endpoint, callerid=callerid,
                                    dialstring=f"{UK_NUMBER}@gamma",
                                    check=pbx.checker(UK_NUMBER, endpoint=endpoint,
                                                      callerid=callerid))
             for endpoint, callerid in (("1001", "01632960010"), ("1002", ""))]
    await eventually(lambda: all(c.trunk_id in pbx.legs() for c in calls), what="the legs")
    await restart(pbx)

    await eventually(lambda: all(c.trunk_id in pbx.legs() for c in calls),
                     what="the adopted legs")
    for call in calls:
        assert pbx.legs()[call.trunk_id].decision_uniqueid == call.caller_id


async def test_ringing_leg_of_unchecked_phone_not_linked(pbx):
    # Two phones send the same caller ID, and only the first one's call was
    # checked. The second phone's leg must not be linked to the first phone's
    # check, whose override allows France: no check allowed it.
    checked = await pbx.ari.dial_out(FRANCE, callerid=OVERRIDDEN,
                                     dialstring=f"{FRANCE}@gamma",
                                     check=pbx.checker(FRANCE, callerid=OVERRIDDEN))
    # The channel stays up although callguard requests its hang-up.
    pbx.ari.ignore_deletes = 10
    unchecked = await pbx.ari.dial_out(FRANCE, caller_endpoint="1002", callerid=OVERRIDDEN,
                                       dialstring=f"{FRANCE}@gamma")
    await eventually(lambda: unchecked.trunk_id in pbx.legs(), what="the unchecked leg")
    assert pbx.legs()[unchecked.trunk_id].hangup_requested
    await restart(pbx)

    await eventually(lambda: unchecked.trunk_id in pbx.legs(), what="the adopted leg")
    leg = pbx.legs()[unchecked.trunk_id]
    assert leg.decision_uniqueid != checked.caller_id
    assert not leg.guarded
    assert leg.hangup_requested == "barred:international"


async def test_local_leg_without_prefix_linked(tmp_path):
    # The phone dials 9 and the number, and the dialplan dials the number
    # without the 9 through a Local pair. The trunk leg's extension is the
    # Local one, so its caller is found through the pair's ;1 half, which
    # shows the phone's extension, and the override still allows the call.
    pbx = Pbx(tmp_path, START, trunks=TRUNK, rates=RATES, general="outside_line_prefix = 9")
    await pbx.start()
    try:
        dialled = "9" + FRANCE
        call = await pbx.ari.dial_out(dialled, callerid=OVERRIDDEN, tech="Local",
                                      dialstring=f"{FRANCE}@sink",
                                      check=pbx.checker(dialled, callerid=OVERRIDDEN))
        leg = await pbx.ari.dial_onward(call, FRANCE, dialstring=f"{FRANCE}@gamma")
        await eventually(lambda: leg.trunk_id in pbx.legs(), what="the trunk leg")
        assert pbx.legs()[leg.trunk_id].decision_uniqueid == call.caller_id
        # The channel stays up although callguard requests its hang-up.
        pbx.ari.ignore_deletes = 10
        await restart(pbx)

        await eventually(lambda: leg.trunk_id in pbx.legs(), what="the adopted leg")
        adopted = pbx.legs()[leg.trunk_id]
        assert adopted.decision_uniqueid == call.caller_id
        assert adopted.guarded
        assert not adopted.hangup_requested
    finally:
        await pbx.stop()
