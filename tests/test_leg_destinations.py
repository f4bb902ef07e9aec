"""How a trunk leg's dialled number is read, linked to its check and priced.

Calls run through the FastAGI check and the ARI emulator over loopback, as the
dialplan snippet places them, on a manual clock.
"""

import dataclasses
import math
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from callguard.store import Store
from emulator.fastagi import AGICall, run_fastagi_call
from live_support import eventually, Pbx, stored_calls, stored_hangups

START = datetime(2024, 6, 12, 10, 0, tzinfo=timezone.utc)  # a Wednesday
TODAY = "2024-06-12"

TRUNK = """\
[trunk gamma]
bar = premium, international, directory
daily_limit = 50.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""
RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,0.0100,,60/60
44118,UK Reading,0.0200,,60/60
short:118,UK directory,3.00,1.00,60/60
"""

# Two trunks that price every number without a rate at 1.00 per minute.
DEFAULT_RATE_TRUNKS = """\
[trunk gamma]
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
default_rate = 1.00

[trunk delta]
daily_limit = 10.00
channel_pattern = PJSIP/delta-*
rates = rates.csv
default_rate = 1.00
"""
GEOGRAPHIC_RATES = "prefix,description,rate,connection_fee,increments\n441,UK geographic,1.00,,60/60\n"


@pytest.fixture
async def make_pbx(tmp_path):
    started = []

    async def make(*, trunks=TRUNK, rates=RATES, general=""):
        pbx = Pbx(tmp_path, START, trunks=trunks, rates=rates, general=general)
        await pbx.start()
        started.append(pbx)
        return pbx

    yield make
    for pbx in started:
        await pbx.stop()


async def check_and_dial(pbx, checked, dialstring, *, checked_trunk="gamma",
                         dial_trunk="gamma"):
    """Check ``checked`` over FastAGI, then Dial ``dialstring`` if the check allows it.

    The dialplan may rewrite the number between the check and Dial(), so the
    dialstring's number can differ from the checked one.
    """
    check = pbx.checker(checked, trunk=checked_trunk)
    number = dialstring.partition("@")[0]
    call = await pbx.ari.dial_out(number, trunk=dial_trunk, callerid="01632960010",
                                  dialstring=dialstring, check=check)
    return call, pbx.results[call.caller_id]


def find_leg(pbx, leg_id):
    """Return the live or recently ended leg ``leg_id``, or None."""
    guard = pbx.app.guard
    if leg_id in guard.legs:
        return guard.legs[leg_id]
    return next((leg for leg in guard.recent if leg.id == leg_id), None)


async def hung_up_leg(pbx, call):
    """Wait for callguard's one hang-up, then return the leg of ``call``."""
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up")
    await pbx.app.guard.drain()
    return find_leg(pbx, call.trunk_id)


async def answered_leg(pbx, call):
    """Answer ``call`` and return its leg once callguard has seen the answer."""
    await pbx.ari.answer(call)
    await eventually(lambda: call.trunk_id in pbx.legs()
                     and pbx.legs()[call.trunk_id].state == "up", what="the answer")
    return pbx.legs()[call.trunk_id]


async def answer_and_end(pbx, call, seconds):
    """Answer ``call``, let it run ``seconds`` on the manual clock, then hang it up."""
    await answered_leg(pbx, call)
    pbx.clock.advance(seconds)
    await pbx.settle()
    await pbx.ari.hangup(call)
    await eventually(lambda: call.trunk_id not in pbx.legs(), what="the end")
    await pbx.app.guard.drain()


async def assert_metered_uk_call(pbx, call) -> None:
    """Check that the leg of ``call`` to +441632960123 is metered at the UK rate:
    not hung up, and 0.02 for 61 s."""
    leg = pbx.legs()[call.trunk_id]
    assert leg.hangup_requested == ""
    assert leg.e164 == "+441632960123"
    assert leg.tariff.rate == Decimal("0.0100")

    await answer_and_end(pbx, call, 61)
    assert pbx.ari.deletes == []
    assert stored_calls(pbx)[call.trunk_id].cost == Decimal("0.02")


# A leg's number in E.164 form without "+".

@pytest.mark.parametrize("dialstring", ["441632960123@gamma", "+441632960123@gamma",
                                        "01632960123@gamma"])
