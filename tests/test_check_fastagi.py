"""The daemon's FastAGI check end to end: the emulated Asterisk dials, callguard answers."""

import asyncio
import logging
import socket
import struct
import threading
from datetime import datetime, timezone
from decimal import Decimal

import pytest

from callguard.clock import ManualClock
from callguard.config import load_config
from callguard.daemon.app import Application
from callguard.store import Store
from emulator.fastagi import AGICall, encode_environment, run_fastagi_call
from support import TRUNK, free_port, write_config

NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
TODAY = "2024-06-14"


class Daemon:
    def __init__(self, directory, **config):
        self.port = free_port()
        self.path = write_config(directory, port=self.port, **config)
        self.config = load_config(self.path)
        self.clock = ManualClock(NOW)
        self.app = Application(self.config, clock=self.clock)

    def decisions(self):
        """Return the stored decisions, newest first."""
        with Store(self.config.general.database) as store:
            store.open()
            return store.recent_decisions(10)

    def spend(self, window, key, amount, trunk="gamma"):
        with Store(self.config.general.database) as store:
            store.open()
            store.add_spend(trunk, window, key, Decimal(amount), NOW)

    async def check(self, number, trunk="gamma", *, uniqueid="1718355600.1",
                    callerid="01632960010", variables=None, arguments=None):
        if arguments is None:
            arguments = (number, trunk)
        call = AGICall(extension=number, uniqueid=uniqueid, callerid=callerid,
                       arguments=tuple(arguments), variables=variables or {})
        return await run_fastagi_call("127.0.0.1", self.port, call)


@pytest.fixture
async def daemon(tmp_path):
    daemon = Daemon(tmp_path)
    await daemon.app.start()
    yield daemon
    await daemon.app.stop()


# fmt: off
CHECKS = [
    # dialled,                 result,  reason,              category,         maxsecs, rate
    ("09011234567",            "DENY",  "barred:premium",    "premium",        "",      "1.5000"),
    ("0044 9011234567",        "DENY",  "barred:premium",    "premium",        "",      "1.5000"),
    ("08451234567",            "DENY",  "barred:special-084", "special-084",   "",      "0.1000"),
    ("08701234567",            "DENY",  "barred:special-087", "special-087",   "",      "0.1200"),
    ("118118",                 "DENY",  "barred:directory",  "directory",      "",      "3.0000"),
    ("0118 496 0000",          "ALLOW", "ok",                "geographic",     "7200",  "0.0100"),
    ("+44 (0) 20 7946 0000",   "ALLOW", "ok",                "geographic",     "7200",  "0.0100"),
    ("+00972590000000",        "DENY",  "invalid-number",    "",               "",      ""),
    ("0151496012#",            "DENY",  "invalid-number",    "",               "",      ""),
    ("*21*00441514960123",     "DENY",  "invalid-number",    "",               "",      ""),
    ("07012345678",            "ALLOW", "ok",                "personal",       "7200",  "0.0500"),
    ("111",                    "ALLOW", "ok",                "service",        "7200",  "0.0100"),
    ("116123",                 "ALLOW", "ok",                "service",        "7200",  "0.0100"),
    ("999",                    "ALLOW", "emergency",         "emergency",      "",      ""),
    ("112",                    "ALLOW", "emergency",         "emergency",      "",      ""),
]
# fmt: on


@pytest.mark.parametrize("dialled, result, reason, category, maxsecs, rate", CHECKS)
async def test_check_sets_variables(daemon, dialled, result, reason, category, maxsecs, rate):
    outcome = await daemon.check(dialled)

    assert outcome.variables["CALLGUARD_RESULT"] == result
    assert outcome.variables["CALLGUARD_REASON"] == reason
    assert outcome.variables["CALLGUARD_CATEGORY"] == category
    assert outcome.variables["CALLGUARD_MAXSECS"] == maxsecs
    assert outcome.variables["CALLGUARD_RATE"] == rate
    assert outcome.closed_by_server


async def test_tiny_rate_written_plain(tmp_path):
    # Decimal's str() writes 0.00000000 as 0E-8, which a dialplan cannot use.
    rates = ("prefix,description,rate,connection_fee,increments\n"
             "44,UK,0.00000000,,60/60\n447,UK mobile,0.0000001,,1/1\n")
    daemon = Daemon(tmp_path, rates=rates)
    await daemon.app.start()
    try:
        geographic = await daemon.check("01632960123", uniqueid="1718355600.1")
        mobile = await daemon.check("07700900123", uniqueid="1718355600.2")
    finally:
        await daemon.app.stop()

    assert geographic.variables["CALLGUARD_RATE"] == "0.00000000"
    assert mobile.variables["CALLGUARD_RATE"] == "0.0000001"


