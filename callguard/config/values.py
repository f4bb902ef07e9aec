"""Parsers for scalar setting values: durations, switches, counts, amounts and rates.

Each parser takes the value text with comments and outer whitespace removed. It
returns the typed value or raises ``InvalidValue`` with a message that quotes the bad
text and shows how to write it.
"""

import re
from decimal import Decimal

import phonenumbers

from callguard.config.categories import split_list
from callguard.config.durations import parse_seconds, parse_signed_seconds
from callguard.config.errors import InvalidValue
from callguard.config.model import DefaultRate
from callguard.money import MAX_AMOUNT, InvalidAmount, parse_amount
from callguard.numbers.settings import (
    MAX_EMERGENCY_NUMBER_DIGITS,
    MAX_OUTSIDE_LINE_PREFIX_DIGITS,
)

DURATION_EXAMPLES = "250ms, 1s, 2m, 1h or 30 (seconds)"
# Keys of whole seconds reject 250ms, so their messages do not suggest it.
WHOLE_SECONDS_EXAMPLES = "90s, 2m, 1h or 120 (seconds)"

TRUE_WORDS = frozenset({"yes", "true", "on", "1"})
FALSE_WORDS = frozenset({"no", "false", "off", "0"})

INCREMENT_SEPARATOR = "/"
RATE_EXAMPLE = "0.25, 0.05, 60/60"
# Per-minute billing in 60-second steps overestimates any finer tariff, so an
# unrated call is never undercharged.
DEFAULT_FIRST_INCREMENT = 60
DEFAULT_LATER_INCREMENT = 60

CURRENCY_PATTERN = re.compile(r"[A-Z]{3}")
# Rates per minute may have more than the six decimal places of stored money,
# because rate decks often quote them to seven or more.
RATE_PATTERN = re.compile(r"\d+(?:\.\d+)?")


def parse_duration(text: str) -> float:
    """Parse a duration such as ``250ms``, ``2m``, ``1h``, ``1d``, ``1w`` or bare seconds.

    Returns seconds. Raises ``ValueError`` that quotes the text and shows the forms
    accepted.
    """
    return float(parse_seconds(text, DURATION_EXAMPLES))


def parse_timeout(text: str, maximum: str) -> float:
    """Parse a duration of more than zero and at most ``maximum``, such as ``30s``.

    ``maximum`` is duration text, so that the message gives the limit in the
    unit that the sample config writes it in.
    """
    seconds = float(parse_signed_seconds(text, DURATION_EXAMPLES))
    if seconds <= 0:
        raise InvalidValue(f"{text!r} must be longer than zero; write it like 1s")

    if seconds > parse_duration(maximum):
        raise InvalidValue(f"{text!r} is too long; write at most {maximum}")
    return seconds


def parse_whole_seconds(text: str) -> int:
    """Parse a duration of one second or more that is a whole number of seconds."""
    seconds = float(parse_signed_seconds(text, WHOLE_SECONDS_EXAMPLES))
    if seconds != int(seconds):
        raise InvalidValue(
            f"{text!r} is not a whole number of seconds; write it like 120 or 2m"
        )

    if seconds < 1:
        raise InvalidValue(f"{text!r} must be at least 1s; write it like 120 or 2m")
    return int(seconds)


def parse_optional_seconds(text: str) -> int | None:
    """Parse whole seconds as ``parse_whole_seconds`` does; empty means no limit."""
    if not text:
        return None
    return parse_whole_seconds(text)


def parse_window(text: str, maximum: str) -> int:
    """Parse whole seconds as ``parse_whole_seconds`` does, at most ``maximum``.

    ``maximum`` is duration text, such as ``24h``, as ``parse_timeout`` takes it.
    """
    seconds = parse_whole_seconds(text)
    if seconds > parse_duration(maximum):
        raise InvalidValue(f"{text!r} is too long; write at most {maximum}")
    return seconds


