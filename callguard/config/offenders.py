"""Trunk keys of offender blocking: who is counted, how many barred attempts ban,
and for how long.

The parsers here import nothing from ``values`` so that ``model`` can import
``OffenderSettings`` without an import cycle.
"""

import ipaddress
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from callguard.config.categories import split_list
from callguard.config.durations import format_duration, parse_signed_seconds
from callguard.config.errors import InvalidValue
from callguard.config.ranges import NumberRanges, parse_number_ranges

# The identities an offender can be counted and blocked by; the same strings are
# the ``key_type`` of a stored block.
KEY_ENDPOINT = "endpoint"
KEY_CALLER = "caller"
KEY_ACCOUNTCODE = "accountcode"
KEY_SOURCE = "source"
OFFENDER_KEYS = (KEY_ENDPOINT, KEY_CALLER, KEY_ACCOUNTCODE, KEY_SOURCE)

BAN_DURATION_EXAMPLES = "90s, 10m, 1h, 2d, 1w or 600 (seconds)"
MAX_BAN_AFTER = 1000
MAX_BAN_FACTOR = Decimal(100)
# The maximum ban_window, ban_time and ban_max_time, as for callguardctl block
# --for. A block's expiry is a datetime, which cannot go past the year 9999.
MAX_BAN_DURATION = "36500d"
MAX_BAN_SECONDS = 36500 * 86400

DEFAULT_BAN_AFTER = 3
DEFAULT_BAN_WINDOW = 600
DEFAULT_BAN_TIME = 3600
DEFAULT_BAN_TIME_FACTOR = Decimal(2)
DEFAULT_BAN_MAX_TIME = 604800


@dataclass(frozen=True)
class BanIgnore:
    """Keys never blocked: names, or numbers for ``caller``, or networks for ``source``."""

    names: frozenset[str] = frozenset()
    numbers: NumberRanges = field(default_factory=NumberRanges)
    networks: tuple[IPv4Network | IPv6Network, ...] = ()

    def __contains__(self, key: str) -> bool:
        if key in self.names or key in self.numbers:
            return True

        if not self.networks:
            return False
        try:
            address = ipaddress.ip_address(key)
        except ValueError:
            return False
        return any(address in network for network in self.networks)


@dataclass(frozen=True)
class OffenderSettings:
    """A trunk's offender blocking; durations are in seconds.

    ``key_type`` is one of ``OFFENDER_KEYS``. A ban lasts ``ban_time`` times
    ``ban_time_factor`` to the power of the offender's earlier bans, at most
    ``ban_max_time``.
    """

    key_type: str = KEY_ENDPOINT
    ban_after: int = DEFAULT_BAN_AFTER
    ban_window: int = DEFAULT_BAN_WINDOW
    ban_time: int = DEFAULT_BAN_TIME
    ban_time_factor: Decimal = DEFAULT_BAN_TIME_FACTOR
    ban_max_time: int = DEFAULT_BAN_MAX_TIME
    ban_ignore: BanIgnore = field(default_factory=BanIgnore)

    def ban_seconds(self, earlier_bans: int) -> int:
        """Return the length of a ban after ``earlier_bans`` bans of the same key."""
        seconds = Decimal(self.ban_time)
        for _ in range(earlier_bans):
            if seconds >= self.ban_max_time:
                break
            seconds *= self.ban_time_factor
        whole = int(seconds.to_integral_value(rounding="ROUND_CEILING"))
        return min(whole, self.ban_max_time)


def parse_ban_duration(text: str) -> int:
    """Parse whole seconds of 1 s or more, such as ``10m``, ``1.5h``, ``2d`` or ``1w``."""
    seconds = parse_signed_seconds(text, BAN_DURATION_EXAMPLES)
    if seconds < 1:
        raise InvalidValue(f"{text!r} must be at least 1s; write it like 10m")

    if seconds != seconds.to_integral_value():
        raise InvalidValue(
            f"{text!r} is not a whole number of seconds; write it like 90 or 10m"
        )
    return int(seconds)


def parse_ban_setting(text: str) -> int:
    """Parse a ban_window, ban_time or ban_max_time of at most ``MAX_BAN_DURATION``."""
    seconds = parse_ban_duration(text)
    if seconds > MAX_BAN_SECONDS:
        raise InvalidValue(f"{text!r} is too long; write at most {MAX_BAN_DURATION}")
    return seconds


