"""Dialling rules of a region, derived from phonenumbers' metadata."""

import functools
import re

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumber, ValidationResult

# Used when phonenumbers has no short-number data for a region.
DEFAULT_SHORT_CODE_LENGTHS = (3, 4, 5, 6)

_TOO_SHORT_RESULTS = (
    ValidationResult.TOO_SHORT,
    ValidationResult.IS_POSSIBLE_LOCAL_ONLY,
)


class HomeRegion:
    """The national prefix, international prefix and short-code lengths of a region.

    Raises ``ValueError`` for a region that phonenumbers does not support.
    """

    def __init__(self, region: str) -> None:
        metadata = PhoneMetadata.metadata_for_region(region)
        if region not in phonenumbers.SUPPORTED_REGIONS or metadata is None:
            raise ValueError(
                f"home country {region!r} is unknown; use an ISO 3166-1 alpha-2 "
                "region code such as 'GB' or 'US'"
            )

        self.region = region
        self.country_code: int = metadata.country_code
        self.national_prefix: str = metadata.national_prefix or ""
        self._international_prefix = (
            re.compile(metadata.international_prefix)
            if metadata.international_prefix
            else None
        )
        self._number_formats = metadata.number_format

        short_metadata = PhoneMetadata.short_metadata_for_region(region)
        short_lengths = DEFAULT_SHORT_CODE_LENGTHS
        if short_metadata is not None and short_metadata.general_desc.possible_length:
            short_lengths = short_metadata.general_desc.possible_length

        self.short_code_min_length: int = min(short_lengths)
        self.short_code_max_length: int = max(short_lengths)

        # Without a national prefix only the length distinguishes a short code
        # from a national number, so short codes must be shorter than every
        # national number.
        if not self.national_prefix:
            shortest_national = min(metadata.general_desc.possible_length)
            self.short_code_max_length = min(
                self.short_code_max_length, shortest_national - 1
            )

    def international_prefix_length(self, digits: str) -> int:
        """Return the length of the international prefix that starts ``digits``, or 0.

        The prefix is a pattern in phonenumbers' metadata (``00`` for GB, ``011``
        for the North American plan, several alternatives for AU).
        """
        if self._international_prefix is None:
            return 0

        match = self._international_prefix.match(digits)
        if match is None:
            return 0

        return match.end()

    def national_prefix_optional(self, digits: str) -> bool:
        """Return whether ``digits`` is a national number that may omit the prefix.

        This follows phonenumbers' formatting rules: US numbers format without
        their national prefix ``1``, GB numbers always with ``0``.
        """
        for number_format in self._number_formats:
            leading_digits = number_format.leading_digits_pattern
            if leading_digits and not re.match(leading_digits[-1], digits):
                continue

            if re.fullmatch(number_format.pattern, digits):
                rule = number_format.national_prefix_formatting_rule
                optional = number_format.national_prefix_optional_when_formatting
                return bool(optional) or not rule

        return False


def possible_lengths(country_code: int) -> tuple[int, ...]:
    """Return the possible lengths of national significant numbers of a country code."""
    metadata = _main_metadata(country_code)
    if metadata is None:
        return ()

    return tuple(metadata.general_desc.possible_length)


def length_problem(number: PhoneNumber) -> str | None:
    """Return a predicate such as "is too short. ..." for ``number``, or None.

    None means the length is possible.
    This uses phonenumbers' possible-length data, not ``is_valid_number``, so
    numbers from unallocated or reserved ranges (Ofcom's drama ranges such as
    01632 960xxx) pass as long as their length fits.
    """
    reason = phonenumbers.is_possible_number_with_reason(number)
    if reason == ValidationResult.IS_POSSIBLE:
        return None

    country_code = number.country_code
    if reason == ValidationResult.INVALID_COUNTRY_CODE:
        return f"has the unassigned country code +{country_code}"

    digit_count = len(phonenumbers.national_significant_number(number))
    if reason in _TOO_SHORT_RESULTS:
        problem = "is too short"
    elif reason == ValidationResult.TOO_LONG:
        problem = "is too long"
    else:
        problem = "has an impossible length"

    return (
        f"{problem}. +{country_code} numbers have {_join_lengths(country_code)} "
        "digits after the country code and national prefix, "
        f"but this one has {digit_count}"
    )


