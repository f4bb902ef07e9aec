"""Operator controls and the audit trail: the CLI against SQLite and a running daemon."""

import asyncio
import json
import socket
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from callguard.cli.ctl import main
from callguard.clock import ManualClock
from callguard.config import load_config
from callguard.daemon.app import Application
from callguard.store import Store
from callguard.windows import window_keys
from emulator.fastagi import AGICall, run_fastagi_call
from support import TRUNK, write_config

PREMIUM = "09011234567"
GEOGRAPHIC = "01632960123"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ctl(path, *arguments):
    return main(["--config", str(path), *arguments])


def run_json(capsys, path, *arguments):
    assert main(["--config", str(path), *arguments, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture
def conf(tmp_path):
    return write_config(tmp_path)


def test_block_and_unblock(conf, capsys):
    assert ctl(conf, "block", "01632960010", "--type", "caller", "--for", "2h",
               "--reason", "toll fraud") == 0
    assert "callguard is not running" in capsys.readouterr().out

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
    assert "cleared 42.50" in capsys.readouterr().out
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


class Daemon:
    def __init__(self, directory, trunks=TRUNK):
        self.port = free_port()
        # Nothing listens on the webhook port, so alerts stay pending in the outbox.
        self.path = write_config(directory, port=self.port, trunks=trunks,
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


async def test_daemon_reset_rereads_spend(daemon, capsys):
    key = window_keys(daemon.clock.now(), daemon.config.trunks["gamma"].timezone)["day"]
    with Store(daemon.config.general.database) as store:
        store.add_spend("gamma", "day", key, Decimal("50"), daemon.clock.now())
    assert await daemon.check(GEOGRAPHIC) == "limit:daily"

    assert await daemon.ctl("reset", "gamma", "--window", "day", "--reason", "test") == 0
    assert await daemon.check(GEOGRAPHIC, uniqueid="1718355600.2") == "ok"


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
