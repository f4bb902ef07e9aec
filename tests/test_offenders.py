"""Offender blocking: barred attempts counted per key, bans that grow, and the config."""

from datetime import datetime, timedelta, timezone

import pytest

from callguard.clock import ManualClock
from callguard.config import ConfigError, load_config
from callguard.daemon.state import build_state
from callguard.policy.blocks import BlockList
from callguard.policy.decision import CallRequest, Decision
from callguard.policy.engine import PolicyEngine
from callguard.policy.ledger import Ledger
from callguard.policy import offenders as offenders_module
from callguard.policy.offenders import OffenderGuard, is_offence, normalise_source
from callguard.policy.reservations import Reservations
from callguard.store import Store
from callguard.worker import StoreWorker
from support import TRUNK, write_config

NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
PREMIUM = "09011234567"
GEOGRAPHIC = "01632960123"


class Alerts:
    def __init__(self):
        self.blocks = []

    def block_imposed(self, block_id, key_type, key, trunk, reason, at, expires_at,
                      earlier, renewal=None):
        self.blocks.append((block_id, key_type, key, expires_at - at, earlier))
        self.renewal = renewal


class Offenders:
    """The engine and the offender guard over a real SQLite store and a manual clock."""

    def __init__(self, directory, trunk_keys=""):
        trunks = TRUNK + trunk_keys
        self.config = load_config(write_config(directory, trunks=trunks))
        self.store = Store(self.config.general.database)
        self.store.open()
        self.worker = StoreWorker(self.store)
        self.clock = ManualClock(NOW)
        self.blocks = BlockList()
        self.alerts = Alerts()
        self.engine = PolicyEngine(build_state(self.config).state, Ledger(self.worker),
                                   Reservations(), self.blocks, self.clock)
        self.guard = OffenderGuard(self.blocks, self.worker, self.clock, self.alerts)

    async def call(self, number=PREMIUM, *, endpoint="1001", caller="01632960010",
                   accountcode="", source="", channel=None):
        request = CallRequest(trunk="gamma", dialled=number, caller=caller,
                              channel=channel or f"PJSIP/{endpoint}-00000012",
                              accountcode=accountcode, source=source)
        decision = await self.engine.decide(request, reserve=False)
        self.guard.note(request, decision, self.engine.state)
        await self.guard.drain()
        return decision.reason

    def advance(self, **delta):
        self.clock.advance(timedelta(**delta).total_seconds())

    def close(self):
        self.worker.shutdown()
        self.store.close()


@pytest.fixture
def offenders(tmp_path):
    made = []

    def make(trunk_keys=""):
        made.append(Offenders(tmp_path, trunk_keys))
        return made[-1]

    yield make
    for item in made:
        item.close()


async def test_burst_blocks_at_third(offenders):
    guard = offenders()
    reasons = [await guard.call() for _ in range(4)]

    assert reasons == ["barred:premium"] * 3 + ["blocked:offender"]
    assert await guard.call(GEOGRAPHIC) == "blocked:offender"
    assert [b[1:4] for b in guard.alerts.blocks] == [("endpoint", "1001",
                                                      timedelta(hours=1))]
    stored = guard.store.active_blocks(guard.clock.now())
    assert [(b.key_type, b.key, b.created_by) for b in stored] == [
        ("endpoint", "1001", "callguard")]


async def test_automatic_block_renews_stored_one(offenders):
    guard = offenders()
    # An operator's block that the daemon has not read from the store yet.
    manual = guard.store.block_manually("endpoint", "1001", "suspected fraud", NOW,
                                        NOW + timedelta(minutes=30), "alice")
    guard.advance(minutes=1)
    for _ in range(3):
        await guard.call()

    (stored,) = guard.store.active_blocks(guard.clock.now())
    changes = guard.store.audit_trail(NOW, 10).changes
    assert stored.id == manual.block.id
    assert stored.created_by == "alice"
    assert stored.renewed_by == "callguard"
    assert stored.renewed_at == NOW + timedelta(minutes=1)
    assert stored.first_reason == "suspected fraud"
    assert stored.expires_at == NOW + timedelta(minutes=61)
    assert [(c.actor, c.subject) for c in changes] == [("callguard", "endpoint 1001"),
                                                      ("alice", "endpoint 1001")]
    assert [b[:3] for b in guard.alerts.blocks] == [(manual.block.id, "endpoint", "1001")]
    assert guard.alerts.renewal.previous == manual.block


