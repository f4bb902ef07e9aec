"""The dialplan snippet in etc/asterisk-snippets/extensions.conf, run call by call.

The snippet is run by the dialplan interpreter in tests/emulator. Its AGI()
either returns fixed results or opens a real FastAGI session to a running
callguard.
"""

from pathlib import Path

import pytest

from callguard.numbers.plan import NumberPlan
from emulator.dialplan import Dialplan, DialplanError, evaluate
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

    # The caller ID goes in the agi_* block, where no comma splits it.
    assert outcome.agi_calls == [["agi://127.0.0.1:4573/check", "01632960123", "gamma"]]
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
    answering("SUCCESS"),                                  # no result set
    answering("SUCCESS", result="ALLOW", maxsecs=""),      # no limit
    answering("SUCCESS", result="ALLOW", maxsecs="0"),     # Dial() rejects S(0)
])
async def test_no_usable_answer_denied_by_default(dialplan, runner):
    outcome = await dialplan.run(CONTEXT, "01632960123", agi=runner)

    assert outcome.dials == []
    assert outcome.hangup_cause == "21"
    assert outcome.logs[0][0] == "WARNING"
    assert "fail policy deny applies" in outcome.logs[0][1]


@pytest.mark.parametrize("variables", [
    {},
    {"result": "ALLOW", "reason": "ok", "maxsecs": "600"},
    {"result": "DENY", "reason": "barred:premium"},
    {"emergency": "911"},
    {"result": "ALLOW", "reason": "emergency", "emergency": "999"},
])
async def test_hangup_during_check_ends_call(dialplan, variables):
    # The caller hung up during the session: AGI() returns -1, so Asterisk
    # runs no further priority, whatever the check set, and the fail policy
    # does not apply either.
    outcome = await dialplan.run(CONTEXT, "141911#", agi=answering("HANGUP", **variables),
                                 globals={"CALLGUARD_FAIL_POLICY": "allow"})

    assert outcome.hung_up
    assert outcome.variables["AGISTATUS"] == "HANGUP"
    assert len(outcome.agi_calls) == 1
    assert outcome.dials == []
    assert outcome.hangup_cause is None
    assert outcome.logs == []
    assert outcome.verbose == []


async def test_fail_open_uses_fail_limit(dialplan):
    outcome = await dialplan.run(CONTEXT, "01632960123", agi=answering("FAILURE"),
                                 globals={"CALLGUARD_FAIL_POLICY": "allow"})

    assert outcome.dials == [["PJSIP/01632960123@gamma", "60", "S(3600)"]]


async def test_deny_kept_after_failed_session(dialplan):
    # res_agi sets AGISTATUS to FAILURE when an agi-bin program exits non-zero,
    # also after the program set the result.
    denied = answering("FAILURE", result="DENY", reason="barred:premium", category="premium")

    outcome = await dialplan.run(CONTEXT, "09011234567", agi=denied,
                                 globals={"CALLGUARD_FAIL_POLICY": "allow"})

    assert outcome.dials == []
    assert outcome.hangup_cause == "21"
    assert outcome.logs == []


@pytest.mark.parametrize("limit", ["", "0", "-5", "abc", "1e9"])
async def test_fail_open_without_limit_denied(dialplan, limit):
    outcome = await dialplan.run(
        CONTEXT, "01632960123", agi=answering("FAILURE"),
        globals={"CALLGUARD_FAIL_POLICY": "allow", "CALLGUARD_FAIL_MAXSECS": limit})

    assert outcome.dials == []
    assert outcome.hangup_cause == "21"
    assert outcome.logs[-1][0] == "ERROR"
    assert f"CALLGUARD_FAIL_MAXSECS '{limit}' is not a number of seconds" in outcome.logs[-1][1]


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


# 911 is an emergency number of callguard.conf that CALLGUARD_EMERGENCY_NUMBERS
# lacks, so only the check routes it.

async def test_emergency_from_check_dials_its_number(dialplan):
    emergency = answering(result="ALLOW", reason="emergency", category="emergency",
                          emergency="911")

    outcome = await dialplan.run(CONTEXT, "9911#", agi=emergency,
                                 globals={"CALLGUARD_OUTSIDE_PREFIX": "9"})

    assert len(outcome.agi_calls) == 1
    assert outcome.dials == [["PJSIP/911@gamma"]]


