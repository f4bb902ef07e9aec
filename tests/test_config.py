"""Tests of the configuration loader: syntax, each key's values and exact errors."""

import logging
import random
import re
import shutil
import socket
import sys
import time
from decimal import Decimal
from ipaddress import ip_network
from pathlib import Path
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from callguard.config import (
    DEFAULT_CONFIG_PATH,
    KNOWN_CATEGORIES,
    ConfigError,
    ConfigProblem,
    DefaultRate,
    NumberRanges,
    SmtpConfig,
    WebhookConfig,
    load_config,
    parse_duration,
)
from callguard.config.advice import MAX_LISTED_OVERLAPS, _overlapping_overrides, config_warnings
from callguard.config.model import NumberOverride
from callguard.config.ranges import NumberRanges
from callguard.numbers import InvalidNumber, NumberPlan

SAMPLE = Path(__file__).resolve().parent.parent / "etc" / "callguard.conf"
CONFIG_NAME = "callguard.conf"
RATES_LINE = "rates = rates-gamma.csv"


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """Change into a folder holding the files that good configurations name."""
    (tmp_path / "rates-gamma.csv").write_text("prefix,rate\n")
    (tmp_path / "prefixes.csv").write_text("prefix,category\n")
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    secret = tmp_path / "ari.secret"
    secret.write_text("s3cret;pass\n")
    secret.chmod(0o600)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(text: str) -> str:
    Path(CONFIG_NAME).write_text(text)
    return CONFIG_NAME


def load(text: str):
    return load_config(write(text))


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load(text)
    return str(caught.value).splitlines()


def config_with(section: str, key: str, value: str) -> str:
    """Return a config whose line 2 sets ``key`` in ``section``, the rest valid."""
    lines = [f"[{section}]", f"{key} = {value}"]
    if section == "trunk gamma" and key not in ("rates", "default_rate"):
        lines.append(RATES_LINE)
    if section != "trunk gamma":
        lines += ["[trunk gamma]", RATES_LINE]
    return "\n".join(lines) + "\n"


# fmt: off
GOOD_VALUES = [
    # (section, key, value, attribute path, expected)
    ("general", "database", "sqlite:////var/lib/cg.db", "general.database",
     "sqlite:////var/lib/cg.db"),
    ("general", "database", "postgresql+psycopg://cg@127.0.0.1/cg",
     "general.database", "postgresql+psycopg://cg@127.0.0.1/cg"),
    ("general", "home_country", "gb", "general.home_country", "GB"),
    ("general", "timezone", "America/New_York", "general.timezone",
     ZoneInfo("America/New_York")),
    ("general", "currency", "eur", "general.currency", "EUR"),
    ("general", "fastagi_listen", "[::1]:4573", "general.fastagi_host", "::1"),
    ("general", "fastagi_listen", "0.0.0.0:14573", "general.fastagi_port", 14573),
    ("general", "allowed_clients", "10.0.0.0/8, 2001:db8::/32",
     "general.allowed_clients",
     (ip_network("10.0.0.0/8"), ip_network("2001:db8::/32"))),
    ("general", "outside_line_prefix", "9", "general.outside_line_prefix", "9"),
    ("general", "outside_line_prefix", "", "general.outside_line_prefix", ""),
    ("general", "emergency_numbers", "112, 911", "general.emergency_numbers",
     ("112", "911", "999")),
    ("general", "emergency_numbers", "", "general.emergency_numbers",
     ("999", "112")),
    ("general", "fail_policy", "ALLOW", "general.fail_policy", "allow"),
    ("general", "decision_timeout", "250ms", "general.decision_timeout", 0.25),
    ("general", "decision_timeout", "30s", "general.decision_timeout", 30.0),
    ("general", "decision_timeout", "2", "general.decision_timeout", 2.0),
    ("general", "prefixes", "", "general.prefixes", None),
    ("general", "reservation_seconds", "2m", "general.reservation_seconds", 120),
    ("general", "reservation_seconds", "1d", "general.reservation_seconds", 86400),
    ("general", "log_level", "Warning", "general.log_level", "warning"),
    ("general", "log_calls", "All", "general.log_calls", "all"),
    ("general", "log_calls", "denied", "general.log_calls", "denied"),
    ("general", "node_name", "pbx-2.london", "general.node_name", "pbx-2.london"),
    ("general", "node_name", "", "general.node_name", ""),
    ("general", "event_loop", "asyncio", "general.event_loop", "asyncio"),
    ("general", "event_loop", "UVLOOP", "general.event_loop", "uvloop"),
    # uvloop is installed with callguard, so auto finds it.
    ("general", "event_loop", "auto", "general.event_loop", "uvloop"),
    ("ari", "enabled", "off", "ari.enabled", False),
    ("ari", "enabled", "TRUE", "ari.enabled", True),
    ("ari", "enabled", "1", "ari.enabled", True),
    ("ari", "url", "https://127.0.0.1:8089/asterisk", "ari.url",
     "https://127.0.0.1:8089/asterisk/"),
    ("ari", "username", "guard", "ari.username", "guard"),
    ("ari", "app", "guard-app", "ari.app", "guard-app"),
    ("ari", "ca_file", "", "ari.ca_file", None),
    ("ari", "ping_timeout", "500ms", "ari.ping_timeout", 0.5),
    ("trunk gamma", "bar", "Premium, mobile", "trunk.bar",
     frozenset({"premium", "mobile"})),
    ("trunk gamma", "bar", "", "trunk.bar", frozenset()),
    ("trunk gamma", "daily_limit", "0.50", "trunk.daily_limit", Decimal("0.50")),
    ("trunk gamma", "daily_limit", "", "trunk.daily_limit", None),
    ("trunk gamma", "weekly_limit", "200", "trunk.weekly_limit", Decimal("200")),
    ("trunk gamma", "warn_percent", "95, 50, 80, 80", "trunk.warn_percent",
     (50, 80, 95)),
    ("trunk gamma", "warn_percent", "100", "trunk.warn_percent", (100,)),
    ("trunk gamma", "max_concurrent_calls", "1", "trunk.max_concurrent_calls", 1),
    ("trunk gamma", "max_concurrent_calls", "", "trunk.max_concurrent_calls", None),
    ("trunk gamma", "max_call_seconds", "90", "trunk.max_call_seconds", 90),
    ("trunk gamma", "max_call_seconds", "1h", "trunk.max_call_seconds", 3600),
    ("trunk gamma", "max_call_seconds", "1d", "trunk.max_call_seconds", 86400),
    ("trunk gamma", "max_call_seconds", "0.5d", "trunk.max_call_seconds", 43200),
    ("trunk gamma", "repeat_window", "1d", "trunk.repeat_window", 86400),
    ("trunk gamma", "ban_time", "1.5h", "trunk.offenders.ban_time", 5400),
    ("trunk gamma", "ban_window", "0.5m", "trunk.offenders.ban_window", 30),
    ("trunk gamma", "ban_max_time", "2w", "trunk.offenders.ban_max_time", 1209600),
    ("trunk gamma", "max_call_seconds", "", "trunk.max_call_seconds", None),
    ("trunk gamma", "channel_pattern", "PJSIP/gamma-*", "trunk.channel_pattern",
     "PJSIP/gamma-*"),
    ("trunk gamma", "channel_pattern", "", "trunk.channel_pattern", None),
    ("trunk gamma", "default_rate", "0.25", "trunk.default_rate",
     DefaultRate(Decimal("0.25"), Decimal("0"), 60, 60)),
    ("trunk gamma", "default_rate", "0.25, 0.05", "trunk.default_rate",
     DefaultRate(Decimal("0.25"), Decimal("0.05"), 60, 60)),
    ("trunk gamma", "default_rate", "0.0123456, 0, 30/1", "trunk.default_rate",
     DefaultRate(Decimal("0.0123456"), Decimal("0"), 30, 1)),
    ("trunk gamma", "international_allow", "ie, FR", "trunk.international_allow",
     frozenset({"IE", "FR"})),
    ("trunk gamma", "numbers", "+44 1632 960000", "trunk.numbers",
     NumberRanges(((441632960000, 441632960000),))),
    ("trunk gamma", "numbers", "01632960000-01632960099, 02079460123",
     "trunk.numbers",
     NumberRanges(((441632960000, 441632960099), (442079460123, 442079460123)))),
    ("trunk gamma", "opt_out", "", "trunk.opt_out", NumberRanges()),
    ("trunk gamma", "timezone", "Europe/Dublin", "trunk.timezone",
     ZoneInfo("Europe/Dublin")),
    ("trunk gamma", "timezone", "", "trunk.timezone", ZoneInfo("Europe/London")),
    ("trunk gamma", "notify", "noc@example.com, ops@pbx",
     "trunk.notify", ("noc@example.com", "ops@pbx")),
]
# fmt: on


def attribute(config, path: str):
    scope, *names = path.split(".")
    value = config.trunks["gamma"] if scope == "trunk" else getattr(config, scope)
    for name in names:
        value = getattr(value, name)
    return value


@pytest.mark.parametrize("section, key, value, path, expected", GOOD_VALUES)
def test_good_value(workdir, section, key, value, path, expected):
    config = load(config_with(section, key, value))

    assert attribute(config, path) == expected


FILE_VALUES = [
    ("general", "prefixes", "prefixes.csv", "general.prefixes"),
    ("general", "control_socket", "run/cg.sock", "general.control_socket"),
    ("ari", "password_file", "ari.secret", "ari.password_file"),
    ("ari", "ca_file", "ca.pem", "ari.ca_file"),
    ("trunk gamma", "rates", "rates-gamma.csv", "trunk.rates"),
]


@pytest.mark.parametrize("section, key, value, path", FILE_VALUES)
def test_relative_path(workdir, section, key, value, path):
    config = load(config_with(section, key, value))

    assert attribute(config, path) == workdir / value


def test_sqlite_relative(workdir):
    config = load(config_with("general", "database", "sqlite:///data/cg.db"))

    assert config.general.database == f"sqlite:///{workdir}/data/cg.db"


AMOUNT_FIX = "write it like 50.00"
NODE_NAME_FIX = (
    "is not a node name; write 1 to 63 ASCII letters, digits, dots, dashes or "
    "underscores, starting with a letter or digit, like pbx1, or leave it empty "
    "for the host name"
)
CATEGORY_LIST = ", ".join(KNOWN_CATEGORIES)
GENERAL_KEYS = (
    "database, home_country, timezone, currency, fastagi_listen, allowed_clients, "
    "outside_line_prefix, emergency_numbers, fail_policy, decision_timeout, "
    "prefixes, reservation_seconds, control_socket, log_level, log_calls, node_name, event_loop"
)
TRUNK_KEYS = (
    "bar, daily_limit, weekly_limit, warn_percent, max_concurrent_calls, "
    "max_call_seconds, channel_pattern, rates, default_rate, international_allow, "
    "numbers, opt_out, opt_in, timezone, notify, max_calls_per_minute, "
    "max_destinations_per_hour, max_repeat_calls, repeat_window, bar_out_of_hours, "
    "business_hours, offender_key, ban_after, ban_window, ban_time, ban_time_factor, "
    "ban_max_time, ban_ignore"
)
DURATION_FIX = "write it like 250ms, 1s, 2m, 1h or 30 (seconds)"
# Keys that take whole seconds reject 250ms, so their examples leave it out.
WHOLE_SECONDS_FIX = "write it like 90s, 2m, 1h or 120 (seconds)"
RATE_FIX = "write RATE[, FEE[, N/M]] like 0.25, 0.05, 60/60"
GB_NUMBER = "01632960000 or +441632960000"