async def test_callers_counted_apart(offenders):
    guard = offenders()
    for endpoint in ("1001", "1002", "1003"):
        assert await guard.call(endpoint=endpoint) == "barred:premium"
        assert await guard.call(endpoint=endpoint) == "barred:premium"

    for endpoint in ("1001", "1002", "1003"):
        assert await guard.call(GEOGRAPHIC, endpoint=endpoint) == "ok"
    assert guard.alerts.blocks == []


async def test_invalid_numbers_count(offenders):
    guard = offenders()
    reasons = [await guard.call("0163*960123") for _ in range(3)]

    assert reasons == ["invalid-number"] * 3
    assert await guard.call(GEOGRAPHIC) == "blocked:offender"


# 141 withholds and 1470 presents the caller ID for one call, and 18001 and
# 18002 put the call through Relay UK, so the number after the prefix decides.
@pytest.mark.parametrize("first, second", [("141 ", "1470"), ("18001 ", "18002")])
async def test_call_prefix_not_counted(offenders, first, second):
    guard = offenders()
    reasons = [await guard.call(first + GEOGRAPHIC) for _ in range(4)]

    assert reasons == ["ok"] * 4
    assert await guard.call(second + GEOGRAPHIC) == "ok"
    assert guard.alerts.blocks == []


async def test_spread_attempts_no_block(offenders):
    guard = offenders()
    for _ in range(5):
        assert await guard.call() == "barred:premium"
        guard.advance(minutes=5, seconds=1)

    assert await guard.call(GEOGRAPHIC) == "ok"
    assert guard.alerts.blocks == []


async def test_ban_expires(offenders):
    guard = offenders()
    for _ in range(3):
        await guard.call()

    guard.advance(minutes=59, seconds=59)
    assert await guard.call(GEOGRAPHIC) == "blocked:offender"
    guard.advance(seconds=1)
    assert await guard.call(GEOGRAPHIC) == "ok"


# (earlier bans, expected ban) with ban_time 1h, factor 3, max 1w: 243h is capped.
GROWTH = [(0, timedelta(hours=1)), (1, timedelta(hours=3)), (2, timedelta(hours=9)),
          (3, timedelta(hours=27)), (4, timedelta(hours=81)), (5, timedelta(weeks=1))]


async def test_repeat_offender_grows(offenders):
    guard = offenders("ban_time_factor = 3\n")
    for earlier, expected in GROWTH:
        for _ in range(3):
            await guard.call()
        assert guard.alerts.blocks[-1][3:] == (expected, earlier)
        guard.advance(seconds=expected.total_seconds())

    assert await guard.call(GEOGRAPHIC) == "ok"


async def test_old_bans_not_counted(offenders):
    guard = offenders("ban_max_time = 2h\n")
    for _ in range(3):
        await guard.call()
    guard.advance(hours=2, seconds=1)

    for _ in range(3):
        await guard.call()
    assert [b[3:] for b in guard.alerts.blocks] == [(timedelta(hours=1), 0),
                                                   (timedelta(hours=1), 0)]


async def test_lifted_ban_not_counted(offenders):
    guard = offenders()
    for _ in range(3):
        await guard.call()
    guard.store.unblock_manually("endpoint", "1001", "false alarm", guard.clock.now(),
                                 "admin")
    guard.blocks.remove("endpoint", "1001")

    for _ in range(3):
        await guard.call()
    assert [b[3:] for b in guard.alerts.blocks] == [(timedelta(hours=1), 0),
                                                   (timedelta(hours=1), 0)]


async def test_ban_ignore_skips(offenders):
    guard = offenders("ban_ignore = 1001, 1002\n")
    for _ in range(4):
        assert await guard.call() == "barred:premium"
    for _ in range(3):
        await guard.call(endpoint="1003")
    assert await guard.call(GEOGRAPHIC, endpoint="1003") == "blocked:offender"