@pytest.mark.parametrize("status", ["SUCCESS", "FAILURE"])
async def test_emergency_routed_from_cut_session(dialplan, status):
    # The session broke after its first command: only CALLGUARD_EMERGENCY is set.
    cut = answering(status, emergency="911")

    outcome = await dialplan.run(CONTEXT, "141911#", agi=cut)

    assert len(outcome.agi_calls) == 1
    assert outcome.dials == [["PJSIP/911@gamma"]]


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


def fastagi(port: int, callerid: str = "unknown", hangup_before_command: int | None = None):
    """Return an AGI runner for a channel with ``callerid`` and the dialplan's variables.

    With ``hangup_before_command``, the caller hangs up just before Asterisk
    replies to that command, and AGISTATUS is HANGUP, as res_agi.c sets it.
    """
    async def run(url, arguments, channel):
        call = AGICall(extension=arguments[0], arguments=tuple(arguments),
                       callerid=callerid, variables=dict(channel))
        try:
            result = await run_fastagi_call("127.0.0.1", port, call,
                                            hangup_before_command=hangup_before_command)
        except OSError:
            return "FAILURE", {}
        return ("HANGUP" if result.hung_up else "SUCCESS"), result.variables
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
    # Asterisk skips the dash to match the pattern, but the snippet strips the
    # outside-line prefix only from the start, so the trunk would get the 9.
    ("-902121234567", None),
    # The same after a caller-ID prefix: the trunk would get 141902121234567.
    ("141902121234567", None),
    # E.164 as a phone dials it: the + reaches the check and the trunk.
    ("+441632960123", ["PJSIP/+441632960123@gamma", "60", "S(7200)"]),
    ("+449011234567", None),
])
async def test_snippet_with_callguard(dialplan, daemon, dialled, dial):
    outcome = await dialplan.run(CONTEXT, dialled, agi=fastagi(daemon.port, "01632960010"),
                                 callerid="01632960010",
                                 globals={"CALLGUARD_OUTSIDE_PREFIX": "9"})

    assert outcome.dials == ([dial] if dial else [])
    if dial is None:
        assert outcome.hangup_cause == "21"
        assert outcome.variables["CALLGUARD_RESULT"] == "DENY"


@pytest.mark.parametrize("hangup_before_command", [1, 2, 3])
async def test_hangup_with_callguard_dials_nothing(dialplan, daemon, hangup_before_command):
    outcome = await dialplan.run(
        CONTEXT, "901632960123", agi=fastagi(daemon.port, "01632960010", hangup_before_command),
        callerid="01632960010", globals={"CALLGUARD_OUTSIDE_PREFIX": "9",
                                         "CALLGUARD_FAIL_POLICY": "allow"})

    assert outcome.hung_up
    assert outcome.dials == []
    assert outcome.logs == []


async def test_caller_id_comma_passes_no_source(dialplan, tmp_path):
    # Asterisk splits AGI()'s arguments at each comma after it substitutes the
    # variables, and a phone may choose its own caller ID. Passed to the check,
    # 1001,198.51.100.7 would give 198.51.100.7 as its fourth argument, the
    # source address, and evade the block on the phone's real address.
    caller = "1001,198.51.100.7"
    daemon = Daemon(tmp_path)
    await daemon.app.start()
    try:
        daemon.app.engine.blocks.add("source", "192.0.2.10", None)
        outcome = await dialplan.run(CONTEXT, "01632960123", agi=fastagi(daemon.port, caller),
                                     callerid=caller,
                                     variables={"CALLGUARD_SOURCE": "192.0.2.10"})
    finally:
        await daemon.app.stop()

    assert outcome.dials == []
    assert outcome.variables["CALLGUARD_REASON"] == "blocked:offender"


