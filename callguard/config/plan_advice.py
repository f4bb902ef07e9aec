"""Warnings about outside_line_prefix and emergency_numbers that load but misfire.

Each check builds the number plan from ``[general]`` as the daemon does and tries
an example number on it, so that the warning shows what callguard does with it.
"""

import itertools
import re

import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberType

from callguard.config.fields import ALWAYS_EMERGENCY_NUMBERS
from callguard.config.model import Config
from callguard.numbers import (
    InvalidNumber,
    Number,
    NumberPlan,
    PrefixTable,
    PrefixTableError,
)
from callguard.numbers.categories import EMERGENCY
from callguard.numbers.table import PLUS

# The country of the example international number, and the one used instead when
# it is the home country.
ABROAD_REGION = "FR"
SPARE_ABROAD_REGION = "DE"
# phonenumbers writes a wait for a second dial tone as "~", as in RU's 8~10.
DIAL_TONE_MARK = "~"
# Digits of the longest international prefix among the 16 regions (BR, IL, KR
# and others) for which phonenumbers 9.0.42 gives only a pattern of several forms.
MAX_PATTERN_PREFIX_DIGITS = 5
DIGITS = "0123456789"
# Digits of the shortest emergency numbers in use.
MIN_EMERGENCY_DIGITS = 2


def number_plan_warnings(config: Config, prefixes: PrefixTable | None = None) -> list[str]:
    """Return one line per outside-line prefix or emergency number that misfires.

    ``prefixes`` is the prefix table already loaded for ``config``, if any.
    """
    general = config.general
    plan = NumberPlan(
        general.home_country, general.outside_line_prefix, general.emergency_numbers
    )
    # Reads numbers as dialled without the outside-line prefix.
    direct = NumberPlan(general.home_country, "", general.emergency_numbers)
    return [
        *_outside_line_warnings(plan, direct),
        *_emergency_warnings(config, plan, direct, prefixes),
    ]


def _outside_line_warnings(plan: NumberPlan, direct: NumberPlan) -> list[str]:
    """Warn when stripping the outside-line prefix misreads numbers dialled without it.

    The plan strips the prefix from every dialled number that starts with it, so
    a prefix that begins the national or international prefix eats the start of
    numbers that phones dial without it.
    """
    prefix = plan.outside_line_prefix
    if not prefix:
        return []

    cases = []
    if plan.national_prefix.startswith(prefix):
        cases.append(
            ("national prefix", plan.national_prefix, _national_example(plan))
        )

    international = _international_prefix_starting_with(prefix, plan.home_country)
    if international is not None:
        cases.append(
            (
                "international prefix",
                international,
                _abroad_example(plan, international),
            )
        )

    warnings = []
    for name, value, example in cases:
        outcome = None if example is None else _misreading(plan, direct, example)
        if outcome is None:
            continue
        warnings.append(
            f"[general] outside_line_prefix {prefix!r} begins the {name} {value!r}, "
            "and callguard strips it from every dialled number that starts with it. "
            f"So {example}, dialled without the outside-line prefix, {outcome}. "
            f"Phones must always dial {prefix!r} first, like {prefix}{example}; if "
            "they dial numbers without it, leave outside_line_prefix empty"
        )
    return warnings


def _national_example(plan: NumberPlan) -> str | None:
    """Return a landline number of the home country as dialled at home."""
    region = plan.home_country
    example = phonenumbers.example_number_for_type(
        region, PhoneNumberType.FIXED_LINE
    ) or phonenumbers.example_number(region)
    if example is None:
        return None
    return plan.national_prefix + phonenumbers.national_significant_number(example)


def _abroad_example(plan: NumberPlan, international_prefix: str) -> str | None:
    """Return a number of another country as dialled from the home country."""
    region = ABROAD_REGION
    if phonenumbers.country_code_for_region(region) == plan.country_code:
        region = SPARE_ABROAD_REGION

    example = phonenumbers.example_number(region)
    if example is None:
        return None
    nsn = phonenumbers.national_significant_number(example)
    return f"{international_prefix}{example.country_code}{nsn}"


def _international_prefix_starting_with(prefix: str, region: str) -> str | None:
    """Return the international prefix of ``region`` that starts with ``prefix``.

    Returns None when the region's usual international prefix does not start
    with it.
    """
    metadata = PhoneMetadata.metadata_for_region(region)
    if metadata is None:
        return None

    preferred = (metadata.preferred_international_prefix or "").replace(
        DIAL_TONE_MARK, ""
    )
    pattern = metadata.international_prefix or ""
    if not preferred and pattern.isdigit():
        preferred = pattern
    if preferred:
        return preferred if preferred.startswith(prefix) else None

    if not pattern:
        return None
    return _shortest_match(re.compile(pattern), prefix)


def _shortest_match(pattern: re.Pattern[str], prefix: str) -> str | None:
    """Return the shortest digit string that starts with ``prefix`` and fits ``pattern``."""
    for extra in range(MAX_PATTERN_PREFIX_DIGITS - len(prefix) + 1):
        for digits in itertools.product(DIGITS, repeat=extra):
            candidate = prefix + "".join(digits)
            if pattern.fullmatch(candidate):
                return candidate
    return None