async def test_same_number_other_form_linked(make_pbx, dialstring):
    pbx = await make_pbx()
    call, result = await check_and_dial(pbx, "01632960123", dialstring)
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")

    leg = pbx.legs()[call.trunk_id]
    assert leg.guarded
    assert leg.decision_uniqueid == call.caller_id
    assert leg.hangup_requested == ""
    assert leg.e164 == "+441632960123"
    assert leg.number == dialstring.partition("@")[0]
    assert leg.tariff.rate == Decimal("0.0100")

    await answer_and_end(pbx, call, 61)
    assert pbx.ari.deletes == []
    record = stored_calls(pbx)[call.trunk_id]
    assert record.guarded
    assert record.cost == Decimal("0.02")  # two 60 s blocks at 0.0100 per minute
    assert pbx.spend("day", TODAY) == Decimal("0.02")


async def test_unchecked_e164_without_plus_metered(make_pbx):
    # A Dial that skipped the check is judged on its own number.
    pbx = await make_pbx()
    call = await pbx.ari.dial_out("441632960123", dialstring="441632960123@gamma")
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")

    leg = pbx.legs()[call.trunk_id]
    assert not leg.guarded
    assert leg.category == "geographic"
    await assert_metered_uk_call(pbx, call)


async def test_adopted_e164_without_plus_metered(make_pbx):
    # Checked and dialled while the ARI events were lost, so the leg is adopted
    # from GET /ari/channels, whose snapshot shows the number as the exten.
    pbx = await make_pbx()
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    call, result = await check_and_dial(pbx, "01632960123", "441632960123@gamma")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    pbx.ari.allow_events()
    await eventually(lambda: call.trunk_id in pbx.legs(), timeout=10,
                     what="the adoption")

    assert pbx.legs()[call.trunk_id].number == "441632960123"
    await assert_metered_uk_call(pbx, call)


async def test_unreadable_leg_number_hung_up(make_pbx):
    # 4416329601 is too short for +44 in any reading, so it stays invalid.
    pbx = await make_pbx()
    call, result = await check_and_dial(pbx, "01632960123", "4416329601@gamma")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    leg = await hung_up_leg(pbx, call)

    assert pbx.ari.deletes[0][0] == call.trunk_id
    assert not leg.guarded
    assert leg.hangup_requested == "invalid-number"
    assert [hangup.reason for hangup in stored_hangups(pbx)] == ["invalid-number"]


# Short codes, which have no E.164 form.

async def test_short_code_forward_to_other_short_code(make_pbx):
    # The leg for 116123 (service, allowed) is forwarded (SIP 302) to 118118
    # (directory, barred). The new leg is judged on its own number.
    pbx = await make_pbx()
    call, result = await check_and_dial(pbx, "116123", "116123@gamma")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    assert result["CALLGUARD_CATEGORY"] == "service"
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")
    assert pbx.legs()[call.trunk_id].guarded

    forwarded = await pbx.ari.forward(call, "118118")
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up")
    await eventually(lambda: forwarded.trunk_id not in pbx.legs(), what="the end")
    await pbx.app.guard.drain()

    assert pbx.ari.deletes[0][0] == forwarded.trunk_id
    leg = find_leg(pbx, forwarded.trunk_id)
    assert not leg.guarded
    assert leg.number == "118118"
    assert leg.category == "directory"
    assert leg.hangup_requested == "barred:directory"
    assert leg.tariff.prefix == "short:118"
    assert leg.tariff.rate == Decimal("3.00")
    assert leg.tariff.connection_fee == Decimal("1.00")
    assert [hangup.reason for hangup in stored_hangups(pbx)] == ["barred:directory"]
    assert pbx.spend("day", TODAY) == Decimal(0)


async def test_unchecked_reading_leg_not_short_code_rate(make_pbx):
    # 0118 496 0123 shares the digits 118 with the short code row short:118.
    pbx = await make_pbx()
    call = await pbx.ari.dial_out("01184960123", dialstring="01184960123@gamma")
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")

    leg = pbx.legs()[call.trunk_id]
    assert not leg.guarded
    assert leg.hangup_requested == ""
    assert leg.e164 == "+441184960123"
    assert leg.tariff.prefix == "44118"
    assert leg.tariff.rate == Decimal("0.0200")

    await answer_and_end(pbx, call, 61)
    assert stored_calls(pbx)[call.trunk_id].cost == Decimal("0.04")


