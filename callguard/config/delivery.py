"""The ``[smtp]`` and ``[webhook]`` sections, which set how alerts are delivered.

Either section may be left out. ``[smtp]`` without ``host`` and ``[webhook]``
without ``url`` turn that way of sending off, but their other keys are still
checked.
"""

import ipaddress
import re
from urllib.parse import urlsplit

from callguard.config import addresses, values
from callguard.config.errors import InvalidValue
from callguard.config.fields import Context, Field
from callguard.config.ini import Section
from callguard.config.model import SmtpConfig, WebhookConfig
from callguard.config.sections import Reader, SectionValues
from callguard.urls import mask_url

SECURITY_NONE = "none"
SECURITY_STARTTLS = "starttls"
SECURITY_TLS = "tls"
SMTP_SECURITY = (SECURITY_NONE, SECURITY_STARTTLS, SECURITY_TLS)
SMTP_PORT = 25
SMTPS_PORT = 465  # implicit TLS, RFC 8314

# Limits as the sample config writes them, because error messages quote them.
MAX_SEND_TIMEOUT = "300s"
MAX_GIVE_UP = "24h"
LOCALHOST = "localhost"

# RFC 1123 host names: dot-separated labels of letters, digits and inner hyphens.
HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAX_HOST_LENGTH = 253
HOST_EXAMPLE = "mail.example.com or 127.0.0.1"
WEBHOOK_EXAMPLE = "https://hooks.example.com/callguard"