@pytest.mark.parametrize("dialled, number", [("999", "999"), ("141999#", "999"),
                                             ("18000#", "18000")])
async def test_emergency_number_to_dial(daemon, dialled, number):
    outcome = await daemon.check(dialled)

    assert outcome.variables["CALLGUARD_REASON"] == "emergency"
    assert outcome.variables["CALLGUARD_EMERGENCY"] == number


async def test_emergency_number_set_first(daemon):
    # A session cut short after its first command still routes the call.
    outcome = await daemon.check("141999#")

    assert outcome.commands[0] == 'SET VARIABLE CALLGUARD_EMERGENCY "999"'
    assert outcome.commands[1] == 'SET VARIABLE CALLGUARD_RESULT "ALLOW"'


@pytest.mark.parametrize("arguments", [(), ("999",), ("999", "")])
async def test_emergency_without_trunk_asks_nothing(daemon, arguments):
    # The trunk is read with GET VARIABLE only for other numbers: a bad reply
    # to it must not end the session before CALLGUARD_EMERGENCY is set.
    outcome = await daemon.check("999", arguments=arguments)

    assert outcome.commands[0] == 'SET VARIABLE CALLGUARD_EMERGENCY "999"'
    assert not [command for command in outcome.commands if command.startswith("GET")]
    assert outcome.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert outcome.variables["CALLGUARD_REASON"] == "emergency"


async def test_no_emergency_number_otherwise(daemon):
    outcome = await daemon.check("01632960123")

    assert outcome.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert "CALLGUARD_EMERGENCY" not in outcome.variables


@pytest.mark.parametrize("extension", [
    "09011234567,gamma,01632960050",  # an opted-out caller skips barring
    "01632960123,",
    "07700900123,gamma",
])
async def test_comma_in_extension_denied(daemon, extension):
    # AGI() splits its arguments at each comma of the substituted ${EXTEN}, so
    # a phone that dials a comma would choose the trunk and the caller checked.
    result = await daemon.check(extension, arguments=extension.split(","))

    assert result.variables["CALLGUARD_RESULT"] == "DENY"
    assert result.variables["CALLGUARD_REASON"] == "invalid-number"
    assert "CALLGUARD_EMERGENCY" not in result.variables


@pytest.mark.parametrize("arguments", [("999", "gamma"), ("999", "")])
async def test_comma_after_emergency_number_routed(daemon, arguments):
    # Only the emergency route follows, so the comma cannot buy a call.
    result = await daemon.check("999," + arguments[1], arguments=arguments)

    assert result.variables["CALLGUARD_EMERGENCY"] == "999"
    assert result.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert result.variables["CALLGUARD_REASON"] == "emergency"


async def test_full_width_digits_denied(daemon):
    outcome = await daemon.check("\uff10\uff11\uff16\uff13\uff12\uff19\uff16\uff10\uff11")

    assert outcome.variables["CALLGUARD_REASON"] == "invalid-number"


async def test_trunk_from_channel_variable(daemon):
    outcome = await daemon.check("09011234567", arguments=(),
                                 variables={"CALLGUARD_TRUNK": "gamma"})

    assert outcome.variables["CALLGUARD_REASON"] == "barred:premium"
    assert "GET VARIABLE CALLGUARD_TRUNK" in outcome.commands


async def test_unknown_trunk_denied(daemon):
    outcome = await daemon.check("01632960123", trunk="delta")

    assert outcome.variables["CALLGUARD_RESULT"] == "DENY"
    assert outcome.variables["CALLGUARD_REASON"] == "unknown-trunk"


