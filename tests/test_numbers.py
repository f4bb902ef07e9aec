"""Normalisation and classification of dialled strings with the shipped GB table."""

import random
import re

import phonenumbers
import pytest

from callguard.numbers import (
    Classifier,
    InvalidNumber,
    Number,
    NumberPlan,
    PrefixTable,
    PrefixTableError,
    UnclassifiedNumber,
)
from callguard.numbers.region import leading_digits_problem, starts_with_premium_rate
from callguard.numbers.shortcut import parse_national

GB = NumberPlan("GB")
GB_WITH_9 = NumberPlan("GB", outside_line_prefix="9")
US = NumberPlan("US", emergency_numbers=["911"])


@pytest.fixture(scope="module")
def gb_table():
    return PrefixTable.default()


@pytest.fixture(scope="module")
def classifier(gb_table):
    return Classifier(GB, gb_table)


@pytest.fixture(scope="module")
def classifier_with_9(gb_table):
    return Classifier(GB_WITH_9, gb_table)


# dialled, category, E.164, national form, matching table prefix
GB_CASES = [
    ("09011234567", "premium", "+449011234567", "09011234567", "09"),
    ("0044 9011234567", "premium", "+449011234567", "09011234567", "09"),
    ("08451234567", "special-084", "+448451234567", "08451234567", "084"),
    ("08441234567", "special-084", "+448441234567", "08441234567", "084"),
    ("08701234567", "special-087", "+448701234567", "08701234567", "0870"),
    ("08741234567", "special-087", "+448741234567", "08741234567", "087"),
    ("08712345678", "premium", "+448712345678", "08712345678", "0871"),
    ("08731234567", "premium", "+448731234567", "08731234567", "0873"),
    ("118118", "directory", "", "118118", "118"),
    ("0118 496 0000", "geographic", "+441184960000", "01184960000", "01"),
    ("+44 (0) 20 7946 0000", "geographic", "+442079460000", "02079460000", "02"),
    ("+44(0)2079460000", "geographic", "+442079460000", "02079460000", "02"),
    ("0044 (0) 20 7946 0000", "geographic", "+442079460000", "02079460000", "02"),
    ("00 44 (0)9011234567", "premium", "+449011234567", "09011234567", "09"),
    ("(020) 7946-0000", "geographic", "+442079460000", "02079460000", "02"),
    ("020.7946.0000", "geographic", "+442079460000", "02079460000", "02"),
    ("tel:+441632960000", "geographic", "+441632960000", "01632960000", "01"),
    ("TEL:01632960000", "geographic", "+441632960000", "01632960000", "01"),
    ("01632960000", "geographic", "+441632960000", "01632960000", "01"),
    ("07700900123", "mobile", "+447700900123", "07700900123", "07700900"),
    ("07700123456", "mobile", "+447700123456", "07700123456", "077"),
    ("07911123456", "crown-dependency", "+447911123456", "07911123456", "079111"),
    ("07624123456", "crown-dependency", "+447624123456", "07624123456", "07624"),
    ("07797123456", "crown-dependency", "+447797123456", "07797123456", "07797"),
    ("07012345678", "personal", "+447012345678", "07012345678", "070"),
    ("07612345678", "pager", "+447612345678", "07612345678", "076"),
    ("07412345678", "mobile", "+447412345678", "07412345678", "074"),
    ("0800 123 4567", "freephone", "+448001234567", "08001234567", "0800"),
    ("0808 157 0000", "freephone", "+448081570000", "08081570000", "0808"),
    ("0300 123 4567", "non-geographic", "+443001234567", "03001234567", "03"),
    ("111", "service", "", "111", "111"),
    ("101", "service", "", "101", "101"),
    ("116123", "service", "", "116123", "116123"),
    ("116006", "service", "", "116006", "116"),
    ("100", "operator", "", "100", "100"),
    ("155", "operator", "", "155", "155"),
    # 1471 reads out the last caller's number and can call it back.
    ("1471", "operator", "", "1471", "1471"),
    ("123", "premium", "", "123", "123"),
    ("150", "service", "", "150", "150"),
    ("151", "service", "", "151", "151"),
    ("152", "service", "", "152", "152"),
    ("154", "service", "", "154", "154"),
    ("159", "service", "", "159", "159"),
    ("1571", "service", "", "1571", "1571"),
    ("17070", "service", "", "17070", "17070"),
    ("141 1471", "operator", "", "1471", "1471"),
    ("0551 234 5678", "premium", "+445512345678", "05512345678", "055"),
    ("112", "emergency", "", "112", "112"),
    ("999", "emergency", "", "999", "999"),
    ("9 9 9", "emergency", "", "999", "999"),
    ("18000", "emergency", "", "18000", "18000"),
    # A caller-ID prefix for one call before a short code, in a string too
    # long to be a short code itself.
    ("141 116123", "service", "", "116123", "116123"),
    ("1470 118118", "directory", "", "118118", "118"),
    ("1470 101", "service", "", "101", "101"),
    ("+353851234567", "international", "+353851234567", "", "+"),
    ("00353 85 123 4567", "international", "+353851234567", "", "+"),
    ("+1 (212) 555-1234", "international", "+12125551234", "", "+"),
    ("+870773111111", "satellite", "+870773111111", "", "+870"),
    ("+882161234567", "satellite", "+882161234567", "", "+882"),
    ("+881612345678", "satellite", "+881612345678", "", "+881"),
    ("+979123456789", "international-premium", "+979123456789", "", "+979"),
    # +878 and +888 belong to no country, like the satellite codes, but
    # the international freephone code +800 stays international.
    ("+878 10 1234 567890", "satellite", "+878101234567890", "", "+878"),
    ("+888 1234 5678 901", "satellite", "+88812345678901", "", "+888"),
    ("+800 1234 5678", "international", "+80012345678", "", "+"),
    # Premium ranges abroad, by phonenumbers' ranges, under the catch-all row.
    ("+353 1550 123456", "international-premium", "+3531550123456", "", "+"),
    ("0033 899 123 456", "international-premium", "+33899123456", "", "+"),
    ("+1 900 555 1234", "international-premium", "+19005551234", "", "+"),
]


