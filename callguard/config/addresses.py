"""Parsers for setting values that name places: sockets, networks, URLs and files."""

import ipaddress
import os
import re
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from callguard.config.categories import split_list
from callguard.config.errors import InvalidValue
from callguard.urls import mask_url

LISTEN_PATTERN = re.compile(
    r"(?:\[(?P<ipv6>[^\]]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d+)"
)
LISTEN_EXAMPLE = "127.0.0.1:4573 or [::1]:4573"

HTTP_SCHEMES = ("http", "https")
ARI_PATH_SUFFIX = "/ari"

SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
POSTGRESQL_DRIVER = "postgresql+psycopg"
# PostgreSQL URL schemes that name no driver, where callguard needs psycopg 3.
POSTGRESQL_SCHEMES = ("postgres", "postgresql")
SQLITE_MEMORY = ":memory:"
DATABASE_EXAMPLE = (
    "sqlite:////var/lib/callguard/callguard.db or postgresql+psycopg://user@host/db"
)

EMAIL_PATTERN = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+")


def host_port(host: str, port: int) -> str:
    """Return ``host:port`` as the config writes it, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen_address(text: str) -> tuple[str, int]:
    """Parse ``host:port`` where host is an IP address, bracketed for IPv6."""
    match = LISTEN_PATTERN.fullmatch(text)
    if match is None:
        raise InvalidValue(
            f"{text!r} is not an address and port; write it like {LISTEN_EXAMPLE}"
        )

    host = match["ipv6"] or match["host"]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise InvalidValue(
            f"{text!r} does not start with an IP address; "
            f"write it like {LISTEN_EXAMPLE}"
        ) from None

    if match["host"] and address.version == 6:
        raise InvalidValue(
            f"{text!r} needs brackets around the IPv6 address, like [::1]:4573"
        )

    port = int(match["port"])
    if not 1 <= port <= 65535:
        raise InvalidValue(f"{text!r} has port {port}; write a port from 1 to 65535")
    return str(address), port


def parse_networks(
    text: str,
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """Parse a comma list of one or more networks in CIDR form, host bits clear."""
    items = split_list(text)
    if not items:
        raise InvalidValue(
            f"{text!r} lets no client connect; list networks like 127.0.0.1/32, ::1/128"
        )

    networks = []
    messages = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            messages.append(
                f"{item!r} is not a network ({exc}); write it like 192.0.2.0/24 "
                "with the host bits zero"
            )

    if messages:
        raise InvalidValue(*messages)
    return tuple(networks)


def parse_http_url(text: str) -> str:
    """Parse the base URL of Asterisk's HTTP server and return it ending in ``/``."""
    # The URL may contain a password, and these messages reach logs and the audit trail.
    quoted_url = repr(mask_url(text))
    parts = split_url(text, quoted_url, "http://127.0.0.1:8088/")
    if parts.scheme.lower() not in HTTP_SCHEMES or not parts.hostname:
        raise InvalidValue(
            f"{quoted_url} is not an http or https URL; "
            "write it like http://127.0.0.1:8088/"
        )

    try:
        parts.port
    except ValueError:
        raise InvalidValue(
            f"{quoted_url} has an invalid port; write it like http://127.0.0.1:8088/"
        ) from None

    if parts.path.rstrip("/").endswith(ARI_PATH_SUFFIX):
        raise InvalidValue(
            f"{quoted_url} ends in {ARI_PATH_SUFFIX}; write the server's base URL, "
            "like http://127.0.0.1:8088/"
        )

    if parts.query or parts.fragment or parts.username or parts.password:
        raise InvalidValue(
            f"{quoted_url} has a query, fragment or credentials; write only scheme, "
            "host, port and path, and put the password in password_file"
        )
    return text if text.endswith("/") else f"{text}/"