@pytest.mark.parametrize("trunk, arguments, hint", [
    ("Gamma", None, "has no [trunk Gamma], so every call checked for it is denied; did "
                    "you mean 'gamma'? Trunk names are case-sensitive; trunks configured: "
                    "gamma"),
    ("delta", None, "has no [trunk delta], so every call checked for it is denied; "
                    "trunks configured: gamma"),
    ("", ("01632960123",), "the check got no trunk: give it as the second argument of "
                           "AGI() or set the channel variable CALLGUARD_TRUNK; trunks "
                           "configured: gamma"),
])
async def test_unknown_trunk_warns_how_to_fix(daemon, caplog, trunk, arguments, hint):
    with caplog.at_level(logging.WARNING, logger="callguard.agi.check"):
        outcome = await daemon.check("01632960123", trunk=trunk, arguments=arguments)

    assert outcome.variables["CALLGUARD_REASON"] == "unknown-trunk"
    (warning,) = [r.getMessage() for r in caplog.records
                  if r.name == "callguard.agi.check" and r.levelno == logging.WARNING]
    assert hint in warning


async def test_unknown_trunk_warnings_limited(daemon, caplog):
    with caplog.at_level(logging.WARNING, logger="callguard.agi.check"):
        for number in range(8):
            await daemon.check("01632960123", trunk="delta", uniqueid=f"1718355600.{number}")

    warnings = [r for r in caplog.records
                if r.name == "callguard.agi.check" and r.levelno == logging.WARNING]
    assert len(warnings) == 5


async def test_thirty_checks_three_blocks(tmp_path):
    daemon = Daemon(tmp_path)
    daemon.spend("day", TODAY, "49.97")  # three first blocks of 0.01 left
    await daemon.app.start()
    try:
        outcomes = await asyncio.gather(
            *(daemon.check("01632960123", uniqueid=f"1718355600.{n}") for n in range(30))
        )
    finally:
        await daemon.app.stop()

    results = [o.variables["CALLGUARD_RESULT"] for o in outcomes]
    reasons = [o.variables["CALLGUARD_REASON"] for o in outcomes]
    assert results.count("ALLOW") == 3
    assert reasons.count("limit:daily") == 27


async def test_decisions_stored(tmp_path):
    daemon = Daemon(tmp_path)
    await daemon.app.start()
    try:
        await daemon.check("09011234567", uniqueid="1718355600.7")
        await daemon.check("01632960123", uniqueid="1718355600.8")
    finally:
        await daemon.app.stop()

    decisions = daemon.decisions()
    by_uniqueid = {d.uniqueid: d for d in decisions}
    assert by_uniqueid["1718355600.7"].reason == "barred:premium"
    assert by_uniqueid["1718355600.8"].result == "ALLOW"
    assert by_uniqueid["1718355600.8"].reserved == Decimal("0.0100")


@pytest.mark.parametrize("policy, result", [("deny", "DENY"), ("allow", "ALLOW")])
async def test_stalled_store_gets_fail_policy(tmp_path, policy, result):
    daemon = Daemon(tmp_path, general=f"fail_policy = {policy}", decision_timeout="250ms")
    await daemon.app.start()
    release = threading.Event()
    # Occupy the store thread, as a locked or unreachable database would.
    stall = asyncio.ensure_future(daemon.app.worker.call(release.wait, 10))
    try:
        outcome = await daemon.check("01632960123")
    finally:
        release.set()
        await stall
        await daemon.app.stop()

    assert outcome.variables["CALLGUARD_RESULT"] == result
    assert outcome.variables["CALLGUARD_REASON"] == "fail-policy"
    assert outcome.elapsed < 1.0
    if result == "ALLOW":
        assert outcome.variables["CALLGUARD_MAXSECS"] == "7200"


async def test_fail_policy_log_quotes_uniqueid(tmp_path, caplog):
    daemon = Daemon(tmp_path, decision_timeout="250ms")
    await daemon.app.start()
    release = threading.Event()
    stall = asyncio.ensure_future(daemon.app.worker.call(release.wait, 10))
    # The uniqueid is the peer's agi_uniqueid value, unchecked.
    uniqueid = "1718355600.1" + "\x1b[2J" + "9" * 100
    try:
        with caplog.at_level(logging.ERROR, logger="callguard.agi.check"):
            await daemon.check("01632960123", uniqueid=uniqueid)
    finally:
        release.set()
        await stall
        await daemon.app.stop()

    (message,) = [r.getMessage() for r in caplog.records if "by fail_policy" in r.getMessage()]
    assert "\x1b" not in message
    assert "(116 characters)" in message


