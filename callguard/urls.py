"""Database URLs made safe to print: every password replaced by ``***``."""

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"

# user:password@ in a URL that SQLAlchemy cannot parse.
_PASSWORD_IN_URL = re.compile(r"(://[^:/@]*:)[^@]*@")
# A query parameter whose name contains "password" (password=, sslpassword=), whatever
# the URL's form; libpq and psycopg accept both.
_PASSWORD_PARAMETER = re.compile(r"([?&][^=&#]*password[^=&#]*=)[^&#]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """Return ``url`` with its password and any password query parameter masked.

    A URL that SQLAlchemy cannot parse is masked by pattern instead, so error
    messages about such a URL can use it too.
    """
    try:
        masked = make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        masked = _PASSWORD_IN_URL.sub(rf"\g<1>{MASK}@", url)
    return _PASSWORD_PARAMETER.sub(rf"\g<1>{MASK}", masked)


def url_secrets(url: URL) -> tuple[str, ...]:
    """Return the non-empty passwords in ``url``: its own and its password parameters."""
    secrets = [url.password] if isinstance(url.password, str) and url.password else []
    for name, value in url.query.items():
        if "password" not in name.lower():
            continue
        values = value if isinstance(value, tuple) else (value,)
        secrets.extend(text for text in values if text)
    return tuple(secrets)