@pytest.mark.parametrize("dialled, category, e164, national, prefix", GB_CASES)
def test_classify_gb(classifier, dialled, category, e164, national, prefix):
    result = classifier.classify(dialled)

    assert result.category == category
    assert result.number.e164 == e164
    assert result.number.national == national
    assert result.prefix == prefix
    assert result.number.dialled == dialled
    assert result.emergency == (category == "emergency")


# dialled, category, E.164, national form
OUTSIDE_LINE_CASES = [
    ("909061234567", "premium", "+449061234567", "09061234567"),
    ("09061234567", "premium", "+449061234567", "09061234567"),
    ("9 0044 20 7946 0000", "geographic", "+442079460000", "02079460000"),
    ("9 0044 (0) 9061 234567", "premium", "+449061234567", "09061234567"),
    ("0044 (0) 9061 234567", "premium", "+449061234567", "09061234567"),
    ("9118118", "directory", "", "118118"),
    ("9999", "emergency", "", "999"),
    ("999", "emergency", "", "999"),
    ("9112", "emergency", "", "112"),
    ("112", "emergency", "", "112"),
    ("9-999", "emergency", "", "999"),
    # A caller-ID prefix for one call after the outside-line prefix.
    ("914101632960123", "geographic", "+441632960123", "01632960123"),
    ("9 141 0044 (0) 20 7946 0000", "geographic", "+442079460000", "02079460000"),
    ("9 141 116123", "service", "", "116123"),
    # A text relay prefix (18001 for textphone users, 18002 for voice users)
    # before a national or international number, which sets the call's cost.
    ("18001 01632 960123", "geographic", "+441632960123", "01632960123"),
    ("1800209011234567", "premium", "+449011234567", "09011234567"),
    ("18001 0044 (0) 20 7946 0000", "geographic", "+442079460000", "02079460000"),
    ("18002 00353 85 123 4567", "international", "+353851234567", ""),
    ("9 18001 0845 4647", "special-084", "+448454647", "08454647"),
    # A number in E.164 form after the outside-line prefix, as a phone that
    # puts the prefix before every number of its directory dials it.
    ("9+44 1632 960123", "geographic", "+441632960123", "01632960123"),
    ("9 +44 (0) 9061 234567", "premium", "+449061234567", "09061234567"),
    ("9+353 85 123 4567", "international", "+353851234567", ""),
    # A text relay prefix after the outside-line prefix.
    ("9 18001 01632 960123", "geographic", "+441632960123", "01632960123"),
]


@pytest.mark.parametrize("dialled, category, e164, national", OUTSIDE_LINE_CASES)
def test_classify_outside_line(classifier_with_9, dialled, category, e164, national):
    result = classifier_with_9.classify(dialled)

    assert result.category == category
    assert result.number.e164 == e164
    assert result.number.national == national


# Asterisk skips a dash when it matches EXTEN against a pattern (main/pbx.c), so
# these reach the check, but the dialplan strips the outside-line prefix only
# from the start of EXTEN. The trunk gets the 9, and a carrier that takes E.164
# digits reads -902121234567 as +90 212 123 4567 in Istanbul.
@pytest.mark.parametrize("dialled", [
    "-902121234567",
    "-9-0212-123-4567",
    "-9 01632 960123",
    "(9)01632960123",
    "-9+441632960123",
    "-9 +44 1632 960123",
])
def test_outside_line_prefix_only_at_start(dialled):
    with pytest.raises(InvalidNumber):
        GB_WITH_9.normalise(dialled)