async def test_short_code_with_outside_prefix_linked(make_pbx):
    # Phones dial 9116123, and the dialplan strips the 9 and dials 116123@gamma.
    pbx = await make_pbx(general="outside_line_prefix = 9\n")
    call, result = await check_and_dial(pbx, "9116123", "116123@gamma")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")

    leg = pbx.legs()[call.trunk_id]
    assert leg.guarded
    assert leg.decision_uniqueid == call.caller_id
    assert leg.category == "service"
    assert leg.tariff.rate == Decimal("0.0100")

    await answer_and_end(pbx, call, 61)
    assert pbx.ari.deletes == []
    assert stored_calls(pbx)[call.trunk_id].cost == Decimal("0.02")


# Emergency legs.

async def test_unchecked_emergency_leg_free(make_pbx):
    # etc/asterisk-snippets/extensions.conf dials 999 on the trunk without a check.
    pbx = await make_pbx(trunks=DEFAULT_RATE_TRUNKS, rates=GEOGRAPHIC_RATES)
    emergency = await pbx.ari.dial_out("999", dialstring="999@gamma")
    await pbx.ari.answer(emergency)
    await eventually(lambda: emergency.trunk_id in pbx.legs()
                     and pbx.legs()[emergency.trunk_id].state == "up", what="the answer")
    leg = pbx.legs()[emergency.trunk_id]
    assert leg.category == "emergency"
    assert not leg.protected
    assert leg.tariff.rate == Decimal(0)
    assert leg.tariff.connection_fee == Decimal(0)

    pbx.clock.advance(300)
    await pbx.settle()
    assert pbx.app.ledger.live("gamma", "day", TODAY) == Decimal(0)
    # The whole 10.00 limit is left for a checked call. Ten 60 s blocks at 1.00
    # fit, so it ends 1 s (LIMIT_LEAD_SECONDS) before the eleventh, at 600 s.
    _, result = await pbx.call("01632960123")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    assert result["CALLGUARD_MAXSECS"] == "599"

    await pbx.ari.hangup(emergency)
    await eventually(lambda: emergency.trunk_id not in pbx.legs(), what="the end")
    await pbx.app.guard.drain()
    assert pbx.ari.deletes == []
    assert stored_calls(pbx)[emergency.trunk_id].cost == Decimal(0)
    assert pbx.spend("day", TODAY) == Decimal(0)


async def test_emergency_leg_without_dialstring_number(make_pbx):
    # Dial(PJSIP/gamma) with the number set elsewhere: the dialstring shows none,
    # but the extension the caller dialled is an emergency number.
    pbx = await make_pbx(trunks=DEFAULT_RATE_TRUNKS, rates=GEOGRAPHIC_RATES)
    emergency = await pbx.ari.dial_out("999", dialstring="gamma")

    leg = await answered_leg(pbx, emergency)
    assert leg.number == "999"
    assert leg.category == "emergency"
    assert not leg.protected
    assert leg.tariff.rate == Decimal(0)
    # Past the 600 s at which the 10.00 limit ends an unreadable leg below.
    pbx.clock.advance(900)
    await pbx.settle()
    assert pbx.ari.deletes == []


async def test_unreadable_leg_number_pays_top_rate(make_pbx):
    # The same dialstring for an ordinary number: metered at the trunk's
    # highest rate, and hung up when the 10.00 limit is spent, at 600 s.
    pbx = await make_pbx(trunks=DEFAULT_RATE_TRUNKS, rates=GEOGRAPHIC_RATES)
    call = await pbx.ari.dial_out("01632960123", dialstring="gamma")

    leg = await answered_leg(pbx, call)
    assert leg.number == ""
    assert leg.protected
    assert leg.tariff.rate == Decimal("1.00")
    pbx.clock.advance(600)
    await eventually(lambda: pbx.ari.deletes, what="the hang-up at the limit")


