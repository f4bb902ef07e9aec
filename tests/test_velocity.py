"""Velocity limits per trunk: calls per minute, destinations per hour, repeat calls."""

import asyncio
from datetime import datetime, timedelta, timezone

import pytest

from callguard.clock import ManualClock
from callguard.config import ConfigError, load_config
from callguard.daemon.state import build_state
from callguard.policy.blocks import BlockList
from callguard.policy.decision import CallRequest
from callguard.policy.engine import PolicyEngine
from callguard.policy.ledger import Ledger
from callguard.policy.reservations import Reservations
from callguard.store import Store
from callguard.worker import StoreWorker
from support import RATES, write_config

# 10:00 BST on Friday 14 June 2024.
NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)

CALLER_A = "01632960010"
CALLER_B = "01632960011"
FRANCE = "+33 6 12 34 56 7{}"
IRELAND = "+353 85 123 456{}"
GEOGRAPHIC = "01632 960123"
ENDPOINT_1001 = "PJSIP/1001-00000001"
ENDPOINT_1002 = "PJSIP/1002-00000002"


class Guard:
    """A policy engine over a real SQLite store, one trunk ``v`` and a manual clock."""

    def __init__(self, directory, trunk_keys: str):
        trunks = f"[trunk v]\nrates = rates.csv\n{trunk_keys}\n"
        self.config = load_config(write_config(directory, trunks=trunks))
        self.store = Store(self.config.general.database)
        self.store.open()
        self.worker = StoreWorker(self.store)
        self.clock = ManualClock(NOW)
        self.engine = PolicyEngine(
            build_state(self.config).state,
            Ledger(self.worker),
            Reservations(),
            BlockList(),
            self.clock,
        )

    async def decide(self, number, caller=CALLER_A, channel="PJSIP/1001-00000012",
                     reserve=True):
        request = CallRequest(trunk="v", dialled=number, caller=caller, channel=channel)
        return await self.engine.decide(request, reserve=reserve)

    async def reason_at(self, offset, number, **kwargs):
        self.clock.set(NOW + timedelta(seconds=offset))
        return (await self.decide(number, **kwargs)).reason

    def close(self):
        self.worker.shutdown()
        self.store.close()


@pytest.fixture
def make_guard(tmp_path):
    guards = []

    def make(trunk_keys):
        guard = Guard(tmp_path, trunk_keys)
        guards.append(guard)
        return guard

    yield make
    for guard in guards:
        guard.close()


# fmt: off
RATE_STEPS = [
    # seconds after NOW, reason: the limit is 3 calls in any sliding 60 s
    (0,    "ok"),
    (10,   "ok"),
    (20,   "ok"),
    (30,   "limit:rate"),     # 4th within 60 s
    (59,   "limit:rate"),     # the call at 0 s is 59 s old
    (60,   "ok"),             # the call at 0 s slid out; the refusals never counted
    (61,   "limit:rate"),     # 10, 20 and 60 s are inside again
    (120,  "ok"),
]
# fmt: on


async def test_rate_sliding(make_guard):
    guard = make_guard("max_calls_per_minute = 3")

    for offset, reason in RATE_STEPS:
        assert (offset, await guard.reason_at(offset, GEOGRAPHIC)) == (offset, reason)


async def test_rate_detail(make_guard):
    guard = make_guard("max_calls_per_minute = 1")
    await guard.decide(GEOGRAPHIC)
    denied = await guard.decide(GEOGRAPHIC)

    assert denied.result == "DENY"
    assert denied.detail == (
        "1 calls on the trunk in the last 60s, the limit is 1 per minute"
    )
    assert denied.reserved == 0


# fmt: off
DESTINATION_STEPS = [
    # seconds, caller, number, reason: at most 2 international destinations per hour
    (0,    CALLER_A, FRANCE.format(1),  "ok"),
    (10,   CALLER_A, FRANCE.format(2),  "ok"),
    (20,   CALLER_A, FRANCE.format(1),  "ok"),                  # not a new destination
    (30,   CALLER_A, IRELAND.format(3), "limit:destinations"),  # a 3rd destination
    (40,   CALLER_A, GEOGRAPHIC,        "ok"),                  # not international
    (50,   CALLER_B, IRELAND.format(3), "ok"),                  # counted apart
    (60,   CALLER_B, FRANCE.format(4),  "ok"),
    (70,   CALLER_B, FRANCE.format(5),  "limit:destinations"),
    (3609, CALLER_A, IRELAND.format(3), "limit:destinations"),
    (3610, CALLER_A, IRELAND.format(3), "ok"),    # FRANCE 2 slid out
    (3619, CALLER_A, FRANCE.format(6),  "limit:destinations"),  # FRANCE 1 at 20 s
    (3620, CALLER_A, FRANCE.format(6),  "ok"),
]
# fmt: on


