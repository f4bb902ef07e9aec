"""Operator controls and the audit trail: the CLI against SQLite and a running daemon."""

import asyncio
import json
import logging
import socket
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
from sqlalchemy.engine import make_url

from callguard.cli import blocks
from callguard.cli.audit import parse_since
from callguard.cli.ctl import attach_negative_values, main
from callguard.clock import ManualClock
from callguard.config import load_config
from callguard.daemon.app import SPEND_REFRESH_SECONDS, Application
from callguard.daemon.control import ask
from callguard.daemon.operator import STORE_FIELD, store_identity
from callguard.store import AuditRecord, DecisionRecord, HangupRecord, Store
from callguard.windows import window_keys
from emulator.fastagi import AGICall, run_fastagi_call
from live_support import eventually
from support import TRUNK, create_database, free_port, write_config

PREMIUM = "09011234567"
GEOGRAPHIC = "01632960123"


def ctl(path, *arguments):
    return main(["--config", str(path), *arguments])


def run_json(capsys, path, *arguments):
    assert main(["--config", str(path), *arguments, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def conf(tmp_path):
    return create_database(write_config(tmp_path))


def test_block_and_unblock(conf, capsys):
    assert ctl(conf, "block", "01632960010", "--type", "caller", "--for", "2h",
               "--reason", "toll fraud") == 0
    out = capsys.readouterr().out
    assert f"the change is stored in {load_config(conf).general.database}" in out
    assert "no control socket exists at" in out
    assert "a running daemon, if any, was not notified" in out
    assert "A running daemon reads the blocks and the spend from the store every " \
        f"{SPEND_REFRESH_SECONDS:g} seconds" in out
    assert "A stopped daemon applies the change when it starts" in out

    blocks = run_json(capsys, conf, "blocks")
    assert [(b["key_type"], b["key"], b["reason"]) for b in blocks] == [
        ("caller", "+441632960010", "toll fraud")]

    assert ctl(conf, "unblock", "+441632960010", "--type", "caller", "--reason",
               "false alarm") == 0
    assert "lifted 1 active block" in capsys.readouterr().out
    assert run_json(capsys, conf, "blocks") == []


def test_block_rejects_bad_caller(conf, capsys):
    assert ctl(conf, "block", "anonymous", "--type", "caller", "--reason", "x") == 2
    assert "'anonymous' is not a calling number" in capsys.readouterr().err


def test_reset_clears_window(conf, capsys):
    config = load_config(conf)
    now = datetime.now(timezone.utc)
    key = window_keys(now, config.trunks["gamma"].timezone)["day"]
    with Store(config.general.database) as store:
        store.add_spend("gamma", "day", key, Decimal("42.50"), now)

    assert ctl(conf, "reset", "gamma", "--window", "day", "--reason", "false alarm") == 0
    assert "cleared 42.50 GBP from trunk gamma" in capsys.readouterr().out
    with Store(config.general.database) as store:
        assert store.get_spend("gamma", "day", key) == 0


def test_reset_unknown_trunk(conf, capsys):
    assert ctl(conf, "reset", "delta", "--window", "week", "--reason", "x") == 2
    assert "trunk 'delta' is not in" in capsys.readouterr().err


def test_audit_lists_newest_first(conf, capsys):
    ctl(conf, "block", "1001", "--reason", "testing")
    ctl(conf, "unblock", "1001", "--reason", "done")
    ctl(conf, "reset", "gamma", "--window", "week", "--reason", "false alarm")
    capsys.readouterr()

    events = run_json(capsys, conf, "audit", "--since", "1h")
    assert [event["kind"] for event in events] == ["reset", "unblock", "block"]
    assert events[0]["summary"] == "cleared 0.00: false alarm"
    assert events[2]["subject"] == "endpoint 1001"


def test_audit_since_excludes_older(conf, capsys):
    ctl(conf, "block", "1001", "--reason", "testing")
    capsys.readouterr()

    assert run_json(capsys, conf, "audit", "--since", "2999-01-01T00:00") == []


def test_audit_rejects_bad_since(conf, capsys):
    assert main(["--config", str(conf), "audit", "--since", "yesterday"]) == 2
    assert "'yesterday' is neither a duration nor an ISO time" in capsys.readouterr().err


@pytest.mark.parametrize("since", ["0s", "0", "0ms", "-1h", "-0"])
def test_audit_rejects_since_not_positive(conf, capsys, since):
    assert main(["--config", str(conf), "audit", f"--since={since}"]) == 2
    assert (f"--since: {since!r} must be longer than zero, because the listing starts "
            "that long before now; write it like 2h, 1d or 2024-06-14T09:00+01:00"
            ) in capsys.readouterr().err


@pytest.mark.parametrize("since, seconds", [
    ("1s", 1), ("2h", 7200), ("250ms", 0.25), ("1.5m", 90), ("30", 30)])
def test_parse_since_duration(since, seconds):
    now = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)

    assert parse_since(since, now) == now - timedelta(seconds=seconds)


def test_parse_since_time_without_offset_is_utc():
    now = datetime(2024, 6, 14, 12, 0, tzinfo=timezone.utc)

    assert parse_since("2024-06-14T09:00", now) == datetime(2024, 6, 14, 9, 0,
                                                             tzinfo=timezone.utc)


def test_audit_help_names_zone_of_since(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per paragraph

    status = run_ctl("callguard.conf", "audit", "--help")
    text = capsys.readouterr().out

    assert status == 0
    assert "a time without an offset is UTC" in text


class Daemon:
    def __init__(self, directory, trunks=TRUNK, database=None):
        self.port = free_port()
        # Nothing listens on the webhook port, so alerts stay pending in the outbox.
        self.path = write_config(directory, port=self.port, trunks=trunks,
                                 database=database,
                                 extra=f"[webhook]\nurl = http://127.0.0.1:{free_port()}/\n")
        self.config = load_config(self.path)
        self.clock = ManualClock(datetime.now(timezone.utc))
        self.app = Application(self.config, clock=self.clock)

    async def check(self, number, *, uniqueid="1718355600.1", variables=None,
                    endpoint="1001"):
        call = AGICall(extension=number, uniqueid=uniqueid, callerid="01632960010",
                       arguments=(number, "gamma"), variables=variables or {},
                       channel=f"PJSIP/{endpoint}-00000012")
        result = await run_fastagi_call("127.0.0.1", self.port, call)
        await self.app.alerts_settle()
        return result.variables["CALLGUARD_REASON"]

    async def ctl(self, *arguments):
        return await asyncio.to_thread(main, ["--config", str(self.path), *arguments])


@pytest.fixture
async def daemon(tmp_path):
    daemon = Daemon(tmp_path, TRUNK + "offender_key = source\n")
    await daemon.app.start()
    yield daemon
    await daemon.app.stop()


async def test_source_from_channel_variable(daemon):
    source = {"CALLGUARD_SOURCE": "192.0.2.10:5060"}
    reasons = [await daemon.check(PREMIUM, variables=source, endpoint=f"{1000 + n}")
               for n in range(4)]

    assert reasons == ["barred:premium"] * 3 + ["blocked:offender"]
    assert await daemon.check(GEOGRAPHIC, variables={"CALLGUARD_SOURCE":
                                                     "192.0.2.11:5060"}) == "ok"
    assert await daemon.check("999", variables=source) == "emergency"
    with Store(daemon.config.general.database) as store:
        blocks = store.active_blocks(daemon.clock.now())
        alerts = store.recent_alerts()
    assert [(b.key_type, b.key) for b in blocks] == [("source", "192.0.2.10")]
    assert [alert.dedupe_key for alert in alerts] == [f"block:{blocks[0].id}"]


async def test_daemon_applies_block(daemon, capsys):
    assert await daemon.ctl("block", "192.0.2.20", "--type", "source", "--reason",
                            "scan") == 0
    assert "applied to the running daemon" in capsys.readouterr().out
    source = {"CALLGUARD_SOURCE": "192.0.2.20"}
    assert await daemon.check(GEOGRAPHIC, variables=source) == "blocked:offender"

    assert await daemon.ctl("unblock", "192.0.2.20", "--type", "source", "--reason",
                            "cleared") == 0
    assert await daemon.check(GEOGRAPHIC, variables=source) == "ok"


async def test_source_block_without_source_key(tmp_path, capsys):
    # The trunks count offenders by endpoint, but an operator's block on an
    # address must still hold for a dialplan that sets CALLGUARD_SOURCE.
    daemon = Daemon(tmp_path)
    await daemon.app.start()
    try:
        source = {"CALLGUARD_SOURCE": "192.0.2.40:5060"}
        assert await daemon.check(GEOGRAPHIC, variables=source) == "ok"
        assert await daemon.ctl("block", "192.0.2.40", "--type", "source",
                                "--reason", "scan") == 0
        assert "applied to the running daemon" in capsys.readouterr().out
        assert await daemon.check(GEOGRAPHIC, variables=source) == "blocked:offender"
        other = {"CALLGUARD_SOURCE": "192.0.2.41:5060"}
        assert await daemon.check(GEOGRAPHIC, variables=other) == "ok"

        assert await daemon.ctl("unblock", "192.0.2.40", "--type", "source",
                                "--reason", "cleared") == 0
        assert await daemon.check(GEOGRAPHIC, variables=source) == "ok"
    finally:
        await daemon.app.stop()


@pytest.mark.parametrize("key, source", [
    ("[2001:DB8:0::1]:5060", "[2001:db8::1]:5062"),
    ("2001:db8::1", "2001:0db8::1"),
    ("192.0.2.30/32", "192.0.2.30:5060"),
])
async def test_daemon_matches_cli_source_key(daemon, capsys, key, source):
    variables = {"CALLGUARD_SOURCE": source}
    assert await daemon.ctl("block", key, "--type", "source", "--reason", "scan") == 0
    assert "applied to the running daemon" in capsys.readouterr().out
    assert await daemon.check(GEOGRAPHIC, variables=variables) == "blocked:offender"

    # A restarted daemon reads the key from the store, as the CLI stored it.
    await daemon.app.stop()
    daemon.app = Application(daemon.config, clock=daemon.clock)
    await daemon.app.start()
    assert await daemon.check(GEOGRAPHIC, variables=variables) == "blocked:offender"


async def test_daemon_applies_untyped_unblock(daemon, capsys):
    assert await daemon.ctl("block", "01632960010", "--type", "caller", "--reason",
                            "fraud") == 0
    assert await daemon.check(GEOGRAPHIC) == "blocked:offender"
    capsys.readouterr()

    assert await daemon.ctl("unblock", "01632960010", "--reason", "cleared") == 0
    out = capsys.readouterr().out
    assert "lifted 1 active block on caller +441632960010" in out
    assert "applied to the running daemon" in out
    assert await daemon.check(GEOGRAPHIC) == "ok"


async def test_daemon_keeps_later_expiry(daemon, capsys):
    assert await daemon.ctl("block", "1001", "--reason", "fraud") == 0
    assert await daemon.ctl("block", "1001", "--for", "1m", "--reason", "more") == 0
    assert "applied to the running daemon" in capsys.readouterr().out

    daemon.clock.advance(120)
    assert await daemon.check(GEOGRAPHIC) == "blocked:offender"


async def test_daemon_reset_rereads_spend(daemon, capsys):
    key = window_keys(daemon.clock.now(), daemon.config.trunks["gamma"].timezone)["day"]
    with Store(daemon.config.general.database) as store:
        store.add_spend("gamma", "day", key, Decimal("50"), daemon.clock.now())
    assert await daemon.check(GEOGRAPHIC) == "limit:daily"

    assert await daemon.ctl("reset", "gamma", "--window", "day", "--reason", "test") == 0
    assert await daemon.check(GEOGRAPHIC, uniqueid="1718355600.2") == "ok"


async def test_daemon_reset_keeps_week_shown(daemon, capsys):
    keys = window_keys(daemon.clock.now(), daemon.config.trunks["gamma"].timezone)
    with Store(daemon.config.general.database) as store:
        store.add_spend("gamma", "day", keys["day"], Decimal("5"), daemon.clock.now())
        store.add_spend("gamma", "week", keys["week"], Decimal("21"), daemon.clock.now())
    assert await daemon.check(GEOGRAPHIC) == "ok"

    assert await daemon.ctl("reset", "gamma", "--window", "day", "--reason", "test") == 0
    # The reset drops the trunk's totals. They are read again at once, not at
    # the next decision, so that status shows both windows.
    await eventually(lambda: all(daemon.app.ledger.loaded("gamma", window, key)
                                 for window, key in keys.items()),
                     what="the spend windows read again")

    assert daemon.app.ledger.spent("gamma", "week", keys["week"]) == Decimal("21")
    assert daemon.app.ledger.spent("gamma", "day", keys["day"]) == Decimal("0")


async def test_reload_recorded(daemon, capsys):
    assert await daemon.app.reload()
    good = daemon.path.read_text()
    daemon.path.write_text(good + "[trunk bad]\nbogus = 1\n")
    assert not await daemon.app.reload()
    daemon.path.write_text(good)

    events = await asyncio.to_thread(run_json, capsys, daemon.path, "audit")
    reloads = [event for event in events if event["kind"] == "reload"]
    assert [event["summary"].split(",")[0] for event in reloads] == [
        "failed", "loaded"]


# Keys, reasons and other input that the store would reject or that no call can match

# Text with every kind of control character that a caller can put in a dialled
# number, a caller ID or a channel name: ESC sequences (colour, window title),
# BEL, CR, LF, TAB, DEL, a C1 control and a bidirectional override.
HOSTILE = "\x1b]0;pwned\x07\x1b[31m09\r01\n2\t3\x7f\x9b\u202e"
HOSTILE_SHOWN = "\\x1b]0;pwned\\x07\\x1b[31m09\\x0d01\\x0a2\\x093\\x7f\\x9b\\u202e"
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\t", "\x7f", "\x9b", "\u202e")


def run_ctl(path, *arguments):
    """Run callguardctl as the console script would: argparse errors exit 2 too."""
    try:
        return ctl(path, *arguments)
    except SystemExit as exc:
        return exc.code


def stored_blocks(path):
    with Store(load_config(path).general.database) as store:
        return [(b.key_type, b.key) for b in store.active_blocks(datetime.now(timezone.utc))]


@pytest.mark.parametrize("key, message", [
    ("10.0.0.0/8", "'10.0.0.0/8' is a network, but a source block matches one address"),
    ("2001:db8::/32", "'2001:db8::/32' is a network"),
    ("not an ip", "'not an ip' is not an IP address; write one IPv4 or IPv6 address"),
    ("192.0.2.300", "'192.0.2.300' is not an IP address"),
    ("host.example:5060", "'host.example:5060' is not an IP address"),
])
def test_block_source_rejects_non_address(conf, capsys, key, message):
    status = run_ctl(conf, "block", key, "--type", "source", "--reason", "scan")

    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert len(err.splitlines()) == 1
    assert stored_blocks(conf) == []


@pytest.mark.parametrize("key, stored", [
    ("192.0.2.10", "192.0.2.10"),
    ("192.0.2.10:5060", "192.0.2.10"),
    ("192.0.2.10/32", "192.0.2.10"),
    ("[2001:DB8:0:0::1]:5060", "2001:db8::1"),
    ("2001:0db8::0001", "2001:db8::1"),
])
def test_block_source_stores_bare_address(conf, capsys, key, stored):
    assert run_ctl(conf, "block", key, "--type", "source", "--reason", "scan") == 0
    assert f"blocked source {stored} " in capsys.readouterr().out
    assert stored_blocks(conf) == [("source", stored)]


@pytest.mark.parametrize("key, message", [
    ("PJSIP/1001-00000012", "'PJSIP/1001-00000012' is a channel name"),
    ("pjsip/1001", "write '1001'"),
    ("SIP/", "write it like 1001"),
])
def test_block_endpoint_rejects_channel_name(conf, capsys, key, message):
    assert run_ctl(conf, "block", key, "--reason", "fraud") == 2
    assert message in capsys.readouterr().err
    assert stored_blocks(conf) == []


def test_block_accountcode_rejects_line_break(conf, capsys):
    assert run_ctl(conf, "block", "sales\nteam", "--type", "accountcode",
                   "--reason", "fraud") == 2
    assert "'sales\\nteam' contains a line break" in capsys.readouterr().err
    assert stored_blocks(conf) == []


# Python reads argument bytes that are not UTF-8, as in $'10\xff01', as lone
# surrogates.
NOT_UTF8 = "10\udcff01"


@pytest.mark.parametrize("key_type, noun", [
    ("endpoint", "endpoint"), ("accountcode", "account code")])
def test_block_rejects_non_utf8_key(conf, capsys, key_type, noun):
    status = run_ctl(conf, "block", NOT_UTF8, "--type", key_type, "--reason", "fraud")

    err = capsys.readouterr().err
    assert status == 2
    assert (f"'10\\udcff01' contains bytes that are not UTF-8 text, which no {noun} "
            f"of a check has; give the {noun} in UTF-8") in err
    assert "Traceback" not in err
    assert stored_blocks(conf) == []


def test_unblock_rejects_non_utf8_key(conf, capsys):
    status = run_ctl(conf, "unblock", NOT_UTF8, "--reason", "false alarm")

    err = capsys.readouterr().err
    assert status == 2
    assert "'10\\udcff01' contains bytes that are not UTF-8 text" in err


@pytest.mark.parametrize("key_type, key, shown", [
    ("endpoint", "10 01", "10 01"),
    ("endpoint", "10\t01", "10\\x0901"),
    ("accountcode", "sales team", "sales team"),
    ("accountcode", "sales\x1bteam", "sales\\x1bteam"),
])
def test_block_unusual_key_warns_and_stores(conf, capsys, key_type, key, shown):
    # Asterisk keeps whitespace and control characters in a pjsip.conf
    # section name and in an account code, so a check can carry them.
    status = run_ctl(conf, "block", key, "--type", key_type, "--reason", "fraud")

    out, err = capsys.readouterr()
    assert status == 0
    assert f"blocked {key_type} {shown} " in out
    assert "contains whitespace or a control character, so the block matches only" in err
    assert "\x1b" not in err
    assert stored_blocks(conf) == [(key_type, key)]


@pytest.mark.parametrize("key_type, key", [
    ("endpoint", "1001"), ("endpoint", "alice.desk-2"), ("accountcode", "sales"),
    ("caller", "01632 960010"), ("source", "192.0.2.10")])
def test_block_ordinary_key_no_warning(conf, capsys, key_type, key):
    assert run_ctl(conf, "block", key, "--type", key_type, "--reason", "fraud") == 0
    assert "warning" not in capsys.readouterr().err


@pytest.mark.parametrize("options", [
    ("--channel", "PJSIP/10 01-00000012"),
    ("--accountcode", "sales\tteam"),
])
def test_unusual_key_block_matches_check(conf, capsys, options):
    key_type = "endpoint" if options[0] == "--channel" else "accountcode"
    key = "10 01" if key_type == "endpoint" else "sales\tteam"
    assert run_ctl(conf, "block", key, "--type", key_type, "--reason", "fraud") == 0
    capsys.readouterr()

    status = run_ctl(conf, "check", "01632960123", "--trunk", "gamma", *options,
                     "--offline")

    assert status == 0
    assert "blocked:offender" in capsys.readouterr().out


def test_unblock_lifts_unmatchable_stored_key(conf, capsys):
    config = load_config(conf)
    with Store(config.general.database) as store:
        store.add_block("source", "10.0.0.0/8", "scan", datetime.now(timezone.utc), None,
                        "root")

    assert run_ctl(conf, "unblock", "10.0.0.0/8", "--type", "source", "--reason",
                   "cannot match") == 0
    assert "lifted 1 active block on source 10.0.0.0/8" in capsys.readouterr().out
    assert stored_blocks(conf) == []
    assert run_ctl(conf, "unblock", "10.0.0.0/8", "--type", "source", "--reason",
                   "again") == 2
    assert "'10.0.0.0/8' is a network" in capsys.readouterr().err


def active_blocks(path):
    with Store(load_config(path).general.database) as store:
        return store.active_blocks(datetime.now(timezone.utc))


def audit_actions(path):
    with Store(load_config(path).general.database) as store:
        trail = store.audit_trail(datetime(2000, 1, 1, tzinfo=timezone.utc), 100)
    return [change.action for change in trail.changes]


def test_unblock_untyped_finds_caller(conf, capsys):
    assert run_ctl(conf, "block", "01632960001", "--type", "caller", "--reason",
                   "fraud") == 0
    capsys.readouterr()

    status = run_ctl(conf, "unblock", "01632960001", "--reason", "false alarm")

    out = capsys.readouterr().out
    assert status == 0
    assert "lifted 1 active block on caller +441632960001" in out
    assert "endpoint" not in out
    assert stored_blocks(conf) == []


def test_unblock_untyped_lifts_each_type(conf, capsys):
    for key_type in ("endpoint", "caller", "accountcode"):
        assert run_ctl(conf, "block", "01632960001", "--type", key_type, "--reason",
                       "fraud") == 0
    assert run_ctl(conf, "block", "1002", "--reason", "fraud") == 0
    capsys.readouterr()

    status = run_ctl(conf, "unblock", " 01632960001 ", "--reason", "false alarm")

    lifted = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("lifted")]
    assert status == 0
    assert lifted == [
        "lifted 1 active block on endpoint 01632960001",
        "lifted 1 active block on caller +441632960001",
        "lifted 1 active block on accountcode 01632960001",
    ]
    assert stored_blocks(conf) == [("endpoint", "1002")]
    assert audit_actions(conf).count("unblock") == 3


def test_unblock_counts_blocks_lifted(conf, capsys):
    # An automatic block and a manual one can apply to the same key at once.
    now = datetime.now(timezone.utc)
    with Store(load_config(conf).general.database) as store:
        store.add_block("caller", "+441632960001", "3 barred calls", now, None, "callguard")
        store.add_block("caller", "+441632960001", "fraud", now, None, "operator")

    status = run_ctl(conf, "unblock", "01632960001", "--type", "caller", "--reason",
                     "false alarm")

    lifted = [line for line in capsys.readouterr().out.splitlines()
              if line.startswith("lifted")]
    assert status == 0
    assert lifted == ["lifted 2 active blocks on caller +441632960001"]
    assert stored_blocks(conf) == []


def test_unblock_nothing_matches_exits_1(conf, capsys):
    assert run_ctl(conf, "block", "1002", "--reason", "fraud") == 0
    capsys.readouterr()

    status = run_ctl(conf, "unblock", "01632960001", "--reason", "false alarm")

    out, err = capsys.readouterr()
    assert status == 1
    assert "lifted" not in out
    assert "no active block matches 01632960001" in err
    assert "caller +441632960001" in err
    assert stored_blocks(conf) == [("endpoint", "1002")]
    assert "unblock" not in audit_actions(conf)


def test_unblock_untyped_skips_invalid_types(conf, capsys):
    status = run_ctl(conf, "unblock", "1001", "--reason", "false alarm")

    err = capsys.readouterr().err
    assert status == 1
    assert "(tried endpoint 1001, accountcode 1001)" in err
    assert "is not a calling number" not in err
    assert "is not an IP address" not in err


def test_unblock_typed_nothing_exits_1(conf, capsys):
    assert run_ctl(conf, "block", "01632960001", "--reason", "fraud") == 0
    capsys.readouterr()

    status = run_ctl(conf, "unblock", "01632960001", "--type", "caller", "--reason",
                     "false alarm")

    out, err = capsys.readouterr()
    assert status == 1
    assert "lifted" not in out
    assert "no active block matches 01632960001 (tried caller +441632960001)" in err
    assert stored_blocks(conf) == [("endpoint", "01632960001")]


def test_unblock_untyped_invalid_everywhere(conf, capsys):
    status = run_ctl(conf, "unblock", "sales\nteam", "--reason", "false alarm")

    err = capsys.readouterr().err
    assert status == 2
    assert "'sales\\nteam' contains a line break" in err
    assert "'sales\\nteam' is not a calling number" in err
    assert "'sales\\nteam' is not an IP address" in err


def test_unblock_untyped_lifts_stored_key(conf, capsys):
    config = load_config(conf)
    with Store(config.general.database) as store:
        store.add_block("source", "10.0.0.0/8", "scan", datetime.now(timezone.utc), None,
                        "root")

    status = run_ctl(conf, "unblock", "10.0.0.0/8", "--reason", "cannot match")

    assert status == 0
    assert "lifted 1 active block on source 10.0.0.0/8" in capsys.readouterr().out
    assert stored_blocks(conf) == []


def test_block_twice_extends_one_block(conf, capsys):
    assert run_ctl(conf, "block", "01632960010", "--type", "caller", "--for", "2h",
                   "--reason", "toll fraud") == 0
    first = capsys.readouterr().out
    assert run_ctl(conf, "block", "+441632960010", "--type", "caller", "--for", "1d",
                   "--reason", "still calling premium numbers") == 0
    second = capsys.readouterr().out

    (block,) = active_blocks(conf)
    assert f"(block {block.id})" in first
    assert second.startswith(f"caller +441632960010 already had block {block.id} until ")
    assert "; extended it until " in second
    assert block.reason == "still calling premium numbers"
    assert block.expires_at - block.created_at > timedelta(hours=23)
    assert run_ctl(conf, "unblock", "+441632960010", "--reason", "cleared") == 0
    assert "lifted 1 active block on caller" in capsys.readouterr().out


def test_block_until_unblocked_is_kept(conf, capsys):
    assert run_ctl(conf, "block", "1001", "--reason", "fraud") == 0
    capsys.readouterr()
    assert run_ctl(conf, "block", "1001", "--for", "2h", "--reason", "more fraud") == 0
    out = capsys.readouterr().out

    (block,) = active_blocks(conf)
    assert out.startswith(f"endpoint 1001 already has block {block.id} until unblocked")
    assert "kept that expiry" in out
    assert block.expires_at is None
    assert block.reason == "more fraud"


def test_block_until_unblocked_extends(conf, capsys):
    assert run_ctl(conf, "block", "1001", "--for", "2h", "--reason", "fraud") == 0
    capsys.readouterr()
    assert run_ctl(conf, "block", "1001", "--reason", "more fraud") == 0
    out = capsys.readouterr().out

    (block,) = active_blocks(conf)
    assert "extended it until unblocked" in out
    assert block.expires_at is None


def test_audit_lists_block_renewal(conf, capsys):
    assert run_ctl(conf, "block", "1001", "--for", "2h", "--reason", "fraud") == 0
    assert run_ctl(conf, "block", "1001", "--reason", "more fraud") == 0
    capsys.readouterr()

    events = run_json(capsys, conf, "audit")
    (block,) = active_blocks(conf)
    blocks = [event for event in events if event["kind"] == "block"]
    assert len(blocks) == 2
    assert blocks[0]["summary"].startswith(
        f"extended block {block.id} until lifted (was until ")
    assert blocks[0]["summary"].endswith(", reason 'fraud'): more fraud")
    expiry = block.created_at + timedelta(hours=2)
    assert blocks[1]["summary"] == f"block {block.id} until {expiry.isoformat()}: fraud"


def test_blocks_shows_renewer(conf, capsys, monkeypatch):
    monkeypatch.setenv("LOGNAME", "alice")
    assert run_ctl(conf, "block", "1001", "--for", "2h", "--reason", "fraud") == 0
    monkeypatch.setenv("LOGNAME", "bob")
    assert run_ctl(conf, "block", "1001", "--reason", "more fraud") == 0
    capsys.readouterr()

    (shown,) = run_json(capsys, conf, "blocks")
    assert ctl(conf, "blocks") == 0
    (line,) = capsys.readouterr().out.splitlines()

    (block,) = active_blocks(conf)
    created = block.created_at.isoformat(timespec="seconds")
    renewed = block.renewed_at.isoformat(timespec="seconds")
    assert shown["created_by"] == "alice"
    assert shown["renewed_by"] == "bob"
    assert shown["renewed_at"] == block.renewed_at.isoformat()
    assert shown["reason"] == "more fraud"
    assert shown["first_reason"] == "fraud"
    assert line.endswith(f"by bob at {renewed}: more fraud (renewed; first blocked by "
                         f"alice at {created}: fraud)")


def test_audit_keeps_creation_reason(conf, capsys):
    assert run_ctl(conf, "block", "1001", "--for", "2h", "--reason", "test ep") == 0
    assert run_ctl(conf, "block", "1001", "--reason", "perm") == 0
    capsys.readouterr()

    assert ctl(conf, "audit") == 0
    lines = capsys.readouterr().out.splitlines()
    (block,) = active_blocks(conf)
    renewal, creation = [line for line in lines if " block " in line]

    expiry = (block.created_at + timedelta(hours=2)).isoformat()
    assert " endpoint 1001 " in creation
    assert creation.endswith(f" block {block.id} until {expiry}: test ep")
    assert "perm" not in creation
    assert "unblocked" not in creation
    assert renewal.endswith(f"(was until {expiry}, reason 'test ep'): perm")
    assert len(lines) == 2


def test_audit_creation_entry_actor(conf, capsys, monkeypatch):
    monkeypatch.setenv("LOGNAME", "alice")
    assert run_ctl(conf, "block", "1001", "--for", "2h", "--reason", "test ep") == 0
    monkeypatch.setenv("LOGNAME", "bob")
    assert run_ctl(conf, "block", "1001", "--reason", "perm") == 0
    capsys.readouterr()

    events = run_json(capsys, conf, "audit")

    assert [(event["kind"], event["actor"]) for event in events] == [
        ("block", "bob"), ("block", "alice")]


def test_audit_automatic_block_renewed(conf, capsys):
    config = load_config(conf)
    created_at = datetime.now(timezone.utc) - timedelta(minutes=5)
    expires_at = created_at + timedelta(hours=1)
    with Store(config.general.database) as store:
        block_id = store.add_block("endpoint", "1001", "3 barred attempts", created_at,
                                   expires_at, "callguard")
    assert run_ctl(conf, "block", "1001", "--reason", "perm") == 0
    capsys.readouterr()

    events = run_json(capsys, conf, "audit")

    renewal, automatic = events
    assert automatic["actor"] == "callguard"
    assert automatic["summary"] == (
        f"block {block_id} until {expires_at.isoformat(timespec='seconds')}: "
        "3 barred attempts")
    assert renewal["summary"].startswith(f"extended block {block_id} until lifted")
    assert renewal["summary"].endswith(": perm")


def test_audit_old_creation_entry_as_stored(conf, capsys):
    # An entry without the block's expiry in its detail is listed as it is,
    # not completed from the block's current row.
    config = load_config(conf)
    created_at = datetime.now(timezone.utc) - timedelta(minutes=5)
    with Store(config.general.database) as store:
        store.add_block("endpoint", "1001", "fraud", created_at, None, "alice")
        store.add_audit(AuditRecord(at=created_at, action="block", actor="alice",
                                    subject="endpoint 1001", reason="fraud"))
    assert run_ctl(conf, "block", "1001", "--reason", "perm") == 0
    capsys.readouterr()

    events = run_json(capsys, conf, "audit")

    assert [event["summary"] for event in events][1:] == ["fraud"]


BLOCK_FOR_FIX = ("write how long the block lasts, like 30m, 2h, 1d or 1w, or leave out "
                 "--for to block until unblocked")


@pytest.mark.parametrize("arguments, value", [
    (("--for", "-1h"), "-1h"),
    (("--for=-1h",), "-1h"),
    (("--for", "-30"), "-30"),
    (("--for", "-0.5d"), "-0.5d"),
    (("--for", "0s"), "0s"),
    (("--for", "0"), "0"),
    (("--for", "-0"), "-0"),
])
def test_block_for_not_positive(conf, capsys, arguments, value):
    status = run_ctl(conf, "block", "1001", *arguments, "--reason", "fraud")

    err = capsys.readouterr().err
    assert status == 2
    assert (f"argument --for: {value!r} must be longer than zero; {BLOCK_FOR_FIX}"
            in err)
    assert "expected one argument" not in err
    assert stored_blocks(conf) == []


def test_block_for_negative_before_caller(conf, capsys):
    status = run_ctl(conf, "block", "--for", "-2h", "1001", "--reason", "fraud")

    assert status == 2
    assert "argument --for: '-2h' must be longer than zero" in capsys.readouterr().err
    assert stored_blocks(conf) == []


def test_audit_since_negative_separate(conf, capsys):
    assert main(["--config", str(conf), "audit", "--since", "-1h"]) == 2
    assert "--since: '-1h' must be longer than zero" in capsys.readouterr().err


@pytest.mark.parametrize("argv, attached", [
    (["block", "1001", "--for", "-1h"], ["block", "1001", "--for=-1h"]),
    (["audit", "--since", "-.5h"], ["audit", "--since=-.5h"]),
    (["block", "1001", "--for", "2h"], ["block", "1001", "--for", "2h"]),
    (["block", "--reason", "-1h"], ["block", "--reason", "-1h"]),
    (["block", "--", "--for", "-1h"], ["block", "--", "--for", "-1h"]),
    (["block", "1001", "--for"], ["block", "1001", "--for"]),
])
def test_attach_negative_values(argv, attached):
    assert attach_negative_values(argv) == attached


@pytest.mark.parametrize("arguments, message", [
    (("block", "", "--reason", "t"), "CALLER is empty; give the endpoint, like 1001"),
    (("block", "  ", "--type", "caller", "--reason", "t"),
     "CALLER is empty; give the calling number"),
    (("unblock", "", "--type", "source", "--reason", "t"),
     "CALLER is empty; give the source address"),
    (("block", "1001", "--reason", ""), "argument --reason: the reason is empty"),
    (("unblock", "1001", "--reason", " "), "argument --reason: the reason is empty"),
    (("reset", "gamma", "--window", "day", "--reason", ""),
     "argument --reason: the reason is empty"),
    (("block", "1001", "--for", "99999999999w", "--reason", "t"),
     "argument --for: '99999999999w' is longer than 36500d"),
    (("audit", "--since", "99999999999w"),
     "--since: '99999999999w' reaches back before the year 1"),
    (("audit", "--since", "0001-01-01T00:00+05:00"), "is outside the years 1 to 9999"),
    (("audit", "--since", "9999-12-31T23:00-05:00"), "is outside the years 1 to 9999"),
    (("audit", "--limit", "99999999999999999999"),
     "argument --limit: '99999999999999999999' is more than 9223372036854775807"),
    (("alerts", "--limit", "99999999999999999999"),
     "argument --limit: '99999999999999999999' is more than 9223372036854775807"),
])
def test_bad_input_exits_2_with_message(conf, capsys, arguments, message):
    # The store or datetime raises on each of these, so the CLI must check them first.
    status = run_ctl(conf, *arguments)

    err = capsys.readouterr().err
    assert status == 2
    assert message in err
    assert "Traceback" not in err
    assert stored_blocks(conf) == []


# The text listings and what callers can put in them


def add_hostile_records(path):
    """Store a decision, a hang-up and an automatic block whose text came from a call."""
    config = load_config(path)
    now = datetime.now(timezone.utc)
    with Store(config.general.database) as store:
        store.add_decisions([DecisionRecord(
            decided_at=now, trunk="gamma", uniqueid="1718355600.1",
            channel=f"PJSIP/{HOSTILE}-00000012", caller=HOSTILE, dialled=HOSTILE,
            result="DENY", reason="invalid-number",
        )])
        store.add_hangup(HangupRecord(
            requested_at=now, trunk="gamma", uniqueid="1718355600.2",
            channel=f"PJSIP/gamma-{HOSTILE}", number=HOSTILE, reason="barred:premium",
            daily_spend=None, weekly_spend=None, call_cost=Decimal("0"),
            outcome="requested",
        ))
        store.add_block("caller", HOSTILE, f"3 barred attempts, the last to {HOSTILE}",
                        now, None, "callguard")


def test_audit_escapes_control_characters(conf, capsys):
    add_hostile_records(conf)

    assert ctl(conf, "audit") == 0
    out = capsys.readouterr().out
    lines = out.splitlines()

    for control in RAW_CONTROLS:
        assert control not in out
    assert len(lines) == 3
    assert [line for line in lines if HOSTILE_SHOWN in line] == lines
    # JSON keeps the text as stored, escaped by the JSON encoder.
    events = run_json(capsys, conf, "audit")
    assert {event["kind"]: event["subject"] for event in events}["block"] == (
        f"caller {HOSTILE}")


def test_blocks_escapes_control_characters(conf, capsys):
    add_hostile_records(conf)

    assert ctl(conf, "blocks") == 0
    out = capsys.readouterr().out

    for control in RAW_CONTROLS:
        assert control not in out
    assert out.count(HOSTILE_SHOWN) == 2
    assert len(out.splitlines()) == 1


async def test_audit_reload_detail_one_line(daemon, capsys):
    good = daemon.path.read_text()
    daemon.path.write_text(good + "[trunk bad]\nbogus = 1\ndaily_limit = fifty\n")
    assert not await daemon.app.reload()
    daemon.path.write_text(good)

    assert await daemon.ctl("audit") == 0
    lines = capsys.readouterr().out.splitlines()

    reloads = [line for line in lines if " reload " in line]
    assert len(lines) == 1
    assert len(reloads) == 1
    assert "failed, kept the running config: " in reloads[0]
    assert "; " in reloads[0].split("failed, kept the running config: ")[1]
    assert reloads[0].endswith(": SIGHUP")


def test_audit_masks_stored_url_password(conf, capsys):
    # A failed reload as stored by a version that quoted URLs unmasked.
    detail = ("failed, kept the running config:\ncallguard.conf:9: [ari] url: "
              "'http://callguard:Sup3rS3cret@127.0.0.1:8088/' has a query, fragment or "
              "credentials; write only scheme, host, port and path")
    with Store(load_config(conf).general.database) as store:
        store.add_audit(AuditRecord(at=datetime.now(timezone.utc), action="reload",
                                    actor="callguard", subject=str(conf),
                                    reason="SIGHUP", detail=detail))

    assert ctl(conf, "audit") == 0
    out = capsys.readouterr().out
    events = run_json(capsys, conf, "audit")

    assert "Sup3rS3cret" not in out
    assert "Sup3rS3cret" not in json.dumps(events)
    assert ("callguard.conf:9: [ari] url: 'http://callguard:***@127.0.0.1:8088/' has a "
            "query, fragment or credentials") in out
    assert [event["kind"] for event in events] == ["reload"]


async def test_status_limit_zero_no_percent(tmp_path, capsys):
    daemon = Daemon(tmp_path, TRUNK.replace("daily_limit = 50.00", "daily_limit = 0"))
    await daemon.app.start()
    try:
        assert await daemon.ctl("status") == 0
        lines = capsys.readouterr().out.splitlines()
        status = await asyncio.to_thread(run_json, capsys, daemon.path, "status")
    finally:
        await daemon.app.stop()

    assert "  daily   0.00 of 0.00 GBP" in lines
    assert "  weekly  0.00 of 200.00 GBP (0.0%)" in lines
    assert not [line for line in lines if "None" in line]
    assert status["trunks"]["gamma"]["daily_percent"] is None


# Notifying the daemon: its store, and a control socket that does not respond

STORE_CHANGES = [
    ("block", "1004", "--reason", "fraud"),
    ("unblock", "1004", "--reason", "cleared"),
    ("reset", "gamma", "--window", "day", "--reason", "false alarm"),
]


def stale_socket(path):
    """Leave a Unix socket file at ``path`` that nothing listens on."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))


@pytest.mark.parametrize("arguments", STORE_CHANGES)
def test_stale_socket_exits_3(conf, capsys, arguments):
    assert run_ctl(conf, "block", "1004", "--reason", "fraud") == 0
    path = load_config(conf).general.control_socket
    stale_socket(path)
    capsys.readouterr()

    status = run_ctl(conf, *arguments)

    err = capsys.readouterr().err
    assert status == 3
    assert f"the control socket {path} exists, but the request to the daemon failed" in err
    assert "The daemon is not responding, or the socket was left by a daemon" in err
    assert "Connection refused" in err
    assert "the running daemon, if any, was not notified" in err
    assert "applies the change within about 10 seconds and needs no restart" in err
    assert "systemctl restart" not in err


def test_silent_daemon_exits_3(conf, capsys, monkeypatch):
    monkeypatch.setattr(blocks, "CONTROL_TIMEOUT", 0.2)
    path = load_config(conf).general.control_socket
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(path))
        listener.listen()

        status = run_ctl(conf, "block", "1004", "--reason", "fraud")

    err = capsys.readouterr().err
    assert status == 3
    assert "(no reply within 0.2 s)" in err
    assert stored_blocks(conf) == [("endpoint", "1004")]


@pytest.mark.parametrize("error, message", [
    (PermissionError(13, "Permission denied"),
     "(Permission denied). Run callguardctl as root or as a member of the socket's group"),
    (json.JSONDecodeError("Expecting value", "", 0), "(the reply is missing or not JSON)"),
])
def test_request_failure_exits_3(conf, capsys, monkeypatch, error, message):
    async def failing_ask(*arguments):
        raise error

    monkeypatch.setattr(blocks, "ask", failing_ask)
    stale_socket(load_config(conf).general.control_socket)

    status = run_ctl(conf, "block", "1004", "--reason", "fraud")

    err = capsys.readouterr().err
    assert status == 3
    assert message in err
    assert "the running daemon, if any, was not notified" in err
    assert stored_blocks(conf) == [("endpoint", "1004")]


@pytest.mark.parametrize("command", ["block", "unblock", "reset"])
def test_help_explains_exit_status(capsys, monkeypatch, command):
    monkeypatch.setenv("COLUMNS", "1000")  # one line per paragraph

    status = run_ctl("callguard.conf", command, "--help")
    text = capsys.readouterr().out

    assert status == 0
    assert ("exit status: 0 when the change is stored and the running daemon applied it"
            in text)
    assert "or when no control socket exists" in text
    assert "1 when" in text
    assert "because it uses another database" in text
    assert "3 when the change is stored but the request through the existing" in text


async def test_daemon_rejects_request_without_store(daemon):
    reply = await ask(daemon.config.general.control_socket,
                      {"command": "block", "key_type": "endpoint", "key": "1001"})

    assert "the request names no store" in reply["error"]
    assert await daemon.check(GEOGRAPHIC) == "ok"


# Fields of a control request of the wrong type or form, and the error they get.
INVALID_FIELDS = [
    ({"command": "reset", "trunk": ["gamma"]}, "trunk ['gamma'] is not in the config"),
    ({"command": "block", "key_type": "endpoint", "key": "1001", "expires_at": 7},
     "expires_at 7 is not an ISO 8601 time"),
    ({"command": "block", "key_type": "endpoint", "key": "1001", "expires_at": "tomorrow"},
     "expires_at 'tomorrow' is not an ISO 8601 time"),
    ({"command": "block", "key_type": ["endpoint"], "key": "1001"},
     "key_type ['endpoint'] is invalid"),
    ({"command": "check", "number": 123, "trunk": "gamma"}, "number 123 is not a string"),
    ({"command": "reset", "trunk": "gamma", "window": "month", "key": "2024-06"},
     "window 'month' and key '2024-06' are invalid"),
    ({"command": "reset", "trunk": "gamma", "window": "day", "key": 7},
     "window 'day' and key 7 are invalid"),
]


@pytest.mark.parametrize("fields, message", INVALID_FIELDS)
async def test_daemon_invalid_fields_rejected(daemon, caplog, fields, message):
    request = fields | {STORE_FIELD: store_identity(daemon.app.database)}

    reply = await ask(daemon.config.general.control_socket, request)

    assert reply["error"].startswith(f"invalid request: {message}")
    assert "Traceback" not in caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert await daemon.check(GEOGRAPHIC) == "ok"


async def test_daemon_reset_other_store_kept(daemon, tmp_path, capsys):
    key = window_keys(daemon.clock.now(), daemon.config.trunks["gamma"].timezone)["day"]
    with Store(daemon.config.general.database) as store:
        store.add_spend("gamma", "day", key, Decimal("50"), daemon.clock.now())
    assert await daemon.check(GEOGRAPHIC) == "limit:daily"
    other = f"sqlite:///{tmp_path / 'other.db'}"

    status = await daemon.ctl("--database", other, "reset", "gamma", "--window", "day",
                              "--reason", "test")

    err = capsys.readouterr().err
    assert status == 1
    assert f"callguardctl changed the store {other}, but this daemon uses" in err
    assert await daemon.check(GEOGRAPHIC, uniqueid="1718355600.2") == "limit:daily"


async def test_daemon_unblock_other_store_kept(daemon, tmp_path, capsys):
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert await daemon.ctl("block", "1001", "--reason", "fraud") == 0
    assert await daemon.ctl("--database", other, "block", "1001", "--reason", "x") == 1
    capsys.readouterr()

    status = await daemon.ctl("--database", other, "unblock", "1001", "--reason", "x")

    assert status == 1
    assert "rejected the change" in capsys.readouterr().err
    assert await daemon.check(GEOGRAPHIC) == "blocked:offender"


@pytest.fixture
async def pg_daemon(tmp_path, pg_url):
    # Trust authentication ignores the password, which must stay out of every message.
    database = make_url(pg_url).set(password="daemon-secret")
    daemon = Daemon(tmp_path, database=database.render_as_string(hide_password=False))
    await daemon.app.start()
    yield daemon
    await daemon.app.stop()


@pytest.mark.postgres
async def test_postgres_store_matched_without_password(pg_daemon, pg_url, tmp_path,
                                                       capsys, caplog, monkeypatch):
    requests = []

    async def recording_ask(path, request, *args):
        requests.append(request)
        return await ask(path, request, *args)

    monkeypatch.setattr(blocks, "ask", recording_ask)
    caplog.set_level(logging.DEBUG)
    other_password = make_url(pg_url).set(password="ctl-secret")

    same = await pg_daemon.ctl("--database",
                               other_password.render_as_string(hide_password=False),
                               "block", "1001", "--reason", "fraud")
    out = capsys.readouterr().out
    other = await pg_daemon.ctl("--database", f"sqlite:///{tmp_path / 'other.db'}",
                                "block", "1002", "--reason", "fraud")
    err = capsys.readouterr().err

    assert same == 0
    assert "applied to the running daemon" in out
    assert await pg_daemon.check(GEOGRAPHIC) == "blocked:offender"
    assert other == 1
    assert "but this daemon uses postgresql+psycopg://postgres:***@127.0.0.1" in err
    assert "daemon-secret" not in err
    assert [request["store"]["backend"] for request in requests] == ["postgresql", "sqlite"]
    for secret in ("daemon-secret", "ctl-secret"):
        assert secret not in json.dumps(requests)
        assert secret not in caplog.text