# offender_key, the call's identity arguments, an identity that shares nothing.
KEY_TYPES = [
    ("endpoint", {"endpoint": "1001"}, {"endpoint": "1002"}),
    ("caller", {"caller": "01632960010"}, {"caller": "01632960011"}),
    ("accountcode", {"accountcode": "sales"}, {"accountcode": "support"}),
    ("source", {"source": "192.0.2.10"}, {"source": "192.0.2.11"}),
]


@pytest.mark.parametrize("key_type, offender, other", KEY_TYPES)
async def test_each_offender_key(offenders, key_type, offender, other):
    guard = offenders(f"offender_key = {key_type}\n")
    identity = {"endpoint": "2000", "caller": "01632960020"} | offender
    for _ in range(3):
        await guard.call(**identity)

    assert await guard.call(GEOGRAPHIC, **offender) == "blocked:offender"
    assert await guard.call(GEOGRAPHIC, **other) == "ok"
    assert guard.alerts.blocks[0][1] == key_type


async def test_missing_key_warned_once_per_burst(offenders, caplog):
    guard = offenders("offender_key = source\n")
    for _ in range(8):
        assert await guard.call() == "barred:premium"

    warnings = [r.getMessage() for r in caplog.records
                if "not counted toward a block" in r.getMessage()]
    assert len(warnings) == 5  # the rest of the minute's repeats are counted
    assert "the call has no source" in warnings[0]
    assert "CALLGUARD_SOURCE" in warnings[0]
    assert not guard.alerts.blocks
    guard.advance(minutes=1)
    await guard.call()
    last = [r.getMessage() for r in caplog.records
            if "not counted toward a block" in r.getMessage()][-1]
    assert last.endswith("(3 similar messages suppressed)")


CALLER_HINT = ("present the trunk's CLI as the check's third argument, or set "
               "offender_key = endpoint")


def keyless_warnings(caplog):
    return [r.getMessage() for r in caplog.records
            if "not counted toward a block" in r.getMessage()]


async def test_local_channel_not_one_endpoint(offenders, caplog):
    # Many phones reach one Local extension, so barred attempts made through it
    # must not block everyone who calls out that way.
    guard = offenders()
    reasons = [await guard.call(channel=f"Local/s@dialout-0000000{n};2") for n in range(4)]

    assert reasons == ["barred:premium"] * 4
    assert not guard.alerts.blocks
    warning = keyless_warnings(caplog)[0]
    assert "the check ran on Local channel 'Local/s@dialout-00000000;2'" in warning
    assert "run the check on the phone's own channel" in warning
    assert await guard.call(GEOGRAPHIC, channel="Local/s@dialout-00000009;2") == "ok"


@pytest.mark.parametrize("caller, shown", [
    ("1001", "'1001'"),
    ("anonymous", "'anonymous'"),
    ("10\x1b[2J01", "'10\\x1b[2J01'"),
])
async def test_caller_key_not_a_number(offenders, caplog, caller, shown):
    guard = offenders("offender_key = caller\n")
    for _ in range(3):
        assert await guard.call(caller=caller) == "barred:premium"

    (warning, *_) = keyless_warnings(caplog)
    assert f"caller ID {shown} is not a full number, so it is not counted" in warning
    assert warning.endswith(CALLER_HINT)
    assert "no calling number" not in warning
    assert "\x1b" not in warning
    assert not guard.alerts.blocks


async def test_caller_key_missing(offenders, caplog):
    guard = offenders("offender_key = caller\n")
    assert await guard.call(caller="") == "barred:premium"

    (warning,) = keyless_warnings(caplog)
    assert "the call has no caller ID, so it is not counted" in warning
    assert warning.endswith(CALLER_HINT)


async def test_caller_key_warning_rate_limited(offenders, caplog):
    guard = offenders("offender_key = caller\n")
    for _ in range(8):
        assert await guard.call(caller="1001") == "barred:premium"

    assert len(keyless_warnings(caplog)) == 5
    guard.advance(minutes=1)
    await guard.call(caller="1001")
    assert keyless_warnings(caplog)[-1].endswith(
        f"{CALLER_HINT} (3 similar messages suppressed)")


