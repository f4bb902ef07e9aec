"""Amounts of money as exact ``Decimal`` values and their stored form.

The store keeps money as integer micro-units (millionths of the currency unit),
so every amount is rounded to six decimal places before it is stored. Prices
that would need more precision are rounded up, in the operator's favour.
"""

from decimal import ROUND_CEILING, Decimal, InvalidOperation

MICRO = Decimal("0.000001")
MICROS_PER_UNIT = 1_000_000
# The largest amount the store can hold as BIGINT micro-units, rounded down to
# a figure people can read: no trunk limit or price comes near it.
MAX_AMOUNT = Decimal("999999999999.999999")


class InvalidAmount(ValueError):
    """A string that is not a plain decimal amount such as ``50.00``."""


def parse_amount(text: str, *, allow_negative: bool = False) -> Decimal:
    """Parse ``text`` as a plain decimal amount, rejecting floats' exotic forms."""
    cleaned = text.strip()
    if not cleaned or any(c not in "0123456789.-+" for c in cleaned):
        raise InvalidAmount(f"{text!r} is not an amount")
    try:
        amount = Decimal(cleaned)
    except InvalidOperation:
        raise InvalidAmount(f"{text!r} is not an amount") from None

    if not amount.is_finite():
        raise InvalidAmount(f"{text!r} is not an amount")
    if amount < 0 and not allow_negative:
        raise InvalidAmount(f"{text!r} is negative")
    if abs(amount) > MAX_AMOUNT:
        raise InvalidAmount(f"{text!r} is too large; the maximum is {MAX_AMOUNT}")
    if amount != amount.quantize(MICRO, rounding=ROUND_CEILING):
        raise InvalidAmount(f"{text!r} has more than six decimal places")
    return amount


def round_up(amount: Decimal) -> Decimal:
    """Round ``amount`` up to the micro-unit, the precision the store keeps."""
    return amount.quantize(MICRO, rounding=ROUND_CEILING)


def to_micros(amount: Decimal) -> int:
    """Convert an amount to integer micro-units, rounding up any finer part."""
    return int(round_up(amount) * MICROS_PER_UNIT)


def from_micros(micros: int) -> Decimal:
    """Convert integer micro-units back to an exact amount."""
    return (Decimal(micros) / MICROS_PER_UNIT).quantize(MICRO)


def format_amount(amount: Decimal, places: int = 2) -> str:
    """Format an amount for people: at least ``places`` decimals, more if needed."""
    normal = amount.normalize()
    exponent = normal.as_tuple().exponent
    shown = max(places, -exponent if isinstance(exponent, int) else places)
    return f"{amount:.{shown}f}"


def format_rate(rate: Decimal) -> str:
    """Format a price per minute with the digits of the deck, never in exponent form.

    ``str()`` writes a rate below 0.000001 or a zero with more than six decimal
    places, such as ``0.00000000``, in exponent form (``0E-8``), which the
    dialplan and people cannot read as a price.
    """
    return format(rate, "f")
