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
IAX2 = "IAX2"


def dialled_number(dialstring: str, technology: str = "") -> str | None:
    """Return the number dialled in ``dialstring``, or None when none can be found.

    The number's place follows from the dialstring's form and the channel's
    ``technology`` (``PJSIP``, ``IAX2``), never from how it looks: an endpoint
    may be named after the account's own number, as in
    ``09098790000@441632960000``.
    """
    if not dialstring:
        return None

    uri = _URI_USER.search(dialstring)
    if uri is not None and _NUMBER.fullmatch(uri.group(1)):
        return uri.group(1)

    without_credentials = _CREDENTIALS.sub("", dialstring)
    if technology.upper() == IAX2:
        # IAX2/[user[:secret]@]peer/exten: a user before the peer, not a number.
        first, _, rest = without_credentials.partition("/")
        without_credentials = first.rpartition("@")[2] + "/" + rest if rest else first
    first, slash, rest = without_credentials.partition("/")
    if "@" in first:
        # number@endpoint (PJSIP) or number@context/options (Local).
        candidate = first.partition("@")[0]
    elif slash:
        # endpoint/number, host/number@context (IAX2) or group/number (DAHDI).
        candidate = rest.partition("/")[0].partition("@")[0]
    else:
        # A bare endpoint, dialled at its own contact.
        return None
    return candidate if _NUMBER.fullmatch(candidate) else None


def dialled_endpoint(resource: str) -> str:
    """Return the endpoint of a Dial() resource: gamma in 999@gamma, gamma/999 or
    user@gamma/999."""
    first, _, _ = resource.partition("/")
    return first.partition("@")[2] if "@" in first else first


def masked(dialstring: str) -> str:
    """Return ``dialstring`` with any ``user:secret@`` credentials replaced."""
    return _CREDENTIALS.sub("***@", dialstring)