async def test_ban_after_one_reason_singular(offenders):
    guard = offenders("ban_after = 1\n")
    assert await guard.call() == "barred:premium"

    (block,) = guard.store.active_blocks(guard.clock.now())
    assert block.reason.startswith("1 barred attempt within 10m on trunk gamma, ")


async def test_emergency_from_blocked_caller(offenders):
    guard = offenders()
    for _ in range(3):
        await guard.call()

    assert await guard.call("999") == "emergency"
    assert await guard.call("112") == "emergency"
    assert await guard.call(GEOGRAPHIC) == "blocked:offender"


async def test_quiet_keys_dropped(offenders):
    guard = offenders()
    for index in range(50):
        await guard.call(endpoint=f"{3000 + index}")
    assert len(guard.guard.counter) == 50

    guard.advance(minutes=11)
    await guard.call(endpoint="4000")
    assert len(guard.guard.counter) == 1


SOURCES = [
    ("192.0.2.10:5060", "192.0.2.10"),
    ("192.0.2.10", "192.0.2.10"),
    ("[2001:db8::1]:5061", "2001:db8::1"),
    ("2001:db8::1", "2001:db8::1"),
    (" sbc.example ", "sbc.example"),
    ("[::ffff:192.0.2.10]:5060", "192.0.2.10"),
    ("::ffff:192.0.2.10", "192.0.2.10"),
    ("[2001:0db8:0000::1]", "2001:db8::1"),
    ("192.0.2.10:abc", "192.0.2.10:abc"),  # not a port: kept, so it matches nothing
    ("[2001:db8::1]x", "[2001:db8::1]x"),
]


@pytest.mark.parametrize("text, expected", SOURCES)
def test_normalise_source(text, expected):
    assert normalise_source(text) == expected


CONFIG_ERRORS = [
    ("offender_key = phone", "offender_key", "'phone' is not an offender key; write "
     "one of endpoint, caller, accountcode, source"),
    ("ban_after = 0", "ban_after", "'0' is not a whole number from 1 to 1000; write it "
     "like 3"),
    ("ban_window = 10 minutes", "ban_window", "'10 minutes' is not a duration; write it "
     "like 90s, 10m, 1h, 2d, 1w or 600 (seconds)"),
    ("ban_time = 0", "ban_time", "'0' must be at least 1s; write it like 10m"),
    ("ban_time_factor = 0.5", "ban_time_factor", "'0.5' is not a factor from 1 to 100; "
     "write it like 2, or 1 to give every ban the same length"),
    ("ban_max_time = 30m", "ban_max_time", "30m is shorter than ban_time (1h); set "
     "ban_max_time to ban_time or longer"),
    ("ban_time = 1.5h\nban_max_time = 90", "ban_max_time", "90s is shorter than "
     "ban_time (90m); set ban_max_time to ban_time or longer"),
    ("offender_key = source\nban_ignore = 192.0.2.300", "ban_ignore",
     "'192.0.2.300' is not an IP address or network; write it like 192.0.2.10 or "
     "192.0.2.0/24, because offender_key is source"),
]


@pytest.mark.parametrize("lines, key, message", CONFIG_ERRORS)
def test_config_errors(tmp_path, lines, key, message):
    path = write_config(tmp_path, trunks=TRUNK + lines + "\n")
    line = path.read_text().splitlines().index(lines.splitlines()[-1]) + 1

    with pytest.raises(ConfigError) as raised:
        load_config(path)
    assert str(raised.value) == f"{path}:{line}: [trunk gamma] {key}: {message}"


def test_config_defaults(tmp_path):
    settings = load_config(write_config(tmp_path)).trunks["gamma"].offenders

    assert settings.key_type == "endpoint"
    assert settings.ban_after == 3
    assert settings.ban_window == 600
    assert settings.ban_time == 3600
    assert settings.ban_time_factor == 2
    assert settings.ban_max_time == 604800