def parse_bool(text: str) -> bool:
    """Parse yes/no, true/false, on/off or 1/0, case-insensitively."""
    word = text.lower()
    if word in TRUE_WORDS:
        return True

    if word in FALSE_WORDS:
        return False
    raise InvalidValue(f"{text!r} is not a yes/no value; write yes or no")


def parse_choice(text: str, choices: tuple[str, ...]) -> str:
    """Parse one of ``choices``, case-insensitively, and return it in lower case."""
    word = text.lower()
    if word not in choices:
        raise InvalidValue(f"{text!r} is not valid; write one of {', '.join(choices)}")
    return word


def parse_optional_count(text: str) -> int | None:
    """Parse an integer of 1 or more; empty means no limit."""
    if not text:
        return None

    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise InvalidValue(
            f"{text!r} is not a whole number of 1 or more; write it like 10, "
            "or leave it empty for no cap"
        )
    return int(text)


def parse_percentages(text: str) -> tuple[int, ...]:
    """Parse a comma list of one or more integer percentages from 1 to 100."""
    items = split_list(text)
    if not items:
        raise InvalidValue(
            f"{text!r} has no percentages; write one or more like 50, 80, 95"
        )

    percentages = set()
    messages = []
    for item in items:
        if not item.isascii() or not item.isdigit() or not 1 <= int(item) <= 100:
            messages.append(
                f"{item!r} is not a whole percentage from 1 to 100; write it like 80"
            )
        else:
            percentages.add(int(item))

    if messages:
        raise InvalidValue(*messages)
    return tuple(sorted(percentages))


def parse_limit(text: str) -> Decimal | None:
    """Parse a spend limit in the configured currency; empty means no limit."""
    if not text:
        return None
    return parse_money(text)


def parse_money(text: str) -> Decimal:
    """Parse a non-negative amount of at most six decimal places."""
    try:
        return parse_amount(text)
    except InvalidAmount as exc:
        raise InvalidValue(f"{exc}; write it like 50.00") from None


def parse_default_rate(text: str) -> DefaultRate | None:
    """Parse ``RATE[, FEE[, N/M]]``; empty means unrated calls are rejected.

    RATE is per minute and FEE is charged once per answered call. N/M are the first
    and later billing increments in seconds, 60/60 when omitted.
    """
    if not text:
        return None

    items = [item.strip() for item in text.split(",")]
    if len(items) > 3 or not all(items):
        raise InvalidValue(
            f"{text!r} is not a rate; write RATE[, FEE[, N/M]] like {RATE_EXAMPLE}"
        )

    if not RATE_PATTERN.fullmatch(items[0]):
        raise InvalidValue(
            f"{items[0]!r} is not a rate per minute; write RATE[, FEE[, N/M]] "
            f"like {RATE_EXAMPLE}"
        )

    rate = Decimal(items[0])
    if rate > MAX_AMOUNT:
        raise InvalidValue(
            f"{items[0]!r} is too large for a rate per minute; the maximum is "
            f"{MAX_AMOUNT}; write RATE[, FEE[, N/M]] like {RATE_EXAMPLE}"
        )
    fee = Decimal(0)
    if len(items) > 1:
        fee = _parse_fee(items[1])

    first, later = DEFAULT_FIRST_INCREMENT, DEFAULT_LATER_INCREMENT
    if len(items) > 2:
        first, later = parse_increments(items[2])
    return DefaultRate(rate, fee, first, later)


def parse_increments(text: str) -> tuple[int, int]:
    """Parse billing increments ``N/M`` in seconds: N for the first step, M after."""
    first, separator, later = text.partition(INCREMENT_SEPARATOR)
    numbers = [first.strip(), later.strip()]
    valid = separator and all(
        n.isascii() and n.isdigit() and int(n) >= 1 for n in numbers
    )
    if not valid:
        raise InvalidValue(
            f"{text!r} is not a billing increment; write N/M in whole seconds of "
            "1 or more, like 60/60 or 30/1"
        )
    return int(numbers[0]), int(numbers[1])


