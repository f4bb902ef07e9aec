"""The call decision: a table of dialled strings and the decision each gets."""

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from callguard.clock import ManualClock
from callguard.config import load_config
from callguard.daemon.state import build_state
from callguard.policy.blocks import BlockList
from callguard.policy.decision import CallRequest
from callguard.policy.engine import PolicyEngine
from callguard.policy.ledger import Ledger
from callguard.policy.reservations import Reservations
from callguard.store import Store
from callguard.windows import DAY, WEEK
from callguard.worker import StoreWorker
from support import RATES, TRUNK, write_config

# 10:00 BST on Friday 14 June 2024.
NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
TODAY = "2024-06-14"
THIS_WEEK = "2024-W24"

OVERRIDE = """\
[number 01632960001]
allow = international
"""

OPEN_TRUNK = """\
[trunk open]
rates = rates.csv
daily_limit = 50.00

[trunk fallback]
rates = rates.csv
default_rate = 0.25, 0.05, 60/60
"""


class Guard:
    """A policy engine over a real SQLite store and a manual clock."""

    def __init__(self, directory, *, general="", extra=OVERRIDE + OPEN_TRUNK, trunks=TRUNK,
                 rates=RATES):
        self.config = load_config(
            write_config(directory, general=general, trunks=trunks, extra=extra, rates=rates)
        )
        self.store = Store(self.config.general.database)
        self.store.open()
        self.worker = StoreWorker(self.store)
        self.clock = ManualClock(NOW)
        self.blocks = BlockList()
        self.reservations = Reservations()
        self.engine = PolicyEngine(
            build_state(self.config).state,
            Ledger(self.worker),
            self.reservations,
            self.blocks,
            self.clock,
        )

    async def decide(self, number, trunk="gamma", caller="01632960010", uniqueid=""):
        request = CallRequest(trunk=trunk, dialled=number, caller=caller, uniqueid=uniqueid,
                              channel="PJSIP/1001-00000012")
        return await self.engine.decide(request)

    def spend(self, window, key, amount, trunk="gamma"):
        self.store.add_spend(trunk, window, key, Decimal(amount), NOW)

    def close(self):
        self.worker.shutdown()
        self.store.close()


@pytest.fixture
def guard(tmp_path):
    guard = Guard(tmp_path)
    yield guard
    guard.close()


FULLWIDTH = "\uff10\uff11\uff16\uff13\uff12\uff19\uff16\uff10\uff10\uff10\uff10"

# fmt: off
DECISIONS = [
    # dialled,                      result,  reason,                  category
    ("09011234567",                 "DENY",  "barred:premium",        "premium"),
    ("0044 9011234567",             "DENY",  "barred:premium",        "premium"),
    ("08451234567",                 "DENY",  "barred:special-084",    "special-084"),
    ("08701234567",                 "DENY",  "barred:special-087",    "special-087"),
    ("08712345678",                 "DENY",  "barred:premium",        "premium"),
    ("118118",                      "DENY",  "barred:directory",      "directory"),
    ("0118 496 0000",               "ALLOW", "ok",                    "geographic"),
    ("+44 (0) 20 7946 0000",        "ALLOW", "ok",                    "geographic"),
    ("01632 960123",                "ALLOW", "ok",                    "geographic"),
    ("07700 900123",                "ALLOW", "ok",                    "mobile"),
    ("07012345678",                 "ALLOW", "ok",                    "personal"),
    ("111",                         "ALLOW", "ok",                    "service"),
    ("116123",                      "ALLOW", "ok",                    "service"),
    ("18001 01632 960123",          "ALLOW", "ok",                    "geographic"),
    ("18002 09011234567",           "DENY",  "barred:premium",        "premium"),
    ("+00972590000000",             "DENY",  "invalid-number",        ""),
    ("0151496012#",                 "DENY",  "invalid-number",        ""),
    ("*21*00441514960123",          "DENY",  "invalid-number",        ""),
    (FULLWIDTH,                     "DENY",  "invalid-number",        ""),
    ("0163296O123",                 "DENY",  "invalid-number",        ""),
    ("+353 85 123 4567",            "ALLOW", "ok",                    "international"),
    # Ireland is in international_allow, but not its premium rate range.
    ("+353 1550 123 456",           "DENY",  "barred:international-premium",
                                                                      "international-premium"),
    ("0033 6 12 34 56 78",          "DENY",  "barred:international",  "international"),
    ("+972 59 000 0000",            "DENY",  "barred:international",  "international"),
    ("+870 773 111 111",            "DENY",  "barred:satellite",      "satellite"),
    ("+979 123 456 789",            "DENY",  "barred:international-premium",
                                                                      "international-premium"),
    ("999",                         "ALLOW", "emergency",             "emergency"),
    ("112",                         "ALLOW", "emergency",             "emergency"),
]
# fmt: on