async def test_reload_keeps_config_on_error(tmp_path):
    daemon = Daemon(tmp_path)
    await daemon.app.start()
    try:
        daemon.path.write_text(daemon.path.read_text().replace("daily_limit = 50.00",
                                                               "daily_limit = fifty"))
        kept = await daemon.app.reload()
        before = await daemon.check("0118 496 0000", uniqueid="1718355600.1")

        daemon.path.write_text(daemon.path.read_text().replace(
            "daily_limit = fifty", "daily_limit = 50.00").replace(
            "bar = premium,", "bar = geographic, premium,"))
        applied = await daemon.app.reload()
        after = await daemon.check("0118 496 0000", uniqueid="1718355600.2")
    finally:
        await daemon.app.stop()

    assert kept is False
    assert before.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert applied is True
    assert after.variables["CALLGUARD_REASON"] == "barred:geographic"


@pytest.mark.parametrize("text", ["", "[general]\ncurrency = GBP\n"])
async def test_reload_keeps_trunks_over_file_without_any(tmp_path, text):
    # An emptied or cut-off file must not turn every call into unknown-trunk.
    daemon = Daemon(tmp_path)
    await daemon.app.start()
    try:
        daemon.path.write_text(text)
        kept = await daemon.app.reload()
        outcome = await daemon.check("0118 496 0000")
    finally:
        await daemon.app.stop()

    assert kept is False
    assert outcome.variables["CALLGUARD_RESULT"] == "ALLOW"


async def test_reload_warns_control_socket_changed(tmp_path, caplog):
    daemon = Daemon(tmp_path)
    await daemon.app.start()
    running = tmp_path / "callguard.sock"
    moved = tmp_path / "moved.sock"
    try:
        daemon.path.write_text(daemon.path.read_text().replace(str(running), str(moved)))
        applied = await daemon.app.reload()
    finally:
        await daemon.app.stop()

    assert applied is True
    assert (f"control_socket changed in {daemon.path} to {moved}, but callguard keeps "
            f"{running}; restart callguard to use it" in caplog.text)
    assert not moved.exists()


async def test_decisions_stored_under_node_name(tmp_path):
    daemon = Daemon(tmp_path, general="node_name = pbx-7\n")
    await daemon.app.start()
    try:
        await daemon.check("01632960123", uniqueid="1718355600.9")
    finally:
        await daemon.app.stop()

    decisions = daemon.decisions()
    assert daemon.app.node == "pbx-7"
    assert [decision.node for decision in decisions] == ["pbx-7"]


async def test_reload_warns_node_name_changed(tmp_path, caplog):
    daemon = Daemon(tmp_path, general="node_name = pbx-7\n")
    await daemon.app.start()
    try:
        daemon.path.write_text(daemon.path.read_text().replace("pbx-7", "pbx-8"))
        applied = await daemon.app.reload()
        await daemon.check("01632960123", uniqueid="1718355600.9")
    finally:
        await daemon.app.stop()

    decisions = daemon.decisions()
    assert applied is True
    assert (f"node_name changed in {daemon.path} to 'pbx-8', but callguard keeps storing "
            "its rows as node 'pbx-7'; restart callguard to use it" in caplog.text)
    assert [decision.node for decision in decisions] == ["pbx-7"]


async def test_hangup_mid_session_is_survived(daemon):
    broken = await daemon.check("01632960123", uniqueid="1718355600.1")
    outcome = await run_fastagi_call(
        "127.0.0.1", daemon.port,
        AGICall(extension="01632960123", uniqueid="1718355600.2",
                arguments=("01632960123", "gamma")),
        hangup_before_command=2,
    )
    after = await daemon.check("01632960123", uniqueid="1718355600.3")

    assert broken.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert outcome.hung_up
    assert after.variables["CALLGUARD_RESULT"] == "ALLOW"


async def test_channel_gone_before_result_releases_hold(daemon):
    # The caller hangs up as the check starts: Asterisk has sent the whole
    # environment and closes the connection before any command is answered.
    call = AGICall(extension="01632960123", uniqueid="1718355600.9",
                   arguments=("01632960123", "gamma"))
    block = encode_environment(call.fastagi_environment("127.0.0.1", daemon.port))
    with socket.create_connection(("127.0.0.1", daemon.port)) as sock:
        sock.sendall(block)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    reservations = daemon.app.reservations

    for _ in range(200):
        if daemon.app.guard.decisions.get("1718355600.9") and not len(reservations):
            break
        await asyncio.sleep(0.01)

    assert daemon.app.guard.decisions.get("1718355600.9") is not None
    assert reservations.get("1718355600.9") is None
    assert reservations.pending_count("gamma") == 0
    after = await daemon.check("01632960123", uniqueid="1718355600.10")
    assert after.variables["CALLGUARD_RESULT"] == "ALLOW"


