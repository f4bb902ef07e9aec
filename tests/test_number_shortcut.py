"""The quicker reading of plain digit strings gives phonenumbers.parse's result."""

import random

import phonenumbers
import pytest
from phonenumbers import NumberParseException, PhoneMetadata

from callguard.numbers import InvalidNumber, NumberPlan
from callguard.numbers import plan as plan_module
from callguard.numbers.region import kept_national_prefix, length_problem
from callguard.numbers.shortcut import parse_international, parse_national

# Home countries with a plain national prefix or none (IT, ES, MX), and with
# prefixes given as patterns (GB, AU, CN) or with rewrite rules (AR, BR, JP).
# HU has a two-digit prefix and US one equal to its country code. CA and JE
# share a country code with a main region.
REGIONS = ["GB", "US", "CA", "IE", "FR", "DE", "AU", "NL", "IT", "ES", "JP", "JE", "AR",
           "BR", "RU", "CN", "IN", "MX", "HU", "NZ", "ZA", "CH", "SE", "AT", "BE", "PL"]


def digit_strings(start: str, count: int, rng: random.Random) -> list[str]:
    """Return ``start`` followed by random digits, at every length up to 17 more."""
    return [start + "".join(rng.choice("0123456789") for _ in range(length))
            for length in range(18) for _ in range(count)]


def parsed_or_none(text: str, region: str | None):
    """Return phonenumbers' reading when it is a number of a possible length, else None."""
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException:
        return None
    if length_problem(number) is not None or kept_national_prefix(number):
        return None
    return number


def assert_same(quick, text: str, region: str | None) -> None:
    expected = parsed_or_none(text, region)
    assert expected is not None, f"{text!r} in {region}: read quickly, but phonenumbers rejects it"
    assert quick.country_code == expected.country_code, text
    assert quick.national_number == expected.national_number, text
    assert not expected.italian_leading_zero, text


@pytest.mark.parametrize("region", REGIONS)
def test_national_same_as_phonenumbers(region):
    rng = random.Random(region)
    metadata = PhoneMetadata.metadata_for_region(region)
    national_prefix = metadata.national_prefix or ""
    starts = [national_prefix + str(lead) for lead in range(100)] + ["", "0", "00", "1"]
    quick_count = 0
    for start in starts:
        for text in digit_strings(start, 3, rng):
            quick = parse_national(text, region)
            if quick is not None:
                quick_count += 1
                assert_same(quick, text, region)
    if region in ("GB", "IE", "FR", "DE", "NL", "IN", "NZ", "ZA"):
        assert quick_count > 100


def test_national_shortcut_declines_other_readings():
    # The Typetalk prefix, a national number of a local-only length, a
    # shared country code and digits that start with the country code.
    assert parse_national("18002001632960000", "GB") is None
    assert parse_national("0163296", "GB") is None
    assert parse_national("6135550123", "CA") is None
    assert parse_national("12125550123", "US") is None
    assert parse_national("00441632960000", "GB") is None
    assert parse_national("01632960000", "GB").national_number == 1632960000


def test_international_same_as_phonenumbers():
    rng = random.Random(4573)
    quick_count = 0
    for country_code in sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE):
        region = phonenumbers.region_code_for_country_code(country_code)
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        prefix = (metadata.national_prefix or "0") if metadata else "0"
        for start in (str(country_code), f"{country_code}{prefix}", f"{country_code}0"):
            for text in digit_strings(start, 2, rng):
                quick = parse_international(text)
                if quick is not None:
                    quick_count += 1
                    assert_same(quick, "+" + text, None)
    assert quick_count > 1000


@pytest.mark.parametrize("digits", ["", "4", "44", "0441632960000", "4401632960000",
                                    "999999", "2", "44163296000000000000"])
def test_international_shortcut_declines(digits):
    assert parse_international(digits) is None


def test_international_non_geographic():
    number = parse_international("870773111111")
    assert number.country_code == 870
    assert number.national_number == 773111111


def plan_readings(plan: NumberPlan, texts: list[str]) -> list[tuple]:
    """Return each text's Number fields, or the InvalidNumber message."""
    readings = []
    for text in texts:
        try:
            number = plan.normalise(text)
        except InvalidNumber as exc:
            readings.append(("invalid", str(exc)))
        else:
            readings.append((number.e164, number.national, number.country_code,
                             number.region, number.short_code))
    return readings


@pytest.mark.parametrize("home, outside_line", [("GB", ""), ("GB", "9"), ("US", ""),
                                               ("IE", "9"), ("FR", "0"), ("AU", ""),
                                               ("IT", ""), ("DE", "")])
def test_plan_same_without_shortcut(monkeypatch, home, outside_line):
    rng = random.Random(home + outside_line)
    plan = NumberPlan(home, outside_line_prefix=outside_line)
    metadata = PhoneMetadata.metadata_for_region(home)
    international = {"US": "011", "AU": "0011"}.get(home, "00")
    starts = [outside_line + (metadata.national_prefix or "") + str(lead) for lead in range(10)]
    starts += [f"+{code}" for code in (1, 7, 33, 44, 49, 353, 870, 881, 979, 1876)]
    starts += [f"{outside_line}{international}{code}" for code in (1, 44, 39, 61, 353)]
    texts = [text for start in starts for text in digit_strings(start, 2, rng)]
    texts += [f"{text[:4]} {text[4:]}" for text in texts[::7]]

    quick = plan_readings(plan, texts)
    monkeypatch.setattr(plan_module, "parse_national", lambda digits, region: None)
    monkeypatch.setattr(plan_module, "parse_international", lambda digits: None)
    slow = plan_readings(plan, texts)

    for text, quick_reading, slow_reading in zip(texts, quick, slow):
        assert quick_reading == slow_reading, text
