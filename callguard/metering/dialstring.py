"""The dialled number inside a Dial event's dialstring, whatever the channel technology.

Asterisk reports the part of ``Dial()``'s argument after the technology:
``gamma/01632960000`` (PJSIP endpoint/number), ``01632960000@gamma``
(number@endpoint, and number@context for Local channels), ``gamma/sip:
01632960000@host``, ``user:secret@host/01632960000`` (IAX2, with
credentials), ``g1/01632960000`` (DAHDI group). Dialstrings can carry
passwords, so only ``masked`` forms are ever logged.
"""

import re

# A dialled number as it can appear in a dialstring: digits with an optional
# leading "+"; "*" and "#" are kept so that the number check can reject them.
_NUMBER = re.compile(r"\+?[0-9*#]{3,}")
_URI_USER = re.compile(r"(?:sips?|tel):([^@;?>]+)", re.IGNORECASE)
_CREDENTIALS = re.compile(r"[^/@:]+:[^/@]*@")


def dialled_number(dialstring: str) -> str | None:
    """Return the number dialled in ``dialstring``, or None when none can be found."""
    if not dialstring:
        return None

    uri = _URI_USER.search(dialstring)
    if uri is not None and _NUMBER.fullmatch(uri.group(1)):
        return uri.group(1)

    # Local channel options follow the last "/": 0044123456@sink/n
    without_credentials = _CREDENTIALS.sub("", dialstring)
    segments = re.split(r"[/@]", without_credentials)
    numbers = [segment for segment in segments if _NUMBER.fullmatch(segment)]
    if not numbers:
        return None
    # An endpoint named with digits (a DAHDI group "g1" is not one) loses to the
    # longer string: the dialled number.
    return max(numbers, key=len)


def masked(dialstring: str) -> str:
    """Return ``dialstring`` with any ``user:secret@`` credentials replaced."""
    return _CREDENTIALS.sub("***@", dialstring)
