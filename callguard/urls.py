"""URLs made safe to print: passwords and secret query values replaced by ``***``.

Every message that can quote a configured URL (ARI, webhook, database) or an
SMTP host passes it through ``mask_url`` first, because those messages reach
the journal, the audit trail and callguardctl's output.
"""

import re

from sqlalchemy.engine import URL

MASK = "***"

# The scheme and "://" of a URL; the authority starts after it.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
# A user name, ended by the ":" before a password. "@" may occur in it, as the
# WHATWG URL standard allows, so that "us@er:pw@host" masks "pw".
_USER = re.compile(r"[^:/?#\[\]\s]*:")
# A port after "host:", which is not a password.
_PORT = re.compile(r"\d*(?=[/?#\s'\",)]|$)")
_WHITESPACE = re.compile(r"\s")
# A query parameter whose name suggests a secret, with its value in group 2:
# password= and sslpassword= of libpq, token=, key= and api_key= of webhook
# receivers, sig= of signed URLs, code= of Azure Functions. libpq's sslkey=,
# a file name, is not one.
_SECRET_PARAMETER = re.compile(
    r"([?&](?:[^=&#\s]*(?:pass|pwd|secret|token|credential)[^=&#\s]*"
    r"|(?:[^=&#\s]*[_-])?(?:api)?key|(?:[^=&#\s]*[_-])?sig(?:nature)?"
    r"|code|auth|authorization)=)"
    r"([^&#\s]*)",
    re.IGNORECASE,
)

# The path of a URL other than a database's, after its authority. Webhook
# receivers such as chat services take their token as a path segment. A
# database URL's path is a file or database name.
_WEB_PATH = re.compile(
    r"(\b(?!sqlite|postgres)[A-Za-z][A-Za-z0-9+.-]*://[^/\s'\"?#]*)(/[^\s'\"?#]*)",
    re.IGNORECASE,
)
# A path segment read as a token: long, with letters and digits unless very
# long. An Asterisk unique ID such as 1796397405.12345 has no letter.
_TOKEN_SEGMENT = re.compile(r"(?=[^/]*\d)(?=[^/]*[A-Za-z])[^/]{16,}|[^/]{24,}")


def mask_url(text: str) -> str:
    """Return ``text`` with every URL password and secret query value masked.

    ``text`` may be one URL or a message that contains URLs. In
    ``scheme://user:password@host`` the password is replaced by ``***`` and the
    user name is kept. The password is masked up to the last "@" before a
    space, so one with "@", "/", "?" or "#" unescaped is masked whole, but a
    path or query with "@" in it is masked as well. The values of query
    parameters named like a secret are masked too: names that contain pass,
    pwd, secret, token or credential, names that are or end in key, apikey,
    sig or signature, and code, auth and authorization. In the path of a URL
    other than a database URL, a segment of 16 characters or more that has
    letters and digits, or of 24 or more, is masked as a token. A text
    without "://" that is one word, such as an SMTP host written as
    ``user:password@mail.example.com``, is read as an authority.
    Unlike SQLAlchemy's ``render_as_string``, the rest of the text is kept as
    written, so URLs that no parser accepts are masked as well.
    """
    if "://" in text:
        starts = [match.end() for match in _SCHEME.finditer(text)]
    elif text and not any(character.isspace() for character in text):
        starts = [0]
    else:
        starts = []

    pieces = []
    done = 0
    for start in starts:
        if start < done:
            continue
        password = _password_span(text, start)
        if password is None:
            continue
        pieces.append(text[done : password[0]])
        pieces.append(MASK)
        done = password[1]
    pieces.append(text[done:])
    masked = "".join(pieces)
    if "/" in masked:
        masked = _WEB_PATH.sub(_mask_path, masked)
    return _SECRET_PARAMETER.sub(rf"\g<1>{MASK}", masked)


def _mask_path(match: re.Match) -> str:
    """Return the URL in ``match`` with the path segments that look like tokens masked."""
    authority, path = match.groups()
    return authority + _TOKEN_SEGMENT.sub(MASK, path)


def _password_span(text: str, start: int) -> tuple[int, int] | None:
    """Return the start and end of the password in the authority at ``start``."""
    user = _USER.match(text, start)
    if user is None:
        return None

    begin = user.end()
    line_end = text.find("\n", begin)
    line_end = len(text) if line_end < 0 else line_end
    if _PORT.match(text, begin, line_end):
        return None

    # The password ends at the last "@" of the word that contains the first
    # one, so that "@", "/", "?" and "#" in a password are masked too.
    first_at = text.find("@", begin, line_end)
    if first_at < 0:
        return None
    word_end = _WHITESPACE.search(text, first_at, line_end)
    last_at = text.rfind("@", first_at, word_end.start() if word_end else line_end)
    return begin, last_at


def url_secrets(url: URL) -> tuple[str, ...]:
    """Return the non-empty passwords in ``url``: its own and its password parameters."""
    secrets = [url.password] if isinstance(url.password, str) and url.password else []
    for name, value in url.query.items():
        if "password" not in name.lower():
            continue
        values = value if isinstance(value, tuple) else (value,)
        secrets.extend(text for text in values if text)
    return tuple(secrets)
