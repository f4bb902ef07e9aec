"""The dialplan interpreter in tests/emulator/dialplan.py, against what Asterisk does."""

import pytest

from emulator.dialplan import Dialplan, _separate_arguments, evaluate

MATCHING = """
[calls]
exten => _X.,1,Hangup(1)
exten => _9XX,1,Hangup(2)
exten => _[19]XX,1,Hangup(3)
exten => _99!,1,Hangup(4)
exten => 999,1,Hangup(5)
exten => _[12]X,1,Hangup(6)
exten => _[13]X,1,Hangup(7)
exten => _(.,1,Hangup(8)
"""


async def no_agi(url, arguments, channel):
    raise AssertionError("no AGI expected")


@pytest.mark.parametrize("dialled, cause", [
    ("999", "5"),       # a literal extension before any pattern
    ("9-9-9", "5"),     # pbx.c skips every dash
    ("-999", "5"),
    ("998", "4"),       # 9, 9 is more specific than 9, X
    ("988", "2"),
    ("9-88", "2"),
    ("188", "3"),
    ("15", "6"),        # [12] and [13] rank alike, and 2 is lower than 3
    ("5555", "1"),
    ("(999)", "8"),
])
async def test_most_specific_extension(dialled, cause):
    dialplan = Dialplan(MATCHING)

    outcome = await dialplan.run("calls", dialled, agi=no_agi)

    assert outcome.hangup_cause == cause


async def test_escaped_semicolon_kept():
    dialplan = Dialplan("[calls]\nexten => 1,1,Log(NOTICE,a\\;b\\,c) ; comment\n")

    outcome = await dialplan.run("calls", "1", agi=no_agi)

    # config.c drops only the backslash of \; and keeps the others.
    assert outcome.logs == [("NOTICE", "a;b\\,c")]


@pytest.mark.parametrize("expression, value", [
    ('"0999" = "999"', "0"),    # quoted operands compare as strings
    ("0999 = 999", "1"),        # unquoted numbers compare as numbers
    ('"999" = 999', "0"),       # the quotes are part of the string
    ('"999" = "999"', "1"),
    ('"abc"', '"abc"'),
    ('"0" | 5', '"0"'),         # a quoted string is never 0
])
def test_quoted_operands(expression, value):
    assert evaluate(expression) == value


SUBROUTINE = """
[calls]
exten => _X.,1,Set(SEEN=${EXTEN})
 same => n,Gosub(check,s,1)
 same => n,Hangup(${SEEN}-${INSIDE})
[check]
exten => s,1,Set(INSIDE=${EXTEN})
 same => n,Return()
"""


async def test_gosub_returns_to_caller():
    dialplan = Dialplan(SUBROUTINE)

    outcome = await dialplan.run("calls", "12", agi=no_agi)

    # EXTEN is the subroutine's own extension inside it and the caller's after it.
    assert outcome.hangup_cause == "12-s"


@pytest.mark.parametrize("data, count, delimiter, remove, arguments", [
    ("a,b,c", 3, ",", True, ["a", "b", "c"]),
    ("a,b,c", 2, ",", True, ["a", "b,c"]),       # the last gets the rest
    ("a,", 3, ",", True, ["a", ""]),
    ('"a,b",c', 2, ",", True, ["a,b", "c"]),     # quotes removed, comma kept
    ("x(a,b),c", 2, ",", True, ["x(a,b)", "c"]),
    ("v,\\,,w", 3, ",", True, ["v", ",", "w"]),  # a backslash makes , literal
    ("v,\\,,w", 3, ",", False, ["v", "\\,", "w"]),
    ('"^[a,b]" x"y', 3, '"', True, ["", "^[a,b]", ' x"y']),
])
def test_function_arguments(data, count, delimiter, remove, arguments):
    assert _separate_arguments(data, count, delimiter, remove) == arguments