async def test_checked_leg_at_emergency_extension(make_pbx):
    # Extension 112 is an internal phone that forwards to 01632960123. The
    # dialplan checks that number and sets it outside the dialstring, so the
    # caller's extension is not the destination and the check guards the leg.
    pbx = await make_pbx(trunks=DEFAULT_RATE_TRUNKS, rates=GEOGRAPHIC_RATES)

    async def check(caller_id):
        outcome = await run_fastagi_call(
            "127.0.0.1", pbx.port,
            AGICall(extension="112", uniqueid=caller_id, channel="PJSIP/1001-00000001",
                    callerid="01632960010", arguments=("01632960123", "gamma")),
        )
        pbx.results[caller_id] = outcome.variables
        return outcome.variables.get("CALLGUARD_RESULT") == "ALLOW"

    call = await pbx.ari.dial_out("112", dialstring="gamma", check=check)
    assert pbx.results[call.caller_id]["CALLGUARD_MAXSECS"] == "599"

    leg = await answered_leg(pbx, call)
    assert leg.guarded
    assert leg.decision_uniqueid == call.caller_id
    assert leg.protected
    assert leg.category == "geographic"
    assert leg.tariff.rate == Decimal("1.00")
    pbx.clock.advance(600)
    await eventually(lambda: pbx.ari.deletes, what="the hang-up at the limit")
    assert pbx.ari.deletes[0][0] == call.trunk_id


async def test_emergency_checked_on_other_trunk_free(make_pbx):
    # Checked for delta and dialled on gamma, so gamma judges the leg itself.
    pbx = await make_pbx(trunks=DEFAULT_RATE_TRUNKS, rates=GEOGRAPHIC_RATES)
    call, result = await pbx.call("999", checked_trunk="delta", dial_trunk="gamma")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    assert result["CALLGUARD_REASON"] == "emergency"

    await answer_and_end(pbx, call, 300)
    leg = find_leg(pbx, call.trunk_id)
    assert leg.category == "emergency"
    assert leg.tariff.rate == Decimal(0)
    assert pbx.ari.deletes == []
    assert stored_calls(pbx)[call.trunk_id].cost == Decimal(0)
    assert pbx.spend("day", TODAY) == Decimal(0)
    assert pbx.spend("day", TODAY, trunk="delta") == Decimal(0)


async def test_restored_emergency_leg_free(make_pbx):
    # A live emergency call is stored with a rate and callguard restarts. The
    # restored leg is metered at nothing.
    pbx = await make_pbx(trunks=DEFAULT_RATE_TRUNKS, rates=GEOGRAPHIC_RATES)
    emergency = await pbx.ari.dial_out("999", dialstring="999@gamma")
    await pbx.ari.answer(emergency)
    await eventually(lambda: emergency.trunk_id in pbx.legs()
                     and pbx.legs()[emergency.trunk_id].state == "up", what="the answer")
    await pbx.app.guard.drain()
    await pbx.crash()

    with Store(pbx.config.general.database) as store:
        store.open()
        [record] = store.live_calls()
        store.write_calls([("save", (dataclasses.replace(record, rate=Decimal("1.00")),))])
    await pbx.start_callguard()
    leg = pbx.legs()[emergency.trunk_id]
    assert leg.tariff.rate == Decimal(0)

    pbx.clock.advance(300)
    await pbx.ari.hangup(emergency)
    await eventually(lambda: emergency.trunk_id not in pbx.legs(), what="the end")
    await pbx.app.guard.drain()
    assert pbx.ari.deletes == []
    assert stored_calls(pbx)[emergency.trunk_id].cost == Decimal(0)
    assert pbx.spend("day", TODAY) == Decimal(0)


# A leg never carries the outside-line prefix: the dialplan dials without it.

TURKEY_RATES = RATES + "90,Turkey,0.2500,,60/60\n"


async def test_unchecked_leg_not_read_after_outside_prefix(make_pbx):
    # Istanbul +90 212 123 4567 in E.164 without "+", on a PBX whose outside-line
    # prefix is 9: not 0212 123 4567 after the prefix.
    pbx = await make_pbx(rates=TURKEY_RATES, general="outside_line_prefix = 9\n")
    call = await pbx.ari.dial_out("902121234567", dialstring="902121234567@gamma")
    leg = await hung_up_leg(pbx, call)
    assert pbx.ari.deletes[0][0] == call.trunk_id
    assert leg.e164 == "+902121234567"
    assert leg.category == "international"
    assert leg.hangup_requested == "barred:international"


async def test_prefixed_check_links_unprefixed_leg(make_pbx):
    pbx = await make_pbx(rates=TURKEY_RATES, general="outside_line_prefix = 9\n")
    call, result = await check_and_dial(pbx, "901632960123", "01632960123@gamma")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")

    leg = pbx.legs()[call.trunk_id]
    assert leg.guarded
    assert leg.e164 == "+441632960123"
    assert leg.hangup_requested == ""


