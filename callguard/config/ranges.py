"""Sets of telephone numbers, stored as inclusive ranges of E.164 digits."""

import bisect
from dataclasses import dataclass

import phonenumbers

from callguard.config.categories import split_list
from callguard.config.errors import InvalidValue

E164_PLUS = "+"
RANGE_SEPARATOR = "-"
NUMBER_CHARACTERS = frozenset("0123456789+ ")


@dataclass(frozen=True)
class NumberRanges:
    """Inclusive ranges of E.164 numbers, each stored as the integer of its digits.

    The ranges are sorted and merged on construction, so membership is a binary
    search. Numbers of different lengths never collide because E.164 digits never
    start with 0.
    """

    ranges: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for low, high in self.ranges:
            if low > high:
                raise ValueError(
                    f"range ({low}, {high}) has its low end above its high"
                )

        merged: list[tuple[int, int]] = []
        for low, high in sorted(self.ranges):
            if merged and low <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], high))
            else:
                merged.append((low, high))
        object.__setattr__(self, "ranges", tuple(merged))

    def __contains__(self, e164: str | None) -> bool:
        """Check whether an E.164 number such as ``+441632960001`` is in a range.

        The ``+`` is optional. Anything else, including a national number with its
        leading 0, is never in a range.
        """
        if not self.ranges or not isinstance(e164, str):
            # Every check looks up its caller in the trunk's opt_out, which is usually empty.
            return False

        digits = e164.removeprefix(E164_PLUS)
        if not digits.isascii() or not digits.isdigit() or digits.startswith("0"):
            return False

        value = int(digits)
        index = bisect.bisect_right(self.ranges, (value, float("inf"))) - 1
        return index >= 0 and self.ranges[index][0] <= value <= self.ranges[index][1]

    def __bool__(self) -> bool:
        return bool(self.ranges)

    def outside(self, other: "NumberRanges") -> "NumberRanges":
        """Return the parts of these ranges that ``other`` does not cover."""
        uncovered: list[tuple[int, int]] = []
        for low, high in self.ranges:
            start = low
            for other_low, other_high in other.ranges:
                if other_high < start:
                    continue
                if other_low > high:
                    break
                if other_low > start:
                    uncovered.append((start, other_low - 1))
                start = other_high + 1
                if start > high:
                    break
            if start <= high:
                uncovered.append((start, high))
        return NumberRanges(tuple(uncovered))

    def __str__(self) -> str:
        items = []
        for low, high in self.ranges:
            if low == high:
                items.append(f"+{low}")
            else:
                items.append(f"+{low}-+{high}")
        return ", ".join(items)


def parse_number_ranges(text: str, home_country: str) -> NumberRanges:
    """Parse a comma list of numbers and ``A-B`` ranges; empty means no numbers.

    Each number is in the national form of ``home_country`` or in E.164. Both ends
    of a range must have the same number of E.164 digits, and A must not exceed B.
    """
    ranges = []
    messages = []
    for item in split_list(text):
        try:
            ranges.append(parse_number_range(item, home_country))
        except InvalidValue as exc:
            messages.extend(exc.messages)

    if messages:
        raise InvalidValue(*messages)
    return NumberRanges(tuple(ranges))


def parse_number_range(item: str, home_country: str) -> tuple[int, int]:
    """Parse one number or ``A-B`` range into its inclusive integer bounds."""
    parts = item.split(RANGE_SEPARATOR)
    if len(parts) > 2:
        raise InvalidValue(
            f"{item!r} is not a number or range; write numbers without hyphens "
            "and a range as A-B, like 01632960000-01632960099"
        )

    bounds = [_parse_e164_digits(part.strip(), item, home_country) for part in parts]
    low, high = bounds[0], bounds[-1]
    if len(low) != len(high):
        raise InvalidValue(
            f"{item!r} joins numbers of different lengths (+{low} and +{high}); "
            "give both ends of a range the same number of digits"
        )

    if int(low) > int(high):
        raise InvalidValue(
            f"{item!r} starts above its end; write the lower number first, "
            f"like {parts[1].strip()}-{parts[0].strip()}"
        )
    return int(low), int(high)


def _parse_e164_digits(text: str, item: str, home_country: str) -> str:
    example = _example_for(home_country)
    if not text or not set(text) <= NUMBER_CHARACTERS or E164_PLUS in text[1:]:
        raise InvalidValue(
            f"{item!r} is not a number or range; use only digits, spaces and a "
            f"leading +, like {example}"
        )

    try:
        parsed = phonenumbers.parse(text, home_country)
    except phonenumbers.NumberParseException:
        raise InvalidValue(
            f"{text!r} is not a telephone number; write it like {example}"
        ) from None

    # A number dialable only locally, without its area code, would match the
    # wrong E.164 digits, so only full-length numbers count as possible.
    reason = phonenumbers.is_possible_number_with_reason(parsed)
    if reason != phonenumbers.ValidationResult.IS_POSSIBLE:
        raise InvalidValue(
            f"{text!r} has the wrong length for a full number of {home_country}; "
            f"write it like {example}"
        )

    e164 = phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    return e164.removeprefix(E164_PLUS)


def _example_for(region: str) -> str:
    """Return a number of ``region`` in national form and in E.164, for messages."""
    if region == "GB":
        # Ofcom reserves 01632 960000-960999 for drama, so no real line gets quoted.
        return "01632960000 or +441632960000"

    example = phonenumbers.example_number(region)
    if example is None:
        return "+441632960000"

    national = phonenumbers.format_number(
        example, phonenumbers.PhoneNumberFormat.NATIONAL
    )
    e164 = phonenumbers.format_number(example, phonenumbers.PhoneNumberFormat.E164)
    national_digits = "".join(c for c in national if c.isdigit())
    return f"{national_digits} or {e164}"
