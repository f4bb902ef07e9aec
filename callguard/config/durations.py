"""Durations in setting values and command options: a number with a unit, or seconds.

Every duration key accepts the same units, so ``1d`` means a day in
``max_call_seconds`` as it does in ``ban_time``. This module imports nothing
from ``values`` or ``model``, so that ``offenders`` can use it without an import
cycle.
"""

import re
from decimal import Decimal

from callguard.config.errors import InvalidValue

DURATION_PATTERN = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?")
NEGATIVE_SIGN = "-"
SECONDS_PER_UNIT = {
    "ms": Decimal("0.001"),
    "s": Decimal(1),
    "m": Decimal(60),
    "h": Decimal(3600),
    "d": Decimal(86400),
    "w": Decimal(604800),
}


def parse_seconds(text: str, examples: str) -> Decimal:
    """Parse a duration such as ``250ms``, ``1.5m``, ``2d``, ``1w`` or bare seconds.

    Returns seconds. Raises ``InvalidValue`` that quotes the text and shows
    ``examples``, the forms that fit the key.
    """
    match = DURATION_PATTERN.fullmatch(text.strip())
    if match is None:
        raise InvalidValue(f"{text!r} is not a duration; write it like {examples}")

    return Decimal(match[1]) * SECONDS_PER_UNIT[match[2] or "s"]


def parse_signed_seconds(text: str, examples: str) -> Decimal:
    """Parse a duration as ``parse_seconds`` does, or one with a leading ``-``.

    Returns a negative number of seconds for ``-1h``, so that a key or option
    with a minimum rejects it with the message it gives for zero, not as text
    that is no duration.
    """
    stripped = text.strip()
    if stripped.startswith(NEGATIVE_SIGN):
        try:
            return -parse_seconds(stripped[len(NEGATIVE_SIGN):], examples)
        except InvalidValue:
            pass
    return parse_seconds(text, examples)


def format_duration(seconds: int) -> str:
    """Return whole ``seconds`` in the largest unit that divides them, like ``90m`` or ``1w``."""
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