# A trunk endpoint named after the account's own number, as ITSP set-up
# wizards often name it.
DIGIT_ENDPOINT_TRUNK = """\
[trunk did]
bar = premium, international, directory
daily_limit = 50.00
channel_pattern = PJSIP/441632960000-*
rates = rates.csv
"""
PREMIUM_RATES = RATES + "449,UK premium,3.00,,60/60\n"


async def test_unchecked_leg_on_digit_named_endpoint(make_pbx):
    pbx = await make_pbx(trunks=DIGIT_ENDPOINT_TRUNK, rates=PREMIUM_RATES)
    call = await pbx.ari.dial_out("09098790000", trunk="441632960000",
                                  dialstring="09098790000@441632960000")
    leg = await hung_up_leg(pbx, call)
    assert pbx.ari.deletes[0][0] == call.trunk_id
    assert leg.number == "09098790000"
    assert leg.category == "premium"
    assert leg.hangup_requested == "barred:premium"


async def test_checked_leg_on_digit_named_endpoint(make_pbx):
    pbx = await make_pbx(trunks=DIGIT_ENDPOINT_TRUNK, rates=PREMIUM_RATES)
    call, result = await check_and_dial(
        pbx, "07700900123", "07700900123@441632960000",
        checked_trunk="did", dial_trunk="441632960000")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")

    leg = pbx.legs()[call.trunk_id]
    assert leg.guarded
    assert leg.decision_uniqueid == call.caller_id
    assert leg.e164 == "+447700900123"
    assert leg.category == "mobile"
    assert leg.hangup_requested == ""


# A caller-ID prefix (141 withholds, 1470 presents) before a national number.
# 141 before an 8-digit number such as 0800 1111 gives 11 digits that also
# read as a NANP number in E.164 form without "+" (+1 410 800 1111).

async def test_withheld_short_national_leg_linked(make_pbx):
    pbx = await make_pbx()
    call, result = await check_and_dial(pbx, "141 0800 1111", "14108001111@gamma")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await eventually(lambda: call.trunk_id in pbx.legs(), what="the Dial")

    leg = pbx.legs()[call.trunk_id]
    assert leg.guarded
    assert leg.e164 == "+448001111"
    assert leg.category == "freephone"
    assert leg.hangup_requested == ""


async def test_unchecked_withheld_084_leg_barred(make_pbx):
    # International calls are allowed and rated here, so reading the leg as
    # +1 410 845 4647 would let the barred 0845 4647 through.
    trunk = TRUNK.replace("bar = premium, international, directory", "bar = special-084")
    pbx = await make_pbx(trunks=trunk, rates=RATES + "1,North America,0.0100,,60/60\n")
    call = await pbx.ari.dial_out("14108454647", dialstring="14108454647@gamma")
    leg = await hung_up_leg(pbx, call)

    assert not leg.guarded
    assert leg.e164 == "+448454647"
    assert leg.category == "special-084"
    assert leg.hangup_requested == "barred:special-084"


async def test_emergency_trunk_from_variable_linked(make_pbx, caplog):
    # The dialplan passes the trunk in CALLGUARD_TRUNK, not as an argument.
    # The check sets the emergency variables before it reads that variable,
    # and the leg is still linked to the check without a warning.
    pbx = await make_pbx()
    results = {}

    async def check(caller_id: str) -> bool:
        outcome = await run_fastagi_call(
            "127.0.0.1", pbx.port,
            AGICall(extension="999", uniqueid=caller_id, channel="PJSIP/1001-00000001",
                    callerid="01632960010", arguments=("999",),
                    variables={"CALLGUARD_TRUNK": "gamma"}),
        )
        results[caller_id] = outcome.variables
        return outcome.variables.get("CALLGUARD_RESULT") == "ALLOW"

    call = await pbx.ari.dial_out("999", dialstring="999@gamma", check=check)
    assert results[call.caller_id]["CALLGUARD_REASON"] == "emergency"

    await answer_and_end(pbx, call, 300)
    leg = find_leg(pbx, call.trunk_id)
    assert leg.guarded
    assert leg.decision_uniqueid == call.caller_id
    assert leg.category == "emergency"
    assert leg.tariff.rate == Decimal(0)
    assert pbx.ari.deletes == []
    assert "checked for trunk" not in caplog.text
    assert "skipped the check" not in caplog.text