# plan, dialled, fragment of the message
INVALID_CASES = [
    (GB, "+00972590000000", "international prefix '00' after '+'"),
    (GB, "0151496012#", "'#'"),
    (GB, "*21*00441514960123", "'*'"),
    (GB, "118118#", "'#'"),
    (GB, "０１６３２９６００００", "non-ASCII"),
    (GB, "01632 96000０", "non-ASCII"),
    (GB, "0800FLOWERS", "the letter 'F'"),
    (GB, "sip:01632960000", "the letter 's'"),
    (GB, "01632\t960000", "control character"),
    (GB, "01632960000\n", "control character"),
    (GB, "0163296000000000", "too long"),
    (GB, "016329600000", "too long"),
    (GB, "01632", "too short"),
    (GB, "0163296", "too short"),
    (GB, "016329600", "too short"),
    # +44 numbers have 7, 9 or 10 digits after the 0, but in phonenumbers'
    # ranges only 08 numbers have 7, and only 01 and 08 numbers have 9.
    (GB, "0712 3456", "impossible length for its leading digits"),
    (GB, "07700 90012", "impossible length for its leading digits"),
    (GB, "+44 7624 12345", "impossible length for its leading digits"),
    (GB, "020 7946 000", "impossible length for its leading digits"),
    (GB, "0300 123 456", "impossible length for its leading digits"),
    (GB, "0909 1234", "impossible length for its leading digits"),
    (GB, "0044 909 123 456", "impossible length for its leading digits"),
    # Irish numbers have 7 to 10 digits, but those that start with 7 have 9.
    (GB, "+353 7 1234567", "impossible length for its leading digits"),
    (GB, "+44 0163296", "too short"),
    (GB, "12", "too short"),
    (GB, "1632960000", "neither a short code"),
    (GB, "000441632960000", "no country code starts with 0"),
    (GB, "+999123456", "unassigned country code"),
    (GB, "+44+1632960000", "'+' that is not the first"),
    (GB, "+353 (0)85 123 4567", "only allowed directly after '+44'"),
    (GB, "0(0)1632960000", "only allowed directly after '+44'"),
    (GB, "00353 (0)85 123 4567", "only allowed directly after '+44'"),
    (GB, "0044 (0)(0) 20 7946 0000", "only allowed directly after '+44'"),
    (GB, "+44 (0)(0) 20 7946 0000", "only allowed directly after '+44'"),
    (GB, "9 0044 (0) 20 7946 0000", "only allowed directly after '+44'"),
    (US, "011 44 (0) 20 7946 0000", "only allowed directly after '+1'"),
    (GB, "(01632 960000", "not closed"),
    (GB, "01632) 960000", "without a matching"),
    (GB, "((01632)) 960000", "nested"),
    (GB, "() 01632960000", "empty brackets"),
    (GB, "01632/960000", "the character '/'"),
    (GB, "", "no digits"),
    (GB, "tel:", "no digits"),
    (GB, "+", "no digits"),
    (GB, "0" * 65, "too long"),
    (GB_WITH_9, "9", "only the outside-line prefix"),
    (GB_WITH_9, "9+", "no digits"),
    (GB_WITH_9, "9+44 1632", "too short"),
    (GB_WITH_9, "99+441632960123", "a '+' that is not the first character"),
    (GB, "9+441632960123", "a '+' that is not the first character"),
    (GB, "141 01632", "too short"),
    (GB, "18001 01632", "too short"),
    # The dialplan strips only a leading outside-line prefix, so the trunk gets
    # these as dialled, and +1 470 911 6123 is a valid number in E.164 form
    # without '+'. A short code counts only directly after a caller-ID prefix.
    (GB_WITH_9, "141 9 118118", "neither a short code"),
    (GB_WITH_9, "1470 9 116123", "neither a short code"),
    # The same holds before a national or international number: the trunk gets
    # 141 9 0212 123 4567, and a carrier that drops the 141 and takes E.164
    # digits connects +90 212 123 4567 in Istanbul.
    (GB_WITH_9, "141 9 0212 123 4567", "neither a short code"),
    (GB_WITH_9, "141 9 09061234567", "neither a short code"),
    (GB_WITH_9, "1470 9 0044 20 7946 0000", "neither a short code"),
    (GB_WITH_9, "141 9 0044 (0) 20 7946 0000", "only allowed directly after"),
    (GB_WITH_9, "18002 9 07700 900123", "neither a short code"),
    (US, "18001 2125551234", "too long"),
    (US, "5551234", "too short"),
    # One digit short after the 1, these would be read as 10 digits that start
    # with 1, which no NANP number does, while the carrier reads 1 876 as Jamaica.
    (US, "1 876 555 123", "no range of +1 numbers fits the 10 digits '1876555123'"),
    (US, "1 212 555 123", "no range of +1 numbers fits the 10 digits '1212555123'"),
    (US, "+1 1 876 555 123", "no range of +1 numbers fits the 10 digits '1876555123'"),
    (US, "+011 44 20 7946 0000", "international prefix '011' after '+'"),
    (US, "+44 (0) 20 7946 0000", "only allowed directly after '+1'"),
    # phonenumbers would drop or add digits after the country code, so the
    # number classified would not be the one the carrier gets.
    (GB, "+7 809 123 45 678", "would be read as +70912345678"),
    (GB, "00 7 809 123 45 678", "would be read as +70912345678"),
    (GB, "+7 8 812 123 45 67", "would be read as +78121234567"),
    (GB, "+375 8 17 123 45 67", "would be read as +375171234567"),
    (GB, "+36 06 1 234 5678", "would be read as +3612345678"),
    (GB, "+55 0 12 11 91234 5678", "would be read as +5511912345678"),
    (GB, "+378 804728", "would be read as +3780549804728"),
    (GB, "+44 180020 1632 960000", "would be read as +441632960000"),
    (US, "+1 1 212 555 1234", "would be read as +12125551234"),
]


@pytest.mark.parametrize("plan, dialled, message", INVALID_CASES)
def test_normalise_invalid(plan, dialled, message):
    with pytest.raises(InvalidNumber) as caught:
        plan.normalise(dialled)

    assert message in str(caught.value)


def test_invalid_message_escapes_controls():
    with pytest.raises(InvalidNumber) as caught:
        GB.normalise("0163\x1b[2J2960000")

    assert "\x1b" not in str(caught.value)
    assert "\\x1b" in str(caught.value)


def test_normalise_rejects_non_string():
    with pytest.raises(TypeError):
        GB.normalise(1632960000)