async def test_destinations_per_caller(make_guard):
    guard = make_guard("max_destinations_per_hour = 2")

    for offset, caller, number, reason in DESTINATION_STEPS:
        result = await guard.reason_at(offset, number, caller=caller)
        assert (offset, number, result) == (offset, number, reason)


async def test_destinations_endpoint(make_guard):
    guard = make_guard("max_destinations_per_hour = 1")
    first = await guard.decide(FRANCE.format(1), caller="", channel=ENDPOINT_1001)
    second = await guard.decide(FRANCE.format(2), caller="", channel=ENDPOINT_1001)
    other = await guard.decide(FRANCE.format(2), caller="", channel=ENDPOINT_1002)

    assert first.reason == "ok"
    assert second.reason == "limit:destinations"
    assert second.detail == (
        "endpoint 1001 called 1 international destinations in the last hour, "
        "the limit is 1"
    )
    assert other.reason == "ok"


# fmt: off
REPEAT_STEPS = [
    # seconds, number, reason: at most 2 calls to one number in 10 minutes
    (0,   FRANCE.format(1), "ok"),
    (100, "0033612345671",  "ok"),                # the same number, dialled otherwise
    (200, FRANCE.format(1), "limit:repeat"),
    (300, FRANCE.format(2), "ok"),
    (599, FRANCE.format(1), "limit:repeat"),
    (600, FRANCE.format(1), "ok"),                # the call at 0 s slid out
    (650, FRANCE.format(1), "limit:repeat"),
    (700, "111",            "ok"),                # a short code is counted by itself
    (710, "111",            "ok"),
    (720, "111",            "limit:repeat"),
]
# fmt: on


async def test_repeat_window(make_guard):
    guard = make_guard("max_repeat_calls = 2\nrepeat_window = 10m")

    for offset, number, reason in REPEAT_STEPS:
        result = await guard.reason_at(offset, number)
        assert (offset, number, result) == (offset, number, reason)


async def test_repeat_default_window(make_guard):
    guard = make_guard("max_repeat_calls = 1")

    assert await guard.reason_at(0, GEOGRAPHIC) == "ok"
    assert await guard.reason_at(3599, GEOGRAPHIC) == "limit:repeat"
    assert await guard.reason_at(3600, GEOGRAPHIC) == "ok"


async def test_denied_calls_not_counted(make_guard):
    guard = make_guard("max_calls_per_minute = 2\nbar = premium")

    for _ in range(5):
        assert (await guard.decide("09011234567")).reason == "barred:premium"
    first = await guard.decide(GEOGRAPHIC)
    second = await guard.decide(GEOGRAPHIC)

    assert (first.reason, second.reason) == ("ok", "ok")


async def test_budget_denial_not_counted(make_guard):
    guard = make_guard("max_calls_per_minute = 1\ndaily_limit = 0.00")
    denied = await guard.decide(GEOGRAPHIC)

    assert denied.reason == "limit:daily"
    assert guard.engine.velocity.sizes() == (0, 0, 0)


async def test_dry_run_not_counted(make_guard):
    guard = make_guard("max_calls_per_minute = 1")

    for _ in range(3):
        assert (await guard.decide(GEOGRAPHIC, reserve=False)).reason == "ok"
    assert (await guard.decide(GEOGRAPHIC)).reason == "ok"
    assert (await guard.decide(GEOGRAPHIC, reserve=False)).reason == "limit:rate"


async def test_parallel_checks_capped(make_guard):
    guard = make_guard("max_calls_per_minute = 3")
    numbers = [f"01632 96{n:04d}" for n in range(20)]
    decisions = await asyncio.gather(*(guard.decide(number) for number in numbers))
    reasons = [decision.reason for decision in decisions]

    assert reasons.count("ok") == 3
    assert reasons.count("limit:rate") == 17


