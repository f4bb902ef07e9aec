"""The keys each section accepts, with their parsers and their defaults as text.

Each default is the text a user would write in the file and passes through the same
parser as that text, so a default can never be in a form the parser rejects.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from callguard import eventloop
from callguard.config import addresses, values
from callguard.config.categories import parse_categories
from callguard.config.errors import InvalidValue
from callguard.config.offenders import OFFENDER_FIELDS
from callguard.config.hours import parse_business_hours
from callguard.config.ranges import parse_number_ranges

ALWAYS_EMERGENCY_NUMBERS = ("999", "112")
FAIL_POLICIES = ("allow", "deny")
LOG_LEVELS = ("debug", "info", "warning", "error")
# Values of log_calls: the checks that log a line each at INFO. The others
# log theirs at DEBUG.
LOG_CALLS = ("all", "denied")
# Limits of duration keys, written as the sample config writes them, because
# error messages quote them.
MAX_TIMEOUT = "30s"
# Velocity counts live in memory only, so a longer window would promise more
# than a restart keeps.
MAX_REPEAT_WINDOW = "24h"
# A reservation's start and end are datetimes, which cannot go past the year
# 9999 or before the year 1, so a longer one is rejected.
MAX_RESERVATION = "36500d"


@dataclass(frozen=True)
class Context:
    """Inputs of a parser besides the text: the config file's folder and home region."""

    base_dir: Path
    home_country: str


@dataclass(frozen=True)
class Field:
    """One key of a section: its parser and its default as unparsed text."""

    parse: Callable[[str, Context], Any]
    default: str = ""


def parse_zone(text: str) -> ZoneInfo:
    """Parse an IANA time zone name such as ``Europe/London``."""
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidValue(
            f"{text!r} is not a time zone; write an IANA name like Europe/London"
        ) from None


def parse_optional_zone(text: str) -> ZoneInfo | None:
    """Parse a time zone as ``parse_zone`` does; empty means the general one."""
    return parse_zone(text) if text else None


def parse_ari_username(text: str) -> str:
    """Parse the ARI user name, one word without ":", which ends it in HTTP Basic auth."""
    if ":" in text:
        # What follows the ":" is often the password, so the value is not quoted.
        raise InvalidValue(
            "contains ':', which ends the user name in HTTP Basic authentication; "
            "write the user name alone, like callguard, and put the password in "
            "password_file"
        )
    return values.parse_name(text, "ARI user name", "callguard")


def _ignore_context(parse: Callable[[str], Any]) -> Callable[[str, Context], Any]:
    return lambda text, context: parse(text)


def _in_base_dir(
    parse: Callable[[str, Path], Any],
) -> Callable[[str, Context], Any]:
    return lambda text, context: parse(text, context.base_dir)


def _numbers(text: str, context: Context) -> Any:
    return parse_number_ranges(text, context.home_country)


def _parse_event_loop(text: str) -> str:
    """Parse auto, uvloop or asyncio and return the loop it means: uvloop or asyncio."""
    choice = values.parse_choice(text, eventloop.CHOICES)
    try:
        return eventloop.resolve(choice)
    except eventloop.LoopUnavailable as exc:
        raise InvalidValue(str(exc)) from None