# fmt: off
BAD_VALUES = [
    # (section, key, value, messages after "callguard.conf:2: [section] key: ")
    ("general", "database", "mysql://cg@127.0.0.1/cg", [
        "'mysql://cg@127.0.0.1/cg' uses the unsupported driver 'mysql'; write it "
        "like sqlite:////var/lib/callguard/callguard.db or "
        "postgresql+psycopg://user@host/db"]),
    ("general", "database", "postgresql://cg@127.0.0.1/cg", [
        "'postgresql://cg@127.0.0.1/cg' uses the unsupported driver 'postgresql'; "
        "callguard connects to PostgreSQL with psycopg 3, so write "
        "postgresql+psycopg:// in place of postgresql://, like "
        "postgresql+psycopg://user@host/db"]),
    ("general", "database", "postgres://cg@127.0.0.1/cg", [
        "'postgres://cg@127.0.0.1/cg' uses the unsupported driver 'postgres'; "
        "callguard connects to PostgreSQL with psycopg 3, so write "
        "postgresql+psycopg:// in place of postgres://, like "
        "postgresql+psycopg://user@host/db"]),
    ("general", "database", "postgresql+psycopg://cg@127.0.0.1", [
        "'postgresql+psycopg://cg@127.0.0.1' names no database; write it like "
        "sqlite:////var/lib/callguard/callguard.db or "
        "postgresql+psycopg://user@host/db"]),
    ("general", "database", "sqlite://", [
        "'sqlite://' is an in-memory database that loses all spend on restart; "
        "write a file path like sqlite:////var/lib/callguard/callguard.db"]),
    ("general", "database", "callguard.db", [
        "'callguard.db' is not a database URL; write it like "
        "sqlite:////var/lib/callguard/callguard.db or "
        "postgresql+psycopg://user@host/db"]),
    ("general", "home_country", "UK", [
        "'UK' is not a region code known to phonenumbers; write an ISO 3166 "
        "alpha-2 code like GB or IE"]),
    ("general", "timezone", "Mars/Olympus", [
        "'Mars/Olympus' is not a time zone; write an IANA name like Europe/London"]),
    ("general", "timezone", "../etc/passwd", [
        "'../etc/passwd' is not a time zone; write an IANA name like Europe/London"]),
    ("general", "currency", "pounds", [
        "'pounds' is not a currency code; write three ISO 4217 letters like GBP"]),
    ("general", "fastagi_listen", "::1:4573", [
        "'::1:4573' is not an address and port; write it like 127.0.0.1:4573 or "
        "[::1]:4573"]),
    ("general", "fastagi_listen", "localhost:4573", [
        "'localhost:4573' does not start with an IP address; write it like "
        "127.0.0.1:4573 or [::1]:4573"]),
    ("general", "fastagi_listen", "127.0.0.1:70000", [
        "'127.0.0.1:70000' has port 70000; write a port from 1 to 65535"]),
    ("general", "fastagi_listen", "127.0.0.1", [
        "'127.0.0.1' is not an address and port; write it like 127.0.0.1:4573 or "
        "[::1]:4573"]),
    ("general", "allowed_clients", "10.0.0.1/8, 127.0.0.1/32, lan", [
        "'10.0.0.1/8' is not a network (10.0.0.1/8 has host bits set); write it "
        "like 192.0.2.0/24 with the host bits zero",
        "'lan' is not a network ('lan' does not appear to be an IPv4 or IPv6 "
        "network); write it like 192.0.2.0/24 with the host bits zero"]),
    ("general", "allowed_clients", "", [
        "'' lets no client connect; list networks like 127.0.0.1/32, ::1/128"]),
    ("general", "outside_line_prefix", "9#", [
        "'9#' is not digits only; write it like 9, or leave it empty"]),
    ("general", "outside_line_prefix", "90000", [
        "'90000' is too long; write at most 4 digits, like 9, or leave it empty"]),
    ("general", "emergency_numbers", "999, 1 1 2, *55", [
        "'1 1 2' is not digits only; write it like 999",
        "'*55' is not digits only; write it like 999"]),
    ("general", "emergency_numbers", "999, 1234567890123456", [
        "'1234567890123456' is too long for a phone number; write at most 15 "
        "digits, like 999"]),
    ("general", "currency", "ßp", [
        "'ßp' is not a currency code; write three ISO 4217 letters like GBP"]),
    ("general", "currency", "ﬀr", [
        "'ﬀr' is not a currency code; write three ISO 4217 letters like GBP"]),
    ("general", "fail_policy", "maybe", [
        "'maybe' is not valid; write one of allow, deny"]),
    ("general", "decision_timeout", "0", [
        "'0' must be longer than zero; write it like 1s"]),
    ("general", "decision_timeout", "31s", ["'31s' is too long; write at most 30s"]),
    ("general", "decision_timeout", "1 minute", [
        f"'1 minute' is not a duration; {DURATION_FIX}"]),
    ("general", "decision_timeout", "-1s", [
        "'-1s' must be longer than zero; write it like 1s"]),
    ("general", "decision_timeout", "-0", [
        "'-0' must be longer than zero; write it like 1s"]),
    ("general", "decision_timeout", "--1s", [
        f"'--1s' is not a duration; {DURATION_FIX}"]),
    ("general", "prefixes", "missing.csv", [
        "'missing.csv' is not a file (looked for {dir}/missing.csv); create it or "
        "correct the path"]),
    # A name longer than NAME_MAX (255 bytes) makes stat() fail with
    # ENAMETOOLONG, as a folder that the user may not search fails with EACCES.
    ("general", "prefixes", "x" * 256 + "/prefixes.csv", [
        f"'{'x' * 256}/prefixes.csv' cannot be checked (File name too long at "
        f"{{dir}}/{'x' * 256}/prefixes.csv); correct the path, or let the callguard "
        "user search every folder above the file"]),
    ("general", "reservation_seconds", "1.5s", [
        "'1.5s' is not a whole number of seconds; write it like 120 or 2m"]),
    ("general", "reservation_seconds", "2 min", [
        f"'2 min' is not a duration; {WHOLE_SECONDS_FIX}"]),
    ("general", "reservation_seconds", "0", [
        "'0' must be at least 1s; write it like 120 or 2m"]),
    ("general", "reservation_seconds", "-2m", [
        "'-2m' must be at least 1s; write it like 120 or 2m"]),
    ("general", "reservation_seconds", "36501d", [
        "'36501d' is too long; write at most 36500d"]),
    ("general", "reservation_seconds", "99999999999999999999", [
        "'99999999999999999999' is too long; write at most 36500d"]),
    ("general", "control_socket", "", [
        "'' is not a path; write it like /run/callguard/callguard.sock"]),
    ("general", "log_level", "verbose", [
        "'verbose' is not valid; write one of debug, info, warning, error"]),
    ("general", "log_calls", "allowed", [
        "'allowed' is not valid; write one of all, denied"]),
    ("general", "node_name", "pbx 2", [f"'pbx 2' {NODE_NAME_FIX}"]),
    ("general", "event_loop", "libuv", [
        "'libuv' is not valid; write one of auto, uvloop, asyncio"]),
    ("general", "node_name", "-pbx", [f"'-pbx' {NODE_NAME_FIX}"]),
    ("general", "node_name", "p" * 64, [f"'{'p' * 64}' {NODE_NAME_FIX}"]),
    ("ari", "enabled", "maybe", ["'maybe' is not a yes/no value; write yes or no"]),
    ("ari", "url", "ws://127.0.0.1:8088/", [
        "'ws://127.0.0.1:8088/' is not an http or https URL; write it like "
        "http://127.0.0.1:8088/"]),
    ("ari", "url", "http://127.0.0.1:8088/ari", [
        "'http://127.0.0.1:8088/ari' ends in /ari; write the server's base URL, "
        "like http://127.0.0.1:8088/"]),
    ("ari", "url", "http://[::1:8088/", [
        "'http://[::1:8088/' is not a valid URL because it has an unbalanced [ or ], "
        "or a character before the path that Unicode NFKC normalization turns into "
        "/, ?, #, @ or :; write it like http://127.0.0.1:8088/"]),
    ("ari", "url", "http://127.0.0.1:port/", [
        "'http://127.0.0.1:port/' has an invalid port; write it like "
        "http://127.0.0.1:8088/"]),
    ("ari", "url", "http://cg:pw@127.0.0.1:8088/", [
        "'http://cg:***@127.0.0.1:8088/' has a query, fragment or credentials; write "
        "only scheme, host, port and path, and put the password in password_file"]),
    ("ari", "username", "call guard", [
        "'call guard' is not a valid ARI user name; write one word like callguard"]),
    ("ari", "app", "", [
        "'' is not a valid ARI application; write one word like callguard"]),
    ("ari", "password_file", "nowhere.secret", [
        "'nowhere.secret' is not a file (looked for {dir}/nowhere.secret); create "
        "it or correct the path"]),
    ("ari", "ca_file", "nowhere.pem", [
        "'nowhere.pem' is not a file (looked for {dir}/nowhere.pem); create it or "
        "correct the path"]),
    ("ari", "ping_timeout", "1m", ["'1m' is too long; write at most 30s"]),
    ("ari", "ping_timeout", "-30s", [
        "'-30s' must be longer than zero; write it like 1s"]),
    ("trunk gamma", "bar", "premum", [
        f"'premum' is not a barring category; did you mean premium? use one of "
        f"{CATEGORY_LIST}"]),
    ("trunk gamma", "bar", "mobile, emergency, hotline", [
        "'emergency' cannot be barred, because emergency calls must always connect; "
        "remove it from the list",
        f"'hotline' is not a barring category; use one of {CATEGORY_LIST}"]),
    ("trunk gamma", "daily_limit", "fifty", [
        f"'fifty' is not an amount; {AMOUNT_FIX}"]),
    ("trunk gamma", "daily_limit", "-5", [f"'-5' is negative; {AMOUNT_FIX}"]),
    ("trunk gamma", "daily_limit", "1e3", [f"'1e3' is not an amount; {AMOUNT_FIX}"]),
    ("trunk gamma", "weekly_limit", "0.0000001", [
        f"'0.0000001' has more than six decimal places; {AMOUNT_FIX}"]),
    ("trunk gamma", "weekly_limit", "£200", [f"'£200' is not an amount; {AMOUNT_FIX}"]),
    ("trunk gamma", "warn_percent", "0, 50, 101, high", [
        "'0' is not a whole percentage from 1 to 100; write it like 80",
        "'101' is not a whole percentage from 1 to 100; write it like 80",
        "'high' is not a whole percentage from 1 to 100; write it like 80"]),
    ("trunk gamma", "warn_percent", "", [
        "'' has no percentages; write one or more like 50, 80, 95"]),
    ("trunk gamma", "max_concurrent_calls", "0", [
        "'0' is not a whole number of 1 or more; write it like 10, or leave it "
        "empty for no cap"]),
    ("trunk gamma", "max_concurrent_calls", "ten", [
        "'ten' is not a whole number of 1 or more; write it like 10, or leave it "
        "empty for no cap"]),
    ("trunk gamma", "max_call_seconds", "2 hours", [
        f"'2 hours' is not a duration; {WHOLE_SECONDS_FIX}"]),
    ("trunk gamma", "max_call_seconds", "500ms", [
        "'500ms' is not a whole number of seconds; write it like 120 or 2m"]),
    ("trunk gamma", "max_call_seconds", "1D", [
        f"'1D' is not a duration; {WHOLE_SECONDS_FIX}"]),
    ("trunk gamma", "repeat_window", "1 hour", [
        f"'1 hour' is not a duration; {WHOLE_SECONDS_FIX}"]),
    ("trunk gamma", "ban_time", "1.5s", [
        "'1.5s' is not a whole number of seconds; write it like 90 or 10m"]),
    ("trunk gamma", "ban_time", "500ms", [
        "'500ms' must be at least 1s; write it like 10m"]),
    ("trunk gamma", "ban_time", "-1h", [
        "'-1h' must be at least 1s; write it like 10m"]),
    ("trunk gamma", "ban_window", "0", [
        "'0' must be at least 1s; write it like 10m"]),
    ("trunk gamma", "ban_window", "36501d", [
        "'36501d' is too long; write at most 36500d"]),
    ("trunk gamma", "ban_max_time", "999999w", [
        "'999999w' is too long; write at most 36500d"]),
    ("trunk gamma", "max_call_seconds", "-1h", [
        "'-1h' must be at least 1s; write it like 120 or 2m"]),
    ("trunk gamma", "repeat_window", "-1h", [
        "'-1h' must be at least 1s; write it like 120 or 2m"]),
    ("trunk gamma", "rates", "rates-delta.csv", [
        "'rates-delta.csv' is not a file (looked for {dir}/rates-delta.csv); create "
        "it or correct the path"]),
    ("trunk gamma", "default_rate", "cheap", [
        f"'cheap' is not a rate per minute; {RATE_FIX}"]),
    ("trunk gamma", "default_rate", "-0.25", [
        f"'-0.25' is not a rate per minute; {RATE_FIX}"]),
    ("trunk gamma", "default_rate", "0.25, -1", [
        f"'-1' is negative as the connection fee; {RATE_FIX}"]),
    ("trunk gamma", "default_rate", "0.25, 0.05, 60", [
        "'60' is not a billing increment; write N/M in whole seconds of 1 or more, "
        "like 60/60 or 30/1"]),
    ("trunk gamma", "default_rate", "0.25, 0.05, 0/60", [
        "'0/60' is not a billing increment; write N/M in whole seconds of 1 or "
        "more, like 60/60 or 30/1"]),
    ("trunk gamma", "default_rate", "0.25, 0.05, 60/60, 1", [
        f"'0.25, 0.05, 60/60, 1' is not a rate; {RATE_FIX}"]),
    ("trunk gamma", "default_rate", "0.25,, 60/60", [
        f"'0.25,, 60/60' is not a rate; {RATE_FIX}"]),
    ("trunk gamma", "international_allow", "IE, EU, XX", [
        "'EU' is not a region code known to phonenumbers; write an ISO 3166 "
        "alpha-2 code like GB or IE",
        "'XX' is not a region code known to phonenumbers; write an ISO 3166 "
        "alpha-2 code like GB or IE"]),
    ("trunk gamma", "numbers", "01632-960000", [
        f"'01632' has the wrong length for a full number of GB; write it like "
        f"{GB_NUMBER}"]),
    ("trunk gamma", "numbers", "(01632) 960000", [
        "'(01632) 960000' is not a number or range; use only digits, spaces and a "
        f"leading +, like {GB_NUMBER}"]),
    ("trunk gamma", "numbers", "0163-296-0000", [
        "'0163-296-0000' is not a number or range; write numbers without hyphens "
        "and a range as A-B, like 01632960000-01632960099"]),
    ("trunk gamma", "numbers", "01632960099-01632960000", [
        "'01632960099-01632960000' starts above its end; write the lower number "
        "first, like 01632960000-01632960099"]),
    ("trunk gamma", "numbers", "+441632960000-+35312345678", [
        "'+441632960000-+35312345678' joins numbers of different lengths "
        "(+441632960000 and +35312345678); give both ends of a range the same "
        "number of digits"]),
    ("trunk gamma", "opt_out", "016329600+1", [
        "'016329600+1' is not a number or range; use only digits, spaces and a "
        f"leading +, like {GB_NUMBER}"]),
    ("trunk gamma", "opt_in", "12", [
        "'12' has the wrong length for a full number of GB; write it like "
        f"{GB_NUMBER}"]),
    ("trunk gamma", "opt_in", "+", [
        f"'+' is not a telephone number; write it like {GB_NUMBER}"]),
    ("trunk gamma", "timezone", "London", [
        "'London' is not a time zone; write an IANA name like Europe/London"]),
    ("trunk gamma", "notify", "noc@example.com, noc, a@b@c", [
        "'noc' is not an e-mail address; write it like noc@example.com",
        "'a@b@c' is not an e-mail address; write it like noc@example.com"]),
    ("trunk gamma", "dialy_limit", "50.00", [
        f"unknown key; did you mean daily_limit? known keys are {TRUNK_KEYS}"]),
    ("general", "data_base", "sqlite:////x.db", [
        f"unknown key; did you mean database? known keys are {GENERAL_KEYS}"]),
    ("trunk gamma", "DAILY_LIMIT", "50.00", [
        f"unknown key; did you mean daily_limit? known keys are {TRUNK_KEYS}"]),
]
# fmt: on