def split_url(text: str, quoted_url: str, example: str) -> SplitResult:
    """Split ``text`` with ``urlsplit``, raising ``InvalidValue`` that quotes ``quoted_url``.

    urllib's own message can quote the user name and password, so it is left out.
    """
    try:
        return urlsplit(text)
    except ValueError:
        raise InvalidValue(
            f"{quoted_url} is not a valid URL because it has an unbalanced [ or ], or "
            "a character before the path that Unicode NFKC normalization turns into "
            f"/, ?, #, @ or :; write it like {example}"
        ) from None


def parse_database_url(text: str, base_dir: Path) -> str:
    """Parse a SQLAlchemy URL for SQLite or PostgreSQL with psycopg 3.

    A relative SQLite path is resolved against ``base_dir``. An in-memory SQLite
    database is rejected because it would lose all recorded spend on restart.
    Error messages show the URL without its password.
    """
    # The URL may contain a password, and these messages reach logs and the audit trail.
    quoted_url = repr(mask_url(text))
    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        # SQLAlchemy raises ValueError for a port that is not a number.
        raise InvalidValue(
            f"{quoted_url} is not a database URL; write it like {DATABASE_EXAMPLE}"
        ) from None

    if url.drivername in SQLITE_DRIVERS:
        return _resolve_sqlite_url(text, url, base_dir)

    if url.drivername in POSTGRESQL_SCHEMES:
        raise InvalidValue(
            f"{quoted_url} uses the unsupported driver {url.drivername!r}; callguard "
            f"connects to PostgreSQL with psycopg 3, so write {POSTGRESQL_DRIVER}:// "
            f"in place of {url.drivername}://, like {POSTGRESQL_DRIVER}://user@host/db"
        )

    if url.drivername != POSTGRESQL_DRIVER:
        raise InvalidValue(
            f"{quoted_url} uses the unsupported driver {url.drivername!r}; "
            f"write it like {DATABASE_EXAMPLE}"
        )

    if not url.database:
        raise InvalidValue(
            f"{quoted_url} names no database; write it like {DATABASE_EXAMPLE}"
        )
    return text


def parse_emails(text: str) -> tuple[str, ...]:
    """Parse a comma list of e-mail addresses, checked only for the form x@y."""
    addresses = split_list(text)
    messages = [
        f"{item!r} is not an e-mail address; write it like noc@example.com"
        for item in addresses
        if not EMAIL_PATTERN.fullmatch(item)
    ]
    if messages:
        raise InvalidValue(*messages)
    return tuple(addresses)


def resolve_path(text: str, base_dir: Path) -> Path:
    """Return ``text`` as a path, resolved against ``base_dir`` when relative."""
    if not text:
        raise InvalidValue(
            f"{text!r} is not a path; write it like /run/callguard/callguard.sock"
        )
    return base_dir / text


def parse_existing_file(text: str, base_dir: Path) -> Path | None:
    """Resolve a path as ``resolve_path`` does and check that it is a readable file.

    Empty means no file.
    """
    if not text:
        return None

    path = resolve_path(text, base_dir)
    try:
        found = path.is_file()
    except OSError as exc:
        # is_file() returns False only for a missing path. A folder that this
        # user may not search, or a name that is too long, raises instead.
        raise InvalidValue(
            f"{text!r} cannot be checked ({exc.strerror} at {path}); correct the path, "
            "or let the callguard user search every folder above the file"
        ) from None
    if not found:
        raise InvalidValue(
            f"{text!r} is not a file (looked for {path}); create it or correct the path"
        )

    if not os.access(path, os.R_OK):
        raise InvalidValue(
            f"{text!r} is not readable (at {path}); let the callguard user read it"
        )
    return path


def _resolve_sqlite_url(text: str, url: URL, base_dir: Path) -> str:
    if not url.database or url.database == SQLITE_MEMORY:
        raise InvalidValue(
            f"{mask_url(text)!r} is an in-memory database that loses all spend on restart; "
            f"write a file path like {DATABASE_EXAMPLE.split(' or ')[0]}"
        )

    path = Path(url.database)
    if path.is_absolute():
        return text
    return url.set(database=str(base_dir / path)).render_as_string(hide_password=False)