# plan, dialled, E.164, national form, region
NORMALISE_CASES = [
    (GB, "01632960000", "+441632960000", "01632960000", "GB"),
    (GB, "07624123456", "+447624123456", "07624123456", "IM"),
    (GB, "01534 123456", "+441534123456", "01534123456", "JE"),
    (GB, "+353851234567", "+353851234567", "", "IE"),
    (GB, "+870773111111", "+870773111111", "", "001"),
    (GB, "+4402079460000", "+442079460000", "02079460000", "GB"),
    (GB, "0044 0 20 7946 0000", "+442079460000", "02079460000", "GB"),
    (GB, "+33 0 1 42 68 53 00", "+33142685300", "", "FR"),
    (GB, "+7 812 123 45 67", "+78121234567", "", "RU"),
    (GB, "+378 0549 804728", "+3780549804728", "", "SM"),
    # Numbers shorter than most of their country's: Childline, NHS Direct's
    # old 0845 number and a 016977 number with a four-digit local number.
    (GB, "0800 1111", "+448001111", "08001111", "GB"),
    (GB, "0845 4647", "+448454647", "08454647", "GB"),
    (GB, "016977 2345", "+44169772345", "0169772345", "GB"),
    (GB, "0800 123456", "+44800123456", "0800123456", "GB"),
    (US, "011 44 20 7946 0000", "+442079460000", "", "GB"),
    (US, "(212) 555-1234", "+12125551234", "12125551234", "US"),
    (US, "1 212 555 1234", "+12125551234", "12125551234", "US"),
    (US, "+1 876 555 1234", "+18765551234", "18765551234", "JM"),
    # 141 withholds and 1470 presents the caller ID for one call.
    (GB, "14101632960123", "+441632960123", "01632960123", "GB"),
    (GB, "141 09011234567", "+449011234567", "09011234567", "GB"),
    (GB, "1470 0044 20 7946 0000", "+442079460000", "02079460000", "GB"),
    (GB, "141 0044 (0) 20 7946 0000", "+442079460000", "02079460000", "GB"),
    (GB, "141 00353 85 123 4567", "+353851234567", "", "IE"),
    # Relay UK connects calls dialled after 18001 (from a textphone) or 18002
    # (to a textphone) at the rate of the number after the prefix.
    (GB, "18001 01632 960123", "+441632960123", "01632960123", "GB"),
    (GB, "1800209011234567", "+449011234567", "09011234567", "GB"),
    (GB, "18001 0044 (0) 20 7946 0000", "+442079460000", "02079460000", "GB"),
    (GB, "18002 00353 85 123 4567", "+353851234567", "", "IE"),
]


@pytest.mark.parametrize("plan, dialled, e164, national, region", NORMALISE_CASES)
def test_normalise(plan, dialled, e164, national, region):
    number = plan.normalise(dialled)

    assert number.e164 == e164
    assert number.national == national
    assert number.region == region
    assert number.short_code is False


def test_short_code_number():
    number = GB.normalise("118118")

    assert number == Number(
        dialled="118118",
        e164="",
        national="118118",
        country_code=44,
        region="GB",
        short_code=True,
    )
    assert number.rating_key == "short:118118"
    assert number.table_key == "118118"


def test_region_found_once_on_first_read():
    calls = []

    def find_region(parsed):
        calls.append(parsed)
        return "IM"

    parsed = phonenumbers.parse("+447624123456")
    number = Number(dialled="07624123456", e164="+447624123456", national="07624123456",
                    country_code=44, short_code=False, find_region=find_region,
                    parsed=parsed)
    assert calls == []

    assert number.region == "IM"
    assert number.region == "IM"
    assert calls == [parsed]


def test_number_equality_includes_the_found_region():
    lazy = GB.normalise("07624 123456")
    plain = Number(dialled="07624 123456", e164="+447624123456", national="07624123456",
                   country_code=44, short_code=False, region="IM")

    assert lazy == plain
    assert hash(lazy) == hash(plain)
    assert lazy != Number(dialled="07624 123456", e164="+447624123456",
                          national="07624123456", country_code=44, short_code=False,
                          region="GB")
    assert "region='IM'" in repr(lazy)


def test_number_is_immutable():
    number = GB.normalise("020 7946 0000")

    with pytest.raises(AttributeError, match="immutable"):
        number.e164 = "+15555550123"
    with pytest.raises(AttributeError, match="immutable"):
        del number.national
    assert number.e164 == "+442079460000"


def test_number_needs_one_region_source():
    fields = dict(dialled="1", e164="", national="1", country_code=44, short_code=True)

    with pytest.raises(TypeError, match="exactly one of region and find_region"):
        Number(**fields)
    with pytest.raises(TypeError, match="exactly one of region and find_region"):
        Number(**fields, region="GB", find_region=lambda parsed: "GB")


# dialled, rating key, table key
KEY_CASES = [
    ("01632 960000", "441632960000", "01632960000"),
    ("+353851234567", "353851234567", "+353851234567"),
    ("116123", "short:116123", "116123"),
]


@pytest.mark.parametrize("dialled, rating_key, table_key", KEY_CASES)
def test_number_keys(dialled, rating_key, table_key):
    number = GB.normalise(dialled)

    assert number.rating_key == rating_key
    assert number.table_key == table_key


# plan, short codes accepted at most
SHORT_CODE_LIMITS = [
    (GB, 6),
    (US, 6),
    (NumberPlan("IT"), 5),
]


@pytest.mark.parametrize("plan, limit", SHORT_CODE_LIMITS)
def test_short_code_limit(plan, limit):
    assert plan.short_code_max_length == limit


def test_us_short_code():
    number = US.normalise("411")

    assert number.short_code is True
    assert number.national == "411"
    assert number.rating_key == "short:411"