async def test_snippet_when_callguard_down(dialplan, tmp_path):
    daemon = Daemon(tmp_path)  # never started, so nothing listens on its port

    outcome = await dialplan.run(CONTEXT, "01632960123", agi=fastagi(daemon.port))

    assert outcome.dials == []
    assert outcome.hangup_cause == "21"


# Emergency numbers in every way of writing them that callguard reads as one
# (NumberPlan.emergency), with an outside-line prefix of 9: (dialled, number).
EMERGENCY_FORMS = [
    ("999", "999"), ("112", "112"), ("18000", "18000"),
    # layout characters and tel:
    ("9 9 9", "999"), ("9-9-9", "999"), ("1.1.2", "112"), ("(999)", "999"),
    ("(1) 8000", "18000"), (".999", "999"), ("999 ", "999"), ("-(112)", "112"),
    ("tel:999", "999"), ("TEL:112", "112"), ("Tel: 18000", "18000"),
    ("tel:(999)", "999"), ("(tel:112)", "112"), ("t-e-l:999", "999"),
    # the send key, once or more
    ("999#", "999"), ("112#", "112"), ("18000#", "18000"), ("999##", "999"),
    ("112 # #", "112"), ("tel:18000#", "18000"),
    # the outside-line prefix
    ("9999", "999"), ("9112", "112"), ("918000", "18000"), ("9 999#", "999"),
    ("918000##", "18000"),
    # a caller-ID prefix: 141 withholds the caller ID, 1470 shows it
    ("141999", "999"), ("1470112", "112"), ("14118000", "18000"),
    ("147018000", "18000"), ("141999#", "999"), ("1470112#", "112"),
    ("141 18000#", "18000"),
    # both prefixes, in either order, and the outside-line prefix on both sides
    ("9141999", "999"), ("91470112#", "112"), ("914118000", "18000"),
    ("1419999", "999"), ("14709112#", "112"), ("141918000", "18000"),
    ("91419999", "999"), ("tel:9-141-999#", "999"),
]

PLAN = NumberPlan("GB", "9", ("999", "112", "18000"))
PREFIX_9 = {"CALLGUARD_OUTSIDE_PREFIX": "9"}


@pytest.mark.parametrize("dialled, number", EMERGENCY_FORMS)
def test_forms_are_emergency_for_callguard(dialled, number):
    assert PLAN.emergency(dialled) == number


@pytest.mark.parametrize("dialled, number", EMERGENCY_FORMS)
async def test_emergency_form_while_callguard_down(dialplan, tmp_path, dialled, number):
    down = Daemon(tmp_path, general="outside_line_prefix = 9")  # never started

    outcome = await dialplan.run(CONTEXT, dialled, agi=fastagi(down.port),
                                 callerid="01632960010", globals=PREFIX_9)

    assert outcome.agi_calls == []
    assert outcome.dials == [[f"PJSIP/{number}@gamma"]]


@pytest.mark.parametrize("dialled, number", EMERGENCY_FORMS)
async def test_emergency_form_with_callguard(dialplan, daemon, dialled, number):
    outcome = await dialplan.run(CONTEXT, dialled, agi=fastagi(daemon.port),
                                 callerid="01632960010", globals=PREFIX_9)

    assert outcome.agi_calls == []
    assert outcome.dials == [[f"PJSIP/{number}@gamma"]]


def written_numbers():
    """Yield emergency numbers and near misses, written in many ways."""
    leads = ["", "9", "141", "1470", "9141", "91470", "1419", "14709", "91419",
             "99", "141141", "1471", "0"]
    for number in ("999", "112", "18000", "9990", "99", "0999", "1122", "1800"):
        for lead in leads:
            for tail in ("", "#", "##", "#1", "*", "0"):
                digits = lead + number + tail
                yield digits
                yield "tel:" + digits
                yield " ".join(digits)
                yield f"({lead}) {number}{tail}"


async def test_snippet_agrees_with_number_plan(dialplan):
    mismatches = []
    for dialled in written_numbers():
        expected = PLAN.emergency(dialled)
        outcome = await dialplan.run(CONTEXT, dialled, agi=answering("FAILURE"),
                                     globals=PREFIX_9)
        dials = [[f"PJSIP/{expected}@gamma"]] if expected else []
        if outcome.dials != dials:
            mismatches.append((dialled, expected, outcome.dials))

    assert mismatches == []


