"""Text for log lines, alerts and command output: counts, and escaped caller data."""

import re


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """Return ``count`` with the noun that fits it: ``1 trunk``, ``2 trunks``."""
    noun = singular if count == 1 else plural_form or singular + "s"
    return f"{count} {noun}"


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


def storable(text: str) -> str:
    """Return ``text`` with each NUL character written as ``\\x00``.

    PostgreSQL text cannot contain NUL, so peer data that contains one would fail
    the whole batch it is written in.
    """
    if "\x00" not in text:
        return text
    return text.replace("\x00", "\\x00")


def escape_lines(text: str, separator: str = "\n") -> str:
    """Escape control characters in each line of ``text``, joined by ``separator``."""
    return separator.join(escape_controls(line) for line in text.split("\n"))


def escape_log_message(text: str) -> str:
    """Escape control characters in a log message, keeping its line breaks.

    Each line after the first is indented, so that text a caller sent cannot
    pass for a log record of its own.
    """
    return escape_lines(text, "\n    ")


def invalid_utf8(error: UnicodeDecodeError) -> tuple[int, str]:
    """Return the line (from 1) of the byte that ``error`` found not UTF-8, and a
    message that names the byte, its column and the fix.

    Lines and columns count in the text that was decoded, which for the
    ``utf-8-sig`` codec starts after a byte order mark.
    """
    data = error.object
    line_start = data.rfind(b"\n", 0, error.start) + 1
    line = data.count(b"\n", 0, error.start) + 1
    return line, (f"byte {data[error.start]:#04x} at column {error.start - line_start + 1} "
                  "is not valid UTF-8; save the file as UTF-8")
