"""Character check and layout clean-up of dialled strings.

This runs before a string reaches phonenumbers, because phonenumbers is lenient in
ways that are unsafe for a call guard: it turns full-width digits such as
``０１２`` into ASCII digits and reads ``*21*0044...`` as a GB number.
"""

from dataclasses import dataclass
from typing import Callable

from callguard.numbers.errors import InvalidNumber, quote

TEL_SCHEME = "tel:"
PLUS = "+"
SEPARATORS = " -."
OPEN_BRACKET = "("
CLOSE_BRACKET = ")"
FEATURE_CODE_CHARACTERS = "*#"

# Longer than any number with prefixes and layout; longer strings are rejected
# before they are scanned.
MAX_DIALLED_CHARACTERS = 64

_ALLOWED_CHARACTERS = frozenset(
    "0123456789" + SEPARATORS + OPEN_BRACKET + CLOSE_BRACKET
)
# A translation table that deletes every allowed character: what it leaves is not allowed.
_ALLOWED_REMOVAL = str.maketrans("", "", "".join(sorted(_ALLOWED_CHARACTERS)))
_SEPARATOR_REMOVAL = str.maketrans("", "", SEPARATORS)
_LAYOUT_REMOVAL = str.maketrans("", "", SEPARATORS + OPEN_BRACKET + CLOSE_BRACKET)


@dataclass(frozen=True, slots=True)
class DialString:
    """The digits of a checked dialled string, and whether a ``+`` led them.

    ``outside_line`` is whether the string starts with the outside-line
    prefix. The dialplan strips the prefix only there, so only then may the
    reading drop it from ``digits``.
    """

    plus: bool
    digits: str
    outside_line: bool = False


def remove_separators(text: str) -> str:
    """Return ``text`` without spaces, dashes and dots."""
    return text.translate(_SEPARATOR_REMOVAL)


def remove_layout(text: str) -> str:
    """Return ``text`` without spaces, dashes, dots and brackets."""
    return text.translate(_LAYOUT_REMOVAL)


def parse_dial_string(
    dialled: str,
    home_country_code: int,
    national_prefix: str,
    home_lead: Callable[[str], bool] | None = None,
    outside_line_prefix: str = "",
) -> DialString:
    """Check the characters of ``dialled`` and return its digits.

    Allowed are ASCII digits, one leading ``+``, spaces, dashes, dots, brackets
    around digits and a leading ``tel:`` scheme. The ``+`` may also follow
    ``outside_line_prefix`` at the start, which is then dropped (``9+44``).
    Asterisk skips a dash when it matches a pattern, so ``-9+44`` reaches a
    check too, but the dialplan leaves its 9 for the trunk. A bracketed
    national prefix such as ``(0)`` is allowed only directly after ``+<home
    country code>``, or after digits that ``home_lead`` accepts (the
    international prefix and the home country code, as in ``0044 (0) 20``),
    and is dropped there. Raises ``InvalidNumber`` for anything else.
    """
    if not isinstance(dialled, str):
        raise TypeError(f"dialled number must be a str, not {type(dialled).__name__}")

    if len(dialled) > MAX_DIALLED_CHARACTERS:
        raise InvalidNumber(
            f"dialled number {quote(dialled)} is too long: "
            f"at most {MAX_DIALLED_CHARACTERS} characters are accepted"
        )

    text = dialled.strip(" ")
    if text[: len(TEL_SCHEME)].lower() == TEL_SCHEME:
        text = text[len(TEL_SCHEME) :]

    outside_line = bool(outside_line_prefix) and text.startswith(outside_line_prefix)
    plus = text.startswith(PLUS)
    if plus:
        text = text[len(PLUS) :]
    elif outside_line:
        head, separator, tail = text.partition(PLUS)
        if separator and remove_separators(head) == outside_line_prefix:
            text, plus, outside_line = tail, True, False

    _check_characters(dialled, text)

    compact = remove_separators(text)
    digits = _remove_brackets(
        dialled, compact, plus, home_country_code, national_prefix, home_lead
    )
    if not digits:
        raise InvalidNumber(f"dialled number {quote(dialled)} contains no digits")

    return DialString(plus=plus, digits=digits, outside_line=outside_line)


def _check_characters(dialled: str, text: str) -> None:
    if not text.translate(_ALLOWED_REMOVAL):
        return

    for character in text:
        if character in _ALLOWED_CHARACTERS:
            continue

        problem = _describe_character(character)
        raise InvalidNumber(
            f"dialled number {quote(dialled)} contains {problem}; only ASCII digits, "
            "spaces, dashes, dots, brackets and one leading '+' are allowed"
        )


def _describe_character(character: str) -> str:
    code = ord(character)
    if code > 127:
        return f"the non-ASCII character {character!r} (U+{code:04X})"

    if code < 32 or code == 127:
        return f"the control character {character!r}"

    if character in FEATURE_CODE_CHARACTERS:
        return f"{character!r}, which marks a feature code, not a number"

    if character.isalpha():
        return f"the letter {character!r}"

    if character == PLUS:
        return "a '+' that is not the first character"

    return f"the character {character!r}"


def _remove_brackets(
    dialled: str,
    compact: str,
    plus: bool,
    home_country_code: int,
    national_prefix: str,
    home_lead: Callable[[str], bool] | None,
) -> str:
    """Drop ``(0)`` after the home country code and the brackets around other digits."""
    if OPEN_BRACKET not in compact and CLOSE_BRACKET not in compact:
        return compact

    trunk_group = OPEN_BRACKET + national_prefix + CLOSE_BRACKET
    home_code = str(home_country_code)
    if national_prefix and plus and compact.startswith(home_code + trunk_group):
        compact = home_code + compact[len(home_code) + len(trunk_group) :]

    # Elsewhere a bracketed 0 may or may not belong to the number (Italian
    # numbers keep their 0 after +39), so it is rejected rather than guessed.
    ambiguous_groups = {OPEN_BRACKET + "0" + CLOSE_BRACKET}
    if national_prefix:
        ambiguous_groups.add(trunk_group)

    digits: list[str] = []
    group_start = None
    lead_dropped = False
    for position, character in enumerate(compact):
        if character == OPEN_BRACKET:
            if group_start is not None:
                raise InvalidNumber(
                    f"dialled number {quote(dialled)} has nested brackets"
                )

            group_start = position

        elif character == CLOSE_BRACKET:
            if group_start is None:
                raise InvalidNumber(
                    f"dialled number {quote(dialled)} has a ')' without a matching '('"
                )

            group = compact[group_start : position + 1]
            if group == OPEN_BRACKET + CLOSE_BRACKET:
                raise InvalidNumber(
                    f"dialled number {quote(dialled)} has empty brackets"
                )

            # The group's own digits are already in ``digits``.
            before = digits[: len(digits) - len(national_prefix)]
            if (group == trunk_group and national_prefix and not plus and not lead_dropped
                    and home_lead is not None and home_lead("".join(before))):
                digits = before
                lead_dropped = True
                group_start = None
                continue

            if group in ambiguous_groups:
                raise InvalidNumber(
                    f"dialled number {quote(dialled)} has {group!r} in a place where "
                    f"it is ambiguous; it is only allowed directly after '+{home_code}' "
                    f"or the international prefix and {home_code}"
                )

            group_start = None

        else:
            digits.append(character)

    if group_start is not None:
        raise InvalidNumber(
            f"dialled number {quote(dialled)} has a '(' that is not closed"
        )

    return "".join(digits)
