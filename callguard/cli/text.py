"""Text from calls and peers made safe to print on an operator's terminal."""

import re

# C0 controls (ESC, CR, LF, TAB, BEL, ...), DEL and the C1 range, which a
# terminal acts on instead of displaying. The Unicode line and paragraph separators
# and the bidirectional controls are escaped too, because they can break a
# line or reorder the digits of a number as shown.
_UNSAFE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]"
)


def escape_controls(value: object) -> str:
    """Return ``str(value)`` with each control character written as ``\\x1b`` or ``\\u202e``.

    Other characters, ordinary Unicode included, are kept as they are.
    """
    return _UNSAFE.sub(_escape, str(value))


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}"