def test_event_loop_without_uvloop(workdir, monkeypatch):
    # None in sys.modules makes "import uvloop" fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "uvloop", None)

    assert load(config_with("general", "event_loop", "auto")).general.event_loop == "asyncio"
    [problem] = problems(config_with("general", "event_loop", "uvloop"))
    assert problem.startswith(f"{CONFIG_NAME}:2: [general] event_loop: uvloop is not "
                              "installed (")
    assert problem.endswith("); install it with pip install uvloop, or write auto or asyncio")


def test_event_loop_uninstalled_after_import(workdir, monkeypatch):
    # A daemon that imported uvloop keeps it in sys.modules after pip removes
    # it, but its next start will not find it, so neither may a reload.
    import uvloop  # noqa: F401
    # Loading the config once first imports what it needs from sys.path.
    load(config_with("general", "event_loop", "asyncio"))
    monkeypatch.setattr(sys, "path", [str(workdir)])
    monkeypatch.setattr(sys, "path_importer_cache", {})

    assert load(config_with("general", "event_loop", "auto")).general.event_loop == "asyncio"
    [problem] = problems(config_with("general", "event_loop", "uvloop"))
    assert problem.endswith("install it with pip install uvloop, or write auto or asyncio")


@pytest.mark.parametrize("section, key, value, messages", BAD_VALUES)
def test_bad_value(workdir, section, key, value, messages):
    expected = [
        f"{CONFIG_NAME}:2: [{section}] {key}: {message.format(dir=workdir)}"
        for message in messages
    ]

    assert problems(config_with(section, key, value)) == expected


# fmt: off
LIST_VALUES = [
    # (section, key, a valid list of two items) for every comma-separated key
    ("general", "allowed_clients", "127.0.0.1/32", "::1/128"),
    ("general", "emergency_numbers", "999", "112"),
    ("trunk gamma", "bar", "premium", "international"),
    ("trunk gamma", "warn_percent", "50", "80"),
    ("trunk gamma", "international_allow", "IE", "FR"),
    ("trunk gamma", "numbers", "01632960000-01632960099", "02079460123"),
    ("trunk gamma", "opt_out", "01632960050", "01632960051"),
    ("trunk gamma", "opt_in", "01632960050", "01632960051"),
    ("trunk gamma", "notify", "noc@example.com", "ops@example.com"),
    ("trunk gamma", "bar_out_of_hours", "international", "premium"),
    ("trunk gamma", "business_hours", "Mon-Fri 08:00-18:00", "Sat 09:00-13:00"),
    ("trunk gamma", "ban_ignore", "1001", "1002"),
    ("smtp", "to", "noc@example.com", "ops@example.com"),
    ("number 01632960001", "allow", "international", "mobile"),
    ("number 01632960001", "bar", "premium", "mobile"),
]
# fmt: on


@pytest.mark.parametrize("section, key, first, second", LIST_VALUES)
def test_list_empty_item_rejected(workdir, section, key, first, second):
    fixed = f"{first}, {second}"
    cases = [
        (f"{first},,{second}", "between two commas"),
        (f"{first}, , {second}", "between two commas"),
        (f", {first}, {second}", "before the first comma"),
        (f"{first}, {second},", "after the last comma"),
    ]
    for value, place in cases:
        assert problems(config_with(section, key, value)) == [
            f"{CONFIG_NAME}:2: [{section}] {key}: {value!r} has an empty item "
            f"{place}; remove the extra comma and write it like {fixed}"
        ]


def test_list_of_commas_rejected(workdir):
    assert problems(config_with("trunk gamma", "bar", ",")) == [
        f"{CONFIG_NAME}:2: [trunk gamma] bar: ',' has an empty item before the "
        "first comma; remove the extra comma and leave it empty for none"
    ]


@pytest.mark.parametrize("url, shown", [
    ("postgres://cg:s3cret-pw@127.0.0.1/cg", "'postgres://cg:***@127.0.0.1/cg'"),
    ("postgresql://cg:s3cret-pw@127.0.0.1/cg", "'postgresql://cg:***@127.0.0.1/cg'"),
    ("mysql://cg:s3cret-pw@127.0.0.1/cg", "'mysql://cg:***@127.0.0.1/cg'"),
    ("postgresql+psycopg://cg:s3cret-pw@127.0.0.1",
     "'postgresql+psycopg://cg:***@127.0.0.1'"),
    # psycopg takes the password as a query parameter too.
    ("postgresql://cg@127.0.0.1/cg?password=s3cret-pw",
     "'postgresql://cg@127.0.0.1/cg?password=***'"),
    ("postgres://cg@127.0.0.1/cg?password=s3cret-pw", "'postgres://cg@127.0.0.1/cg?password=***'"),
    ("sqlite://:s3cret-pw@/:memory:", "'sqlite://:***@/:memory:'"),
    # A port that is not a number makes SQLAlchemy raise ValueError.
    ("postgresql+psycopg://cg:s3cret-pw@127.0.0.1:port/cg",
     "'postgresql+psycopg://cg:***@127.0.0.1:port/cg'"),
])
def test_database_error_hides_password(workdir, url, shown):
    [message] = problems(config_with("general", "database", url))

    assert "s3cret-pw" not in message
    assert shown in message


# fmt: off
SECRET_VALUES = [
    # (lines of the config file, the secret in them, the masked text shown)
    ("[ari]\nurl = http://callguard:Sup3rS3cret@127.0.0.1:8088/", "Sup3rS3cret",
     "2: [ari] url: 'http://callguard:***@127.0.0.1:8088/' has a query, fragment or "
     "credentials"),
    ("[ari]\nurl = http://127.0.0.1:8088/?api_key=callguard:Sup3rS3cret", "Sup3rS3cret",
     "2: [ari] url: 'http://127.0.0.1:8088/?api_key=***' has a query"),
    ("[ari]\nurl = http://callguard:Sup3r/S3cret@127.0.0.1:8088/", "S3cret",
     "2: [ari] url: 'http://callguard:***@127.0.0.1:8088/' has an invalid port"),
    # urllib cannot split these, and its message quotes the password.
    ("[ari]\nurl = http://callguard:Sup3r\uff03S3cret@127.0.0.1:8088/", "S3cret",
     "2: [ari] url: 'http://callguard:***@127.0.0.1:8088/' is not a valid URL"),
    ("[webhook]\nurl = http://bob:Hook\uff0fPw9@127.0.0.1:9/hook", "Pw9",
     "2: [webhook] url: 'http://bob:***@127.0.0.1:9/hook' is not a valid URL"),
    ("[webhook]\nurl = http://bob:HookPw9@127.0.0.1:9/hook", "HookPw9",
     "2: [webhook] url: 'http://bob:***@127.0.0.1:9/hook' has credentials"),
    ("[webhook]\nurl = ftp://127.0.0.1/hook?token=T0ken", "T0ken",
     "2: [webhook] url: 'ftp://127.0.0.1/hook?token=***' is not an http or https URL"),
    # Chat services take the token in the path.
    ("[webhook]\nurl = ftp://hooks.example.com/services/T0AB12CD3/B0EF45GH6/aB3dE5fG7hI9jK1lM3n",
     "aB3dE5fG7hI9jK1lM3n",
     "2: [webhook] url: 'ftp://hooks.example.com/services/T0AB12CD3/B0EF45GH6/***' is not an "
     "http or https URL"),
    ("[webhook]\nurl = https://hooks.example.com/services/T0AB12CD3/aB3dE5fG7hI9jK1lM3n#x",
     "aB3dE5fG7hI9jK1lM3n",
     "2: [webhook] url: 'https://hooks.example.com/services/T0AB12CD3/***#x' has credentials"),
    ("[webhook]\nurl https://hooks.example.com/services/T0AB12CD3/aB3dE5fG7hI9jK1lM3n",
     "aB3dE5fG7hI9jK1lM3n",
     "2: [webhook] 'url https://hooks.example.com/services/T0AB12CD3/***' is not a setting"),
    ("[ari]\nusername = callguard:Sup3rS3cret", "Sup3rS3cret",
     "2: [ari] username: contains ':', which ends the user name in HTTP Basic "
     "authentication; write the user name alone"),
    ("[smtp]\nhost = cg:MailPw1@mail.example.com", "MailPw1",
     "2: [smtp] host: 'cg:***@mail.example.com' contains a user name or password"),
    ("[ari]\nurl http://callguard:Sup3rS3cret@127.0.0.1:8088/", "Sup3rS3cret",
     "2: [ari] 'url http://callguard:***@127.0.0.1:8088/' is not a setting"),
    ("[ari http://callguard:Sup3rS3cret@127.0.0.1:8088/", "Sup3rS3cret",
     "1: '[ari http://callguard:***@127.0.0.1:8088/' is not a section header"),
    ("#include http://callguard:Sup3rS3cret@127.0.0.1/callguard.conf", "Sup3rS3cret",
     "1: '#include http://callguard:***@127.0.0.1/callguard.conf' is not supported"),
]
# fmt: on


