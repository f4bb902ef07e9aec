"""The dialplan snippet in etc/asterisk-snippets/extensions.conf, run call by call.

The snippet is run by the dialplan interpreter in tests/emulator. Its AGI()
either returns fixed results or opens a real FastAGI session to a running
callguard.
"""

from pathlib import Path

import pytest

from emulator.dialplan import Dialplan, evaluate
from emulator.fastagi import AGICall, run_fastagi_call
from test_check_fastagi import Daemon

SNIPPET = Path(__file__).resolve().parent.parent / "etc" / "asterisk-snippets" / "extensions.conf"
CONTEXT = "callguard-outbound-gamma"


@pytest.fixture(scope="module")
def dialplan() -> Dialplan:
    return Dialplan(SNIPPET.read_text())


def answering(status: str = "SUCCESS", **variables: str):
    """Return an AGI runner that gives ``status`` and sets ``variables``."""
    async def run(url, arguments, channel):
        return status, {f"CALLGUARD_{name.upper()}": value for name, value in variables.items()}
    return run


ALLOWED = answering(result="ALLOW", reason="ok", category="geographic", maxsecs="600",
                    rate="0.0100")


async def test_allow_dials_with_limit(dialplan):
    outcome = await dialplan.run(CONTEXT, "01632960123", agi=ALLOWED, callerid="01632960010")

    assert outcome.agi_calls == [["agi://127.0.0.1:4573/check", "01632960123", "gamma",
                                  "01632960010"]]
    assert outcome.dials == [["PJSIP/01632960123@gamma", "60", "S(600)"]]
    assert outcome.hangup_cause == "16"


async def test_deny_hangs_up_with_cause_21(dialplan):
    denied = answering(result="DENY", reason="barred:premium", category="premium")

    outcome = await dialplan.run(CONTEXT, "09011234567", agi=denied, callerid="1001")

    assert outcome.dials == []
    assert outcome.hangup_cause == "21"
    assert outcome.verbose == ["callguard denied 09011234567 from 1001: barred:premium"]


@pytest.mark.parametrize("runner", [
    answering("FAILURE"),
    answering("HANGUP"),
    answering("SUCCESS"),                                  # no result set
    answering("SUCCESS", result="ALLOW", maxsecs=""),      # no limit
    answering("SUCCESS", result="ALLOW", maxsecs="0"),     # Asterisk reads 0 as none
])
async def test_no_usable_answer_denied_by_default(dialplan, runner):
    outcome = await dialplan.run(CONTEXT, "01632960123", agi=runner)

    assert outcome.dials == []
    assert outcome.hangup_cause == "21"
    assert outcome.logs[0][0] == "WARNING"
    assert "fail policy deny applies" in outcome.logs[0][1]


async def test_fail_open_uses_fail_limit(dialplan):
    outcome = await dialplan.run(CONTEXT, "01632960123", agi=answering("FAILURE"),
                                 globals={"CALLGUARD_FAIL_POLICY": "allow"})

    assert outcome.dials == [["PJSIP/01632960123@gamma", "60", "S(3600)"]]


@pytest.mark.parametrize("limit", ["", "0", "-5", "abc", "1e9"])
async def test_fail_open_without_limit_denied(dialplan, limit):
    outcome = await dialplan.run(
        CONTEXT, "01632960123", agi=answering("FAILURE"),
        globals={"CALLGUARD_FAIL_POLICY": "allow", "CALLGUARD_FAIL_MAXSECS": limit})

    assert outcome.dials == []
    assert outcome.hangup_cause == "21"
    assert outcome.logs[-1][0] == "ERROR"
    assert f"CALLGUARD_FAIL_MAXSECS '{limit}' is not a number of seconds" in outcome.logs[-1][1]


@pytest.mark.parametrize("dialled, sent", [
    ("999", "999"), ("112", "112"), ("9999", "999"), ("9112", "112"),
    ("999#", "999"), ("112#", "112"), ("9999#", "999"), ("9112#", "112"),
    ("18000", "18000"), ("918000", "18000"), ("141999", "999"), ("141112", "112"),
    ("1470999", "999"), ("1470112", "112"), ("9141999", "999"), ("9141112", "112"),
    ("91470999", "999"), ("91470112", "112"),
])
async def test_emergency_dialled_without_check(dialplan, dialled, sent):
    outcome = await dialplan.run(CONTEXT, dialled, agi=answering("FAILURE"))

    assert outcome.agi_calls == []
    assert outcome.dials == [[f"PJSIP/{sent}@gamma"]]