async def test_decision_carries_clock_reading(guard):
    allowed = await guard.decide("01632 960123")
    barred = await guard.decide("09011234567")
    invalid = await guard.decide("0151496012#")

    assert allowed.decided_at == NOW
    assert barred.decided_at == NOW
    assert invalid.decided_at is None


@pytest.mark.parametrize("dialled, result, reason, category", DECISIONS)
async def test_decision_table(guard, dialled, result, reason, category):
    decision = await guard.decide(dialled)

    assert (decision.result, decision.reason) == (result, reason)
    assert decision.category == category


async def test_outside_line_prefix(tmp_path):
    guard = Guard(tmp_path, general="outside_line_prefix = 9")
    try:
        premium = await guard.decide("909061234567")
        emergency_with = await guard.decide("9999")
        emergency_without = await guard.decide("999")
    finally:
        guard.close()

    assert (premium.result, premium.reason) == ("DENY", "barred:premium")
    assert emergency_with.reason == "emergency"
    assert emergency_without.reason == "emergency"


EVERYTHING_BARRED = """\
[trunk gamma]
bar = service, operator, premium, special-084, special-087, directory, personal, pager, \
mobile, crown-dependency, geographic, non-geographic, freephone, international
daily_limit = 1.00
weekly_limit = 1.00
max_concurrent_calls = 1
rates = rates.csv
"""


@pytest.mark.parametrize("dialled", ["999", "112", "9 9 9", "999#", "141999", "1470112#",
                                     "18000#"])
async def test_emergency_despite_everything(tmp_path, dialled):
    guard = Guard(tmp_path, trunks=EVERYTHING_BARRED, extra="")
    guard.spend("day", TODAY, "1.00")
    guard.spend("week", THIS_WEEK, "1.00")
    guard.blocks.add("endpoint", "1001", None)
    try:
        decision = await guard.decide(dialled)
        ordinary = await guard.decide("01632960123")
    finally:
        guard.close()

    assert (decision.result, decision.reason) == ("ALLOW", "emergency")
    assert ordinary.result == "DENY"


async def test_emergency_dry_run_logs_nothing(tmp_path, caplog):
    # callguardctl check requests decisions that place no call. The check
    # handler logs the decisions of real calls itself.
    guard = Guard(tmp_path, trunks=EVERYTHING_BARRED, extra="")
    try:
        with caplog.at_level(logging.DEBUG, logger="callguard.policy"):
            request = CallRequest(trunk="gamma", dialled="999", caller="01632960010")
            decision = await guard.engine.decide(request, reserve=False)
    finally:
        guard.close()

    assert decision.reason == "emergency"
    assert [r for r in caplog.records if r.name.startswith("callguard.policy")] == []


# normalise() strips the outside-line prefix 9 after it drops brackets, so these
# must be found as emergency numbers before it reads them as 9 and 99. The
# caller-ID prefix 141 may come before the outside-line prefix too.
@pytest.mark.parametrize("dialled, emergency_number", [
    ("(999)", "999"),
    ("(99)9", "999"),
    ("(9)999", "999"),
    ("9(999)", "999"),
    ("(112)", "112"),
    ("1419999", "999"),
    ("1470 9 112", "112"),
])
async def test_bracketed_emergency_with_prefix_9(tmp_path, dialled, emergency_number):
    guard = Guard(tmp_path, general="outside_line_prefix = 9", trunks=EVERYTHING_BARRED,
                  extra="")
    guard.spend("day", TODAY, "1.00")
    guard.blocks.add("endpoint", "1001", None)
    try:
        decision = await guard.decide(dialled)
    finally:
        guard.close()

    assert (decision.result, decision.reason) == ("ALLOW", "emergency")
    assert decision.emergency_number == emergency_number