# plan, dialled, emergency number matched
EMERGENCY_CASES = [
    (GB, "999", "999"),
    (GB, "112", "112"),
    (GB, "9 9 9", "999"),
    (GB, "9-9-9", "999"),
    (GB, "9.9.9", "999"),
    (GB, "9999", None),
    (GB, "999#", "999"),
    (GB, "141999", "999"),
    (GB, "1470112#", "112"),
    (GB, "999##", "999"),
    (GB, "##", None),
    (GB, "999#1", None),
    (GB, "1419990", None),
    (GB, "141", None),
    (GB, "#", None),
    (GB, "(999)", "999"),
    (GB, "tel:999", "999"),
    (GB, "18000", None),
    # 18000 is the text relay emergency number, so 18001 999 is not one.
    (GB, "18001999", None),
    (GB, "18001 112", None),
    (GB_WITH_9, "9999", "999"),
    (GB_WITH_9, "999", "999"),
    (GB_WITH_9, "9112", "112"),
    (GB_WITH_9, "112", "112"),
    (GB_WITH_9, "99999", None),
    (GB_WITH_9, "9999#", "999"),
    (GB_WITH_9, "tel:999", "999"),
    (GB_WITH_9, "TEL:9999", "999"),
    (GB_WITH_9, "9141999", "999"),
    (GB_WITH_9, "91470112#", "112"),
    (GB_WITH_9, "1419999", "999"),
    (GB_WITH_9, "141 9 999", "999"),
    (GB_WITH_9, "14709112#", "112"),
    (GB_WITH_9, "14199999", None),
    (GB, "1419999", None),
    (GB_WITH_9, "(999)", "999"),
    (GB_WITH_9, "(99)9", "999"),
    (GB_WITH_9, "9 (999)", "999"),
    (GB_WITH_9, "(9) 999", "999"),
    (US, "911", "911"),
    (US, "999", None),
    (US, "911#", "911"),
    (US, "141911", None),
    (US, "(911)", "911"),
]


@pytest.mark.parametrize("plan, dialled, matched", EMERGENCY_CASES)
def test_emergency(plan, dialled, matched):
    assert plan.emergency(dialled) == matched


def test_configured_emergency_without_rule(gb_table):
    plan = NumberPlan("GB", emergency_numbers=["999", "112", "911"])
    result = Classifier(plan, gb_table).classify("911")

    assert result.category == "emergency"
    assert result.emergency is True
    assert result.prefix == "911"
    assert result.number.national == "911"
    assert result.number.e164 == ""


def test_configured_emergency_overrides_table():
    table = PrefixTable.from_rows(
        [("112", "service", "Wrongly listed"), ("+", "international", "")]
    )
    result = Classifier(GB, table).classify("112")

    assert result.category == "emergency"
    assert result.emergency is True
    assert result.prefix == "112"


def test_table_emergency_not_configured(gb_table):
    plan = NumberPlan("GB", emergency_numbers=[])
    result = Classifier(plan, gb_table).classify("999")

    assert result.category == "emergency"
    assert result.emergency is True
    assert result.description == "Emergency services"


# The outside-line prefix is optional, so normalise() would strip it from
# these and read 8000 or 99.
@pytest.mark.parametrize("outside_line, configured, dialled, number", [
    ("1", ["999", "112"], "18000", "18000"),
    ("1", ["999", "112"], "(18000)", "18000"),
    ("18", ["999", "112"], "18000", "18000"),
    ("9", [], "999", "999"),
    ("9", [], "(999)", "999"),
    ("9", [], "9 9 9", "999"),
])
def test_table_emergency_starting_with_prefix(gb_table, outside_line, configured,
                                               dialled, number):
    plan = NumberPlan("GB", outside_line_prefix=outside_line, emergency_numbers=configured)
    result = Classifier(plan, gb_table).classify(dialled)

    assert result.category == "emergency"
    assert result.emergency is True
    assert result.number.national == number


# dialled
# 141101 fits a short code, so its 141 is not read as a caller-ID prefix.
# Ofcom withdrew the 0500 freephone range in 2017, and the table has no row
# for 153 or 1472.
UNCLASSIFIED_CASES = ["05001234567", "141101", "153", "1472"]


@pytest.mark.parametrize("dialled", UNCLASSIFIED_CASES)
def test_unclassified(classifier, dialled):
    with pytest.raises(UnclassifiedNumber) as caught:
        classifier.classify(dialled)

    assert repr(dialled) in str(caught.value)


def test_unclassified_without_catch_all():
    table = PrefixTable.from_rows([("01", "geographic", "Landline")])

    with pytest.raises(UnclassifiedNumber):
        Classifier(GB, table).classify("+353851234567")


def test_classifier_rejects_home_e164_rule():
    table = PrefixTable.from_rows(
        [("09", "premium", ""), ("+449", "premium", "")], source="custom.csv"
    )

    with pytest.raises(PrefixTableError) as caught:
        Classifier(GB, table)

    assert str(caught.value).startswith("custom.csv:2: prefix '+449' can never match")
    assert "'09'" in str(caught.value)


def home_rule_problems(rows: list[tuple[str, str, str]]) -> tuple[int, list[str]]:
    """Return the error count and the message lines of the Classifier's home-row check."""
    table = PrefixTable.from_rows(rows, source="custom.csv")
    with pytest.raises(PrefixTableError) as caught:
        Classifier(GB, table)
    return caught.value.error_count, str(caught.value).splitlines()


def test_classifier_lists_every_home_e164_rule():
    count, lines = home_rule_problems([
        ("09", "premium", ""), ("+449", "premium", ""), ("+44", "international", ""),
        ("01", "geographic", ""), ("+4470", "personal", "")])

    assert count == 3
    assert len(lines) == 3
    assert lines[0].startswith("custom.csv:2: prefix '+449' can never match")
    assert lines[1].startswith("custom.csv:3: prefix '+44' can never match")
    assert lines[1].endswith("write it as '0'")
    assert lines[2].startswith("custom.csv:5: prefix '+4470' can never match")
    assert lines[2].endswith("write it as '070'")


def test_classifier_home_rules_capped():
    # 25 E.164 rows of the home country, five more than the 20 listed.
    count, lines = home_rule_problems([(f"+44{n}", "premium", "") for n in range(100, 125)])

    assert count == 25
    assert len(lines) == 21
    assert lines[19].startswith("custom.csv:20: prefix '+44119' can never match")
    assert lines[20] == "... and 5 more errors"