async def test_outside_line_prefix_stripped_for_dial(dialplan):
    outcome = await dialplan.run(CONTEXT, "901632960123", agi=ALLOWED,
                                 globals={"CALLGUARD_OUTSIDE_PREFIX": "9"})

    # callguard gets the number as dialled and strips the prefix itself.
    assert outcome.agi_calls[0][1] == "901632960123"
    assert outcome.dials == [["PJSIP/01632960123@gamma", "60", "S(600)"]]


async def test_number_without_outside_prefix_kept(dialplan):
    outcome = await dialplan.run(CONTEXT, "01632960123", agi=ALLOWED,
                                 globals={"CALLGUARD_OUTSIDE_PREFIX": "9"})

    assert outcome.dials == [["PJSIP/01632960123@gamma", "60", "S(600)"]]


async def test_emergency_from_check_dials_its_number(dialplan):
    emergency = answering(result="ALLOW", reason="emergency", category="emergency",
                          emergency="18000")

    outcome = await dialplan.run(CONTEXT, "918000#", agi=emergency,
                                 globals={"CALLGUARD_OUTSIDE_PREFIX": "9"})

    assert outcome.dials == [["PJSIP/18000@gamma"]]


@pytest.mark.parametrize("status", ["SUCCESS", "FAILURE", "HANGUP"])
async def test_emergency_routed_from_cut_session(dialplan, status):
    # The session broke after its first command: only CALLGUARD_EMERGENCY is set.
    cut = answering(status, emergency="999")

    outcome = await dialplan.run(CONTEXT, "141999#", agi=cut)

    assert outcome.dials == [["PJSIP/999@gamma"]]


async def test_emergency_not_kept_from_earlier_check(dialplan):
    # A variable left on the channel by an earlier check must not route this call.
    outcome = await dialplan.run(CONTEXT, "09011234567", agi=answering("FAILURE"),
                                 variables={"CALLGUARD_EMERGENCY": "999"})

    assert outcome.dials == []


# Through a running callguard: the snippet's AGI() is a real FastAGI session.

@pytest.fixture
async def daemon(tmp_path):
    daemon = Daemon(tmp_path, general="outside_line_prefix = 9")
    await daemon.app.start()
    yield daemon
    await daemon.app.stop()


def fastagi(port: int):
    async def run(url, arguments, channel):
        call = AGICall(extension=arguments[0], arguments=tuple(arguments),
                       callerid=arguments[2] if len(arguments) > 2 else "unknown")
        try:
            result = await run_fastagi_call("127.0.0.1", port, call)
        except OSError:
            return "FAILURE", {}
        return "SUCCESS", result.variables
    return run


@pytest.mark.parametrize("dialled, dial", [
    ("901632960123", ["PJSIP/01632960123@gamma", "60", "S(7200)"]),
    ("909011234567", None),
    ("9118118", None),
    ("9999", ["PJSIP/999@gamma"]),
    ("9141999", ["PJSIP/999@gamma"]),
    ("1470112#", ["PJSIP/112@gamma"]),
    ("918000#", ["PJSIP/18000@gamma"]),
    ("9990", None),
])
async def test_snippet_with_callguard(dialplan, daemon, dialled, dial):
    outcome = await dialplan.run(CONTEXT, dialled, agi=fastagi(daemon.port),
                                 callerid="01632960010",
                                 globals={"CALLGUARD_OUTSIDE_PREFIX": "9"})

    assert outcome.dials == ([dial] if dial else [])
    if dial is None:
        assert outcome.hangup_cause == "21"
        assert outcome.variables["CALLGUARD_RESULT"] == "DENY"


async def test_snippet_when_callguard_down(dialplan, tmp_path):
    daemon = Daemon(tmp_path)  # never started, so nothing listens on its port

    outcome = await dialplan.run(CONTEXT, "01632960123", agi=fastagi(daemon.port))

    assert outcome.dials == []
    assert outcome.hangup_cause == "21"


@pytest.mark.parametrize("expression, value", [
    ('"SUCCESS" = "SUCCESS" & "ALLOW" != ""', "1"),
    ('"FAILURE" = "SUCCESS" & "ALLOW" != ""', "0"),
    ("1 | 0 < 1", "1"),
    ("0 | 03600 < 1", "0"),
    ("0 | 0abc < 1", "1"),
    ("0 | 0-5 < 1", "1"),
    ("", ""),
])
def test_expressions(expression, value):
    assert evaluate(expression) == value