GENERAL_FIELDS: dict[str, Field] = {
    "database": Field(
        _in_base_dir(addresses.parse_database_url),
        "sqlite:////var/lib/callguard/callguard.db",
    ),
    "home_country": Field(_ignore_context(values.parse_region), "GB"),
    "timezone": Field(_ignore_context(parse_zone), "Europe/London"),
    "currency": Field(_ignore_context(values.parse_currency), "GBP"),
    "fastagi_listen": Field(
        _ignore_context(addresses.parse_listen_address), "127.0.0.1:4573"
    ),
    "allowed_clients": Field(
        _ignore_context(addresses.parse_networks), "127.0.0.1/32, ::1/128"
    ),
    "outside_line_prefix": Field(_ignore_context(values.parse_outside_line_prefix)),
    "emergency_numbers": Field(
        lambda text, context: values.parse_emergency_numbers(
            text, ALWAYS_EMERGENCY_NUMBERS
        ),
        "999, 112",
    ),
    "fail_policy": Field(
        lambda text, context: values.parse_choice(text, FAIL_POLICIES), "deny"
    ),
    "decision_timeout": Field(
        lambda text, context: values.parse_timeout(text, MAX_TIMEOUT), "1s"
    ),
    "prefixes": Field(_in_base_dir(addresses.parse_existing_file)),
    "reservation_seconds": Field(
        lambda text, context: values.parse_window(text, MAX_RESERVATION), "120"
    ),
    "control_socket": Field(
        _in_base_dir(addresses.resolve_path), "/run/callguard/callguard.sock"
    ),
    "log_level": Field(
        lambda text, context: values.parse_choice(text, LOG_LEVELS), "info"
    ),
    "log_calls": Field(
        lambda text, context: values.parse_choice(text, LOG_CALLS), "denied"
    ),
    "node_name": Field(_ignore_context(values.parse_node_name)),
    "event_loop": Field(lambda text, context: _parse_event_loop(text), "auto"),
}


ARI_FIELDS: dict[str, Field] = {
    "enabled": Field(_ignore_context(values.parse_bool), "yes"),
    "url": Field(_ignore_context(addresses.parse_http_url), "http://127.0.0.1:8088/"),
    "username": Field(_ignore_context(parse_ari_username), "callguard"),
    "password_file": Field(_in_base_dir(addresses.parse_existing_file)),
    "app": Field(
        lambda text, context: values.parse_name(text, "ARI application", "callguard"),
        "callguard",
    ),
    "ca_file": Field(_in_base_dir(addresses.parse_existing_file)),
    "ping_timeout": Field(
        lambda text, context: values.parse_timeout(text, MAX_TIMEOUT), "30s"
    ),
}

TRUNK_FIELDS: dict[str, Field] = {
    "bar": Field(lambda text, context: parse_categories(text, barring=True)),
    "daily_limit": Field(_ignore_context(values.parse_limit)),
    "weekly_limit": Field(_ignore_context(values.parse_limit)),
    "warn_percent": Field(_ignore_context(values.parse_percentages), "80"),
    "max_concurrent_calls": Field(_ignore_context(values.parse_optional_count)),
    "max_call_seconds": Field(_ignore_context(values.parse_optional_seconds)),
    "channel_pattern": Field(lambda text, context: text or None),
    "rates": Field(_in_base_dir(addresses.parse_existing_file)),
    "default_rate": Field(_ignore_context(values.parse_default_rate)),
    "international_allow": Field(_ignore_context(values.parse_regions)),
    "numbers": Field(_numbers),
    "opt_out": Field(_numbers),
    "opt_in": Field(_numbers),
    "timezone": Field(_ignore_context(parse_optional_zone)),
    "notify": Field(_ignore_context(addresses.parse_emails)),
    "max_calls_per_minute": Field(_ignore_context(values.parse_optional_count)),
    "max_destinations_per_hour": Field(_ignore_context(values.parse_optional_count)),
    "max_repeat_calls": Field(_ignore_context(values.parse_optional_count)),
    "repeat_window": Field(
        lambda text, context: values.parse_window(text, MAX_REPEAT_WINDOW),
        "1h",
    ),
    "bar_out_of_hours": Field(
        lambda text, context: parse_categories(text, barring=True)
    ),
    "business_hours": Field(_ignore_context(parse_business_hours)),
}

TRUNK_FIELDS.update(
    {key: Field(parse, default) for key, (parse, default) in OFFENDER_FIELDS.items()}
)

NUMBER_FIELDS: dict[str, Field] = {
    "trunk": Field(lambda text, context: text or None),
    "allow": Field(lambda text, context: parse_categories(text, barring=False)),
    "bar": Field(lambda text, context: parse_categories(text, barring=True)),
}