# text, E.164 or None
CALLER_CASES = [
    ("01632960000", "+441632960000"),
    ("+441632960000", "+441632960000"),
    ("441632960000", "+441632960000"),
    ("1632960000", "+441632960000"),
    ("0044 20 7946 0000", "+442079460000"),
    (" +353 85 123 4567 ", "+353851234567"),
    ("999", None),
    ("anonymous", None),
    ("Anonymous", None),
    ("unknown", None),
    ("restricted", None),
    ("", None),
    ("   ", None),
    ("0163296", None),
    ("+999123456", None),
    ("１６３２９６００００", None),
    ("sip:alice@192.0.2.1", None),
    ("0800FLOWERS", None),
    (None, None),
]


@pytest.mark.parametrize("text, e164", CALLER_CASES)
def test_normalise_caller(text, e164):
    assert GB.normalise_caller(text) == e164


# A trunk leg's number after a caller-ID prefix, beside NANP numbers in E.164
# form without "+" that start with the same digits.
DESTINATION_CASES = [
    (GB, "14108001111", "+448001111"),
    (GB, "141 0845 4647", "+448454647"),
    (GB_WITH_9, "14108454647", "+448454647"),
    (GB, "14109061234567", "+449061234567"),
    # 0555 1234 has a possible length only, so this stays a Maryland number.
    (GB, "14105551234", "+14105551234"),
    (GB, "141116123", "141116123"),
    (GB, "1800101134960123", "+441134960123"),
    (GB, "18002 0800 1111", "+448001111"),
    (GB_WITH_9, "1800209011234567", "+449011234567"),
    (US, "14108001111", "14108001111"),
]


@pytest.mark.parametrize("plan, dialled, read", DESTINATION_CASES)
def test_read_destination_caller_id(plan, dialled, read):
    assert plan.read_destination(dialled) == read


def test_caller_keeps_outside_line_digit():
    plan = NumberPlan("US", outside_line_prefix="9")

    assert plan.normalise_caller("9175551234") == "+19175551234"
    assert plan.normalise("99175551234").e164 == "+19175551234"


# keyword arguments, fragment of the message
BAD_PLANS = [
    ({"home_country": "XX"}, "home country 'XX' is unknown"),
    ({"home_country": "001"}, "home country '001' is unknown"),
    ({"outside_line_prefix": "9a"}, "outside-line prefix '9a' is invalid"),
    ({"outside_line_prefix": "12345"}, "outside-line prefix '12345' is invalid"),
    ({"emergency_numbers": "999"}, "not the string '999'"),
    ({"emergency_numbers": ["99a"]}, "emergency number '99a' is invalid"),
    ({"emergency_numbers": [999]}, "emergency number 999 must be a string"),
]


@pytest.mark.parametrize("kwargs, message", BAD_PLANS)
def test_plan_rejects_setting(kwargs, message):
    with pytest.raises(ValueError) as caught:
        NumberPlan(**kwargs)

    assert message in str(caught.value)


def test_plan_normalises_settings():
    plan = NumberPlan(
        "gb", outside_line_prefix=" 9 ", emergency_numbers=[" 999", "112", "999"]
    )

    assert plan.home_country == "GB"
    assert plan.outside_line_prefix == "9"
    assert plan.emergency_numbers == ("999", "112")
    assert plan.country_code == 44
    assert plan.national_prefix == "0"


FUZZ_ALPHABET = "0123456789" * 4 + "+ -.()*#aZ:\t\x00０٣"
E164_PATTERN = re.compile(r"\+[1-9][0-9]{1,14}")


def fuzz_strings(count, seed):
    """Yield dialled strings from the GB cases with up to three random edits."""
    generator = random.Random(seed)
    bases = [case[0] for case in GB_CASES]
    for _ in range(count):
        text = list(generator.choice(bases))
        for _ in range(generator.randint(0, 3)):
            position = generator.randint(0, len(text))
            edit = generator.choice(("insert", "delete", "replace"))
            if edit == "insert":
                text.insert(position, generator.choice(FUZZ_ALPHABET))
            elif text and position < len(text):
                if edit == "delete":
                    del text[position]
                else:
                    text[position] = generator.choice(FUZZ_ALPHABET)

        yield "".join(text)


def test_fuzz_classify_contract(classifier_with_9):
    accepted = 0
    for dialled in fuzz_strings(3000, seed=1):
        try:
            result = classifier_with_9.classify(dialled)
        except (InvalidNumber, UnclassifiedNumber):
            continue

        accepted += 1
        assert dialled.isascii(), dialled
        assert "*" not in dialled, dialled
        # Only an emergency number may end in '#' (phones that send it: 999#).
        assert "#" not in dialled or result.category == "emergency", dialled
        if result.number.e164:
            assert E164_PATTERN.fullmatch(result.number.e164), dialled

    assert accepted > 1000


def test_fuzz_caller_never_raises():
    for text in fuzz_strings(3000, seed=2):
        e164 = GB.normalise_caller(text)

        assert e164 is None or E164_PATTERN.fullmatch(e164), text


@pytest.mark.parametrize("dialled", ["9990", "99990", "999999", "1121", "112112", "180001"])
def test_emergency_rows_match_exactly(dialled):
    classifier = Classifier(NumberPlan("GB"), PrefixTable.default())

    with pytest.raises(UnclassifiedNumber):
        classifier.classify(dialled)


# Ranges that phonenumbers 9.0.42 gives regions IM, JE and GG.
CROWN_DEPENDENCY_NUMBERS = [
    "01624 123456",  # Isle of Man landline
    "01534 123456",  # Jersey landline
    "01481 123456",  # Guernsey landline
    "07624 123456",  # Isle of Man mobile
    "07457 600000",  # Isle of Man mobile 074576
    "07700 300000",  # Jersey mobile 077003
    "07700 700000",  # Jersey mobile 077007
    "07700 800000",  # Jersey mobile 077008
    "07911 123456",  # Guernsey mobile 079111
    "07911 712345",  # Guernsey mobile 079117
]


