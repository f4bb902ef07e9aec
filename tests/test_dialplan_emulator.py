"""The dialplan interpreter in tests/emulator/dialplan.py, against what Asterisk does."""

import pytest

from emulator.dialplan import Dialplan, evaluate

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