def parse_host(text: str) -> str | None:
    """Parse a host name or IP address without port; empty means none."""
    if not text:
        return None

    # A host written with a login, as user:password@host, is shown masked.
    quoted_host = repr(mask_url(text))
    if "://" in text or "/" in text:
        raise InvalidValue(
            f"{quoted_host} is not a host name; write only the host, like {HOST_EXAMPLE}"
        )

    if "@" in text:
        raise InvalidValue(
            f"{quoted_host} contains a user name or password; write the host alone, "
            f"like {HOST_EXAMPLE}, and set username and password_file"
        )

    try:
        return str(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass

    name = text.rstrip(".")
    labels = name.split(".")
    if ":" in text:
        raise InvalidValue(
            f"{quoted_host} contains a port; write the host alone, like {HOST_EXAMPLE}, "
            "and set port ="
        )
    valid_labels = all(HOST_LABEL.fullmatch(label) for label in labels)
    if len(name) > MAX_HOST_LENGTH or not valid_labels:
        raise InvalidValue(f"{quoted_host} is not a host name; write it like {HOST_EXAMPLE}")
    return name


def parse_optional_port(text: str) -> int | None:
    """Parse a TCP port from 1 to 65535; empty means the default of the protocol."""
    if not text:
        return None

    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise InvalidValue(f"{text!r} is not a port; write a number from 1 to 65535")
    return int(text)


def parse_email(text: str) -> str | None:
    """Parse one e-mail address, checked only for the form x@y; empty means none."""
    if not text:
        return None

    if not addresses.EMAIL_PATTERN.fullmatch(text):
        raise InvalidValue(
            f"{text!r} is not an e-mail address; write it like callguard@example.com"
        )
    return text


def parse_user_name(text: str) -> str | None:
    """Parse an SMTP user name without spaces or control characters; empty is None."""
    if not text:
        return None

    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise InvalidValue(
            f"{text!r} is not a valid user name; write it without spaces or control "
            "characters"
        )
    return text


def parse_webhook_url(text: str) -> str | None:
    """Parse the http or https URL that alerts are posted to; empty means none.

    A query is allowed, because some receivers take a token there. Credentials
    and fragments are not, because a receiver checks the signature instead.
    """
    if not text:
        return None

    # Messages show the URL without its password or query tokens.
    quoted_url = repr(mask_url(text))
    parts = addresses.split_url(text, quoted_url, WEBHOOK_EXAMPLE)
    if parts.scheme.lower() not in addresses.HTTP_SCHEMES or not parts.hostname:
        raise InvalidValue(
            f"{quoted_url} is not an http or https URL; write it like {WEBHOOK_EXAMPLE}"
        )

    try:
        parts.port
    except ValueError:
        raise InvalidValue(
            f"{quoted_url} has an invalid port; write it like {WEBHOOK_EXAMPLE}"
        ) from None

    if parts.username or parts.password or parts.fragment:
        raise InvalidValue(
            f"{quoted_url} has credentials or a fragment; write only scheme, host, "
            "port, path and query, and let the receiver check the signature made "
            "with secret_file"
        )
    return text


def _timeout(text: str, context: Context) -> float:
    return values.parse_timeout(text, MAX_SEND_TIMEOUT)


def _give_up(text: str, context: Context) -> float:
    return values.parse_timeout(text, MAX_GIVE_UP)


def _file(text: str, context: Context):
    return addresses.parse_existing_file(text, context.base_dir)


SMTP_FIELDS: dict[str, Field] = {
    "host": Field(lambda text, context: parse_host(text)),
    "port": Field(lambda text, context: parse_optional_port(text)),
    "security": Field(
        lambda text, context: values.parse_choice(text, SMTP_SECURITY),
        SECURITY_STARTTLS,
    ),
    "username": Field(lambda text, context: parse_user_name(text)),
    "password_file": Field(_file),
    "from": Field(lambda text, context: parse_email(text)),
    "to": Field(lambda text, context: addresses.parse_emails(text)),
    "timeout": Field(_timeout, "10s"),
    "ca_file": Field(_file),
    "give_up_after": Field(_give_up, "1h"),
}

WEBHOOK_FIELDS: dict[str, Field] = {
    "url": Field(lambda text, context: parse_webhook_url(text)),
    "secret_file": Field(_file),
    "timeout": Field(_timeout, "10s"),
    "ca_file": Field(_file),
    "give_up_after": Field(_give_up, "1h"),
}


def read_smtp(section: Section, reader: Reader, context: Context) -> SmtpConfig | None:
    """Build ``[smtp]``; None when ``host`` is unset or the section is invalid."""
    result = reader.read(section, SMTP_FIELDS, context)
    found = result.values
    if found.get("host") is None:
        return None

    valid = result.valid
    for key, hint in (
        ("from", "the sender address of callguard's alerts"),
        ("to", "the addresses that receive every alert"),
    ):
        if not found.get(key) and key not in result.failed:
            reader.report(
                result.lines.get(key, section.line),
                section.header,
                key,
                f"missing; set {key} = ADDRESS, {hint}",
            )
            valid = False

    valid = _check_login(section, result, reader) and valid
    valid = _check_tls(section, result, reader) and valid
    if not valid:
        return None

    port = found.pop("port")
    if port is None:
        port = SMTPS_PORT if found["security"] == SECURITY_TLS else SMTP_PORT
    return SmtpConfig(port=port, sender=found.pop("from"), **found)


def read_webhook(
    section: Section, reader: Reader, context: Context
) -> WebhookConfig | None:
    """Build ``[webhook]``; None when ``url`` is unset or the section is invalid."""
    result = reader.read(section, WEBHOOK_FIELDS, context)
    found = result.values
    if found.get("url") is None:
        return None

    valid = result.valid
    plain_http = urlsplit(found["url"]).scheme.lower() == "http"
    if plain_http and found.get("ca_file") is not None:
        reader.report(
            result.lines["ca_file"],
            section.header,
            "ca_file",
            "is set but url uses http://, which has no certificate to check; use "
            "an https:// url or remove ca_file",
        )
        valid = False

    return WebhookConfig(**found) if valid else None


def _check_login(section: Section, result: SectionValues, reader: Reader) -> bool:
    found, lines = result.values, result.lines
    if {"username", "password_file"} & result.failed:
        return False  # the invalid value is reported already

    username, password_file = found["username"], found["password_file"]
    if (username is None) != (password_file is None):
        key = "password_file" if username is not None else "username"
        reader.report(
            lines.get("username", lines.get("password_file", section.line)),
            section.header,
            key,
            "missing; set both username and password_file to log in, or neither",
        )
        return False

    loopback = _is_loopback(found["host"])
    clear_text = found.get("security") == SECURITY_NONE
    if username is not None and clear_text and not loopback:
        reader.report(
            lines.get("security", lines["username"]),
            section.header,
            "security",
            f"is none, so the password would cross the network in clear text to "
            f"{found['host']}; set security = starttls or tls",
        )
        return False
    return True


def _check_tls(section: Section, result: SectionValues, reader: Reader) -> bool:
    found = result.values
    if found.get("security") == SECURITY_NONE and found.get("ca_file") is not None:
        reader.report(
            result.lines["ca_file"],
            section.header,
            "ca_file",
            "is set but security = none uses no TLS; set security = starttls or "
            "tls, or remove ca_file",
        )
        return False
    return True


def _is_loopback(host: str) -> bool:
    if host == LOCALHOST:
        return True

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