def _misreading(plan: NumberPlan, direct: NumberPlan, example: str) -> str | None:
    """Describe how ``plan`` misreads ``example``, or return None if it reads it right."""
    try:
        intended = direct.normalise(example)
    except InvalidNumber:
        return None

    stripped = example[len(plan.outside_line_prefix) :]
    try:
        read = plan.normalise(example)
    except InvalidNumber:
        return f"is read as {stripped} and rejected as invalid"

    if _as_called(read) == _as_called(intended):
        return None
    return (
        f"is read as {stripped}, which calls {_as_called(read)} instead of "
        f"{_as_called(intended)}"
    )


def _as_called(number: Number) -> str:
    return number.e164 or number.national


def _emergency_warnings(
    config: Config, plan: NumberPlan, direct: NumberPlan, prefixes: PrefixTable | None
) -> list[str]:
    """Warn about emergency numbers that look like ordinary numbers.

    A configured emergency number skips every barring and limit, so a long
    number or one that the prefix table classes otherwise is likely a mistake.
    """
    table = prefixes if prefixes is not None else _prefix_table(config)
    warnings = []
    for number in plan.emergency_numbers:
        reasons = []
        if len(number) < MIN_EMERGENCY_DIGITS:
            # The shortest in use have two digits, such as 15, 17 and 18 in France.
            reasons.append(f"has only {len(number)} digit, and no emergency number has "
                           f"fewer than {MIN_EMERGENCY_DIGITS}")
        if len(number) > plan.short_code_max_length:
            reasons.append(
                f"has {len(number)} digits, more than the "
                f"{plan.short_code_max_length} of the longest short code in "
                f"{plan.home_country}"
            )

        category = _table_category(direct, table, number)
        if category not in (None, EMERGENCY):
            reasons.append(
                f"is in category {category!r} of the prefix table {table.source}"
            )

        if reasons and number in ALWAYS_EMERGENCY_NUMBERS:
            warnings.append(
                f"[general] emergency_numbers: {number!r} {', and '.join(reasons)}. "
                f"callguard always treats {number} as an emergency number, so correct "
                "the prefix table's row for it"
            )
        elif reasons:
            warnings.append(
                f"[general] emergency_numbers: {number!r} {', and '.join(reasons)}. "
                "Calls to an emergency number skip every barring and limit and are "
                "never hung up, so remove it unless it reaches the emergency services"
            )
    if table is not None:
        warnings.extend(_emergency_row_warnings(direct, table))
    return warnings


def _emergency_row_warnings(plan: NumberPlan, table: PrefixTable) -> list[str]:
    """Warn about emergency rows of the prefix table that are no short codes.

    Such a row makes a national or international number an emergency number,
    which skips every barring and limit, as an emergency_numbers entry does.
    ``plan`` reads numbers as dialled without the outside-line prefix.
    """
    warnings = []
    for rule in table.rules():
        if rule.category != EMERGENCY:
            continue
        prefix = rule.prefix
        if prefix.startswith(PLUS):
            reason = "is an international number"
        elif (plan.national_prefix and prefix.startswith(plan.national_prefix)
              and _is_national_number(plan, prefix)):
            reason = f"starts with the national prefix {plan.national_prefix}"
        elif len(prefix) > plan.short_code_max_length:
            reason = (f"has {len(prefix)} digits, more than the "
                      f"{plan.short_code_max_length} of the longest short code in "
                      f"{plan.home_country}")
        else:
            continue
        warnings.append(
            f"{table.source}:{table.line_number(prefix)}: prefix {prefix!r} is in "
            f"category 'emergency' but {reason}. Calls to an emergency number skip every "
            "barring and limit and are never hung up, so give the row another category "
            "unless the number reaches the emergency services"
        )
    return warnings


def _is_national_number(plan: NumberPlan, digits: str) -> bool:
    """Check whether ``plan`` reads ``digits`` as a whole national number.

    Short codes can start with the national prefix too, such as 000 in AU
    (prefix 0) and 112 in US (prefix 1), and are not national numbers.
    """
    try:
        number = plan.normalise(digits)
    except InvalidNumber:
        return False
    return not number.short_code


def _prefix_table(config: Config) -> PrefixTable | None:
    """Load the table that the daemon classifies with, or None if it is invalid."""
    path = config.general.prefixes
    try:
        return PrefixTable.default() if path is None else PrefixTable.from_csv(path)
    except PrefixTableError:
        # check-config and the daemon load the table again and report its errors.
        return None


def _table_category(
    direct: NumberPlan, table: PrefixTable | None, number: str
) -> str | None:
    """Return the category that ``table`` gives ``number``, or None for none."""
    if table is None:
        return None

    try:
        normalised = direct.normalise(number)
    except InvalidNumber:
        return None

    rule = table.match(normalised.table_key)
    return None if rule is None else rule.category
