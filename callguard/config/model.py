"""The typed, validated configuration that ``load_config`` returns."""

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path
from zoneinfo import ZoneInfo

from callguard.config.addresses import parse_database_url
from callguard.config.hours import BusinessHours
from callguard.config.offenders import OffenderSettings
from callguard.config.ranges import NumberRanges

logger = logging.getLogger(__name__)

BYTE_ORDER_MARK = "\ufeff"


def _read_secret(path: Path | None) -> str | None:
    if path is None:
        return None

    # The secret is the first line, as the sample config documents. Later
    # lines, such as a note on when it was changed, are not part of it.
    # A byte order mark, which Windows editors may write, is removed after
    # decoding, so that a decoding error gives the offset in the file.
    text = path.read_text(encoding="utf-8").removeprefix(BYTE_ORDER_MARK)
    return text.split("\n", 1)[0].rstrip("\r")


@dataclass(frozen=True)
class DefaultRate:
    """The tariff for destinations that a trunk's rate deck does not list.

    ``rate`` is per minute and ``connection_fee`` is charged once per answered call,
    both in the configured currency. ``first`` and ``later`` are the billing
    increments in seconds.
    """

    rate: Decimal
    connection_fee: Decimal
    first: int
    later: int


@dataclass(frozen=True)
class GeneralConfig:
    """Settings of the ``[general]`` section; durations are in seconds."""

    database: str
    home_country: str
    timezone: ZoneInfo
    currency: str
    fastagi_host: str
    fastagi_port: int
    allowed_clients: tuple[IPv4Network | IPv6Network, ...]
    outside_line_prefix: str
    emergency_numbers: tuple[str, ...]
    fail_policy: str
    decision_timeout: float
    prefixes: Path | None
    reservation_seconds: int
    control_socket: Path
    log_level: str
    log_calls: str  # "all" or "denied"
    node_name: str  # empty for the host name
    # The loop the daemon runs on, "uvloop" or "asyncio": the file's auto
    # already resolved to the one that imports.
    event_loop: str


@dataclass(frozen=True)
class AriConfig:
    """Settings of the ``[ari]`` section; ``ping_timeout`` is in seconds.

    ``lines`` maps each key that the file sets to its line, for the problems
    found once the password and CA files are read. It is no setting, so
    comparisons leave it out.
    """

    enabled: bool
    url: str
    username: str
    password_file: Path | None
    app: str
    ca_file: Path | None
    ping_timeout: float
    lines: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    def password(self) -> str | None:
        """Read the ARI password from ``password_file``, without its line break.

        Whitespace around the password is dropped, because Asterisk strips it
        from every value of ari.conf (process_text_line() in its main/config.c
        calls ast_strip()), so the password that ARI checks never has any.
        Returns None when no file is configured. Raises ``OSError`` when the
        file cannot be read.
        """
        password = _read_secret(self.password_file)
        return None if password is None else password.strip()


@dataclass(frozen=True)
class SmtpConfig:
    """Settings of the ``[smtp]`` section, present when ``host`` is set.

    ``security`` is ``none``, ``starttls`` or ``tls``; certificates are always
    verified, against ``ca_file`` as well as the system's CAs. ``sender`` is the
    ``from`` key. Durations are in seconds.
    """

    host: str
    port: int
    security: str
    username: str | None
    password_file: Path | None
    sender: str
    to: tuple[str, ...]
    timeout: float
    ca_file: Path | None
    give_up_after: float

    def password(self) -> str | None:
        """Read the SMTP password from ``password_file``, without its line break.

        Returns None when no file is configured. Raises ``OSError`` when the file
        cannot be read.
        """
        return _read_secret(self.password_file)


@dataclass(frozen=True)
class WebhookConfig:
    """Settings of the ``[webhook]`` section, present when ``url`` is set.

    Durations are in seconds. Without ``secret_file`` the requests are unsigned.
    """

    url: str
    secret_file: Path | None
    timeout: float
    ca_file: Path | None
    give_up_after: float

    def secret(self) -> str | None:
        """Read the HMAC key from ``secret_file``, without its line break.

        Returns None when no file is configured. Raises ``OSError`` when the file
        cannot be read.
        """
        return _read_secret(self.secret_file)


@dataclass(frozen=True)
class TrunkConfig:
    """Settings of one ``[trunk NAME]`` section.

    Limits are amounts in the configured currency, None for no limit. Durations are
    in seconds. ``timezone`` decides where the trunk's daily and weekly windows start
    and when ``business_hours`` are. Velocity limits (``max_calls_per_minute``,
    ``max_destinations_per_hour``, ``max_repeat_calls``) are counts, None for none.
    """

    name: str
    bar: frozenset[str]
    daily_limit: Decimal | None
    weekly_limit: Decimal | None
    warn_percent: tuple[int, ...]
    max_concurrent_calls: int | None
    max_call_seconds: int | None
    channel_pattern: str | None
    rates: Path | None
    default_rate: DefaultRate | None
    international_allow: frozenset[str]
    numbers: NumberRanges
    opt_out: NumberRanges
    opt_in: NumberRanges
    timezone: ZoneInfo
    notify: tuple[str, ...]
    max_calls_per_minute: int | None
    max_destinations_per_hour: int | None
    max_repeat_calls: int | None
    repeat_window: int
    bar_out_of_hours: frozenset[str]
    business_hours: BusinessHours | None
    offenders: OffenderSettings

    def opted_out(self, caller_e164: str | None) -> bool:
        """Check whether the caller skips barring and limits on this trunk.

        A caller is opted out when ``opt_out`` contains the number and ``opt_in``
        does not.
        """
        return caller_e164 in self.opt_out and caller_e164 not in self.opt_in


@dataclass(frozen=True)
class NumberOverride:
    """A ``[number ...]`` section: categories that its callers may or may not call.

    ``trunk`` limits the override to one trunk, or is None for every trunk.
    ``header`` and ``line`` locate the section in the file for messages, or are
    empty and 0 for an override built in code.
    """

    numbers: NumberRanges
    trunk: str | None
    allow: frozenset[str]
    bar: frozenset[str]
    header: str = field(default="", compare=False)
    line: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Config:
    """A whole configuration file; ``trunks`` is keyed by trunk name.

    ``smtp`` and ``webhook`` are None when that way of sending alerts is off.
    """

    path: Path
    general: GeneralConfig
    ari: AriConfig
    trunks: Mapping[str, TrunkConfig]
    overrides: tuple[NumberOverride, ...]
    smtp: SmtpConfig | None = None
    webhook: WebhookConfig | None = None

    def with_database(self, database: str) -> "Config":
        """Return a copy that uses ``database``, such as a URL from the command line.

        A relative SQLite path is resolved against the current directory. Raises
        ``ValueError`` that quotes an invalid URL and shows the forms accepted.
        """
        url = parse_database_url(database, Path.cwd())
        return replace(self, general=replace(self.general, database=url))

    def overrides_for(
        self, trunk: str, caller_e164: str | None
    ) -> list[NumberOverride]:
        """Return the overrides for the caller on ``trunk``, in file order."""
        return [
            override
            for override in self.overrides
            if override.trunk in (None, trunk) and caller_e164 in override.numbers
        ]