@pytest.mark.parametrize("dialled", CROWN_DEPENDENCY_NUMBERS)
def test_crown_dependency_ranges(classifier, dialled):
    assert classifier.classify(dialled).category == "crown-dependency"


# UK mobiles next to crown dependency ranges, by phonenumbers' GB mobile ranges.
@pytest.mark.parametrize("dialled", ["07911 212345", "07457 500000", "07700 100000"])
def test_mobile_beside_crown_dependency(classifier, dialled):
    assert classifier.classify(dialled).category == "mobile"


def test_voip_056_non_geographic(classifier):
    assert classifier.classify("056 1234 5678").category == "non-geographic"


@pytest.mark.parametrize("region", ["IM", "JE", "GG"])
@pytest.mark.parametrize(
    "number_type",
    [phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE],
    ids=["fixed-line", "mobile"],
)
def test_crown_dependency_examples(classifier, region, number_type):
    example = phonenumbers.example_number_for_type(region, number_type)
    assert example is not None, f"phonenumbers has no example for {region} {number_type}"

    e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    assert classifier.classify(e164).category == "crown-dependency", e164


# Special ranges of the islands keep the category of the UK row that contains them.
ISLAND_SPECIAL_TYPES = [
    (phonenumbers.PhoneNumberType.TOLL_FREE, "freephone"),
    (phonenumbers.PhoneNumberType.PREMIUM_RATE, "premium"),
    (phonenumbers.PhoneNumberType.PERSONAL_NUMBER, "personal"),
    (phonenumbers.PhoneNumberType.PAGER, "pager"),
    (phonenumbers.PhoneNumberType.VOIP, "non-geographic"),
]
# region, example number in E.164, category. phonenumbers has no Isle of Man pager range.
ISLAND_SPECIAL_CASES = [
    (region, phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164), category)
    for region in ["IM", "JE", "GG"]
    for number_type, category in ISLAND_SPECIAL_TYPES
    if (example := phonenumbers.example_number_for_type(region, number_type)) is not None
]


# Premium rate numbers abroad with extra digits: phonenumbers gives them no
# type, but the carrier gets every digit. Other numbers abroad keep the
# category international.
@pytest.mark.parametrize("dialled, category", [
    ("+49 900 1234567 8", "international-premium"),
    ("0049 900 1234567 89", "international-premium"),
    ("+49 1377 123456 7", "international-premium"),
    ("+39 899 123456 7", "international-premium"),
    ("+31 900 1234567 8", "international-premium"),
    ("+49 30 1234567 8", "international"),
    ("+49 900 123456", "international"),
    ("+353 85 123 4567", "international"),
    ("+39 06 1234 5678", "international"),
])
def test_premium_abroad_by_leading_digits(classifier, dialled, category):
    assert classifier.classify(dialled).category == category


@pytest.mark.parametrize("region, e164, category", ISLAND_SPECIAL_CASES)
def test_island_special_ranges_keep_category(classifier, region, e164, category):
    assert classifier.classify(e164).category == category


# Ofcom's ranges for drama and documentation, which no number in service has.
# They must pass the length checks, though phonenumbers 9.0.42's
# is_valid_number rejects 01632 960xxx and 07700 900xxx.
DRAMA_NUMBERS = [
    ("0113 496 0123", "geographic"),
    ("0121 496 0123", "geographic"),
    ("0131 496 0123", "geographic"),
    ("0141 496 0123", "geographic"),
    ("0151 496 0123", "geographic"),
    ("0161 496 0123", "geographic"),
    ("0191 498 0123", "geographic"),
    ("01632 960123", "geographic"),
    ("020 7946 0123", "geographic"),
    ("028 9649 6123", "geographic"),
    ("029 2018 0123", "geographic"),
    ("0306 999 0123", "non-geographic"),
    ("07700 900123", "mobile"),
    ("0808 157 0123", "freephone"),
    ("0909 879 0123", "premium"),
]


@pytest.mark.parametrize("dialled, category", DRAMA_NUMBERS)
def test_drama_ranges_classified(classifier, dialled, category):
    assert classifier.classify(dialled).category == category


def _example_numbers() -> list[str]:
    """Return phonenumbers' example number of every type of every region and network,
    in E.164."""
    types = [phonenumbers.PhoneNumberType.FIXED_LINE, phonenumbers.PhoneNumberType.MOBILE,
             phonenumbers.PhoneNumberType.TOLL_FREE, phonenumbers.PhoneNumberType.PREMIUM_RATE,
             phonenumbers.PhoneNumberType.SHARED_COST, phonenumbers.PhoneNumberType.VOIP,
             phonenumbers.PhoneNumberType.PERSONAL_NUMBER, phonenumbers.PhoneNumberType.PAGER,
             phonenumbers.PhoneNumberType.UAN, phonenumbers.PhoneNumberType.VOICEMAIL]
    examples = [phonenumbers.example_number_for_type(region, number_type)
                for region in sorted(phonenumbers.SUPPORTED_REGIONS) for number_type in types]
    examples += [phonenumbers.example_number_for_non_geo_entity(code)
                 for code in sorted(phonenumbers.COUNTRY_CODES_FOR_NON_GEO_REGIONS)]
    return [phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
            for example in examples if example is not None]


# Canadian 310 numbers have seven digits and are dialled without an area code,
# so they have no E.164 form that a carrier would connect.
NOT_DIALLABLE_EXAMPLES = {"+13101234"}


def test_example_numbers_normalised():
    # The length check by leading digits must accept an example of every type in
    # every region of phonenumbers' metadata.
    rejected = {}
    for e164 in _example_numbers():
        if e164 in NOT_DIALLABLE_EXAMPLES:
            continue
        try:
            GB.normalise(e164)
        except InvalidNumber as exc:
            rejected[e164] = str(exc)

    assert len(_example_numbers()) > 1000
    assert rejected == {}