TRUNK_ALLOWING_MORE_COUNTRIES = TRUNK.replace(
    "international_allow = IE", "international_allow = IE, DE, IT, RU\ndefault_rate = 0.05"
)


@pytest.mark.parametrize("dialled, result, reason", [
    ("+49 900 1234567",   "DENY",  "barred:international-premium"),
    ("+49 900 1234567 8", "DENY",  "barred:international-premium"),
    ("+39 899 123456 7",  "DENY",  "barred:international-premium"),
    ("+7 809 123 45 67",  "DENY",  "barred:international-premium"),
    ("+7 809 123 45 678", "DENY",  "invalid-number"),
    ("+7 812 123 45 67",  "ALLOW", "ok"),
    ("+49 30 1234567",    "ALLOW", "ok"),
    # These are in no range of their country, so phonenumbers cannot tell
    # whether they are premium rate. Both +353 15xx numbers are in Ireland's
    # premium block, and +49 900 123456 has a digit too few for Germany's 900.
    ("+353 1519 123456",  "DENY",  "barred:international"),
    ("+353 1511 123456",  "DENY",  "barred:international"),
    ("+49 900 123456",    "DENY",  "barred:international"),
    ("+39 06 1234 5678",  "ALLOW", "ok"),
])
async def test_allowed_country_premium_ranges(tmp_path, dialled, result, reason):
    guard = Guard(tmp_path, trunks=TRUNK_ALLOWING_MORE_COUNTRIES)
    try:
        decision = await guard.decide(dialled)
    finally:
        guard.close()

    assert (decision.result, decision.reason) == (result, reason)


TRUNK_ALLOWING_SHARED_CODES = TRUNK.replace(
    "international_allow = IE", "international_allow = US, RU\ndefault_rate = 0.05"
)


@pytest.mark.parametrize("dialled, result, reason", [
    # +1 and +7 are shared by several countries. A number that phonenumbers
    # places in none of them may belong to any of them, so allowing the code's
    # main country (US, RU) does not let it through.
    ("+1 202 456 1111",   "ALLOW", "ok"),
    ("+1 999 555 0123",   "DENY",  "barred:international"),
    ("+1 876 555 1234",   "DENY",  "barred:international"),
    ("+7 812 123 45 67",  "ALLOW", "ok"),
    ("+7 300 123 45 67",  "DENY",  "barred:international"),
    # No range of Russia or Kazakhstan in phonenumbers starts with 6.
    ("+7 600 123 45 67",  "DENY",  "invalid-number"),
    ("+7 701 234 56 78",  "DENY",  "barred:international"),
])
async def test_allowed_country_shared_code(tmp_path, dialled, result, reason):
    guard = Guard(tmp_path, trunks=TRUNK_ALLOWING_SHARED_CODES)
    try:
        decision = await guard.decide(dialled)
    finally:
        guard.close()

    assert (decision.result, decision.reason) == (result, reason)


async def test_geographic_max_seconds(guard):
    decision = await guard.decide("01632960123")

    assert decision.rate == Decimal("0.0100")
    assert decision.max_seconds == 7200
    assert decision.e164 == "+441632960123"


async def test_unknown_trunk(guard):
    decision = await guard.decide("01632960123", trunk="delta")

    assert (decision.result, decision.reason) == ("DENY", "unknown-trunk")


async def test_unrated_then_default_rate(guard):
    # Germany is not barred on "open" and "fallback", and not in the deck.
    unrated = await guard.decide("+49 30 901820", trunk="open")
    fallback = await guard.decide("+49 30 901820", trunk="fallback")

    assert (unrated.result, unrated.reason) == ("DENY", "unrated")
    assert (fallback.result, fallback.reason) == ("ALLOW", "ok")
    assert fallback.rate == Decimal("0.25")