FUNCTIONS = """
[calls]
exten => _[0-9T].,1,Set(VALUE=${EXTEN})
 same => n,Log(NOTICE,${REPLACE(VALUE,(). -)})
 same => n,Log(NOTICE,${REPLACE(VALUE,9,8)})
 same => n,Log(NOTICE,${FILTER(0-9#,${VALUE})})
 same => n,Log(NOTICE,${FILTER(0-1,${VALUE})})
 same => n,Log(NOTICE,${REGEX("^[tT][eE][lL]:" ${VALUE})})
 same => n,Log(NOTICE,${REGEX("^9" ${VALUE})})
 same => n,Log(NOTICE,${FIELDNUM(LIST,\\,,112)})
 same => n,Log(NOTICE,${FIELDNUM(LIST,\\,,911)})
"""


async def test_string_functions():
    dialplan = Dialplan(FUNCTIONS)

    outcome = await dialplan.run("calls", "9(9) 1.1-2#", agi=no_agi,
                                 globals={"LIST": "999,112,18000"})

    messages = [message for _, message in outcome.logs]
    assert messages[0] == "99112#"
    assert messages[1] == "8(8) 1.1-2#"
    assert messages[2] == "99112#"
    assert messages[3] == "11"
    assert messages[4] == "0"
    assert messages[5] == "1"
    assert messages[6] == "2"
    assert messages[7] == "0"


async def test_regex_finds_scheme():
    dialplan = Dialplan(FUNCTIONS)

    outcome = await dialplan.run("calls", "Tel:999", agi=no_agi)

    assert outcome.logs[4] == ("NOTICE", "1")


HANGUP_HANDLING = """
[calls]
exten => _X.,1,Set(BEFORE=1)
 same => n,Gosub(check,s,1)
 same => n,Log(NOTICE,after the check)
 same => n,Dial(PJSIP/${EXTEN}@trunk)
exten => h,1,Log(NOTICE,h in calls)
[check]
exten => s,1,AGI(agi://127.0.0.1/check)
 same => n,Return()
exten => h,1,Log(NOTICE,h in check ${EXTEN} ${AGISTATUS})
 same => n,Hangup(16)
 same => n,Log(NOTICE,after Hangup)
"""


def agi_status(status: str):
    async def run(url, arguments, channel):
        return status, {"CHECKED": "1"}
    return run


async def test_agi_hangup_runs_h_extension():
    dialplan = Dialplan(HANGUP_HANDLING)

    outcome = await dialplan.run("calls", "123", agi=agi_status("HANGUP"))

    # The h extension of the context the channel is in, the subroutine's,
    # runs instead of the priorities after AGI() and after Gosub().
    assert outcome.hung_up
    assert outcome.variables["CHECKED"] == "1"
    assert outcome.logs == [("NOTICE", "h in check h HANGUP")]
    assert outcome.dials == []
    assert outcome.hangup_cause == "16"


async def test_agi_hangup_without_h_extension():
    # [calls] has an h extension, but the channel is in [check] when it hangs up.
    without_h = HANGUP_HANDLING.replace("exten => h,1,Log(NOTICE,h in check",
                                        "exten => x,1,Log(NOTICE,x in check")
    dialplan = Dialplan(without_h)

    outcome = await dialplan.run("calls", "123", agi=agi_status("HANGUP"))

    assert outcome.hung_up
    assert outcome.logs == []
    assert outcome.dials == []
    assert outcome.hangup_cause is None


@pytest.mark.parametrize("status", ["SUCCESS", "FAILURE", "NOTFOUND"])
async def test_agi_other_status_continues(status):
    dialplan = Dialplan(HANGUP_HANDLING)

    outcome = await dialplan.run("calls", "123", agi=agi_status(status))

    assert not outcome.hung_up
    assert outcome.logs == [("NOTICE", "after the check")]
    assert outcome.dials == [["PJSIP/123@trunk"]]


async def test_tolower_changes_ascii_only():
    dialplan = Dialplan("[calls]\nexten => 1,1,Log(NOTICE,${TOLOWER(${VALUE})})\n")

    outcome = await dialplan.run("calls", "1", agi=no_agi, globals={"VALUE": "AlLoW Ä-9"})

    # C's tolower() in the C locale leaves bytes outside A to Z as they are.
    assert outcome.logs == [("NOTICE", "allow Ä-9")]
