"""A quicker reading of plain digit strings, with the result phonenumbers.parse gives.

phonenumbers.parse takes about 15 us per dialled number (timed with timeit
on a 2-core machine), a large part of a call decision. The
common numbers are plain: the national prefix and a national number of a
possible length, or a country code and such a number. For those, the
reading is a few string operations on the same metadata.

Some strings need one of the parser's other rules: a carrier code, a
national prefix after the country code, a leading zero that belongs to the
number, or a national number that starts with the country code. For them the
functions here return None, and the caller falls back to phonenumbers.parse.
A result is always a number of a possible length in its country, so
``length_problem`` and ``kept_national_prefix`` have nothing to report for it.
"""

import functools
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumber

# phonenumbers reads country codes of 1 to 3 digits, the shortest one known first.
MAX_COUNTRY_CODE_DIGITS = 3


@dataclass(frozen=True)
class _CountryRules:
    """The parts of one country code's metadata that a plain reading uses."""

    country_code: int
    # The main region of the country code: the one whose metadata phonenumbers uses.
    region: str
    international_prefix: re.Pattern | None
    national_prefix_for_parsing: re.Pattern | None
    national_number: re.Pattern
    # Lengths that phonenumbers calls IS_POSSIBLE: possible, but not only locally.
    possible_lengths: frozenset[int]


@functools.cache
def _rules(country_code: int) -> _CountryRules | None:
    region = phonenumbers.region_code_for_country_code(country_code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    if metadata is None:
        return None

    general = metadata.general_desc
    if general is None or not general.possible_length or general.possible_length[0] == -1:
        return None

    international = metadata.international_prefix
    prefix = metadata.national_prefix_for_parsing
    return _CountryRules(
        country_code=country_code,
        region=region,
        international_prefix=re.compile(international) if international else None,
        national_prefix_for_parsing=re.compile(prefix) if prefix else None,
        national_number=re.compile(general.national_number_pattern or ""),
        possible_lengths=frozenset(general.possible_length)
        - frozenset(general.possible_length_local_only or ()),
    )


def _plain(digits: str) -> bool:
    return digits.isascii() and digits.isdigit()


def parse_national(digits: str, region: str) -> PhoneNumber | None:
    """Return phonenumbers.parse(digits, region) for a plain national number, else None.

    Plain means: ``region`` is the main region of its country code, the
    digits start with the national prefix and no carrier code, and the rest
    fits the country's number pattern, has a possible length and does not
    start with 0.
    """
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None or not _plain(digits):
        return None

    rules = _rules(metadata.country_code)
    if rules is None or rules.region != region or rules.national_prefix_for_parsing is None:
        return None

    # phonenumbers first tries to read the digits as the international prefix
    # and a country code, then as the home country code and a number.
    international = rules.international_prefix
    if international is not None and international.match(digits) is not None:
        return None
    if digits.startswith(str(rules.country_code)):
        return None

    match = rules.national_prefix_for_parsing.match(digits)
    # A group that took part marks a carrier code or a rewrite of the number.
    if match is None or match.end() == 0 or any(group is not None for group in match.groups()):
        return None

    national = digits[match.end():]
    return _number(rules, national, need_pattern=True)


def parse_international(digits: str) -> PhoneNumber | None:
    """Return phonenumbers.parse("+" + digits, None) for a plain international number, else None.

    ``digits`` follow the ``+`` or the international prefix. Plain means: a
    known country code, then a national number that does not start with the
    country's national prefix or with 0, of a possible length.
    """
    # phonenumbers reads at most two digits after the prefix as too short.
    if not _plain(digits) or digits.startswith("0") or len(digits) <= 2:
        return None

    for length in range(1, MAX_COUNTRY_CODE_DIGITS + 1):
        country_code = int(digits[:length])
        if country_code in phonenumbers.COUNTRY_CODE_TO_REGION_CODE:
            break
    else:
        return None

    rules = _rules(country_code)
    if rules is None:
        return None

    national = digits[length:]
    prefix = rules.national_prefix_for_parsing
    if prefix is not None and prefix.match(national) is not None:
        return None
    return _number(rules, national, need_pattern=False)


def _number(rules: _CountryRules, national: str, *, need_pattern: bool) -> PhoneNumber | None:
    """Return the number ``national`` in ``rules``' country, or None if it is not plain.

    ``need_pattern``: phonenumbers strips a national prefix only if the rest
    fits the country's number pattern (or the whole did not fit either).
    """
    if not national or national[0] == "0" or len(national) not in rules.possible_lengths:
        return None
    if need_pattern and rules.national_number.fullmatch(national) is None:
        return None
    return PhoneNumber(country_code=rules.country_code, national_number=int(national))