@pytest.mark.parametrize("hangup_at, dead_replies", [(1, False), (3, False), (5, False),
                                                     (3, True), (5, True)])
async def test_hangup_during_check_releases_hold(daemon, hangup_at, dead_replies):
    # The caller hangs up while the result is being set: Asterisk sends a
    # HANGUP line, then answers the remaining commands with 200 (SET VARIABLE
    # works on a dead channel) or 511. No Dial follows either way.
    call = AGICall(extension="01632960123", uniqueid="1718355600.20",
                   arguments=("01632960123", "gamma"))
    outcome = await run_fastagi_call("127.0.0.1", daemon.port, call,
                                     hangup_before_command=hangup_at,
                                     reply_511_after_hangup=dead_replies)
    reservations = daemon.app.reservations

    assert outcome.hung_up
    assert reservations.get("1718355600.20") is None
    assert reservations.pending_count("gamma") == 0


async def test_long_dialled_string_cut_in_log(daemon, caplog):
    dialled = "0" + "1" * 3999
    with caplog.at_level(logging.INFO, logger="callguard.agi.check"):
        result = await daemon.check(dialled, uniqueid="1718355600.11")

    lines = [r.getMessage() for r in caplog.records if r.name == "callguard.agi.check"]
    assert result.variables["CALLGUARD_REASON"] == "invalid-number"
    assert any("(4000 characters)" in line for line in lines)
    assert all(len(line) < 400 for line in lines)


def check_lines(caplog):
    """Return (level name, message) of each per-check line logged, in order."""
    return [(r.levelname, r.getMessage()) for r in caplog.records
            if r.name == "callguard.agi.check" and " to " in r.getMessage()
            and " from " in r.getMessage()]


async def test_routine_allowed_check_logs_at_debug_by_default(daemon, caplog):
    with caplog.at_level(logging.DEBUG, logger="callguard.agi.check"):
        await daemon.check("0118 496 0000", uniqueid="1718355600.1")
        await daemon.check("09011234567", uniqueid="1718355600.2")
        await daemon.check("999", uniqueid="1718355600.3")

    assert check_lines(caplog) == [
        ("DEBUG", "'gamma' '1718355600.1': ALLOW ok to +441184960000 (geographic) "
                  "from '01632960010'"),
        ("INFO", "'gamma' '1718355600.2': DENY barred:premium to +449011234567 (premium) "
                 "from '01632960010'"),
        ("INFO", "'gamma' '1718355600.3': ALLOW emergency to '999' (emergency) "
                 "from '01632960010'"),
    ]


async def test_routine_allowed_check_not_formatted_above_debug(daemon, caplog):
    with caplog.at_level(logging.INFO, logger="callguard.agi.check"):
        await daemon.check("0118 496 0000")

    assert check_lines(caplog) == []


async def test_log_calls_all_logs_every_check_at_info(tmp_path, caplog):
    daemon = Daemon(tmp_path, general="log_calls = all\n")
    await daemon.app.start()
    try:
        with caplog.at_level(logging.INFO, logger="callguard.agi.check"):
            await daemon.check("0118 496 0000", uniqueid="1718355600.1")
    finally:
        await daemon.app.stop()

    assert check_lines(caplog) == [
        ("INFO", "'gamma' '1718355600.1': ALLOW ok to +441184960000 (geographic) "
                 "from '01632960010'"),
    ]


def summaries(caplog):
    return [r.getMessage() for r in caplog.records
            if r.name == "callguard.agi.check" and r.getMessage().startswith("checks ")]


async def test_summary_counts_checks_per_trunk(daemon, caplog):
    with caplog.at_level(logging.INFO, logger="callguard.agi.check"):
        await daemon.check("0118 496 0000", uniqueid="1718355600.1")
        await daemon.check("020 7946 0000", uniqueid="1718355600.2")
        await daemon.check("09011234567", uniqueid="1718355600.3")
        # Names that no trunk has are counted together, however many there are.
        await daemon.check("0118 496 0000", "zeta", uniqueid="1718355600.4")
        await daemon.check("0118 496 0000", "omega", uniqueid="1718355600.5")
        daemon.app.check_handler.summarise("in the last minute")
        daemon.app.check_handler.summarise("in the last minute")
        await daemon.check("0118 496 0000", uniqueid="1718355600.6")
        daemon.app.check_handler.summarise("in the last minute")

    assert summaries(caplog) == [
        "checks in the last minute: gamma 2 allowed, 1 denied; "
        "no configured trunk 0 allowed, 2 denied",
        "checks in the last minute: gamma 1 allowed, 0 denied",
    ]