def leading_digits_problem(number: PhoneNumber, nsn: str | None = None) -> str | None:
    """Return a predicate such as "has an impossible length ..." when no range
    of the number's country code has its length and leading digits, or None.

    A country's possible lengths are those of all its ranges together, so
    +44 7123 456 has a possible length (0800 1111 has as many digits) though
    every 07 number has 10. The check uses the general pattern of each region
    of the country code in phonenumbers' metadata, which matches every number
    of every range. Unlike ``is_valid_number``, it accepts numbers of
    unallocated and reserved ranges that fit this pattern, such as Ofcom's
    drama ranges (07700 900xxx). ``nsn`` is the number's national
    significant number, when the caller has it already.
    """
    patterns = _general_patterns(number.country_code)
    if nsn is None:
        nsn = phonenumbers.national_significant_number(number)
    if not patterns or any(pattern.fullmatch(nsn) for pattern in patterns):
        return None

    return (
        f"has an impossible length for its leading digits: no range of "
        f"+{number.country_code} numbers fits the {len(nsn)} digits {nsn!r} after "
        "the country code and national prefix"
    )


@functools.cache
def _general_patterns(country_code: int) -> tuple[re.Pattern, ...]:
    """Return the general number pattern of each region that uses ``country_code``."""
    patterns = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ()):
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        if metadata is None or metadata.general_desc is None:
            continue
        pattern = metadata.general_desc.national_number_pattern
        if pattern:
            patterns.append(re.compile(pattern))
    return tuple(patterns)


def _join_lengths(country_code: int) -> str:
    lengths = [str(length) for length in possible_lengths(country_code)]
    if len(lengths) <= 1:
        return "".join(lengths)

    return ", ".join(lengths[:-1]) + " or " + lengths[-1]


def rewrite_problem(digits: str, parsed: PhoneNumber) -> str | None:
    """Return a predicate such as "would be read as ..." when ``parsed`` does
    not keep the dialled ``digits`` after the country code, or None.

    ``digits`` are the dialled digits from the country code on. phonenumbers
    (9.0.42) drops what it takes for a national prefix or carrier code from a
    number that does not fit its country's pattern, and some regions' rules
    add digits. The carrier gets the digits as dialled, so such a number would be
    classified as another destination: +7 809 123 45 678, a premium rate
    number with one more digit, would be read as +7 091 234 5678. Only a
    national prefix of 0 written after the country code, as in
    +44 0 20 7946 0000, may be dropped.
    """
    country_code = str(parsed.country_code)
    dialled_number = digits[len(country_code) :]
    nsn = phonenumbers.national_significant_number(parsed)
    if dialled_number == nsn:
        return None

    metadata = _main_metadata(parsed.country_code)
    national_prefix = metadata.national_prefix if metadata is not None else None
    if national_prefix == "0" and dialled_number == national_prefix + nsn:
        return None

    return (
        f"would be read as +{country_code}{nsn}, not as dialled, so the carrier "
        "could reach another number; write the international number in full, "
        "without a national prefix or carrier code after the country code"
    )


def kept_national_prefix(parsed: PhoneNumber) -> bool:
    """Return whether the number starts with a 0 that can only be a national prefix.

    A leading 0 is part of the number where the country's number pattern allows
    it (Italian landlines, some Rwandan and Japanese ranges), so only a 0 that
    does not fit that pattern counts as a national prefix.
    """
    if not parsed.italian_leading_zero:
        return False

    metadata = _main_metadata(parsed.country_code)
    if metadata is None or not (metadata.national_prefix or "").startswith("0"):
        return False

    nsn = phonenumbers.national_significant_number(parsed)
    return re.fullmatch(metadata.general_desc.national_number_pattern, nsn) is None


def starts_with_premium_rate(parsed: PhoneNumber, region: str) -> bool:
    """Return whether the national significant number starts with a premium
    rate number of ``region``, by phonenumbers' premium rate pattern.

    ``region`` is the number's region, or "" to use the main region of its
    country code.
    """
    if not region:
        region = phonenumbers.region_code_for_country_code(parsed.country_code)
    metadata = PhoneMetadata.metadata_for_region_or_calling_code(
        parsed.country_code, region
    )
    if metadata is None or metadata.premium_rate is None:
        return False

    pattern = metadata.premium_rate.national_number_pattern
    if not pattern:
        return False

    nsn = phonenumbers.national_significant_number(parsed)
    return re.match(pattern, nsn) is not None


def _main_metadata(country_code: int) -> PhoneMetadata | None:
    """Return the metadata of a country code's main region, which phonenumbers
    uses for lengths and national prefixes."""
    region = phonenumbers.region_code_for_country_code(country_code)
    return PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