# Rated as country code and digits, 118118 would match the Reading row 44118 and
# 116123 the Leicester row 44116. The trunks "open" and "fallback" bar nothing.
SHORT_CODE_RATES = """\
prefix,description,rate,connection_fee,increments
44,UK,0.0085,,1/1
44116,Leicester,0.0300,,1/1
short:118,Directory,4.50,4.50,60/60
"""
# No 44 row, so only short:118 prices a short code.
SHORT_CODE_RATES_WITHOUT_UK = """\
prefix,description,rate,connection_fee,increments
441,UK geographic,0.0085,,1/1
short:118,Directory,4.50,4.50,60/60
"""


@pytest.fixture
def short_code_guard(tmp_path):
    guard = Guard(tmp_path, rates=SHORT_CODE_RATES)
    yield guard
    guard.close()


async def test_reading_number_not_short_code_rate(short_code_guard):
    decision = await short_code_guard.decide("01184960123", trunk="open")

    assert (decision.result, decision.reason) == ("ALLOW", "ok")
    assert decision.e164 == "+441184960123"
    assert decision.tariff.prefix == "44"
    assert decision.rate == Decimal("0.0085")


async def test_short_code_rated_by_short_row(short_code_guard):
    decision = await short_code_guard.decide("118118", trunk="open")

    assert (decision.result, decision.reason) == ("ALLOW", "ok")
    assert decision.category == "directory"
    assert decision.tariff.prefix == "short:118"
    assert decision.rate == Decimal("4.50")
    assert decision.tariff.connection_fee == Decimal("4.50")


@pytest.mark.parametrize("trunk", ["open", "fallback"])
async def test_short_code_without_row_gets_country_rate(short_code_guard, trunk):
    # The 44116 row (Leicester) prices +44 116 numbers, not the short code 116123.
    decision = await short_code_guard.decide("116123", trunk=trunk)
    leicester = await short_code_guard.decide("01164960123", trunk=trunk)

    assert (decision.result, decision.reason) == ("ALLOW", "ok")
    assert decision.tariff.prefix == "44"
    assert decision.rate == Decimal("0.0085")
    assert leicester.tariff.prefix == "44116"


async def test_short_code_without_country_row(tmp_path):
    guard = Guard(tmp_path, rates=SHORT_CODE_RATES_WITHOUT_UK)
    try:
        unrated = await guard.decide("116123", trunk="open")
        fallback = await guard.decide("116123", trunk="fallback")
        directory = await guard.decide("118118", trunk="open")
    finally:
        guard.close()

    assert (unrated.result, unrated.reason) == ("DENY", "unrated")
    assert unrated.detail == "no rate for short:116123"
    assert (fallback.result, fallback.reason) == ("ALLOW", "ok")
    assert fallback.tariff.prefix == ""
    assert fallback.rate == Decimal("0.25")
    assert directory.rate == Decimal("4.50")


async def test_opted_out_caller_skips_barring(guard):
    guard.spend("day", TODAY, "50.00")
    decision = await guard.decide("09011234567", caller="+441632960050")

    assert (decision.result, decision.reason) == ("ALLOW", "opted-out")
    assert decision.max_seconds == 7200


async def test_number_override_allows_international(guard):
    allowed = await guard.decide("0033 6 12 34 56 78", caller="01632960001")
    satellite = await guard.decide("+870 773 111 111", caller="01632960001")
    other_caller = await guard.decide("0033 6 12 34 56 78", caller="01632960002")

    assert allowed.result == "ALLOW"
    assert satellite.reason == "barred:satellite"
    assert other_caller.reason == "barred:international"


@pytest.mark.parametrize("caller", ["", "unknown", "anonymous"])
async def test_no_caller_matches_no_range(guard, caller):
    decision = await guard.decide("0033 6 12 34 56 78", caller=caller)

    assert decision.reason == "barred:international"


async def test_blocked_caller(guard):
    guard.blocks.add("endpoint", "1001", NOW + timedelta(hours=1))
    blocked = await guard.decide("01632960123")
    guard.clock.advance(3601)
    expired = await guard.decide("01632960123")

    assert (blocked.result, blocked.reason) == ("DENY", "blocked:offender")
    assert expired.result == "ALLOW"


