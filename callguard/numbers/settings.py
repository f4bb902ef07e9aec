"""Checks of the number-plan settings that come from the configuration."""

import logging
from collections.abc import Iterable

logger = logging.getLogger(__name__)

DEFAULT_EMERGENCY_NUMBERS = ("999", "112")
MAX_OUTSIDE_LINE_PREFIX_DIGITS = 4
# E.164 numbers have at most 15 digits, so no emergency number is longer.
MAX_EMERGENCY_NUMBER_DIGITS = 15


def check_outside_line_prefix(prefix: str) -> str:
    """Return the outside-line prefix without surrounding spaces.

    Raises ``ValueError`` unless it is empty or up to four ASCII digits.
    """
    if not isinstance(prefix, str):
        raise ValueError(
            "outside-line prefix must be a string of digits such as '9', "
            f"not {prefix!r}"
        )

    prefix = prefix.strip()
    if prefix and not (
        prefix.isascii()
        and prefix.isdigit()
        and len(prefix) <= MAX_OUTSIDE_LINE_PREFIX_DIGITS
    ):
        raise ValueError(
            f"outside-line prefix {prefix!r} is invalid; use up to "
            f"{MAX_OUTSIDE_LINE_PREFIX_DIGITS} digits such as '9', or '' for none"
        )

    return prefix


def check_emergency_numbers(numbers: Iterable[str]) -> tuple[str, ...]:
    """Return the emergency numbers stripped and without duplicates.

    Raises ``ValueError`` for a bare string or an entry that is not ASCII digits.
    """
    if isinstance(numbers, str):
        raise ValueError(
            "emergency numbers must be a list such as ['999', '112'], "
            f"not the string {numbers!r}"
        )

    checked: list[str] = []
    for number in numbers:
        if not isinstance(number, str):
            raise ValueError(
                f"emergency number {number!r} must be a string of digits such as '999'"
            )

        digits = number.strip()
        if not (
            digits.isascii()
            and digits.isdigit()
            and len(digits) <= MAX_EMERGENCY_NUMBER_DIGITS
        ):
            raise ValueError(
                f"emergency number {number!r} is invalid; "
                "use digits only, such as '999'"
            )

        if digits not in checked:
            checked.append(digits)

    if not checked:
        logger.warning(
            "no emergency numbers are configured, so only the prefix table "
            "marks calls as emergency"
        )

    return tuple(checked)