def parse_region(text: str) -> str:
    """Parse an ISO 3166 alpha-2 region supported by phonenumbers, in any case."""
    region = text.upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise InvalidValue(
            f"{text!r} is not a region code known to phonenumbers; write an ISO "
            "3166 alpha-2 code like GB or IE"
        )
    return region


def parse_regions(text: str) -> frozenset[str]:
    """Parse a comma list of regions as ``parse_region`` does; empty means none."""
    regions = set()
    messages = []
    for item in split_list(text):
        try:
            regions.add(parse_region(item))
        except InvalidValue as exc:
            messages.extend(exc.messages)

    if messages:
        raise InvalidValue(*messages)
    return frozenset(regions)


def parse_currency(text: str) -> str:
    """Parse a three-letter ISO 4217 alphabetic code, in any case, into capitals.

    NOTE: this checks the shape only, because no dependency lists the ISO 4217
    codes, so an unassigned code such as ``XYZ`` passes.
    """
    # Only ASCII letters are upper-cased, because str.upper() turns some other
    # letters into ASCII capitals, such as "ß" into "SS".
    code = text.upper() if text.isascii() else text
    if not CURRENCY_PATTERN.fullmatch(code):
        raise InvalidValue(
            f"{text!r} is not a currency code; write three ISO 4217 letters like GBP"
        )
    return code


# A node name: the characters of a host name, and underscores, up to 63 of them.
NODE_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def parse_node_name(text: str) -> str:
    """Parse the name that this daemon's rows in a shared store carry; empty
    stands for the host name."""
    if text and not NODE_NAME_PATTERN.fullmatch(text):
        raise InvalidValue(
            f"{text!r} is not a node name; write 1 to 63 ASCII letters, digits, dots, "
            "dashes or underscores, starting with a letter or digit, like pbx1, or "
            "leave it empty for the host name"
        )
    return text


def parse_outside_line_prefix(text: str) -> str:
    """Parse the digits dialled for an outside line, at most four; empty is allowed."""
    if text and not (text.isascii() and text.isdigit()):
        raise InvalidValue(
            f"{text!r} is not digits only; write it like 9, or leave it empty"
        )

    if len(text) > MAX_OUTSIDE_LINE_PREFIX_DIGITS:
        raise InvalidValue(
            f"{text!r} is too long; write at most {MAX_OUTSIDE_LINE_PREFIX_DIGITS} "
            "digits, like 9, or leave it empty"
        )
    return text


def parse_emergency_numbers(text: str, always: tuple[str, ...]) -> tuple[str, ...]:
    """Parse a comma list of digit strings and append each of ``always`` not listed."""
    numbers: list[str] = []
    messages = []
    for item in split_list(text):
        if not (item.isascii() and item.isdigit()):
            messages.append(f"{item!r} is not digits only; write it like 999")
        elif len(item) > MAX_EMERGENCY_NUMBER_DIGITS:
            messages.append(
                f"{item!r} is too long for a phone number; write at most "
                f"{MAX_EMERGENCY_NUMBER_DIGITS} digits, like 999"
            )
        elif item not in numbers:
            numbers.append(item)

    if messages:
        raise InvalidValue(*messages)

    numbers.extend(number for number in always if number not in numbers)
    return tuple(numbers)


def parse_name(text: str, kind: str, example: str) -> str:
    """Parse a non-empty name without whitespace, such as an ARI user or app."""
    if not text or any(c.isspace() for c in text):
        raise InvalidValue(
            f"{text!r} is not a valid {kind}; write one word like {example}"
        )
    return text


def _parse_fee(text: str) -> Decimal:
    try:
        return parse_amount(text)
    except InvalidAmount as exc:
        raise InvalidValue(
            f"{exc} as the connection fee; write RATE[, FEE[, N/M]] like "
            f"{RATE_EXAMPLE}"
        ) from None