async def test_emergency_not_limited(make_guard):
    guard = make_guard("max_calls_per_minute = 1\nmax_repeat_calls = 1")
    await guard.decide(GEOGRAPHIC)
    limited = await guard.decide(GEOGRAPHIC)
    emergencies = [await guard.decide("999") for _ in range(3)]

    assert limited.reason == "limit:rate"
    assert [decision.reason for decision in emergencies] == ["emergency"] * 3


async def test_limits_off_hold_nothing(make_guard):
    guard = make_guard("")

    for _ in range(50):
        assert (await guard.decide(FRANCE.format(1))).reason == "ok"
    assert guard.engine.velocity.sizes() == (0, 0, 0)


async def test_quiet_keys_dropped(make_guard):
    guard = make_guard(
        "max_calls_per_minute = 100\nmax_destinations_per_hour = 100\n"
        "max_repeat_calls = 100\nrepeat_window = 2h"
    )
    for n in range(30):
        await guard.decide(FRANCE.format(n % 10), caller=f"016329600{n:02d}")

    assert guard.engine.velocity.sizes() == (1, 30, 10)
    assert await guard.reason_at(2 * 3600, GEOGRAPHIC) == "ok"
    assert guard.engine.velocity.sizes() == (1, 0, 1)


async def test_sweep_drops_removed_trunk(make_guard):
    guard = make_guard("max_repeat_calls = 5\nrepeat_window = 2h")
    velocity = guard.engine.velocity
    await guard.decide(GEOGRAPHIC)
    velocity.sweep(guard.config.trunks, NOW + timedelta(minutes=10))
    kept = velocity.sizes()
    velocity.sweep({}, NOW + timedelta(minutes=20))

    assert kept == (0, 0, 1)
    assert velocity.sizes() == (0, 0, 0)


# fmt: off
GOOD_KEYS = [
    # key,                        value,  attribute value
    ("max_calls_per_minute",      "30",   30),
    ("max_calls_per_minute",      "",     None),
    ("max_destinations_per_hour", "5",    5),
    ("max_repeat_calls",          "4",    4),
    ("repeat_window",             "30m",  1800),
    ("repeat_window",             "24h",  86400),
    ("repeat_window",             "90",   90),
]

BAD_KEYS = [
    ("max_calls_per_minute", "0",
     "'0' is not a whole number of 1 or more; write it like 10, or leave it empty "
     "for no cap"),
    ("max_destinations_per_hour", "five",
     "'five' is not a whole number of 1 or more; write it like 10, or leave it "
     "empty for no cap"),
    ("max_repeat_calls", "-2",
     "'-2' is not a whole number of 1 or more; write it like 10, or leave it empty "
     "for no cap"),
    ("repeat_window", "25h", "'25h' is too long; write at most 24h"),
    ("repeat_window", "0.5s",
     "'0.5s' is not a whole number of seconds; write it like 120 or 2m"),
    ("repeat_window", "soon",
     "'soon' is not a duration; write it like 90s, 2m, 1h or 120 (seconds)"),
]
# fmt: on


def load_trunk(directory, monkeypatch, key, value):
    (directory / "rates.csv").write_text(RATES)
    (directory / "callguard.conf").write_text(
        f"[trunk gamma]\nrates = rates.csv\n{key} = {value}\n"
    )
    monkeypatch.chdir(directory)
    return load_config("callguard.conf")


@pytest.mark.parametrize("key, value, expected", GOOD_KEYS)
def test_config_good(tmp_path, monkeypatch, key, value, expected):
    config = load_trunk(tmp_path, monkeypatch, key, value)

    assert getattr(config.trunks["gamma"], key) == expected


def test_config_defaults(tmp_path, monkeypatch):
    trunk = load_trunk(tmp_path, monkeypatch, "notify", "").trunks["gamma"]

    assert trunk.max_calls_per_minute is None
    assert trunk.max_destinations_per_hour is None
    assert trunk.max_repeat_calls is None
    assert trunk.repeat_window == 3600


@pytest.mark.parametrize("key, value, message", BAD_KEYS)
def test_config_bad(tmp_path, monkeypatch, key, value, message):
    with pytest.raises(ConfigError) as caught:
        load_trunk(tmp_path, monkeypatch, key, value)

    assert str(caught.value) == f"callguard.conf:3: [trunk gamma] {key}: {message}"