@pytest.mark.parametrize("lines, secret, shown", SECRET_VALUES)
def test_problem_masks_url_secret(workdir, lines, secret, shown):
    found = problems(f"{lines}\n[trunk gamma]\n{RATES_LINE}\n")

    assert all(secret not in problem for problem in found)
    assert any(problem.startswith(f"{CONFIG_NAME}:{shown}") for problem in found), found


def test_problem_format(workdir):
    text = "[trunk gamma]\n" + RATES_LINE + "\n" + "\n" * 11 + "daily_limit = fifty\n"

    assert problems(text) == [
        "callguard.conf:14: [trunk gamma] daily_limit: 'fifty' is not an amount; "
        "write it like 50.00"
    ]


def test_problem_fields(workdir):
    with pytest.raises(ConfigError) as caught:
        load(config_with("trunk gamma", "daily_limit", "fifty"))

    assert caught.value.problems == [
        ConfigProblem(
            file=CONFIG_NAME,
            line=2,
            section="trunk gamma",
            key="daily_limit",
            message="'fifty' is not an amount; write it like 50.00",
        )
    ]


def test_file_name_as_given(workdir):
    path = workdir / CONFIG_NAME
    path.write_text("[general]\ncurrency = 12\n")

    with pytest.raises(ConfigError) as caught:
        load_config(path)

    assert str(caught.value).startswith(f"{path}:2: [general] currency: '12'")


def test_all_problems_reported(workdir):
    text = (
        "log_level = info\n"  # 1
        "[general]\n"  # 2
        "home_country = UK\n"  # 3
        "fail_policy = sometimes\n"  # 4
        "[ari\n"  # 5
        "url = http://127.0.0.1:8088/\n"  # 6
        "[trunk gamma]\n"  # 7
        "daily_limit = fifty\n"  # 8
        "weekly_limit = lots\n"  # 9
        "[trunk delta]\n"  # 10
        "bar = mobile\n"  # 11
        "[number 01632960001]\n"  # 12
        "trunk = epsilon\n"  # 13
        "allow = international\n"  # 14
        "[foo]\n"  # 15
    )

    assert problems(text) == [
        "callguard.conf:1: log_level: setting outside any section; put it under a "
        "header such as [general]",
        "callguard.conf:3: [general] home_country: 'UK' is not a region code known "
        "to phonenumbers; write an ISO 3166 alpha-2 code like GB or IE",
        "callguard.conf:4: [general] fail_policy: 'sometimes' is not valid; write "
        "one of allow, deny",
        "callguard.conf:5: '[ari' is not a section header; write it like "
        "[trunk gamma]",
        "callguard.conf:7: [trunk gamma] rates: missing; set rates = PATH to a rate "
        "deck CSV, or default_rate = RATE to rate every destination alike",
        "callguard.conf:8: [trunk gamma] daily_limit: 'fifty' is not an amount; "
        "write it like 50.00",
        "callguard.conf:9: [trunk gamma] weekly_limit: 'lots' is not an amount; "
        "write it like 50.00",
        "callguard.conf:10: [trunk delta] rates: missing; set rates = PATH to a "
        "rate deck CSV, or default_rate = RATE to rate every destination alike",
        "callguard.conf:13: [number 01632960001] trunk: 'epsilon' is not a trunk; "
        "define [trunk epsilon] or use one of the trunks (delta, gamma)",
        "callguard.conf:15: [foo] unknown section; use [general], [ari], "
        "[smtp], [webhook], [trunk NAME] or [number NUMBER_OR_RANGE]",
    ]


# fmt: off
SYNTAX_PROBLEMS = [
    # (file text, expected lines)
    ("[trunk gamma]\nrates = a.csv\n[trunk gamma]\nbar = mobile\n", [
        "callguard.conf:2: [trunk gamma] rates: 'a.csv' is not a file (looked for "
        "{dir}/a.csv); create it or correct the path",
        "callguard.conf:3: [trunk gamma] duplicate section, first defined on line 1; "
        "merge the two sections into one"]),
    (f"[trunk gamma]\n{RATES_LINE}\nbar = mobile\nbar = pager\n", [
        "callguard.conf:4: [trunk gamma] bar: duplicate key, first set on line 3; "
        "remove one of the two lines"]),
    ("[general]\n[general]\n", [
        "callguard.conf:2: [general] duplicate section, first defined on line 1; "
        "merge the two sections into one"]),
    ("[ari]\ntimeout\n", [
        "callguard.conf:2: [ari] 'timeout' is not a setting; write it like "
        "key = value"]),
    ("[ari]\n= yes\n", [
        "callguard.conf:2: [ari] '= yes' is not a setting; write it like "
        "key = value"]),
    ("#include extra.conf\n[general]\n", [
        "callguard.conf:1: '#include extra.conf' is not supported; callguard reads "
        "no #include or #exec directives, so copy the settings into this file"]),
    ("[general](!)\ncurrency = GBP\n", [
        "callguard.conf:1: '[general](!)' is not a section header; write it like "
        "[trunk gamma]"]),
    ("[]\n", [
        "callguard.conf:1: '[]' is not a section header; write it like "
        "[trunk gamma]"]),
    ("[Général]\n", [
        "callguard.conf:1: [Général] unknown section; use [general], [ari], "
        "[smtp], [webhook], [trunk NAME] or [number NUMBER_OR_RANGE]"]),
    ("[Trunk gamma]\ndefault_rate = 0.1\n[GENERAL]\n", [
        "callguard.conf:1: [Trunk gamma] unknown section, because section kinds are "
        "lower case; write it like [trunk gamma]",
        "callguard.conf:3: [GENERAL] unknown section, because section kinds are "
        "lower case; write it like [general]"]),
    (f"[trunk gamma]\n{RATES_LINE}\nweekly_limit = 200.00 # per week\n", [
        "callguard.conf:3: [trunk gamma] weekly_limit: '200.00 # per week' is not an "
        "amount; write it like 50.00; '#' does not start a comment in this file, so "
        "start the comment with ';'"]),
    ("[trunk]\n[number]\n", [
        "callguard.conf:1: [trunk] section needs a name; write it like "
        "[trunk gamma]",
        "callguard.conf:2: [number] section needs a name; write it like "
        "[number 01632960001]"]),
    ("[trunk gamma/1]\ndefault_rate = 0.1\n", [
        "callguard.conf:1: [trunk gamma/1] 'gamma/1' is not a trunk name; use "
        "ASCII letters (a-z, A-Z), digits, '-', '_' or '.'"]),
    ("[trunk gämma]\ndefault_rate = 0.1\n", [
        "callguard.conf:1: [trunk gämma] 'gämma' is not a trunk name; use "
        "ASCII letters (a-z, A-Z), digits, '-', '_' or '.'"]),
]
# fmt: on


@pytest.mark.parametrize("text, expected", SYNTAX_PROBLEMS)
def test_syntax_problem(workdir, text, expected):
    assert problems(text) == [line.format(dir=workdir) for line in expected]


def test_unknown_category_in_override(workdir):
    text = f"[trunk gamma]\n{RATES_LINE}\n[number 01632960001]\nallow = intl\n"

    assert problems(text) == [
        "callguard.conf:4: [number 01632960001] allow: 'intl' is not a barring "
        f"category; use one of {CATEGORY_LIST}"
    ]


# fmt: off
OVERRIDE_PROBLEMS = [
    # (section header, body, expected lines)
    ("number 01632960001", "trunk = gamma\n", [
        "callguard.conf:3: [number 01632960001] allow: missing; set allow = "
        "CATEGORIES or bar = CATEGORIES for this number"]),
    ("number 01632960001", "allow = mobile, premium\nbar = premium\n", [
        "callguard.conf:5: [number 01632960001] bar: 'premium' is both allowed and "
        "barred; remove it from one of the lists"]),
    ("number 01632960001, 01632960002", "allow = mobile\n", [
        "callguard.conf:3: [number 01632960001, 01632960002] '01632960001, "
        "01632960002' lists several numbers; give each number or range its own "
        "[number] section"]),
    ("number 01632960099-01632960000", "allow = mobile\n", [
        "callguard.conf:3: [number 01632960099-01632960000] '01632960099-"
        "01632960000' starts above its end; write the lower number first, like "
        "01632960000-01632960099"]),
    ("number 01632960001", "bar = emergency\n", [
        "callguard.conf:4: [number 01632960001] bar: 'emergency' cannot be barred, "
        "because emergency calls must always connect; remove it from the list"]),
    ("number 01632960001", "allow = mobile\ntrunk_name = gamma\n", [
        "callguard.conf:5: [number 01632960001] trunk_name: unknown key; did you "
        "mean trunk? known keys are trunk, allow, bar"]),
]
# fmt: on


@pytest.mark.parametrize("header, body, expected", OVERRIDE_PROBLEMS)
def test_override_problem(workdir, header, body, expected):
    text = f"[trunk gamma]\n{RATES_LINE}\n[{header}]\n{body}"

    assert problems(text) == expected


def test_prefixes_outside_gb(workdir):
    text = "[general]\nhome_country = IE\n"

    assert problems(text) == [
        "callguard.conf:1: [general] prefixes: missing; the packaged prefix table "
        "covers GB only, so set prefixes = PATH to a table for IE"
    ]


def test_numbers_in_home_country(workdir):
    text = (
        "[general]\nhome_country = IE\nprefixes = prefixes.csv\n"
        "[trunk gamma]\ndefault_rate = 0.10\nnumbers = 01 234 5678\n"
    )

    config = load(text)

    assert "+35312345678" in config.trunks["gamma"].numbers


def test_numbers_parsed_after_bad_region(workdir):
    text = "[general]\nhome_country = UK\n[trunk gamma]\n" + RATES_LINE + "\n"
    text += "numbers = 01632960000, 0163\n"

    assert problems(text)[1:] == [
        "callguard.conf:5: [trunk gamma] numbers: '0163' has the wrong length for a "
        f"full number of GB; write it like {GB_NUMBER}"
    ]


def test_missing_file(workdir):
    with pytest.raises(ConfigError) as caught:
        load_config("absent.conf")

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].line == 0
    assert str(caught.value).startswith("absent.conf: cannot be read (")
    assert str(caught.value).endswith("check the path and its permissions")


def test_invalid_utf8(workdir):
    Path(CONFIG_NAME).write_bytes(b"[general]\ncurrency = \xff\n")

    with pytest.raises(ConfigError) as caught:
        load_config(CONFIG_NAME)

    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].line == 2
    assert str(caught.value) == (
        "callguard.conf:2: byte 0xff at column 12 is not valid UTF-8; save the file as UTF-8"
    )


