"""Following trunk legs through ARI events: which channels cost money, and when."""

import asyncio
import json
import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from callguard.metering.guard import GONE_EVENT_WAIT_SECONDS
from callguard.policy.decision import CallRequest
from callguard.store import Store
from live_support import eventually, Pbx, stored_calls, stored_hangups

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
TODAY = "2024-06-14"

RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,1.00,,60/60
449,United Kingdom premium rate,3.00,,60/60
"""

TRUNKS = """\
[trunk gamma]
bar = premium, international
daily_limit = 100.00
max_call_seconds = {max_call_seconds}
channel_pattern = PJSIP/gamma-*
rates = rates.csv

[trunk delta]
daily_limit = 100.00
channel_pattern = PJSIP/delta-*
rates = rates.csv

[trunk sink]
channel_pattern = Local/*@sink-*
rates = rates.csv
"""


@pytest.fixture
async def pbx(tmp_path):
    pbx = Pbx(tmp_path, NOW, trunks=TRUNKS.format(max_call_seconds=7200), rates=RATES)
    await pbx.start()
    yield pbx
    await pbx.stop()


async def answered(pbx, number="01632960123", **kwargs):
    call, result = await pbx.call(number, **kwargs)
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await pbx.ari.answer(call)
    await eventually(lambda: call.trunk_id in pbx.legs()
                     and pbx.legs()[call.trunk_id].state == "up", what="the answer")
    return call


async def test_inbound_call_costs_nothing(pbx):
    call = await pbx.ari.inbound(trunk="gamma")
    await pbx.ari.answer(call)
    pbx.clock.advance(600)
    await pbx.ari.hangup(call, side="trunk")
    await asyncio.sleep(0.1)
    await pbx.app.guard.drain()

    assert pbx.legs() == {}
    assert stored_calls(pbx) == {}
    assert pbx.spend("day", TODAY) == Decimal(0)


async def test_unanswered_call_releases_reservation(pbx):
    call, _ = await pbx.call("01632960123")
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")
    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal("1.000000")

    await pbx.ari.fail(call)
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal(0)
    assert stored_calls(pbx)[call.trunk_id].cost == Decimal(0)
    assert pbx.spend("day", TODAY) == Decimal(0)


async def test_answered_call_costs_its_blocks(pbx):
    call = await answered(pbx)
    pbx.clock.advance(125)
    await pbx.ari.hangup(call)
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    record = stored_calls(pbx)[call.trunk_id]
    assert record.cost == Decimal("3.00")
    assert record.guarded
    assert record.decision_uniqueid == call.caller_id
    assert record.hangup_cause == 16
    assert pbx.spend("day", TODAY) == Decimal("3.00")
    assert pbx.app.reservations.held("gamma", "day", TODAY) == Decimal(0)


async def test_unguarded_barred_leg_hung_up(pbx):
    # A Dial that never passed the check: a context without the snippet.
    call = await pbx.ari.dial_out("09011234567", dialstring="09011234567@gamma")
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up")
    await pbx.app.guard.drain()

    assert pbx.ari.deletes[0][0] == call.trunk_id
    hangup = stored_hangups(pbx)[0]
    assert hangup.reason == "barred:premium"
    assert hangup.number == "+449011234567"


async def test_unguarded_allowed_leg_metered(pbx):
    call = await pbx.ari.dial_out("01632960123", dialstring="01632960123@gamma")
    await pbx.ari.answer(call)
    await eventually(lambda: call.trunk_id in pbx.legs()
                     and pbx.legs()[call.trunk_id].state == "up", what="the answer")
    pbx.clock.advance(61)
    await pbx.ari.hangup(call)
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    record = stored_calls(pbx)[call.trunk_id]
    assert not record.guarded
    assert record.cost == Decimal("2.00")
    assert pbx.ari.deletes == []


async def test_forward_to_premium_hung_up(pbx):
    call, _ = await pbx.call("01632960123")
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")
    forwarded = await pbx.ari.forward(call, "09061234567")
    await eventually(lambda: len(pbx.ari.deletes) == 1, timeout=5, what="the hang-up")
    await pbx.app.guard.drain()

    assert pbx.ari.deletes[0][0] == forwarded.trunk_id
    assert stored_hangups(pbx)[0].reason == "barred:premium"


async def test_originated_leg_metered(pbx):
    call = await pbx.ari.originate_out("01632960123", trunk="gamma")
    await pbx.ari.answer(call)
    await eventually(lambda: call.trunk_id in pbx.legs()
                     and pbx.legs()[call.trunk_id].state == "up", what="the originated leg")
    leg = pbx.legs()[call.trunk_id]

    assert leg.state == "up"
    assert not leg.guarded


async def test_max_call_seconds_hangs_up(tmp_path):
    pbx = Pbx(tmp_path, NOW, trunks=TRUNKS.format(max_call_seconds=120), rates=RATES)
    await pbx.start()
    try:
        call = await answered(pbx)
        pbx.clock.advance(119)
        await asyncio.sleep(0.05)
        assert pbx.ari.deletes == []
        pbx.clock.advance(1)
        await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up")
        await eventually(lambda: not pbx.legs(), what="the end")
        await pbx.app.guard.drain()
        hangup = stored_hangups(pbx)[0]
        record = stored_calls(pbx)[call.trunk_id]
    finally:
        await pbx.stop()

    assert hangup.reason == "limit:duration"
    assert hangup.requested_at == NOW + timedelta(seconds=120)
    assert record.cost == Decimal("2.00")


async def test_trunk_mismatch_leg_trunk_pays(pbx, caplog):
    # Checked for gamma, dialled out on delta: delta pays, with a warning.
    call, result = await pbx.call("01632960123", checked_trunk="gamma", dial_trunk="delta")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await pbx.ari.answer(call)
    await eventually(lambda: call.trunk_id in pbx.legs()
                     and pbx.legs()[call.trunk_id].state == "up", what="the answer")
    pbx.clock.advance(30)
    await pbx.ari.hangup(call)
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    record = stored_calls(pbx)[call.trunk_id]
    assert record.trunk == "delta"
    assert record.cost == Decimal("1.00")
    assert pbx.spend("day", TODAY, trunk="delta") == Decimal("1.00")
    assert pbx.spend("day", TODAY, trunk="gamma") == Decimal(0)
    assert any("checked for trunk gamma but dialled on delta" in r.getMessage()
               for r in caplog.records if r.levelname == "WARNING")


async def test_delete_404_finalises_once(pbx):
    call = await answered(pbx)
    pbx.clock.advance(30)
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    await pbx.ari.hangup(call)        # gone from Asterisk, unseen by callguard
    leg = pbx.legs()[call.trunk_id]

    await pbx.app.guard._hang_up(leg, "limit:daily", 16)
    await pbx.app.guard.drain()
    pbx.ari.allow_events()
    await eventually(lambda: pbx.app.ari.connected, timeout=10, what="the reconnect")
    await asyncio.sleep(0.1)
    await pbx.app.guard.drain()

    assert pbx.legs() == {}
    assert stored_hangups(pbx)[0].outcome == "gone"
    assert pbx.spend("day", TODAY) == Decimal("1.00")


async def test_delete_404_waits_for_end_event(tmp_path):
    # Per-second billing. The far end hangs up 2 s before max_call_seconds,
    # but its events reach callguard only after the DELETE found no channel.
    rates = RATES.replace("1.00,,60/60", "0.60,,1/1")
    pbx = Pbx(tmp_path, NOW, trunks=TRUNKS.format(max_call_seconds=120), rates=rates)
    await pbx.start()
    try:
        call = await answered(pbx)
        pbx.clock.advance(118)
        await pbx.settle()
        deliver = pbx.ari.hangup_late(call, "trunk", 16)
        pbx.clock.advance(2)
        await eventually(lambda: pbx.ari.deletes, what="the hang-up")
        await pbx.app.guard.drain()
        await deliver()
        await eventually(lambda: not pbx.legs(), what="the end")
        await pbx.app.guard.drain()
        stored = stored_calls(pbx)[call.trunk_id]
        outcome = stored_hangups(pbx)[0].outcome
    finally:
        await pbx.stop()

    assert outcome == "gone"
    assert stored.ended_at == NOW + timedelta(seconds=118)
    assert stored.hangup_cause == 16
    assert stored.cost == Decimal("1.18")


async def test_failed_deletes_retried(tmp_path):
    pbx = Pbx(tmp_path, NOW, trunks=TRUNKS.format(max_call_seconds=60), rates=RATES)
    await pbx.start()
    try:
        call = await answered(pbx)
        pbx.ari.fail_deletes = 10      # more than the client's own retries
        pbx.clock.advance(60)
        await eventually(lambda: stored_hangups(pbx), what="the failed hang-up")
        await pbx.app.guard.drain()
        first = stored_hangups(pbx)[0]
        pbx.ari.fail_deletes = 0
        pbx.clock.advance(2)
        await eventually(lambda: not pbx.legs(), timeout=5, what="the retried hang-up")
        await pbx.app.guard.drain()
        outcomes = [h.outcome for h in stored_hangups(pbx)]
    finally:
        await pbx.stop()

    assert first.outcome == "failed"
    assert "requested" in outcomes
    assert call.trunk_id in [channel for channel, _ in pbx.ari.deletes]


CAPTURED_AT = datetime(2026, 12, 4, 15, 16, 45, tzinfo=timezone.utc)


@pytest.fixture
async def recorded(tmp_path):
    """A PBX at the time of the recordings, with the recorded caller's check noted."""
    pbx = Pbx(tmp_path, CAPTURED_AT, trunks=TRUNKS.format(max_call_seconds=7200),
              rates=RATES)
    await pbx.start()
    request = CallRequest(trunk="sink", dialled="00441632960123", uniqueid="1796397405.1")
    decision = await pbx.app.engine.decide(request)
    pbx.app.guard.note_decision(request, decision)
    yield pbx
    await pbx.stop()


def replay(pbx, name: str) -> list[dict]:
    """Return the recorded events, the dialled 0044123456 (too short to be a UK
    number) made a valid 00441632960123 everywhere it appears."""
    text = (FIXTURES / name).read_text().replace("0044123456", "00441632960123")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


async def test_recorded_call_replayed_twice(recorded):
    pbx = recorded
    # The recorded call runs on Local channels: its trunk leg is the Dial peer
    # Local/...@sink-00000001;1, matched by trunk "sink".
    events = replay(pbx, "ari-events-subscribeall.jsonl")
    tracker = pbx.app.tracker
    for event in events + events:
        tracker.on_event(event)
    await pbx.app.guard.drain()

    calls = stored_calls(pbx)
    assert list(calls) == ["1796397406.2"]
    call = calls["1796397406.2"]
    assert call.trunk == "sink"
    assert call.state == "ended"
    assert call.hangup_cause == 16
    assert call.cost == Decimal("1.00")     # answered 15:16:46.162, ended 15:16:49.676


async def test_local_second_half_not_a_leg(recorded):
    pbx = recorded
    events = replay(pbx, "ari-events-subscribeall.jsonl")
    up_at = next(i for i, e in enumerate(events)
                 if e["type"] == "ChannelStateChange" and e["channel"]["state"] == "Up")
    for event in events[:up_at + 3]:
        pbx.app.tracker.on_event(event)

    assert list(pbx.legs()) == ["1796397406.2"]


async def test_out_of_order_end_before_answer(recorded):
    pbx = recorded
    events = replay(pbx, "ari-events-subscribeall.jsonl")
    # Everything up to the trunk leg's Dial, then every ChannelDestroyed, then
    # the rest (the answer among it) late, and some of it twice.
    dial_at = next(i for i, e in enumerate(events)
                   if e["type"] == "Dial" and e["peer"]["name"].startswith("Local/")
                   and "@sink-" in e["peer"]["name"])
    destroyed = [e for e in events if e["type"] == "ChannelDestroyed"]
    rest = [e for e in events[dial_at + 1:] if e["type"] != "ChannelDestroyed"]
    for event in events[:dial_at + 1] + destroyed + rest + rest:
        pbx.app.tracker.on_event(event)
    await pbx.app.guard.drain()

    assert pbx.legs() == {}
    assert stored_calls(pbx)["1796397406.2"].cost == Decimal(0)


async def test_malformed_dial_snapshots_still_followed(pbx):
    # A Dial whose dialstring shows no number and whose channel snapshots carry
    # a dialplan that is not an object: the leg is still followed.
    recorded = replay(pbx, "ari-events-subscribeall.jsonl")
    dial = next(e for e in recorded if e["type"] == "Dial" and e.get("caller")
                and e["dialstatus"] == "")
    leg = dict(dial["peer"], id="1718355600.61", name="PJSIP/gamma-00000061",
               dialplan="outbound,999,1")
    event = dict(dial, peer=leg, dialstring="gamma",
                 caller=dict(dial["caller"], id="1718355600.60", dialplan=["999"]))

    pbx.app.tracker.on_event(event)

    followed = pbx.legs()["1718355600.61"]
    assert followed.number == ""
    assert followed.protected


async def test_dial_after_reconcile_links_adopted_leg(pbx):
    # A call checked and dialled while the reconciliation ran: the leg is first
    # adopted from GET /ari/channels, then its held-back Dial links it.
    request = CallRequest(trunk="gamma", dialled="01632960123", uniqueid="1718355600.50")
    decision = await pbx.app.engine.decide(request)
    pbx.app.guard.note_decision(request, decision)

    recorded = replay(pbx, "ari-events-subscribeall.jsonl")
    dial = next(e for e in recorded if e["type"] == "Dial" and e.get("caller")
                and e["dialstatus"] == "")
    leg = dict(dial["peer"], id="1718355600.51", name="PJSIP/gamma-00000051",
               state="Ring")
    leg["dialplan"] = dict(leg["dialplan"], exten="", app_name="AppDial")
    pbx.app.tracker.reconcile([leg])
    adopted = pbx.legs()["1718355600.51"]
    assert not adopted.guarded

    event = dict(dial, peer=leg, dialstring="01632960123@gamma",
                 caller=dict(dial["caller"], id="1718355600.50"))
    pbx.app.tracker.on_event(event)

    assert adopted.guarded
    assert adopted.e164 == "+441632960123"
    assert pbx.app.reservations.pending_count("gamma") == 0


async def test_inbound_call_while_blind_not_adopted(pbx):
    # A call from the trunk to a DID that looks like a premium number.
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    call = await pbx.ari.inbound(trunk="gamma", callerid="01632960999", exten="09061234567")
    await pbx.ari.answer(call)
    pbx.ari.allow_events()
    await eventually(lambda: pbx.app.ari.connected, timeout=10, what="the reconnect")
    await asyncio.sleep(0.1)
    await pbx.app.guard.drain()

    assert pbx.ari.deletes == []
    assert pbx.legs() == {}


async def test_originate_ringing_while_blind_adopted(pbx):
    # Its Dial event was lost, but it still runs AppDial2 at the reconnect. The
    # snapshot of a PJSIP leg shows no dialled number, so it pays the top rate.
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    call = await pbx.ari.originate_out("09061234567", trunk="gamma")
    pbx.ari.allow_events()
    await eventually(lambda: call.trunk_id in pbx.legs(), timeout=10, what="the adoption")

    leg = pbx.legs()[call.trunk_id]
    assert not leg.guarded
    assert leg.tariff.rate == Decimal("3.00")


async def test_trunk_removed_while_call_rings(pbx, caplog):
    call, result = await pbx.call("01632960123", checked_trunk="delta", dial_trunk="delta")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")
    pbx.path.write_text(pbx.path.read_text().replace("[trunk delta]", "[trunk removed]")
                        .replace("channel_pattern = PJSIP/delta-*",
                                 "channel_pattern = PJSIP/removed-*"))
    assert await pbx.app.reload()

    await pbx.ari.answer(call)
    pbx.clock.advance(61)
    await asyncio.sleep(0.05)
    await pbx.ari.hangup(call)
    await eventually(lambda: call.trunk_id not in pbx.app.guard.legs, what="the end")
    await pbx.app.guard.drain()

    assert "on_event failed" not in caplog.text
    assert stored_calls(pbx)[call.trunk_id].cost == Decimal("2.00")


async def test_barred_hangup_retried_after_failure(pbx):
    # Asterisk answers the first DELETEs with 500, beyond the REST client's own
    # retries; no limit timer comes back to a barred call, so the guard must.
    call, _ = await pbx.call("01632960123")
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")
    pbx.ari.fail_deletes = 10
    forwarded = await pbx.ari.forward(call, "09061234567")
    await eventually(lambda: stored_hangups(pbx), timeout=10, what="the failed hang-up")
    await pbx.app.guard.drain()
    failed = len(pbx.ari.deletes)
    pbx.ari.fail_deletes = 0

    pbx.clock.advance(2)
    await eventually(lambda: len(pbx.ari.deletes) > failed, what="the second request")
    await pbx.app.guard.drain()

    outcomes = sorted(hangup.outcome for hangup in stored_hangups(pbx))
    assert outcomes == ["failed", "requested"]
    assert pbx.ari.deletes[-1][0] == forwarded.trunk_id


async def test_failed_hangups_back_off(pbx, caplog):
    call, _ = await pbx.call("01632960123")
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")
    pbx.ari.fail_deletes = 1000
    await pbx.ari.forward(call, "09061234567")
    await eventually(lambda: len(stored_hangups(pbx)) == 1, timeout=10,
                     what="the first failed hang-up")

    attempts = []
    for _ in range(15):  # 30 s of the manual clock, 2 s at a time
        pbx.clock.advance(2)
        await asyncio.sleep(0.01)
        await pbx.app.guard.drain()
        attempts.append(len(stored_hangups(pbx)))

    # Waits of 2, 4, 8 and 16 s: the hang-up is requested again at 2, 6, 14 and 30 s.
    assert attempts[-1] == 5
    assert attempts[0] == 2
    assert attempts[1] == 2
    failures = [r for r in caplog.records if "hang-up of" in r.getMessage()
                and "failed, trying again" in r.getMessage()]
    assert len(failures) == 5


LOW_LIMIT_TRUNK = """\
[trunk gamma]
bar = premium, international
daily_limit = 3.00
max_call_seconds = 600
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""


async def test_emergency_answered_while_blind_not_hung_up(tmp_path):
    # The snippet sends 999 straight to Dial(PJSIP/999@gamma). Read from the
    # calling phone's caller ID instead of that Dial, it would be an ordinary
    # call, hung up at the 3.00 limit.
    pbx = Pbx(tmp_path, NOW, trunks=LOW_LIMIT_TRUNK, rates=RATES)
    await pbx.start()
    try:
        await pbx.ari.drop_events(refuse_for=math.inf)
        await eventually(lambda: not pbx.app.ari.connected, what="the drop")
        call = await pbx.ari.dial_out("999", callerid="01632960010", dialstring="999@gamma")
        await pbx.ari.answer(call)
        pbx.ari.allow_events()
        await eventually(lambda: call.trunk_id in pbx.legs(), timeout=10, what="the adoption")
        for _ in range(12):  # past the limit and max_call_seconds
            pbx.clock.advance(60)
            await asyncio.sleep(0.02)
        await pbx.app.guard.drain()
        leg = pbx.legs()[call.trunk_id]
    finally:
        await pbx.stop()

    assert leg.number == "999"
    assert leg.category == "emergency"
    assert pbx.ari.deletes == []


async def test_forwarded_opted_out_leg_kept(tmp_path):
    # The check allows the opted-out caller without limits. The carrier then
    # forwards the call to another number, which is judged on its own, and
    # that judgement keeps the opt-out, as the check and a restart do.
    trunks = LOW_LIMIT_TRUNK + "opt_out = 01632960050\n"
    pbx = Pbx(tmp_path, NOW, trunks=trunks, rates=RATES)
    await pbx.start()
    try:
        call, result = await pbx.call("01632960123", callerid="01632960050")
        await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")
        forwarded = await pbx.ari.forward(call, "01632960124")
        await pbx.ari.answer(forwarded)
        await eventually(lambda: forwarded.trunk_id in pbx.legs()
                         and pbx.legs()[forwarded.trunk_id].state == "up",
                         what="the answer")
        leg = pbx.legs()[forwarded.trunk_id]
        # 1.00 a minute against the 3.00 limit: a protected leg would be hung
        # up at 179 s, a second before its fourth block.
        for _ in range(5):
            pbx.clock.advance(60)
            await asyncio.sleep(0.02)
        await pbx.app.guard.drain()
        deletes = list(pbx.ari.deletes)
        if forwarded.trunk_id in pbx.ari.channels:
            await pbx.ari.hangup(forwarded)
        await eventually(lambda: not pbx.legs(), what="the end")
        await pbx.app.guard.drain()
        record = stored_calls(pbx)[forwarded.trunk_id]
    finally:
        await pbx.stop()

    assert result["CALLGUARD_REASON"] == "opted-out"
    assert not leg.protected
    assert deletes == []
    # 300 s at 60/60 bills the blocks at 0, 60, 120, 180 and 240 s: 5 * 1.00.
    assert record.cost == Decimal("5.00")


async def test_premium_answered_while_blind_hung_up(pbx):
    # Dialled and answered while events were lost, without a check.
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    call = await pbx.ari.dial_out("09061234567", callerid="01632960010",
                                  dialstring="09061234567@gamma")
    await pbx.ari.answer(call)
    pbx.ari.allow_events()
    await eventually(lambda: len(pbx.ari.deletes) == 1, timeout=10, what="the hang-up")
    await pbx.app.guard.drain()

    assert pbx.ari.deletes[0][0] == call.trunk_id
    assert stored_hangups(pbx)[0].reason == "barred:premium"


async def restart_after_lost_hangup(pbx, before_restart=lambda: None):
    """Kill callguard while Asterisk rejects its hang-up of a call, start it again
    with DELETEs accepted, and return the index of its first new DELETE and the
    latest stored hang-up. ``before_restart`` runs while callguard is down."""
    await eventually(lambda: stored_hangups(pbx), what="the failed hang-up")
    await pbx.app.recorder.stop()
    await pbx.app.guard.drain()
    await pbx.crash()
    before_restart()
    pbx.ari.fail_deletes = 0
    requested = len(pbx.ari.deletes)

    await pbx.start_callguard()
    await eventually(lambda: len(pbx.ari.deletes) > requested, what="the hang-up")
    await eventually(lambda: not pbx.legs(), what="the end")
    await pbx.app.guard.drain()
    return requested, stored_hangups(pbx)[0]


async def test_restart_hangs_up_barred_leg(tmp_path):
    # A premium call that skipped the check is answered while Asterisk
    # rejects every DELETE, and callguard is killed before a retry. The
    # store keeps the call up but not the hang-up it still owed.
    pbx = Pbx(tmp_path, NOW, trunks=TRUNKS.format(max_call_seconds=7200), rates=RATES)
    await pbx.start()
    try:
        pbx.ari.fail_deletes = 1000
        call = await pbx.ari.dial_out("09061234567", callerid="01632960010",
                                      dialstring="09061234567@gamma")
        await pbx.ari.answer(call)
        await eventually(lambda: call.trunk_id in pbx.legs()
                         and pbx.legs()[call.trunk_id].state == "up", what="the answer")
        # Found up in Asterisk, the call is judged again and hung up at once,
        # long before the 100.00 daily limit: 3.00 a minute lasts 33 minutes.
        requested, hangup = await restart_after_lost_hangup(pbx)
    finally:
        await pbx.stop()

    assert pbx.ari.deletes[requested][0] == call.trunk_id
    assert hangup.reason == "barred:premium"
    assert hangup.outcome == "requested"


async def test_restored_leg_barred_despite_block(tmp_path):
    # Checked for delta, which allows premium numbers, but dialled on gamma,
    # which bars them: the leg is judged on gamma, and its hang-up fails until
    # callguard is killed. The caller is blocked before the restart, as one
    # who dials premium numbers is. The block must not hide the barring.
    pbx = Pbx(tmp_path, NOW, trunks=TRUNKS.format(max_call_seconds=7200), rates=RATES)

    def block_caller():
        with Store(pbx.config.general.database) as store:
            store.add_block("caller", "+441632960010", "premium fraud", NOW, None, "admin")

    await pbx.start()
    try:
        pbx.ari.fail_deletes = 1000
        call, result = await pbx.call("09061234567", checked_trunk="delta",
                                      dial_trunk="gamma")
        assert result["CALLGUARD_RESULT"] == "ALLOW"
        await pbx.ari.answer(call)
        requested, hangup = await restart_after_lost_hangup(pbx, block_caller)
    finally:
        await pbx.stop()

    assert pbx.ari.deletes[requested][0] == call.trunk_id
    assert hangup.reason == "barred:premium"
    assert hangup.outcome == "requested"


async def test_failed_limit_hangups_back_off(tmp_path):
    pbx = Pbx(tmp_path, NOW, trunks=TRUNKS.format(max_call_seconds=120), rates=RATES)
    await pbx.start()
    try:
        await answered(pbx)
        pbx.ari.fail_deletes = 1000
        pbx.clock.advance(120)
        await eventually(lambda: len(stored_hangups(pbx)) == 1, timeout=10,
                         what="the first failed hang-up")
        await asyncio.sleep(0.3)  # the manual clock does not move, so no new request
        await pbx.app.guard.drain()
        counts = [len(stored_hangups(pbx))]
        for _ in range(3):  # waits of 2 s, then 4 s
            pbx.clock.advance(2)
            await asyncio.sleep(0.05)
            await pbx.app.guard.drain()
            counts.append(len(stored_hangups(pbx)))
    finally:
        pbx.ari.fail_deletes = 0
        await pbx.stop()

    assert counts == [1, 2, 2, 3]


async def stuck_at_max_duration(tmp_path):
    """Start a PBX whose trunk allows 60 s calls, and answer a call there whose
    channel stays up after the first two hang-ups that Asterisk accepts.

    Returns the PBX and the call once the first hang-up, at 60 s, was sent.
    """
    pbx = Pbx(tmp_path, NOW, trunks=TRUNKS.format(max_call_seconds=60), rates=RATES)
    await pbx.start()
    call = await answered(pbx)
    pbx.ari.ignore_deletes = 2
    pbx.clock.advance(60)
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the first hang-up")
    return pbx, call


async def test_accepted_hangup_requested_again(tmp_path, caplog):
    # Asterisk replies 204 but the channel stays up, so callguard requests the
    # hang-up again after 10 s, then after 20 s, until the call ends.
    pbx, call = await stuck_at_max_duration(tmp_path)
    try:
        pbx.clock.advance(9)
        await asyncio.sleep(0.1)
        before_wait = len(pbx.ari.deletes)
        pbx.clock.advance(1)
        await eventually(lambda: len(pbx.ari.deletes) == 2, what="the second request")
        pbx.clock.advance(20)
        await eventually(lambda: not pbx.legs(), what="the third request")
        await pbx.app.guard.drain()
        outcomes = [h.outcome for h in stored_hangups(pbx)]
    finally:
        await pbx.stop()

    assert before_wait == 1
    assert [channel for channel, _ in pbx.ari.deletes] == [call.trunk_id] * 3
    assert outcomes == ["requested", "requested", "requested"]
    assert "is still up 10 s after Asterisk accepted its hang-up" in caplog.text
    assert "is still up 20 s after Asterisk accepted its hang-up" in caplog.text


async def test_gone_charged_to_last_accept(tmp_path):
    # The second 204 shows the channel still up 10 s after the first, so a
    # third request that finds it gone, its end events lost, charges the call
    # up to the second 204.
    pbx, call = await stuck_at_max_duration(tmp_path)
    try:
        pbx.clock.advance(10)
        await eventually(lambda: len(pbx.ari.deletes) == 2, what="the second request")
        await pbx.app.guard.drain()
        pbx.ari.hangup_unseen(call)
        pbx.clock.advance(20)
        await eventually(lambda: len(pbx.ari.deletes) == 3, what="the third request")
        await pbx.app.guard.drain()
        assert call.trunk_id in pbx.legs()   # its end event may still come
        pbx.clock.advance(GONE_EVENT_WAIT_SECONDS)
        await eventually(lambda: not pbx.legs(), what="the end")
        await pbx.app.guard.drain()
        record = stored_calls(pbx)[call.trunk_id]
        outcomes = [h.outcome for h in reversed(stored_hangups(pbx))]
    finally:
        await pbx.stop()

    assert outcomes == ["requested", "requested", "gone"]
    assert record.ended_at == NOW + timedelta(seconds=70)
    assert record.cost == Decimal("2.00")


@pytest.mark.parametrize("number, callerid", [("999", "01632960010"),
                                              ("01632960123", "01632960050")])
async def test_unprotected_leg_never_hung_up(tmp_path, caplog, number, callerid):
    # Whatever requests it, no DELETE goes out for an emergency call or for a
    # call of an opted-out caller (01632960050 in the trunk below).
    trunks = LOW_LIMIT_TRUNK + "opt_out = 01632960050\n"
    pbx = Pbx(tmp_path, NOW, trunks=trunks, rates=RATES)
    await pbx.start()
    try:
        call, result = await pbx.call(number, callerid=callerid)
        await eventually(lambda: call.trunk_id in pbx.legs(), what="the trunk leg")
        leg = pbx.legs()[call.trunk_id]
        await pbx.app.guard._hang_up(leg, "limit:daily", 16)
        await pbx.app.guard.drain()
    finally:
        await pbx.stop()

    assert result["CALLGUARD_RESULT"] == "ALLOW"
    assert not leg.protected
    assert pbx.ari.deletes == []
    assert leg.hangup_requested == ""
    assert "is never hung up" in caplog.text