def test_premium_check_reuses_reading():
    # The premium check reads the PhoneNumber kept in the Number. Parsing the
    # E.164 form again must give the same answer for every example number.
    differing = []
    premium = 0
    for e164 in _example_numbers():
        if e164 in NOT_DIALLABLE_EXAMPLES:
            continue
        number = GB.normalise(e164)
        assert number.parsed is not None, e164
        unparsed = Number(dialled=e164, e164=number.e164, national=number.national,
                          country_code=number.country_code, region=number.region,
                          short_code=False)
        is_premium = GB.is_premium_rate(number)
        premium += is_premium
        if is_premium != GB.is_premium_rate(unparsed):
            differing.append(e164)

    assert differing == []
    assert premium > 100


def _reference_is_premium_rate(number: Number) -> bool:
    """The premium check by phonenumbers' number type first, as a slower reference."""
    parsed = phonenumbers.parse(number.e164, None)
    number_type = phonenumbers.number_type(parsed)
    if number_type == phonenumbers.PhoneNumberType.PREMIUM_RATE:
        return True
    if number_type != phonenumbers.PhoneNumberType.UNKNOWN:
        return False
    return starts_with_premium_rate(parsed, number.region)


def _premium_candidates() -> list[str]:
    """Return example numbers of every region, with digits added and removed,
    and random numbers after each country code, in E.164."""
    rng = random.Random(20261206)
    candidates = []
    for e164 in _example_numbers():
        if e164 in NOT_DIALLABLE_EXAMPLES:
            continue
        candidates += [e164, e164 + str(rng.randrange(10)), e164 + str(rng.randrange(100)),
                       e164[:-1]]
    for country_code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        for _ in range(20):
            length = rng.randint(6, 12)
            candidates.append(f"+{country_code}{rng.randint(1, 9)}"
                              + "".join(str(rng.randrange(10)) for _ in range(length)))
    return candidates


def test_premium_check_matches_number_type_reference():
    checked = premium = 0
    differing = []
    for e164 in _premium_candidates():
        try:
            number = GB.normalise(e164)
        except InvalidNumber:
            continue
        checked += 1
        expected = _reference_is_premium_rate(number)
        premium += expected
        if GB.is_premium_rate(number) != expected:
            differing.append(e164)

    assert differing == []
    assert checked > 2000
    assert premium > 150


def test_plain_national_reading_has_no_leading_digits_problem():
    # normalise() skips leading_digits_problem() for a number that
    # parse_national() read, because its pattern check covers it.
    rng = random.Random(61206)
    read = 0
    for region in ["GB", "IE", "FR", "DE", "US", "IM", "JE", "AU", "IT"]:
        for _ in range(3000):
            digits = "0" + "".join(str(rng.randrange(10)) for _ in range(rng.randint(5, 12)))
            parsed = parse_national(digits, region)
            if parsed is None:
                continue
            read += 1
            assert leading_digits_problem(parsed) is None, (region, digits)

    assert read > 2000


def _random_dialled(rng: random.Random) -> str:
    """Return a random dialled string: digits after a common prefix, with layout
    and now and then a character that no number has."""
    head = rng.choice(["", "", "0", "0", "00", "01", "07", "08", "09", "9", "90", "141", "1470",
                       "18001", "+", "+44", "tel:", "(0)", "-", " ", "011", "000", "1"])
    body = "".join(str(rng.randrange(10)) for _ in range(rng.randint(0, 13)))
    text = head + body
    for _ in range(rng.randint(0, 3)):
        position = rng.randint(0, len(text))
        text = text[:position] + rng.choice(" -.  ()") + text[position:]
    if rng.random() < 0.05:
        text += rng.choice(["#", "*", "\t", "a", "\u0661", "\n"])
    return text


def _outcome(classifier: Classifier, dialled: str) -> object:
    try:
        classified = classifier.classify(dialled)
    except (InvalidNumber, UnclassifiedNumber) as exc:
        return type(exc), str(exc)
    return classified, classified.number.region


# home country, outside-line prefix, emergency numbers, and whether any
# national number is plain: none is when the outside-line prefix is the
# national prefix too.
@pytest.mark.parametrize("home, outside, emergency, any_plain", [
    ("GB", "", ["999", "112"], True),
    ("GB", "9", ["999", "112"], True),
    ("DE", "", ["110", "112"], True),
    ("DE", "0", ["110", "112"], False),
    ("AU", "", ["000", "112"], True),
    ("US", "9", ["911"], True),
    ("FR", "", ["15", "17", "18", "112"], True),
])
def test_plain_national_path_matches_general_path(gb_table, home, outside, emergency,
                                                  any_plain):
    # The classifier reads plain national numbers on a shorter path. A
    # classifier whose plan never finds one takes the general path for every
    # string, and both must agree on every outcome, errors included.
    table = gb_table if home == "GB" else PrefixTable.from_rows(
        [("0", "geographic", "national"), ("+", "international", "abroad")])
    quick = Classifier(NumberPlan(home, outside, emergency), table)
    general_plan = NumberPlan(home, outside, emergency)
    general_plan.plain_national_digits = lambda dialled: None
    general = Classifier(general_plan, table)
    rng = random.Random(f"{home}{outside}")
    plain = 0
    differing = []
    for _ in range(4000):
        dialled = _random_dialled(rng)
        plain += quick.plan.plain_national_digits(dialled) is not None
        if _outcome(quick, dialled) != _outcome(general, dialled):
            differing.append(dialled)

    assert differing == []
    assert (plain > 400) is any_plain