def test_comments_and_escapes(workdir):
    text = (
        "; a comment line\n"
        "   ; an indented comment\n"
        "\n"
        "[trunk gamma] ; header comment\n"
        "  rates = rates-gamma.csv   ; trailing comment\n"
        "channel_pattern = PJSIP/a\\;b;comment\n"
        "notify = noc@example.com;; two semicolons\n"
    )

    trunk = load(text).trunks["gamma"]

    assert trunk.rates == workdir / "rates-gamma.csv"
    assert trunk.channel_pattern == "PJSIP/a;b"
    assert trunk.notify == ("noc@example.com",)


def test_arrow_assignment(workdir):
    text = "[trunk gamma]\nrates => rates-gamma.csv\ndaily_limit=>5.00\n"

    trunk = load(text).trunks["gamma"]

    assert trunk.daily_limit == Decimal("5.00")
    assert trunk.rates == workdir / "rates-gamma.csv"


def test_whitespace_and_bom(workdir):
    Path(CONFIG_NAME).write_text(
        "\ufeff[ trunk   gamma ]\r\n\tdefault_rate\t=\t0.10 \r\n", encoding="utf-8"
    )

    config = load_config(CONFIG_NAME)

    assert list(config.trunks) == ["gamma"]


def test_defaults(workdir):
    config = load(f"[trunk gamma]\n{RATES_LINE}\n")

    general, ari, trunk = config.general, config.ari, config.trunks["gamma"]
    assert general.database == "sqlite:////var/lib/callguard/callguard.db"
    assert general.home_country == "GB"
    assert general.timezone == ZoneInfo("Europe/London")
    assert general.currency == "GBP"
    assert (general.fastagi_host, general.fastagi_port) == ("127.0.0.1", 4573)
    assert general.allowed_clients == (
        ip_network("127.0.0.1/32"),
        ip_network("::1/128"),
    )
    assert general.outside_line_prefix == ""
    assert general.emergency_numbers == ("999", "112")
    assert general.fail_policy == "deny"
    assert general.decision_timeout == 1.0
    assert general.prefixes is None
    assert general.reservation_seconds == 120
    assert general.control_socket == Path("/run/callguard/callguard.sock")
    assert general.log_level == "info"
    assert general.log_calls == "denied"
    assert general.event_loop == "uvloop"
    assert ari.enabled is True
    assert ari.url == "http://127.0.0.1:8088/"
    assert ari.username == "callguard"
    assert ari.password_file is None
    assert ari.app == "callguard"
    assert ari.ca_file is None
    assert ari.ping_timeout == 30.0
    assert trunk.bar == frozenset()
    assert trunk.daily_limit is None
    assert trunk.weekly_limit is None
    assert trunk.warn_percent == (80,)
    assert trunk.max_concurrent_calls is None
    assert trunk.max_call_seconds is None
    assert trunk.default_rate is None
    assert not trunk.numbers
    assert trunk.timezone == ZoneInfo("Europe/London")
    assert trunk.notify == ()
    assert config.overrides == ()
    assert config.path == workdir / CONFIG_NAME


def test_with_database(workdir):
    config = load(f"[trunk gamma]\n{RATES_LINE}\n")

    changed = config.with_database("sqlite:///other.db")

    assert changed.general.database == f"sqlite:///{workdir}/other.db"
    assert changed.general.currency == config.general.currency
    assert changed.trunks == config.trunks
    assert config.general.database == "sqlite:////var/lib/callguard/callguard.db"


def test_with_database_invalid(workdir):
    config = load(f"[trunk gamma]\n{RATES_LINE}\n")

    with pytest.raises(ValueError, match="'mysql://x/y' uses the unsupported driver"):
        config.with_database("mysql://x/y")


def test_default_path():
    assert DEFAULT_CONFIG_PATH == "/etc/callguard/callguard.conf"


def test_config_frozen(workdir):
    config = load(f"[trunk gamma]\n{RATES_LINE}\n")

    with pytest.raises(TypeError):
        config.trunks["delta"] = config.trunks["gamma"]
    with pytest.raises(AttributeError):
        config.general.currency = "EUR"


def test_relative_to_config_dir(workdir, monkeypatch, tmp_path_factory):
    other = tmp_path_factory.mktemp("elsewhere")
    monkeypatch.chdir(other)
    path = workdir / CONFIG_NAME
    path.write_text("[trunk gamma]\nrates = rates-gamma.csv\n")

    config = load_config(path)

    assert config.trunks["gamma"].rates == workdir / "rates-gamma.csv"


def test_file_without_trunk_rejected(workdir):
    assert problems("[general]\ncurrency = GBP\n") == [
        f"{CONFIG_NAME}: has no [trunk NAME] section, so every call would be denied "
        "unknown-trunk; add one for each outbound trunk, like [trunk gamma] with its rates"]


def test_ari_password(workdir):
    config = load(config_with("ari", "password_file", "ari.secret"))

    assert config.ari.password() == "s3cret;pass"
    assert "s3cret" not in repr(config.ari)


def test_ari_password_unset(workdir):
    config = load(f"[trunk gamma]\n{RATES_LINE}\n")

    assert config.ari.password() is None


def test_password_warnings(workdir, caplog):
    caplog.set_level(logging.WARNING, logger="callguard.config")
    load(f"[trunk gamma]\n{RATES_LINE}\n")
    (workdir / "ari.secret").chmod(0o644)
    load(config_with("ari", "password_file", "ari.secret"))
    (workdir / "ari.secret").chmod(0o600)
    load(config_with("ari", "password_file", "ari.secret"))
    load(config_with("ari", "enabled", "no"))

    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2
    assert "password_file is not set" in messages[0]
    assert "does not connect to http://127.0.0.1:8088/" in messages[0]
    assert "set password_file to the file" in messages[0]
    assert "readable by other users (mode 644)" in messages[1]
    assert all("s3cret" not in message for message in messages)


# fmt: off
MEMBERSHIP = [
    # (numbers value, caller, expected)
    ("01632960000-01632960099", "+441632959999", False),
    ("01632960000-01632960099", "+441632960000", True),
    ("01632960000-01632960099", "+441632960050", True),
    ("01632960000-01632960099", "+441632960099", True),
    ("01632960000-01632960099", "+441632960100", False),
    ("01632960000-01632960099", "441632960000", True),
    ("01632960000-01632960099", "+4416329600", False),
    ("01632960000-01632960099", "+4416329600000", False),
    ("01632960000-01632960099", "01632960000", False),
    ("01632960000-01632960099", "", False),
    ("01632960000-01632960099", None, False),
    ("01632960000-01632960099", "+44 1632 960000", False),
    ("01632960000-01632960099", "+441632960000x", False),
    ("+441632960000, 02079460123", "+442079460123", True),
    ("+441632960000, 02079460123", "+442079460124", False),
    ("+353 1 234 5678", "+35312345678", True),
    ("+1 201 555 0123", "+12015550123", True),
    ("+1 201 555 0123", "012015550123", False),
]
# fmt: on


@pytest.mark.parametrize("value, caller, expected", MEMBERSHIP)
def test_range_membership(workdir, value, caller, expected):
    trunk = load(config_with("trunk gamma", "numbers", value)).trunks["gamma"]

    assert (caller in trunk.numbers) is expected


# fmt: off
OPT_OUT = [
    # (caller, expected opted_out)
    ("+441632960049", False),
    ("+441632960050", True),
    ("+441632960059", True),
    ("+441632960060", False),
    ("+441632960061", True),
    ("+441632960069", True),
    ("+441632960070", False),
    ("+441632960099", True),
    ("+441632960100", False),
    (None, False),
]
# fmt: on


@pytest.mark.parametrize("caller, expected", OPT_OUT)
def test_opt_in_inside_opt_out(workdir, caller, expected):
    text = (
        f"[trunk gamma]\n{RATES_LINE}\n"
        "opt_out = 01632960050-01632960099\n"
        "opt_in = 01632960060, 01632960070\n"
    )

    trunk = load(text).trunks["gamma"]

    assert trunk.opted_out(caller) is expected


def test_ranges_merged():
    ranges = NumberRanges(((30, 40), (1, 5), (6, 9), (3, 4), (50, 50)))

    assert ranges.ranges == ((1, 9), (30, 40), (50, 50))
    assert str(ranges) == "+1-+9, +30-+40, +50"
    assert bool(ranges)
    assert not NumberRanges()
    assert str(NumberRanges()) == ""


def test_ranges_reject_reversed():
    with pytest.raises(ValueError, match=r"range \(5, 1\)"):
        NumberRanges(((5, 1),))


# Warnings: settings that load but likely misfire.


def general_warnings(general: str) -> list[str]:
    return config_warnings(load(f"[general]\n{general}\n[trunk gamma]\n{RATES_LINE}\n"))


def test_outside_line_zero_warns(workdir):
    warnings = general_warnings("outside_line_prefix = 0")

    assert len(warnings) == 2
    national, international = warnings
    assert national.startswith(
        "[general] outside_line_prefix '0' begins the national prefix '0', and "
        "callguard strips it from every dialled number that starts with it. So 0"
    )
    assert ", dialled without the outside-line prefix, is read as " in national
    assert "and rejected as invalid. Phones must always dial '0' first, like 00" in national
    assert national.endswith(
        "if they dial numbers without it, leave outside_line_prefix empty"
    )
    assert international.startswith(
        "[general] outside_line_prefix '0' begins the international prefix '00'"
    )
    assert (
        "So 0033123456789, dialled without the outside-line prefix, is read as "
        "033123456789 and rejected as invalid" in international
    )


def test_outside_line_zero_misreads_national():
    with pytest.raises(InvalidNumber):
        NumberPlan("GB", "0").normalise("01632960123")

    assert NumberPlan("GB", "0").normalise("001632960123").e164 == "+441632960123"


def test_outside_line_double_zero_warns(workdir):
    warnings = general_warnings("outside_line_prefix = 00")

    assert warnings == [
        "[general] outside_line_prefix '00' begins the international prefix '00', "
        "and callguard strips it from every dialled number that starts with it. So "
        "0033123456789, dialled without the outside-line prefix, is read as "
        "33123456789 and rejected as invalid. Phones must always dial '00' first, "
        "like 000033123456789; if they dial numbers without it, leave "
        "outside_line_prefix empty"
    ]


@pytest.mark.parametrize("prefix", ["", "9", "1", "90"])
def test_outside_line_prefix_quiet(workdir, prefix):
    assert general_warnings(f"outside_line_prefix = {prefix}") == []


def test_emergency_long_number_warns(workdir):
    warnings = general_warnings("emergency_numbers = 999, 01632960123")

    assert warnings == [
        "[general] emergency_numbers: '01632960123' has 11 digits, more than the 6 "
        "of the longest short code in GB, and is in category 'geographic' of the "
        "prefix table prefixes-gb.csv. Calls to an emergency number skip every "
        "barring and limit and are never hung up, so remove it unless it reaches "
        "the emergency services"
    ]


def test_emergency_service_code_warns(workdir):
    warnings = general_warnings("emergency_numbers = 101")

    assert warnings == [
        "[general] emergency_numbers: '101' is in category 'service' of the prefix "
        "table prefixes-gb.csv. Calls to an emergency number skip every barring and "
        "limit and are never hung up, so remove it unless it reaches the emergency "
        "services"
    ]


def test_emergency_always_number_in_table_warns(workdir):
    # 999 stays an emergency number whatever the config sets, so the table row is wrong.
    sample = Path(__file__).resolve().parent.parent / "etc" / "prefixes-gb.csv"
    Path("mobile999.csv").write_text(
        sample.read_text().replace("999,emergency", "999,mobile"))

    warnings = general_warnings("prefixes = mobile999.csv")

    assert warnings == [
        "[general] emergency_numbers: '999' is in category 'mobile' of the prefix "
        f"table {Path('mobile999.csv').absolute()}. callguard always treats 999 as an "
        "emergency number, so correct the prefix table's row for it"
    ]


@pytest.mark.parametrize("number", ["0", "9"])
def test_emergency_one_digit_warns(workdir, number):
    # A single digit makes the phone's first keypress a call that skips every limit.
    warnings = general_warnings(f"emergency_numbers = 999, {number}")

    assert len(warnings) == 1
    assert warnings[0].startswith(
        f"[general] emergency_numbers: {number!r} has only 1 digit, and no emergency "
        "number has fewer than 2."
    )