@pytest.mark.parametrize("dialled", ["(01632) 960123", "tel:+441632960123", ".5"])
async def test_unroutable_form_rejected(dialplan, dialled):
    # A dialled string that starts with a bracket, a dot or tel: is no number
    # the trunk takes, so it is rejected unless it is an emergency number.
    outcome = await dialplan.run(CONTEXT, dialled, agi=ALLOWED, globals=PREFIX_9)

    assert outcome.agi_calls == []
    assert outcome.dials == []
    assert outcome.hangup_cause == "28"


@pytest.mark.parametrize("prefix, dialled, number", [
    ("8", "8999", "999"),
    ("8", "141 8 112#", "112"),
    ("8", "8141 18000", "18000"),
    ("", "141999", "999"),
])
async def test_emergency_prefix_from_globals(dialplan, prefix, dialled, number):
    outcome = await dialplan.run(CONTEXT, dialled, agi=answering("FAILURE"),
                                 globals={"CALLGUARD_OUTSIDE_PREFIX": prefix})

    assert outcome.agi_calls == []
    assert outcome.dials == [[f"PJSIP/{number}@gamma"]]


@pytest.mark.parametrize("prefix, dialled", [("", "9999"), ("8", "9999"), ("", "9141999")])
async def test_other_prefix_not_emergency(dialplan, prefix, dialled):
    outcome = await dialplan.run(CONTEXT, dialled, agi=answering("FAILURE"),
                                 globals={"CALLGUARD_OUTSIDE_PREFIX": prefix})

    assert len(outcome.agi_calls) == 1
    assert outcome.dials == []


@pytest.mark.parametrize("numbers, dialled, dial", [
    ("999,112,18000,911", "141911#", "911"),
    ("18000", "999#", "999"),            # 999 and 112 are always emergency numbers
    ("18000", "1470112", "112"),
    ("999,112", "18000#", None),         # 18000 removed from the list
    ("999,112", "18000", "18000"),       # but the plain number has its own extension
    ("999, 112,18000", "18000#", "18000"),
    ("999, 112,18000", "112#", "112"),
    ("999,112,0", "0#", "0"),            # _X. alone needs two characters
])
async def test_emergency_numbers_from_globals(dialplan, numbers, dialled, dial):
    outcome = await dialplan.run(
        CONTEXT, dialled, agi=answering("FAILURE"),
        globals={"CALLGUARD_EMERGENCY_NUMBERS": numbers, "CALLGUARD_OUTSIDE_PREFIX": "9"})

    assert outcome.dials == ([[f"PJSIP/{dial}@gamma"]] if dial else [])


async def test_form_with_tab_needs_callguard(dialplan, daemon, tmp_path):
    # callguard strips a tab at either end, but the dialplan removes only
    # spaces, dashes, dots and brackets.
    down = Daemon(tmp_path, general="outside_line_prefix = 9")

    without = await dialplan.run(CONTEXT, "999\t", agi=fastagi(down.port), globals=PREFIX_9)
    with_callguard = await dialplan.run(CONTEXT, "999\t", agi=fastagi(daemon.port),
                                        globals=PREFIX_9)

    assert without.dials == []
    assert with_callguard.dials == [["PJSIP/999@gamma"]]


@pytest.mark.parametrize("dialled", [" 999", "\t999", "t.el:999"])
async def test_form_without_extension(dialplan, dialled):
    # No extension of the snippet matches these forms, so Asterisk rejects
    # the call whether or not callguard runs.
    assert PLAN.emergency(dialled) == "999"

    with pytest.raises(DialplanError, match="no extension"):
        await dialplan.run(CONTEXT, dialled, agi=answering("FAILURE"), globals=PREFIX_9)


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


async def test_one_digit_emergency_from_check(dialplan):
    outcome = await dialplan.run(CONTEXT, "90", agi=answering(emergency="0"),
                                 globals={"CALLGUARD_OUTSIDE_PREFIX": "9"})

    assert outcome.dials == [["PJSIP/0@gamma"]]