async def test_summary_counts_trunk_named_dash_apart(tmp_path, caplog):
    # "-" is a valid trunk name, and must not share the count of unknown ones.
    daemon = Daemon(tmp_path, extra="[trunk -]\nrates = rates.csv\n")
    await daemon.app.start()
    try:
        with caplog.at_level(logging.INFO, logger="callguard.agi.check"):
            await daemon.check("0118 496 0000", "-", uniqueid="1718355600.1")
            await daemon.check("0118 496 0000", "zeta", uniqueid="1718355600.2")
            daemon.app.check_handler.summarise("in the last minute")
    finally:
        await daemon.app.stop()

    assert summaries(caplog)[0] == (
        "checks in the last minute: - 1 allowed, 0 denied; "
        "no configured trunk 0 allowed, 1 denied")


async def test_summary_logged_on_stop(tmp_path, caplog):
    daemon = Daemon(tmp_path)
    await daemon.app.start()
    with caplog.at_level(logging.INFO, logger="callguard.agi.check"):
        await daemon.check("0118 496 0000")
        await daemon.app.stop()

    assert summaries(caplog) == ["checks since the last count: gamma 1 allowed, 0 denied"]


async def test_summary_logged_each_interval(tmp_path, caplog):
    daemon = Daemon(tmp_path)
    daemon.app.check_summary_interval = 0.05
    await daemon.app.start()
    try:
        with caplog.at_level(logging.INFO, logger="callguard.agi.check"):
            await daemon.check("0118 496 0000")
            for _ in range(100):
                if summaries(caplog):
                    break
                await asyncio.sleep(0.02)
    finally:
        await daemon.app.stop()

    assert summaries(caplog)[0] == "checks in the last 0.05 s: gamma 1 allowed, 0 denied"


def break_audit_trail(daemon, monkeypatch):
    def broken(request, decision):
        raise RuntimeError("the audit queue broke")

    monkeypatch.setattr(daemon.app.recorder, "record", broken)


async def test_failed_audit_row_logged_and_the_answer_stands(daemon, caplog, monkeypatch):
    break_audit_trail(daemon, monkeypatch)
    with caplog.at_level(logging.ERROR):
        outcome = await daemon.check("0118 496 0000", uniqueid="1718355600.9")

    assert outcome.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert outcome.variables["CALLGUARD_MAXSECS"] == "7200"
    (record,) = [r for r in caplog.records if "failed to pass" in r.getMessage()]
    assert record.getMessage() == (
        "'1718355600.9': failed to pass the decision ALLOW ok to the audit trail")
    assert "the audit queue broke" in record.exc_text


async def test_failed_audit_row_still_links_trunk_legs(daemon, monkeypatch):
    break_audit_trail(daemon, monkeypatch)

    outcome = await daemon.check("0118 496 0000", uniqueid="1718355600.9")

    assert outcome.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert daemon.app.guard.decisions.get("1718355600.9") is not None


async def test_failed_audit_row_still_counts_offence(daemon, monkeypatch):
    break_audit_trail(daemon, monkeypatch)
    noted = []
    monkeypatch.setattr(daemon.app.offenders, "note",
                        lambda request, decision, state: noted.append(decision.reason))

    outcome = await daemon.check("09011234567", uniqueid="1718355600.10")

    assert outcome.variables["CALLGUARD_RESULT"] == "DENY"
    assert noted == ["barred:premium"]


async def test_failed_sink_logged_and_the_answer_stands(daemon, caplog, monkeypatch):
    # A sink that raises as a whole, not one of its parts.
    def broken(request, decision):
        raise RuntimeError("the sink broke")

    monkeypatch.setattr(daemon.app.check_handler._sink, "record", broken)
    with caplog.at_level(logging.ERROR, logger="callguard.agi.check"):
        outcome = await daemon.check("0118 496 0000", uniqueid="1718355600.11")

    assert outcome.variables["CALLGUARD_RESULT"] == "ALLOW"
    (record,) = [r for r in caplog.records if "failed to record" in r.getMessage()]
    assert record.getMessage() == "'1718355600.11': failed to record the decision ALLOW ok"