@pytest.mark.parametrize("row, reason", [
    ("09011234567", "starts with the national prefix 0"),
    ("+35315501234", "is an international number"),
    ("1234567", "has 7 digits, more than the 6 of the longest short code in GB"),
])
def test_emergency_table_row_warns(workdir, row, reason):
    sample = Path(__file__).resolve().parent.parent / "etc" / "prefixes-gb.csv"
    text = sample.read_text() + f"{row},emergency,Mistaken row\n"
    Path("extra.csv").write_text(text)
    line = len(text.splitlines())

    warnings = general_warnings("prefixes = extra.csv")

    assert warnings == [
        f"{Path('extra.csv').absolute()}:{line}: prefix {row!r} is in category 'emergency' "
        f"but {reason}. Calls to an emergency number skip every barring and limit and are "
        "never hung up, so give the row another category unless the number reaches the "
        "emergency services"
    ]


@pytest.mark.parametrize("numbers", ["999, 112", "18000", "911"])
def test_emergency_numbers_quiet(workdir, numbers):
    assert general_warnings(f"emergency_numbers = {numbers}") == []


def test_emergency_warning_without_table(workdir):
    # The workdir's prefixes.csv lacks the description column, so it cannot load.
    warnings = general_warnings(
        "prefixes = prefixes.csv\nemergency_numbers = 01632960123"
    )

    assert len(warnings) == 1
    assert warnings[0].startswith(
        "[general] emergency_numbers: '01632960123' has 11 digits, more than the 6 "
        "of the longest short code in GB. Calls"
    )


def test_overrides_for(workdir):
    text = (
        f"[trunk gamma]\n{RATES_LINE}\n"
        f"[trunk delta]\n{RATES_LINE}\n"
        "[number 01632960000-01632960009]\nallow = international\n"
        "[number 01632960005]\ntrunk = delta\nbar = mobile\n"
        "[number 01632960005-01632960006]\ntrunk = gamma\nbar = premium\n"
    )

    config = load(text)

    everywhere, delta_only, gamma_only = config.overrides
    assert config.overrides_for("gamma", "+441632960005") == [everywhere, gamma_only]
    assert config.overrides_for("delta", "+441632960005") == [everywhere, delta_only]
    assert config.overrides_for("delta", "+441632960009") == [everywhere]
    assert config.overrides_for("delta", "+441632960010") == []
    assert config.overrides_for("gamma", None) == []
    assert delta_only.allow == frozenset()
    assert delta_only.bar == frozenset({"mobile"})
    assert everywhere.trunk is None


# fmt: off
DURATIONS = [
    ("250ms", 0.25),
    ("1s", 1.0),
    ("2m", 120.0),
    ("1h", 3600.0),
    ("30", 30.0),
    ("1.5", 1.5),
    ("1.5m", 90.0),
    ("1d", 86400.0),
    ("1.5d", 129600.0),
    ("2w", 1209600.0),
    ("1 w", 604800.0),
    ("0", 0.0),
    (" 10 s ", 10.0),
    ("100 ms", 0.1),
]
# fmt: on


@pytest.mark.parametrize("text, seconds", DURATIONS)
def test_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "1y", "1S", "1W", "-1s", "1e3", "1.s", "ten"])
def test_duration_invalid(text):
    with pytest.raises(ValueError) as caught:
        parse_duration(text)

    assert str(caught.value) == f"{text!r} is not a duration; {DURATION_FIX}"


def sample_comment(section: str, key: str) -> str:
    """Return the comment lines just above ``key`` in ``section`` of the sample config."""
    lines = SAMPLE.read_text().splitlines()
    start = lines.index(f"[{section}]")
    end = next(i for i in range(start, len(lines)) if lines[i].startswith(f"{key} ="))
    comment = []
    for line in reversed(lines[start:end]):
        if not line.startswith(";"):
            break
        comment.insert(0, line.lstrip("; "))
    return " ".join(comment)


@pytest.mark.parametrize("section, key", [
    ("general", "decision_timeout"),
    ("ari", "ping_timeout"),
    ("smtp", "timeout"),
    ("smtp", "give_up_after"),
    ("webhook", "timeout"),
    ("webhook", "give_up_after"),
    ("trunk gamma", "repeat_window"),
])
def test_duration_limit_as_sample_writes(workdir, section, key):
    limit = re.search(r"at most (\w+)", sample_comment(section, key))[1]

    assert problems(config_with(section, key, "2w")) == [
        f"{CONFIG_NAME}:2: [{section}] {key}: '2w' is too long; write at most {limit}"
    ]


def test_categories():
    assert len(KNOWN_CATEGORIES) == 17
    assert "operator" in KNOWN_CATEGORIES
    assert "international-premium" in KNOWN_CATEGORIES
    assert "emergency" in KNOWN_CATEGORIES


def test_sample_loads(tmp_path):
    shutil.copy(SAMPLE, tmp_path / CONFIG_NAME)
    shutil.copy(SAMPLE.parent / "ari.secret", tmp_path / "ari.secret")
    (tmp_path / "rates-gamma.csv").write_text("prefix,rate\n")

    config = load_config(tmp_path / CONFIG_NAME)

    trunk = config.trunks["gamma"]
    assert trunk.rates == tmp_path / "rates-gamma.csv"
    assert trunk.bar == frozenset(
        {"premium", "international", "special-084", "special-087", "directory", "operator",
         "personal"}
    )
    assert trunk.daily_limit == Decimal("50.00")
    assert trunk.opted_out("+441632960050")
    assert "+442079460123" in trunk.numbers
    assert config.overrides_for("gamma", "+441632960001")[0].allow == frozenset(
        {"international"}
    )
    assert config.smtp is None
    assert config.webhook is None


def test_sample_in_place():
    config = load_config(SAMPLE)

    assert config.trunks["gamma"].rates == SAMPLE.parent / "rates-gamma.csv"


# [smtp] and [webhook].

SMTP_BASE = {"host": "mail.example.com", "from": "cg@example.com", "to": "noc@ex.com"}


def delivery_config(smtp: dict | None = None, webhook: dict | None = None) -> str:
    """Return a config whose [smtp] starts on line 1 and [webhook] follows it."""
    lines = []
    for name, keys in (("smtp", smtp), ("webhook", webhook)):
        if keys is not None:
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {value}" for key, value in keys.items())
    lines += ["[trunk gamma]", RATES_LINE]
    return "\n".join(lines) + "\n"


def test_smtp_defaults(workdir):
    config = load(delivery_config(smtp=SMTP_BASE))

    assert config.smtp == SmtpConfig(
        host="mail.example.com",
        port=25,
        security="starttls",
        username=None,
        password_file=None,
        sender="cg@example.com",
        to=("noc@ex.com",),
        timeout=10.0,
        ca_file=None,
        give_up_after=3600.0,
    )
    assert config.webhook is None


# fmt: off
GOOD_DELIVERY = [
    # (section, key, value, attribute, expected)
    ("smtp", "host", "127.0.0.1", "host", "127.0.0.1"),
    ("smtp", "host", "[::1]", "host", "::1"),
    ("smtp", "host", "Mail.Example.COM.", "host", "Mail.Example.COM"),
    ("smtp", "port", "587", "port", 587),
    ("smtp", "security", "TLS", "port", 465),
    ("smtp", "security", "none", "security", "none"),
    ("smtp", "to", "noc@ex.com, ops@ex.com", "to", ("noc@ex.com", "ops@ex.com")),
    ("smtp", "timeout", "500ms", "timeout", 0.5),
    ("smtp", "give_up_after", "24h", "give_up_after", 86400.0),
    ("smtp", "ca_file", "ca.pem", "ca_file", "{dir}/ca.pem"),
    ("webhook", "url", "https://hooks.example.com/cg?token=abc", "url",
     "https://hooks.example.com/cg?token=abc"),
    ("webhook", "secret_file", "ari.secret", "secret_file", "{dir}/ari.secret"),
    ("webhook", "timeout", "2s", "timeout", 2.0),
    ("webhook", "give_up_after", "30m", "give_up_after", 1800.0),
    ("webhook", "ca_file", "ca.pem", "ca_file", "{dir}/ca.pem"),
]
# fmt: on


@pytest.mark.parametrize("section, key, value, name, expected", GOOD_DELIVERY)
def test_good_delivery_value(workdir, section, key, value, name, expected):
    if section == "smtp":
        text = delivery_config(smtp=SMTP_BASE | {key: value})
    else:
        text = delivery_config(webhook={"url": "https://h.example.com/"} | {key: value})

    settings = getattr(load(text), section)

    if isinstance(expected, str) and "{dir}" in expected:
        expected = Path(expected.format(dir=workdir))
    assert getattr(settings, name) == expected


def test_smtp_login(workdir):
    keys = SMTP_BASE | {"username": "cg", "password_file": "ari.secret"}

    config = load(delivery_config(smtp=keys))

    assert config.smtp.username == "cg"
    assert config.smtp.password() == "s3cret;pass"
    assert "s3cret" not in repr(config.smtp)


def test_smtp_clear_login_on_loopback(workdir):
    keys = SMTP_BASE | {
        "host": "127.0.0.1",
        "security": "none",
        "username": "cg",
        "password_file": "ari.secret",
    }

    assert load(delivery_config(smtp=keys)).smtp.security == "none"


def test_delivery_off_without_host(workdir):
    smtp = {"from": "cg@example.com", "to": "noc@ex.com"}
    webhook = {"timeout": "5s"}

    config = load(delivery_config(smtp=smtp, webhook=webhook))

    assert config.smtp is None
    assert config.webhook is None


def test_webhook_settings(workdir):
    keys = {"url": "http://127.0.0.1:9000/hook", "secret_file": "ari.secret"}

    config = load(delivery_config(webhook=keys))

    assert config.webhook == WebhookConfig(
        url="http://127.0.0.1:9000/hook",
        secret_file=workdir / "ari.secret",
        timeout=10.0,
        ca_file=None,
        give_up_after=3600.0,
    )
    assert config.webhook.secret() == "s3cret;pass"


HOST_FIX = "write it like mail.example.com or 127.0.0.1"
HOOK_FIX = "write it like https://hooks.example.com/callguard"