def test_ignore_caller_numbers(tmp_path):
    path = write_config(tmp_path, trunks=TRUNK + "offender_key = caller\n"
                        "ban_ignore = 01632960000-01632960009\n")
    ignore = load_config(path).trunks["gamma"].offenders.ban_ignore

    assert "+441632960005" in ignore
    assert "+441632960010" not in ignore


def test_expired_blocks_dropped_from_memory():
    blocks = BlockList()
    start = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
    blocks.add("endpoint", "1001", start + timedelta(hours=1))
    blocks.add("endpoint", "1002", start + timedelta(hours=3), start + timedelta(hours=2))

    assert len(blocks) == 1
    assert blocks.blocked([("endpoint", "1002")], start + timedelta(hours=2)) is not None


def test_has_type_follows_changes():
    blocks = BlockList()
    hour = timedelta(hours=1)

    assert not blocks.has_type("source", NOW)
    blocks.add("source", "192.0.2.10", NOW + hour)
    assert blocks.has_type("source", NOW)
    assert not blocks.has_type("source", NOW + hour)
    assert not blocks.has_type("endpoint", NOW)
    blocks.add("source", "192.0.2.11", None)
    assert blocks.has_type("source", NOW + 2 * hour)
    blocks.remove("source", "192.0.2.11")
    assert not blocks.has_type("source", NOW + 2 * hour)
    blocks.replace([("endpoint", "1001", None)])
    assert not blocks.has_type("source", NOW)
    assert blocks.has_type("endpoint", NOW)
    blocks.sync([("source", "192.0.2.12", NOW + hour)])
    assert blocks.has_type("source", NOW)


def test_shorter_block_does_not_cut_a_longer_one():
    blocks = BlockList()
    start = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
    blocks.add("endpoint", "1001", None)                          # an operator's block
    blocks.add("endpoint", "1001", start + timedelta(hours=1))    # a later automatic ban
    blocks.add("caller", "+441632960001", start + timedelta(hours=4))
    blocks.add("caller", "+441632960001", start + timedelta(hours=1))

    later = start + timedelta(hours=2)
    assert blocks.blocked([("endpoint", "1001")], start + timedelta(days=30)) is not None
    assert blocks.blocked([("caller", "+441632960001")], later) is not None

    blocks.add("caller", "+441632960001", start + timedelta(hours=8))
    assert blocks.blocked([("caller", "+441632960001")], start + timedelta(hours=6)) is not None


def test_replace_keeps_the_block_that_ends_last():
    blocks = BlockList()
    start = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
    blocks.add("endpoint", "9999", None)
    # Two active rows in the store for one key, in either order.
    blocks.replace([
        ("endpoint", "1001", None),
        ("endpoint", "1001", start + timedelta(hours=1)),
        ("endpoint", "1002", start + timedelta(hours=1)),
        ("endpoint", "1002", start + timedelta(hours=5)),
    ])

    later = start + timedelta(hours=3)
    assert blocks.blocked([("endpoint", "1001")], later) is not None
    assert blocks.blocked([("endpoint", "1002")], later) is not None
    assert blocks.blocked([("endpoint", "9999")], later) is None
    assert len(blocks) == 2


@pytest.mark.parametrize(
    "reason, counts",
    [("barred:premium", True), ("barred-hours:international", True),
     ("invalid-number", True), ("limit:daily", False), ("unclassified", False),
     ("ok", False)],
)
def test_which_denials_count(reason, counts):
    decision = Decision("DENY" if reason != "ok" else "ALLOW", reason, "gamma", "0901")

    assert is_offence(decision) is counts


def test_attempt_counter_keeps_a_bounded_number_of_keys(monkeypatch, caplog):
    monkeypatch.setattr(offenders_module, "MAX_COUNTED_IDENTITIES", 100)
    counter = offenders_module.AttemptCounter()
    now = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
    window = timedelta(minutes=10)

    for n in range(250):
        counter.add(("endpoint", f"PJSIP/flood{n}"), now, window, 3)
    counted = counter.add(("endpoint", "PJSIP/flood249"), now, window, 3)

    assert len(counter) == 100
    assert counter.evicted == 150
    assert counted == 2  # the newest keys keep their counts
    assert any("dropped the count of the oldest" in r.getMessage() for r in caplog.records)