@pytest.mark.parametrize(
    "day_spent, week_spent, result, reason",
    [
        ("49.99", "0", "ALLOW", "ok"),        # exactly one 0.01 block left
        ("49.991", "0", "DENY", "limit:daily"),
        ("50.00", "0", "DENY", "limit:daily"),
        ("0", "199.99", "ALLOW", "ok"),
        ("0", "200.00", "DENY", "limit:weekly"),
        ("50.00", "200.00", "DENY", "limit:daily"),
    ],
)
async def test_spend_limits(guard, day_spent, week_spent, result, reason):
    guard.spend("day", TODAY, day_spent)
    guard.spend("week", THIS_WEEK, week_spent)

    decision = await guard.decide("01632960123")

    assert (decision.result, decision.reason) == (result, reason)


async def test_last_block_sets_max_seconds(guard):
    guard.spend("day", TODAY, "49.97")

    decision = await guard.decide("01632960123")

    # Three blocks of 60 s are paid; the call ends a second before the fourth.
    assert decision.max_seconds == 179


async def test_parallel_decisions_share_no_headroom(guard):
    # 0.03 left buys exactly three first blocks at 0.01.
    guard.spend("day", TODAY, "49.97")

    decisions = await asyncio.gather(
        *(guard.decide("01632960123", uniqueid=f"1718355600.{n}") for n in range(30))
    )

    allowed = [d for d in decisions if d.result == "ALLOW"]
    denied = [d for d in decisions if d.reason == "limit:daily"]
    assert len(allowed) == 3
    assert len(denied) == 27


async def test_decide_now_waits_for_unread_spend(guard):
    guard.spend("day", TODAY, "49.98")
    first = CallRequest("gamma", "01632960123", uniqueid="1718355600.1")
    second = CallRequest("gamma", "01632960123", uniqueid="1718355600.2")
    third = CallRequest("gamma", "01632960123", uniqueid="1718355600.3")

    # The day's spend is not read yet, so only decide() can decide.
    assert guard.engine.decide_now(first) is None
    assert guard.engine.reservations.pending_count("gamma") == 0
    allowed = await guard.engine.decide(first)
    # Once the spend is read, decisions need no wait.
    now_allowed = guard.engine.decide_now(second)
    denied = guard.engine.decide_now(third)

    assert (allowed.result, allowed.reserved) == ("ALLOW", Decimal("0.01"))
    assert allowed.max_seconds == 119
    assert (now_allowed.result, now_allowed.reserved) == ("ALLOW", Decimal("0.01"))
    # The first call's reservation leaves one block.
    assert now_allowed.max_seconds == 59
    assert (denied.result, denied.reason) == ("DENY", "limit:daily")


async def test_decide_uses_config_reloaded_during_read(guard, tmp_path):
    # The day's spend is read from the store while a reload lowers the daily
    # limit below the first block: the check must apply the new limit.
    lowered = load_config(write_config(
        tmp_path, trunks=TRUNK.replace("daily_limit = 50.00", "daily_limit = 0.005"),
        extra=OVERRIDE + OPEN_TRUNK))
    ledger = guard.engine.ledger
    read_day = ledger.load

    async def load_during_reload(trunk, keys):
        guard.engine.state = build_state(lowered).state
        await read_day(trunk, keys)

    ledger.load = load_during_reload
    request = CallRequest("gamma", "01632960123", uniqueid="1718355600.1")

    decision = await guard.engine.decide(request)

    assert (decision.result, decision.reason) == ("DENY", "limit:daily")
    assert decision.reserved == Decimal(0)
    assert guard.engine.reservations.pending_count("gamma") == 0


async def test_decide_now_allows_emergency_at_once(guard):
    request = CallRequest("gamma", "999", uniqueid="1718355600.1")

    decision = guard.engine.decide_now(request)

    assert (decision.result, decision.reason) == ("ALLOW", "emergency")


async def test_reservation_expires(guard):
    guard.spend("day", TODAY, "49.99")
    first = await guard.decide("01632960123", uniqueid="1718355600.1")
    second = await guard.decide("01632960123", uniqueid="1718355600.2")
    guard.clock.advance(121)
    third = await guard.decide("01632960123", uniqueid="1718355600.3")

    assert first.result == "ALLOW"
    assert second.reason == "limit:daily"
    assert third.result == "ALLOW"