# fmt: off
BAD_DELIVERY = [
    # (smtp keys, webhook keys, expected lines)
    ({"host": "smtp://mail.example.com"}, None, [
        "2: [smtp] host: 'smtp://mail.example.com' is not a host name; write only "
        f"the host, like mail.example.com or 127.0.0.1"]),
    ({"host": "cg:MailPw1@mail.example.com"}, None, [
        "2: [smtp] host: 'cg:***@mail.example.com' contains a user name or password; "
        "write the host alone, like mail.example.com or 127.0.0.1, and set username "
        "and password_file"]),
    ({"host": "smtp://cg:MailPw1@mail.example.com"}, None, [
        "2: [smtp] host: 'smtp://cg:***@mail.example.com' is not a host name; write "
        "only the host, like mail.example.com or 127.0.0.1"]),
    ({"host": "mail.example.com:587"}, None, [
        "2: [smtp] host: 'mail.example.com:587' contains a port; write the host "
        "alone, like mail.example.com or 127.0.0.1, and set port ="]),
    ({"host": "mail_relay!"}, None, [
        f"2: [smtp] host: 'mail_relay!' is not a host name; {HOST_FIX}"]),
    ({"port": "0"}, None, [
        "5: [smtp] port: '0' is not a port; write a number from 1 to 65535"]),
    ({"security": "ssl"}, None, [
        "5: [smtp] security: 'ssl' is not valid; write one of none, starttls, tls"]),
    ({"from": "callguard"}, None, [
        "3: [smtp] from: 'callguard' is not an e-mail address; write it like "
        "callguard@example.com"]),
    ({"to": "noc, ops@ex.com"}, None, [
        "4: [smtp] to: 'noc' is not an e-mail address; write it like "
        "noc@example.com"]),
    ({"from": "", "to": ""}, None, [
        "3: [smtp] from: missing; set from = ADDRESS, the sender address of "
        "callguard's alerts",
        "4: [smtp] to: missing; set to = ADDRESS, the addresses that receive "
        "every alert"]),
    ({"username": "cg"}, None, [
        "5: [smtp] password_file: missing; set both username and password_file "
        "to log in, or neither"]),
    ({"username": "c g", "password_file": "ari.secret"}, None, [
        "5: [smtp] username: 'c g' is not a valid user name; write it without "
        "spaces or control characters"]),
    ({"security": "none", "username": "cg", "password_file": "ari.secret"}, None, [
        "5: [smtp] security: is none, so the password would cross the network in "
        "clear text to mail.example.com; set security = starttls or tls"]),
    ({"security": "none", "ca_file": "ca.pem"}, None, [
        "6: [smtp] ca_file: is set but security = none uses no TLS; set security "
        "= starttls or tls, or remove ca_file"]),
    ({"timeout": "10m"}, None, [
        "5: [smtp] timeout: '10m' is too long; write at most 300s"]),
    ({"give_up_after": "25h"}, None, [
        "5: [smtp] give_up_after: '25h' is too long; write at most 24h"]),
    ({"give_up_after": "2d"}, None, [
        "5: [smtp] give_up_after: '2d' is too long; write at most 24h"]),
    ({"password_file": "smtp.secret", "username": "cg"}, None, [
        "5: [smtp] password_file: 'smtp.secret' is not a file (looked for "
        "{dir}/smtp.secret); create it or correct the path"]),
    (None, {"url": "ftp://files.example.com/"}, [
        f"2: [webhook] url: 'ftp://files.example.com/' is not an http or https "
        f"URL; {HOOK_FIX}"]),
    (None, {"url": "https://hooks.example.com:x/"}, [
        f"2: [webhook] url: 'https://hooks.example.com:x/' has an invalid port; "
        f"{HOOK_FIX}"]),
    (None, {"url": "https://cg:pw@hooks.example.com/"}, [
        "2: [webhook] url: 'https://cg:***@hooks.example.com/' has credentials or "
        "a fragment; write only scheme, host, port, path and query, and let the "
        "receiver check the signature made with secret_file"]),
    (None, {"url": "http://bob:HookPw9@127.0.0.1:9/hook"}, [
        "2: [webhook] url: 'http://bob:***@127.0.0.1:9/hook' has credentials or "
        "a fragment; write only scheme, host, port, path and query, and let the "
        "receiver check the signature made with secret_file"]),
    (None, {"url": "https://hooks.example.com:x/cb?token=T0ken"}, [
        "2: [webhook] url: 'https://hooks.example.com:x/cb?token=***' has an invalid "
        f"port; {HOOK_FIX}"]),
    (None, {"url": "http://hooks.example.com/", "ca_file": "ca.pem"}, [
        "3: [webhook] ca_file: is set but url uses http://, which has no "
        "certificate to check; use an https:// url or remove ca_file"]),
    (None, {"url": "https://hooks.example.com/", "timeout": "0"}, [
        "3: [webhook] timeout: '0' must be longer than zero; write it like 1s"]),
    (None, {"url": "https://hooks.example.com/", "timeout": "301"}, [
        "3: [webhook] timeout: '301' is too long; write at most 300s"]),
    (None, {"url": "https://hooks.example.com/", "give_up_after": "2d"}, [
        "3: [webhook] give_up_after: '2d' is too long; write at most 24h"]),
    (None, {"url": "https://hooks.example.com/", "retries": "3"}, [
        "3: [webhook] retries: unknown key; known keys are url, secret_file, "
        "timeout, ca_file, give_up_after"]),
]
# fmt: on


@pytest.mark.parametrize("smtp, webhook, expected", BAD_DELIVERY)
def test_bad_delivery_value(workdir, smtp, webhook, expected):
    if smtp is not None:
        smtp = SMTP_BASE | smtp
    text = delivery_config(smtp=smtp, webhook=webhook)

    assert problems(text) == [
        f"{CONFIG_NAME}:{line.format(dir=workdir)}" for line in expected
    ]


def test_delivery_secret_warnings(workdir, caplog):
    caplog.set_level(logging.WARNING, logger="callguard.config")
    (workdir / "ari.secret").chmod(0o640)
    smtp = SMTP_BASE | {"username": "cg", "password_file": "ari.secret"}

    load(delivery_config(smtp=smtp))
    load(delivery_config(webhook={"url": "https://h.example.com/"}))
    load(
        delivery_config(
            webhook={"url": "https://h.example.com/", "secret_file": "ari.secret"}
        )
    )

    messages = [r.getMessage() for r in caplog.records if "ARI" not in r.getMessage()]
    assert len(messages) == 3
    assert "SMTP password file" in messages[0]
    assert "(mode 640)" in messages[0]
    assert "secret_file is not set" in messages[1]
    assert "webhook secret file" in messages[2]
    assert all("s3cret" not in message for message in messages)


NOTIFY_NOWHERE = (
    "[trunk gamma] notify = noc@example.com, ops@example.com, but this trunk's alerts "
    "go nowhere until [smtp] host or [webhook] url is set, and each is dropped with "
    "a warning in the log; set host, from and to in [smtp], or url in [webhook]")
NOTIFY_WEBHOOK_ONLY = (
    "[trunk gamma] notify = noc@example.com, ops@example.com, but [smtp] host is not "
    "set, so this trunk's alerts go only to the webhook and never to these "
    "addresses; set host, from and to in [smtp], or remove notify")
HOOK = {"url": "https://hooks.example.com/"}


@pytest.mark.parametrize("smtp, webhook, notify, expected", [
    (None, None, "noc@example.com, ops@example.com", [NOTIFY_NOWHERE]),
    # [smtp] without host, as in the sample config, turns e-mail off too.
    ({"security": "starttls"}, None, "noc@example.com, ops@example.com", [NOTIFY_NOWHERE]),
    (None, HOOK, "noc@example.com, ops@example.com", [NOTIFY_WEBHOOK_ONLY]),
    (SMTP_BASE, None, "noc@example.com, ops@example.com", []),
    (SMTP_BASE, HOOK, "noc@example.com, ops@example.com", []),
    (None, None, "", []),
])
def test_notify_without_mail_warns(workdir, smtp, webhook, notify, expected):
    text = delivery_config(smtp=smtp, webhook=webhook) + f"notify = {notify}\n"

    warnings = [warning for warning in config_warnings(load(text)) if "notify" in warning]

    assert warnings == expected


@pytest.mark.parametrize("cap, warned", [("24h", False), ("86401", True), ("2d", True)])
def test_call_cap_over_a_day_warns(workdir, cap, warned):
    warnings = config_warnings(
        load(f"[general]\n[trunk gamma]\n{RATES_LINE}\nmax_call_seconds = {cap}\n"))

    capped = [w for w in warnings if "max_call_seconds" in w]
    assert bool(capped) is warned
    if warned:
        assert "never gives a call more than 86400 s (24 h); write 24h or less" in capped[0]


def test_opt_out_beyond_trunk_numbers_warns(workdir):
    warnings = config_warnings(load(
        "[general]\n[trunk gamma]\n" + RATES_LINE + "\n"
        "numbers = 01632960000-01632960099, 02079460123\n"
        "opt_out = 01632960050, 01632960090-01632960110\n"
        "opt_in = 02079460123\n"
        "[number 01632970001]\ntrunk = gamma\nallow = international\n"
        "[number 01632960001]\ntrunk = gamma\nallow = international\n"
    ))

    stray = [w for w in warnings if "not among the trunk's numbers" in w]
    assert len(stray) == 2
    assert stray[0].startswith("[trunk gamma] opt_out: +441632960100-+441632960110 is not")
    assert "[number ...] section for +441632970001: +441632970001 is not" in stray[1]


def test_trunk_without_numbers_has_no_range_warning(workdir):
    warnings = config_warnings(load(
        "[general]\n[trunk gamma]\n" + RATES_LINE + "\nopt_out = 01632960050\n"))

    assert not [w for w in warnings if "numbers" in w]


@pytest.mark.parametrize("ranges, covering, outside", [
    (((10, 20),), ((12, 14), (16, 16)), ((10, 11), (15, 15), (17, 20))),
    (((10, 20),), ((0, 30),), ()),
    (((10, 20), (40, 50)), ((15, 45),), ((10, 14), (46, 50))),
    (((10, 20),), (), ((10, 20),)),
    (((10, 20),), ((21, 30),), ((10, 20),)),
])
def test_number_ranges_outside(ranges, covering, outside):
    assert NumberRanges(ranges).outside(NumberRanges(covering)).ranges == outside


def test_call_cap_without_ari_warns(workdir):
    warnings = config_warnings(load(
        "[general]\n[ari]\nenabled = no\n[trunk gamma]\n" + RATES_LINE + "\n"
        "max_concurrent_calls = 4\n[trunk delta]\n" + RATES_LINE + "\n"))

    capped = [w for w in warnings if "max_concurrent_calls" in w]
    assert capped == [
        "[ari] enabled = no, so max_concurrent_calls of [trunk gamma] counts each "
        "allowed call for reservation_seconds after its check, not while it lasts; "
        "set enabled = yes in [ari]"
    ]


@pytest.mark.parametrize("pattern, warned", [("", True), ("channel_pattern = PJSIP/gamma-*",
                                                         False)])
def test_limits_without_channel_pattern_warn(workdir, pattern, warned):
    warnings = config_warnings(load(
        "[general]\n[ari]\nenabled = yes\nurl = http://127.0.0.1:8088/\n"
        "username = callguard\npassword_file = ari.secret\n"
        "[trunk gamma]\n" + RATES_LINE + "\ndaily_limit = 5.00\n" + pattern + "\n"))

    unmetered = [w for w in warnings if "channel_pattern is empty" in w]
    assert bool(unmetered) is warned
    if warned:
        assert unmetered[0] == (
            "[trunk gamma] channel_pattern is empty, so callguard cannot tell this "
            "trunk's channels: daily_limit applies only to reservations, and calls are not "
            "metered or hung up; set channel_pattern to the trunk's channel names, such "
            "as PJSIP/gamma-*")


@pytest.mark.parametrize("pattern, warned", [("[", True), ("gamma", True),
                                             ("*gamma*", False), ("PJSIP/gamma-*", False)])
def test_channel_pattern_without_slash_warns(workdir, pattern, warned):
    warnings = config_warnings(load(
        "[general]\n[trunk gamma]\n" + RATES_LINE + f"\nchannel_pattern = {pattern}\n"))

    matches_none = [w for w in warnings if "matches no channel" in w]
    broad = [w for w in warnings if "matches every channel" in w]
    assert len(matches_none) == (1 if warned else 0)
    assert broad == []


@pytest.mark.parametrize("pattern, warning", [
    # "#" starts no comment in this file, so the comment became part of the pattern.
    ("PJSIP/gamma-* # outbound",
     "[trunk gamma] channel_pattern 'PJSIP/gamma-* # outbound' contains whitespace, "
     "which channel names do not contain, so it matches no channel; remove the "
     "whitespace, and start a comment with ';', as in PJSIP/gamma-* ; outbound"),
    ("gamma-*",
     "[trunk gamma] channel_pattern 'gamma-*' does not begin with the technology and "
     "'/' or with a wildcard, so it matches no channel: channel names are the "
     "technology, '/' and the channel, such as PJSIP/gamma-00000001; write it like "
     "PJSIP/gamma-*"),
    ("PJSIP/gamma",
     "[trunk gamma] channel_pattern 'PJSIP/gamma' has no wildcard, so it matches "
     "only the channel of exactly that name, but Asterisk adds a number to each "
     "channel's name, such as PJSIP/gamma-00000001; write it like PJSIP/gamma-*"),
])
def test_unmatchable_channel_pattern_warns(workdir, pattern, warning):
    warnings = config_warnings(load(
        "[general]\n[trunk gamma]\n" + RATES_LINE + f"\nchannel_pattern = {pattern}\n"))

    assert [w for w in warnings if "channel_pattern" in w] == [warning]