def parse_ban_after(text: str) -> int:
    """Parse the count of barred attempts that bans, 1 to ``MAX_BAN_AFTER``."""
    if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= MAX_BAN_AFTER:
        raise InvalidValue(
            f"{text!r} is not a whole number from 1 to {MAX_BAN_AFTER}; write it "
            "like 3"
        )
    return int(text)


def parse_ban_factor(text: str) -> Decimal:
    """Parse the growth of a repeat offender's ban, from 1 (no growth) to 100."""
    try:
        factor = Decimal(text)
    except InvalidOperation:
        factor = None
    if factor is None or not factor.is_finite() or not 1 <= factor <= MAX_BAN_FACTOR:
        raise InvalidValue(
            f"{text!r} is not a factor from 1 to {MAX_BAN_FACTOR}; write it like 2, "
            "or 1 to give every ban the same length"
        )
    return factor


def parse_offender_key(text: str) -> str:
    """Parse one of ``OFFENDER_KEYS``, case-insensitively."""
    word = text.lower()
    if word not in OFFENDER_KEYS:
        raise InvalidValue(
            f"{text!r} is not an offender key; write one of {', '.join(OFFENDER_KEYS)}"
        )
    return word


def parse_ban_ignore(
    items: tuple[str, ...], key_type: str, home_country: str
) -> BanIgnore:
    """Build the keys never blocked, each in the form that ``key_type`` needs."""
    if key_type == KEY_CALLER:
        return BanIgnore(numbers=parse_number_ranges(", ".join(items), home_country))

    if key_type != KEY_SOURCE:
        return BanIgnore(names=frozenset(items))

    networks = []
    messages = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            messages.append(
                f"{item!r} is not an IP address or network; write it like "
                "192.0.2.10 or 192.0.2.0/24, because offender_key is source"
            )
    if messages:
        raise InvalidValue(*messages)
    return BanIgnore(networks=tuple(networks))


def _ignore_context(parse):
    return lambda text, context: parse(text)


def _items(text: str, context: Any) -> tuple[str, ...]:
    return tuple(split_list(text))


# Trunk keys as (parser, default text), merged into the trunk's fields; the
# fields module wraps them in its own Field type.
OFFENDER_FIELDS: dict[str, tuple[Any, str]] = {
    "offender_key": (_ignore_context(parse_offender_key), KEY_ENDPOINT),
    "ban_after": (_ignore_context(parse_ban_after), str(DEFAULT_BAN_AFTER)),
    "ban_window": (_ignore_context(parse_ban_setting), "10m"),
    "ban_time": (_ignore_context(parse_ban_setting), "1h"),
    "ban_time_factor": (_ignore_context(parse_ban_factor), "2"),
    "ban_max_time": (_ignore_context(parse_ban_setting), "1w"),
    "ban_ignore": (_items, ""),
}


def build_offender_settings(
    found: dict[str, Any],
    lines: dict[str, int],
    failed: set[str],
    home_country: str,
    report,
) -> OffenderSettings | None:
    """Pop the offender keys from ``found`` and build the trunk's settings.

    ``report(line, key, message)`` records a problem; returns None after one.
    """
    values = {key: found.pop(key, None) for key in OFFENDER_FIELDS}
    if failed & set(OFFENDER_FIELDS):
        return None

    valid = True
    if values["ban_max_time"] < values["ban_time"]:
        report(
            lines.get("ban_max_time", lines.get("ban_time", 0)),
            "ban_max_time",
            f"{format_duration(values['ban_max_time'])} is shorter than ban_time "
            f"({format_duration(values['ban_time'])}); set ban_max_time to ban_time "
            "or longer",
        )
        valid = False

    try:
        ignore = parse_ban_ignore(
            values["ban_ignore"], values["offender_key"], home_country
        )
    except InvalidValue as exc:
        for message in exc.messages:
            report(lines.get("ban_ignore", 0), "ban_ignore", message)
        return None

    if not valid:
        return None
    return OffenderSettings(
        key_type=values["offender_key"],
        ban_after=values["ban_after"],
        ban_window=values["ban_window"],
        ban_time=values["ban_time"],
        ban_time_factor=values["ban_time_factor"],
        ban_max_time=values["ban_max_time"],
        ban_ignore=ignore,
    )
