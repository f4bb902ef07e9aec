"""Parsing and checking of rate deck fields: prefix, rate and connection fee.

The parse functions take CSV text and raise ValueError with a message of the form
``<column> '<value>' is invalid; <how to fix it>``, so that the deck loader can put the
file name and line in front of it. The check functions take typed values and raise
TypeError for a wrong type, such as a float, and ValueError for a bad value.
"""

from decimal import Decimal

from callguard.money import MAX_AMOUNT, InvalidAmount, parse_amount, round_up

# ITU-T E.164 limits international numbers to 15 digits, country code included.
E164_MAX_DIGITS = 15
# The start of a deck prefix that prices the home country's short codes beginning
# with the digits after it, as in short:118. Short codes have no E.164 form, so
# E.164 rows and short: rows never price each other's numbers.
SHORT_CODE_MARK = "short:"
# Short code prefixes keep the E.164 digit limit, which is far above any short code.
SHORT_CODE_MAX_DIGITS = E164_MAX_DIGITS

RATE_CHARACTERS = frozenset("0123456789.")
ZERO = Decimal(0)


def parse_prefix(text: str) -> str:
    """Check that ``text`` is a deck prefix and return it.

    A deck prefix is either E.164 digits without ``+`` (``44``) or ``short:`` and the
    leading digits of home short codes (``short:118``).
    """
    # Valid prefixes, by far the most common input, pass this one test.
    if (
        isinstance(text, str)
        and text.isdigit()
        and text.isascii()
        and text[0] != "0"
        and len(text) <= E164_MAX_DIGITS
    ):
        return text

    if not isinstance(text, str):
        raise ValueError(
            f"prefix {text!r} is invalid; pass the digits as a string, like '44'"
        )

    if not text:
        raise ValueError("prefix '' is missing; write the E.164 digits, like 44")

    if text[:len(SHORT_CODE_MARK)].lower() == SHORT_CODE_MARK:
        return parse_short_code_prefix(text)

    if text.startswith("+"):
        example = text[1:] if text[1:].isdigit() else "44"
        raise ValueError(
            f"prefix {text!r} is invalid; drop the leading +, write it like {example}"
        )

    if not (text.isascii() and text.isdigit()):
        raise ValueError(
            f"prefix {text!r} is invalid; write only the digits 0-9 of an E.164 "
            f"prefix, like 447, or {SHORT_CODE_MARK} and the digits of a short code, "
            f"like {SHORT_CODE_MARK}118"
        )

    if text.startswith("0"):
        raise ValueError(
            f"prefix {text!r} is invalid because E.164 numbers begin with the country "
            f"code; drop the leading 0s, like {text.lstrip('0') or '44'}"
        )

    if len(text) > E164_MAX_DIGITS:
        raise ValueError(
            f"prefix {text!r} is invalid because E.164 numbers have at most "
            f"{E164_MAX_DIGITS} digits; shorten it"
        )
    return text


def parse_short_code_prefix(text: str) -> str:
    """Check that ``text`` is ``short:`` and 1 to 15 digits, and return it."""
    if not text.startswith(SHORT_CODE_MARK):
        marked = SHORT_CODE_MARK + text[len(SHORT_CODE_MARK):]
        raise ValueError(
            f"prefix {text!r} is invalid; write {SHORT_CODE_MARK} in lower case, "
            f"like {marked}"
        )

    digits = text[len(SHORT_CODE_MARK):]
    if not digits:
        raise ValueError(
            f"prefix {text!r} is missing the short code; write its leading digits "
            f"after {SHORT_CODE_MARK}, like {SHORT_CODE_MARK}118"
        )

    if not (digits.isascii() and digits.isdigit()):
        raise ValueError(
            f"prefix {text!r} is invalid; write only the digits 0-9 of a short code "
            f"after {SHORT_CODE_MARK}, like {SHORT_CODE_MARK}118"
        )

    if len(digits) > SHORT_CODE_MAX_DIGITS:
        raise ValueError(
            f"prefix {text!r} is invalid because a short code prefix has at most "
            f"{SHORT_CODE_MAX_DIGITS} digits; shorten it"
        )
    return text


def is_short_code_prefix(prefix: str) -> bool:
    """Return True if the valid deck prefix ``prefix`` prices short codes."""
    return prefix.startswith(SHORT_CODE_MARK)


def parse_rate(text: str) -> Decimal:
    """Parse a price per minute written as a plain decimal such as ``0.0125``.

    Unlike amounts of money, a rate may have more than six decimal places, because
    rate decks often quote prices per minute to seven or more places.
    """
    cleaned = text.strip()
    if not cleaned:
        raise ValueError("rate '' is missing; write the price per minute like 0.05")

    if cleaned.startswith("-"):
        raise ValueError(
            f"rate {text!r} is invalid because a rate cannot be negative; "
            "write the price per minute like 0.05"
        )

    if not is_plain_number(cleaned):
        raise ValueError(
            f"rate {text!r} is invalid; write the price per minute as a plain "
            "decimal, like 0.05"
        )

    # The store keeps every rate as it keeps money, so a larger one fails there.
    rate = Decimal(cleaned)
    if rate > MAX_AMOUNT:
        raise ValueError(f"rate {text!r} is too large; the maximum is {MAX_AMOUNT}")
    return rate


def parse_connection_fee(text: str) -> Decimal:
    """Parse a connection fee as an amount with at most six decimal places.

    An empty field means no fee, because decks commonly leave the column blank.
    """
    if not text.strip():
        return ZERO

    try:
        return parse_amount(text)
    except InvalidAmount:
        pass

    cleaned = text.strip()
    if is_plain_number(cleaned) and Decimal(cleaned) > MAX_AMOUNT:
        raise ValueError(
            f"connection_fee {text!r} is too large; the maximum is {MAX_AMOUNT}"
        )
    raise ValueError(
        f"connection_fee {text!r} is invalid; write a plain decimal that is "
        "not negative and has at most six decimal places, like 0.10"
    )


def is_plain_number(text: str) -> bool:
    """Return True if ``text`` is digits with at most one decimal point."""
    return RATE_CHARACTERS.issuperset(text) and text.count(".") <= 1 and text != "."


def check_rate(value: object) -> None:
    """Raise TypeError or ValueError unless ``value`` is a usable rate."""
    check_decimal("rate", value)


def check_connection_fee(value: object) -> None:
    """Raise TypeError or ValueError unless ``value`` is a usable connection fee."""
    check_decimal("connection_fee", value)

    if value != round_up(value):
        raise ValueError(
            f"connection_fee {value} is invalid because it has more than six "
            "decimal places; round it to the micro-unit"
        )


def check_decimal(name: str, value: object) -> None:
    """Raise unless ``value`` is a finite, non-negative ``Decimal``."""
    if not isinstance(value, Decimal):
        raise TypeError(
            f"{name} {value!r} is a {type(value).__name__}; pass a Decimal, "
            f"like Decimal('0.05'), because money is never a float"
        )

    if not value.is_finite() or value < 0:
        raise ValueError(
            f"{name} {value} is invalid; pass a finite Decimal that is not negative"
        )
    if value > MAX_AMOUNT:
        raise ValueError(f"{name} {value} is too large; the maximum is {MAX_AMOUNT}")