async def test_concurrent_cap_counts_reservations(guard):
    decisions = [
        await guard.decide("01632960123", uniqueid=f"1718355600.{n}") for n in range(11)
    ]

    assert [d.result for d in decisions[:10]] == ["ALLOW"] * 10
    assert decisions[10].reason == "limit:concurrent"


async def test_concurrent_cap_detail_one_call(tmp_path):
    guard = Guard(tmp_path, trunks=TRUNK.replace("max_concurrent_calls = 10",
                                                 "max_concurrent_calls = 1"))
    try:
        first = await guard.decide("01632960123", uniqueid="1718355600.1")
        second = await guard.decide("01632960123", uniqueid="1718355600.2")
    finally:
        guard.close()

    assert first.result == "ALLOW"
    assert second.reason == "limit:concurrent"
    assert second.detail == "1 call of 1 in progress"


async def test_same_channel_checked_twice_holds_once(guard):
    guard.spend("day", TODAY, "49.99")
    first = await guard.decide("01632960123", uniqueid="1718355600.1")
    again = await guard.decide("01632960123", uniqueid="1718355600.1")

    assert first.result == "ALLOW"
    assert again.result == "ALLOW"
    assert len(guard.reservations) == 1


def test_reservation_expiry_lines_limited(caplog):
    # Without ARI every allowed call's reservation expires: the lines are
    # limited per minute, and the next one counts those left out.
    clock = ManualClock(NOW)
    reservations = Reservations(clock)
    keys = {DAY: TODAY, WEEK: THIS_WEEK}
    for number in range(30):
        reservations.add("gamma", f"1718355600.{number}", Decimal("0.01"), keys, NOW, 120)

    with caplog.at_level(logging.INFO, logger="callguard.policy.reservations"):
        expired = reservations.expire(NOW + timedelta(seconds=121))
        clock.advance(60)
        reservations.add("gamma", "1718355700.1", Decimal("0.01"), keys, NOW, 120)
        reservations.expire(NOW + timedelta(seconds=121))

    lines = [r.getMessage() for r in caplog.records]
    assert len(expired) == 30
    assert len(lines) == 21
    assert lines[0] == ("gamma 1718355600.0: reservation of 0.01 expired without a "
                        "trunk leg; releasing it")
    assert lines[-1].endswith("releasing it (10 similar messages suppressed)")
    assert reservations.pending_count("gamma") == 0


HOLD_RATES = "prefix,description,rate,connection_fee,increments\n44,United Kingdom,1.00,,60/60\n"


@pytest.mark.parametrize("before_midnight, daily, weekly, reason", [
    # 23:59:30 BST on Friday 14 June: the next day starts within the hold.
    (datetime(2024, 6, 14, 22, 59, 30, tzinfo=timezone.utc), "2.00", "100.00", "limit:daily"),
    # 23:59:30 BST on Sunday 16 June: the next week starts within the hold.
    (datetime(2024, 6, 16, 22, 59, 30, tzinfo=timezone.utc), "100.00", "2.00", "limit:weekly"),
])
async def test_hold_counts_in_next_window(tmp_path, before_midnight, daily, weekly, reason):
    # Calls checked before midnight and answered after it pay their first
    # block from the new window, so their holds must count there too.
    trunk = (f"[trunk gamma]\nrates = rates.csv\ndaily_limit = {daily}\n"
             f"weekly_limit = {weekly}\n")
    guard = Guard(tmp_path, trunks=trunk, extra="", rates=HOLD_RATES)
    try:
        guard.clock = ManualClock(before_midnight)
        guard.engine.clock = guard.clock
        first = await guard.decide("01632960123", uniqueid="1718405970.1")
        second = await guard.decide("01632960124", uniqueid="1718405970.2")
        guard.clock.advance(60)
        after_midnight = await guard.decide("01632960125", uniqueid="1718406030.3")
    finally:
        guard.close()

    assert first.result == "ALLOW"
    assert second.result == "ALLOW"
    assert after_midnight.result == "DENY"
    assert after_midnight.reason == reason
