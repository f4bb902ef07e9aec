"""The addresses, headers and TLS settings of one Asterisk ARI server."""

import base64
import ssl
from dataclasses import dataclass, field
from urllib.parse import SplitResult, urlencode, urlsplit, urlunsplit

from callguard import __version__
from callguard.urls import mask_url

USER_AGENT = f"callguard/{__version__}"

REST_PATH = "ari/"
EVENTS_PATH = "ari/events"

WEBSOCKET_SCHEMES = {"http": "ws", "https": "wss"}

EXAMPLE_URL = "http://127.0.0.1:8088/"


@dataclass(frozen=True)
class AriEndpoint:
    """The URLs, credentials header and TLS context of one ARI server.

    repr() leaves out the header and the context, so the object is safe to log.
    """

    base_url: str
    rest_base: str
    events_url: str
    username: str
    authorization: str = field(repr=False)
    ssl_context: ssl.SSLContext | None = field(default=None, repr=False)

    @property
    def rest_path(self) -> str:
        """The path of the REST base, for log lines and error messages."""
        return urlsplit(self.rest_base).path


def build_endpoint(
    url: str, username: str, password: str, app: str, ca_file: str | None
) -> AriEndpoint:
    """Validate the settings and derive the REST and events URLs from `url`."""
    parts = _parse_base_url(url)
    _check_credentials(username, password)

    if not app or any(c.isspace() for c in app):
        raise ValueError(
            f"invalid ARI application name {app!r}: use a non-empty name without "
            "spaces, such as 'callguard'"
        )

    base_path = parts.path if parts.path.endswith("/") else parts.path + "/"
    base = SplitResult(parts.scheme, parts.netloc, base_path, "", "")
    events = SplitResult(
        WEBSOCKET_SCHEMES[parts.scheme],
        parts.netloc,
        base_path + EVENTS_PATH,
        urlencode({"app": app, "subscribeAll": "true"}),
        "",
    )

    return AriEndpoint(
        base_url=urlunsplit(base),
        rest_base=urlunsplit(base) + REST_PATH,
        events_url=urlunsplit(events),
        username=username,
        authorization=basic_authorization(username, password),
        ssl_context=_ssl_context(parts.scheme, ca_file),
    )


def basic_authorization(username: str, password: str) -> str:
    """Return the value of an HTTP Basic Authorization header (RFC 7617, UTF-8)."""
    token = base64.b64encode(f"{username}:{password}".encode("utf-8")).decode("ascii")
    return f"Basic {token}"


def _parse_base_url(url: str) -> SplitResult:
    # The URL may contain a password or an api_key, so messages show it masked.
    shown_url = mask_url(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        # urllib's message can quote the user name and password.
        raise ValueError(
            f"invalid ARI URL {shown_url!r}: it has an unbalanced [ or ], or a "
            "character before the path that Unicode NFKC normalization turns into "
            f"/, ?, #, @ or :; use a URL like {EXAMPLE_URL}"
        ) from None

    try:
        parts.port
    except ValueError:
        # urllib's message quotes the text it read as the port, which is part
        # of the password when the password contains "/".
        raise ValueError(
            f"invalid ARI URL {shown_url!r}: the port is not a number from 0 to "
            f"65535; use a URL like {EXAMPLE_URL}"
        ) from None

    if parts.scheme not in WEBSOCKET_SCHEMES:
        raise ValueError(
            f"invalid ARI URL {shown_url!r}: the scheme must be http or https, "
            f"as in {EXAMPLE_URL}"
        )
    if not parts.hostname:
        raise ValueError(
            f"invalid ARI URL {shown_url!r}: the host is missing; use a URL "
            f"like {EXAMPLE_URL}"
        )
    if "@" in parts.netloc:
        raise ValueError(
            f"invalid ARI URL {shown_url!r}: it contains credentials; remove them "
            "and set the ARI username and password options instead"
        )
    if parts.query or parts.fragment:
        raise ValueError(
            f"invalid ARI URL {shown_url!r}: it has a query or fragment; give the "
            f"base URL of Asterisk's HTTP server, like {EXAMPLE_URL}"
        )
    if parts.path.rstrip("/").endswith("/ari"):
        raise ValueError(
            f"invalid ARI URL {shown_url!r}: it ends in /ari, which the client appends "
            f"itself; give the base URL of Asterisk's HTTP server, like {EXAMPLE_URL}"
        )

    return parts


def _check_credentials(username: str, password: str) -> None:
    if not username:
        raise ValueError(
            "invalid ARI username: it is empty; use the user name of a section in "
            "ari.conf"
        )
    if ":" in username:
        # What follows the ":" is often the password, so the name is not quoted.
        raise ValueError(
            "invalid ARI username: it contains ':', which ends the user name in HTTP "
            "Basic authentication; use the user name of a section in ari.conf"
        )
    if not password:
        raise ValueError(
            f"the ARI password for user {username!r} is empty; set the password "
            "given for that user in ari.conf"
        )
    for name, value in (("username", username), ("password", password)):
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ValueError(
                f"the ARI {name} contains a control character; remove it"
            )


def _ssl_context(scheme: str, ca_file: str | None) -> ssl.SSLContext | None:
    if scheme == "http":
        if ca_file is not None:
            raise ValueError(
                f"ca_file {ca_file!r} is set but the ARI URL uses http://; use an "
                "https:// URL or drop ca_file"
            )
        return None

    # Verification stays on, and ca_file adds to the system's trusted CAs.
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"cannot load the ARI CA bundle ca_file={ca_file!r}: {exc}; give a "
                "readable PEM file of CA certificates"
            ) from None
    return context