def two_trunks(first: str, second: str) -> str:
    return ("[general]\n"
            f"[trunk gamma]\n{RATES_LINE}\nchannel_pattern = {first}\n"
            f"[trunk delta]\n{RATES_LINE}\nchannel_pattern = {second}\n")


@pytest.mark.parametrize("first, second", [
    ("PJSIP/gamma-*", "PJSIP/gamma-*"),
    ("PJSIP/gamma*", "PJSIP/gamma-eu-*"),
    ("*gamma*", "PJSIP/gamma-*"),
])
def test_shadowed_channel_pattern_warns(workdir, first, second):
    warnings = config_warnings(load(two_trunks(first, second)))

    shadowed = [w for w in warnings if "comes first in the file" in w]
    assert shadowed == [
        f"[trunk delta] channel_pattern {second!r} falls within [trunk gamma]'s "
        f"{first!r}, which comes first in the file. callguard assigns each channel "
        "to the first trunk whose pattern matches it, so delta's calls are metered "
        "and hung up by gamma's limits, and delta's limits never apply; give each "
        "trunk a pattern that matches only its own channels, such as PJSIP/delta-*"
    ]


@pytest.mark.parametrize("first, second", [
    ("PJSIP/gamma-*", "PJSIP/delta-*"),
    # The narrower pattern comes first, so it keeps its channels.
    ("PJSIP/gamma-eu-*", "PJSIP/gamma*"),
    ("PJSIP/gamma-*", ""),
])
def test_distinct_channel_patterns_quiet(workdir, first, second):
    warnings = config_warnings(load(two_trunks(first, second)))

    assert [w for w in warnings if "comes first in the file" in w] == []


@pytest.mark.parametrize("pattern", ["PJSIP/gamma-*", "*gamma*", "PJSIP/gamma-0000000?",
                                     "PJSIP/[gd]*", "?JSIP/gamma-*", "PJSIP*"])
def test_matchable_channel_pattern_quiet(workdir, pattern):
    warnings = config_warnings(load(
        "[general]\n[trunk gamma]\n" + RATES_LINE + f"\nchannel_pattern = {pattern}\n"))

    assert [w for w in warnings if "matches no channel" in w] == []
    assert [w for w in warnings if "only the channel" in w] == []


@pytest.mark.parametrize("pattern, shown", [("*", "every channel,"),
                                            ("PJSIP/*", "every channel of PJSIP,"),
                                            ("PJSIP/gamma-*", None)])
def test_broad_channel_pattern_warns(workdir, pattern, shown):
    warnings = config_warnings(load(
        "[general]\n[trunk gamma]\n" + RATES_LINE + f"\nchannel_pattern = {pattern}\n"))

    broad = [w for w in warnings if "matches every channel" in w]
    if shown is None:
        assert broad == []
    else:
        assert len(broad) == 1
        assert shown in broad[0]
        assert broad[0].endswith("name the trunk's endpoint, such as PJSIP/gamma-*")


def test_overlapping_number_sections_warn(workdir):
    # One caller in two forms, a range that contains another section's number,
    # and two sections for the same number on different trunks, which is fine.
    warnings = config_warnings(load(
        "[general]\n[trunk gamma]\n" + RATES_LINE + "\n[trunk delta]\n" + RATES_LINE + "\n"
        "[number 01632960012]\nallow = international\n"
        "[number +441632960012]\nbar = mobile\n"
        "[number 01632960100-01632960199]\ntrunk = gamma\nallow = international\n"
        "[number 01632960150]\ntrunk = gamma\nbar = geographic\n"
        "[number 02079460001]\ntrunk = gamma\nallow = international\n"
        "[number +442079460001]\ntrunk = delta\nbar = mobile\n"
    ))

    overlaps = [w for w in warnings if w.startswith("[number ")]
    assert overlaps == [
        "[number 01632960012] on line 6 and [number +441632960012] on line 8 both cover "
        "+441632960012, so their allow and bar lists apply together to those callers; "
        "merge them into one section",
        "[number 01632960100-01632960199] on line 10 and [number 01632960150] on line 13 "
        "both cover +441632960150, so their allow and bar lists apply together to those "
        "callers; merge them into one section",
    ]


def test_many_overlapping_number_sections_counted(workdir):
    sections = "".join(f"[number 016329600{n:02d}]\nallow = international\n"
                       f"[number +4416329600{n:02d}]\nbar = mobile\n" for n in range(12))
    warnings = config_warnings(load("[general]\n[trunk gamma]\n" + RATES_LINE + "\n"
                                    + sections))

    overlaps = [w for w in warnings if " both cover " in w or "[number ...] sections" in w]
    assert len(overlaps) == 11
    assert overlaps[-1] == "2 more pairs of [number ...] sections overlap"


def test_overlap_check_fast_with_many_sections(workdir):
    # 5,000 nested ranges make 12,497,500 overlapping pairs. The check runs
    # at every start and reload, so it must count them without listing each.
    sections = "".join(f"[number 0{1632900000 + n}-0{1632999999 - n}]\n"
                       + ("trunk = gamma\n" if n % 2 else "")
                       + "allow = international\n"
                       for n in range(5000))
    config = load("[general]\n[trunk gamma]\n" + RATES_LINE + "\n" + sections)

    started = time.perf_counter()
    warnings = config_warnings(config)
    elapsed = time.perf_counter() - started

    overlaps = [w for w in warnings if " both cover " in w or "[number ...] sections" in w]
    assert len(overlaps) == 11
    assert overlaps[-1] == "12497490 more pairs of [number ...] sections overlap"
    assert elapsed < 2


@pytest.mark.parametrize("seed", range(20))
def test_overlap_count_matches_pairwise(seed):
    # Random sections, with and without a trunk, against a check of every pair.
    generator = random.Random(seed)
    overrides = []
    for _ in range(60):
        low = 441632960000 + generator.randrange(200)
        high = low + generator.choice([0, 0, 3, 40])
        trunk = generator.choice([None, "gamma", "delta"])
        overrides.append(NumberOverride(numbers=NumberRanges(((low, high),)), trunk=trunk,
                                        allow=frozenset({"international"}), bar=frozenset()))
    expected = sum(
        1 for i, first in enumerate(overrides) for second in overrides[i + 1:]
        if (first.trunk is None or second.trunk is None or first.trunk == second.trunk)
        and first.numbers.ranges[0][0] <= second.numbers.ranges[0][1]
        and second.numbers.ranges[0][0] <= first.numbers.ranges[0][1]
    )

    warnings = _overlapping_overrides(SimpleNamespace(overrides=overrides))

    listed = [w for w in warnings if w.startswith("the [number ...] section for")]
    assert len(listed) == min(expected, MAX_LISTED_OVERLAPS)
    if expected > MAX_LISTED_OVERLAPS:
        assert warnings[-1] == (f"{expected - MAX_LISTED_OVERLAPS} more pairs of "
                                "[number ...] sections overlap")
    else:
        assert len(warnings) == expected


@pytest.mark.parametrize("text", ["s3cret;pass", "s3cret;pass\n", "s3cret;pass\r\n",
                                  "s3cret;pass\nchanged 2026-12-01\n",
                                  # Windows Notepad starts a UTF-8 file with a BOM.
                                  "\ufeffs3cret;pass\r\n"])
def test_secrets_first_line_only(workdir, text):
    (workdir / "ari.secret").write_text(text, encoding="utf-8")
    keys = {"url": "http://127.0.0.1:9000/hook", "secret_file": "ari.secret"}
    smtp = SMTP_BASE | {"username": "cg", "password_file": "ari.secret"}

    ari = load(config_with("ari", "password_file", "ari.secret")).ari
    delivery = load(delivery_config(smtp=smtp, webhook=keys))

    assert ari.password() == "s3cret;pass"
    assert delivery.smtp.password() == "s3cret;pass"
    assert delivery.webhook.secret() == "s3cret;pass"


@pytest.mark.parametrize("text", ["s3cret;pass \n", "\ts3cret;pass\t\r\n"])
def test_ari_password_outer_whitespace_dropped(workdir, text):
    # Asterisk strips the whitespace around every value of ari.conf, so an ARI
    # password never begins or ends with it. SMTP passwords keep theirs.
    (workdir / "ari.secret").write_text(text)
    smtp = SMTP_BASE | {"username": "cg", "password_file": "ari.secret"}

    ari = load(config_with("ari", "password_file", "ari.secret")).ari
    delivery = load(delivery_config(smtp=smtp))

    assert ari.password() == "s3cret;pass"
    assert delivery.smtp.password() == text.splitlines()[0]


def test_open_fastagi_warns(workdir):
    warnings = general_warnings("fastagi_listen = 0.0.0.0:4573\n"
                                "allowed_clients = 0.0.0.0/0, ::/0")

    assert warnings == [
        "[general] allowed_clients contains 0.0.0.0/0, ::/0 and fastagi_listen is "
        "0.0.0.0, so any host that reaches port 4573 can send checks, hold budget and "
        "get phones blocked as offenders; list only the addresses of the Asterisk servers"
    ]


@pytest.mark.parametrize("general", [
    "allowed_clients = 0.0.0.0/0",  # listening on 127.0.0.1 only
    "fastagi_listen = [::1]:4573\nallowed_clients = ::/0",
    "fastagi_listen = 0.0.0.0:4573\nallowed_clients = 192.0.2.10/32, 127.0.0.1/32",
])
def test_fastagi_clients_quiet(workdir, general):
    assert general_warnings(general) == []


@pytest.mark.parametrize("general, listen, missing", [
    ("fastagi_listen = [::1]:4573\nallowed_clients = 127.0.0.1/32", "::1", "::1/128"),
    ("allowed_clients = ::1/128", "127.0.0.1", "127.0.0.1/32"),
    ("allowed_clients = 192.0.2.10/32", "127.0.0.1", "127.0.0.1/32"),
    # A connection to 127.0.0.2 comes from 127.0.0.1.
    ("fastagi_listen = 127.0.0.2:4573\nallowed_clients = 127.0.0.2/32", "127.0.0.2",
     "127.0.0.1/32"),
])
def test_loopback_fastagi_unreachable_warns(workdir, general, listen, missing):
    # A loopback listen address takes connections from this host only, so
    # allowed_clients without the address it connects from rejects every check.
    warnings = general_warnings(general)
    source = missing.partition("/")[0]

    assert warnings == [
        f"[general] fastagi_listen is {listen}, which takes connections from this "
        f"host alone, but allowed_clients does not contain {source}, the address that "
        "Asterisk on this host connects from, so every check is rejected and the "
        f"dialplan applies its fail policy; add {missing} to allowed_clients"
    ]


def test_loopback_source_address():
    # The warning above rests on this: a client that binds no address reaches
    # 127.0.0.2 from 127.0.0.1.
    with socket.socket() as server, socket.socket() as client:
        server.bind(("127.0.0.2", 0))
        server.listen()
        client.connect(server.getsockname())
        connection, (peer, _) = server.accept()
        connection.close()
    assert peer == "127.0.0.1"


# Short codes that start with the national prefix: 0 in AU, 1 in US.
@pytest.mark.parametrize("region, short_code, national", [
    ("AU", "000", "0212345678"),
    ("US", "112", "12125550123"),
])
def test_emergency_short_code_row_quiet(workdir, region, short_code, national):
    rows = f"prefix,category,description\n{short_code},emergency,Emergency services\n"
    Path("short.csv").write_text(rows)
    Path("mistaken.csv").write_text(rows + f"{national},emergency,Mistaken row\n")

    assert general_warnings(f"home_country = {region}\nprefixes = short.csv") == []
    [warning] = general_warnings(f"home_country = {region}\nprefixes = mistaken.csv")
    assert f"prefix {national!r} is in category 'emergency' but " in warning
