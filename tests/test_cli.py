"""``callguardctl`` in-process through ``main(argv)``, and each console script's --help.

``status`` and ``calls`` ask an in-process Application over its control socket.
``main`` runs its own event loop, so those tests call it from a worker thread
while the test's loop serves the daemon side.
"""

import asyncio
import contextlib
import csv
import json
import logging
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import traceback
from datetime import datetime, timezone
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy

from callguard.cli import ctl, live
from callguard.cli.common import EscapingFormatter, JournalFormatter, journal_priority
from callguard.text import escape_controls
from callguard.config import load_config
from callguard.store import CallRecord, OutboxRecord, Store
from emulator.fastagi import AGICall, run_fastagi_call
from live_support import Pbx, eventually
from support import TRUNK as SUPPORT_TRUNK
from support import create_database, sqlite_write_locked, write_config

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_CONFIG = ROOT / "etc" / "callguard.conf"
SAMPLE_SECRET = ROOT / "etc" / "ari.secret"
SAMPLE_RATES = ROOT / "etc" / "rates-gamma.csv"
SAMPLE_PREFIXES = ROOT / "etc" / "prefixes-gb.csv"
BIN = Path(sys.executable).parent

MICRO_UNIT = Decimal("0.000001")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2

LONDON = ZoneInfo("Europe/London")
START = datetime(2024, 6, 14, 10, 0, tzinfo=LONDON).astimezone(timezone.utc)
DAY = "2024-06-14"
WEEK = "2024-W24"

CHECK_KEYS = {"result", "reason", "category", "e164", "max_seconds", "rate"}

CHECKS = [
    # dialled, result, reason, category, e164, max_seconds, rate
    ("09011234567", "DENY", "barred:premium", "premium",
     "+449011234567", None, "1.5000"),
    ("0044 9011234567", "DENY", "barred:premium", "premium",
     "+449011234567", None, "1.5000"),
    ("08451234567", "DENY", "barred:special-084", "special-084",
     "+448451234567", None, "0.1000"),
    ("08701234567", "DENY", "barred:special-087", "special-087",
     "+448701234567", None, "0.1200"),
    ("118118", "DENY", "barred:directory", "directory", "", None, "3.0000"),
    ("0118 496 0000", "ALLOW", "ok", "geographic", "+441184960000", 7200, "0.0100"),
    ("+44 (0) 20 7946 0000", "ALLOW", "ok", "geographic",
     "+442079460000", 7200, "0.0100"),
    ("+00972590000000", "DENY", "invalid-number", "", "", None, None),
    ("0151496012#", "DENY", "invalid-number", "", "", None, None),
    ("*21*00441514960123", "DENY", "invalid-number", "", "", None, None),
    ("07012345678", "ALLOW", "ok", "personal", "+447012345678", 7200, "0.0500"),
    ("111", "ALLOW", "ok", "service", "", 7200, "0.0100"),
    ("116123", "ALLOW", "ok", "service", "", 7200, "0.0100"),
    ("00353 1 234 5678", "ALLOW", "ok", "international",
     "+35312345678", 7200, "0.0200"),
    ("0033 1 23 45 67 89", "DENY", "barred:international", "international",
     "+33123456789", None, "0.0200"),
    ("999", "ALLOW", "emergency", "emergency", "", None, None),
    ("112", "ALLOW", "emergency", "emergency", "", None, None),
]

# A line of the sample config, what replaces it, and the section and key blamed.
BROKEN = [
    ("daily_limit = 50.00", "daily_limit = fifty", "trunk gamma", "daily_limit"),
    ("decision_timeout = 1s", "decision_timeout = 45s", "general", "decision_timeout"),
    ("fail_policy = deny", "fail_policy = maybe", "general", "fail_policy"),
    ("ping_timeout = 30s", "ping_timeout = 0s", "ari", "ping_timeout"),
    ("warn_percent = 50, 80, 95", "warn_percent = 180", "trunk gamma", "warn_percent"),
    ("bar = mobile", "bar = mobiles", "number 01632960001", "bar"),
]

TRUNK = """\
[trunk gamma]
bar = premium, international
daily_limit = 20.00
weekly_limit = 80.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""
RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,1.00,,60/60
447,United Kingdom mobile,2.00,,60/60
"""
GEOGRAPHIC = "01632960123"
MOBILE = "07700900123"
TWO_TRUNKS = SUPPORT_TRUNK + "\n[trunk delta]\nrates = rates.csv\n"


def run_ctl(*argv: str) -> int:
    """Run callguardctl and return its exit status, as the console script would."""
    try:
        return ctl.main(list(argv))
    except SystemExit as exc:
        return exc.code


def read_json(capsys) -> object:
    return json.loads(capsys.readouterr().out)


def to_stored(amount: str) -> Decimal:
    """Return a connection fee as the store keeps it: micro-units, rounded up."""
    return Decimal(amount).quantize(MICRO_UNIT, rounding=ROUND_CEILING)


def csv_rows(path: Path) -> list[dict[str, str]]:
    """Read a CSV of callguard's kind: ``#`` comment lines and blank lines skipped."""
    lines = [line for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return list(csv.DictReader(lines))


@pytest.fixture
def config(tmp_path):
    return create_database(write_config(tmp_path))


def today_keys() -> tuple[str, str]:
    today = datetime.now(LONDON).date()
    year, week, _ = today.isocalendar()
    return today.isoformat(), f"{year}-W{week:02d}"


# check


@pytest.mark.parametrize("dialled, result, reason, category, e164, max_seconds, rate",
                         CHECKS)
def test_check_json(config, capsys, dialled, result, reason, category, e164,
                    max_seconds, rate):
    status = run_ctl("--config", str(config), "check", dialled, "--trunk", "gamma",
                     "--json")
    report = read_json(capsys)

    assert status == EXIT_OK
    assert CHECK_KEYS <= set(report)
    assert report["result"] == result
    assert report["reason"] == reason
    assert report["category"] == category
    assert report["e164"] == e164
    assert report["max_seconds"] == max_seconds
    assert report["rate"] == rate


@pytest.mark.parametrize("dialled, result, reason, category, e164, max_seconds, rate",
                         CHECKS)
def test_check_text(config, capsys, dialled, result, reason, category, e164,
                    max_seconds, rate):
    status = run_ctl("--config", str(config), "check", dialled, "--trunk", "gamma")
    lines = capsys.readouterr().out.splitlines()

    assert status == EXIT_OK
    assert lines[0].split() == ["result", result, reason]
    assert lines[1] == f"dialled    {dialled}"
    assert lines[2] == f"e164       {e164 or '-'}"
    assert lines[3].split()[:2] == ["category", category or "-"]
    rate_lines = [line for line in lines if line.startswith("rate ")]
    if rate is None:
        assert rate_lines == []
    else:
        assert rate_lines[0].split()[1:3] == [rate, "GBP/min,"]
    max_lines = [line for line in lines if line.startswith("max ")]
    if max_seconds is None:
        assert max_lines == []
    else:
        assert max_lines == [f"max        {max_seconds} s"]


@pytest.mark.parametrize("dialled", ["01632960123\t", "\u00a001632960123", " 01632960123\n"])
def test_check_strips_whitespace(config, capsys, dialled):
    # FastAGI strips each check argument, so a number pasted with a tab or a
    # no-break space is decided alike on both paths.
    status = run_ctl("--config", str(config), "check", dialled, "--trunk", "gamma",
                     "--caller", " 01632960010\t", "--json")
    report = read_json(capsys)

    assert status == EXIT_OK
    assert report["result"] == "ALLOW"
    assert report["e164"] == "+441632960123"


def test_check_budget_left(config, capsys):
    day, week = today_keys()
    with Store(load_config(config).general.database) as store:
        store.open()
        now = datetime.now(timezone.utc)
        store.add_spend("gamma", "day", day, Decimal("12.50"), now)
        store.add_spend("gamma", "week", week, Decimal("30.25"), now)
    command = ["--config", str(config), "check", GEOGRAPHIC, "--trunk", "gamma"]

    json_status = run_ctl(*command, "--json")
    budgets = read_json(capsys)["budgets"]
    text_status = run_ctl(*command)
    lines = capsys.readouterr().out.splitlines()

    assert json_status == EXIT_OK
    assert budgets["day"] == {"window": day, "spent": "12.50", "held": "0.00",
                              "limit": "50.00", "remaining": "37.50"}
    assert budgets["week"] == {"window": week, "spent": "30.25", "held": "0.00",
                               "limit": "200.00", "remaining": "169.75"}
    assert text_status == EXIT_OK
    assert f"day        37.50 of 50.00 GBP left in {day}" in lines
    assert f"week       169.75 of 200.00 GBP left in {week}" in lines


def test_check_unknown_trunk(config, capsys):
    status = run_ctl("--config", str(config), "check", GEOGRAPHIC, "--trunk", "delta",
                     "--json")
    report = read_json(capsys)

    assert status == EXIT_OK
    assert report["result"] == "DENY"
    assert report["reason"] == "unknown-trunk"
    assert report["budgets"] == {}


def test_check_unknown_trunk_warns(config, capsys):
    # The number is rejected before the trunk is looked up.
    status = run_ctl("--config", str(config), "check", "0151496012#", "--trunk", "gama")
    captured = capsys.readouterr()

    assert status == EXIT_OK
    assert "invalid-number" in captured.out
    assert f"warning: {config} has no [trunk gama]; its trunks: gamma" in captured.err


# check-config


def test_check_config_sample(capsys):
    status = run_ctl("--config", str(SAMPLE_CONFIG), "check-config")
    out = capsys.readouterr().out

    assert status == EXIT_OK
    assert out.startswith(f"{SAMPLE_CONFIG}: OK, 1 trunk,")
    assert f"{len(csv_rows(SAMPLE_RATES))} rates" in out


def test_check_config_sample_notify_warns(tmp_path, capsys):
    # The sample with its trunk's notify set, while it sets no [smtp] host and
    # no [webhook] url.
    path = tmp_path / "callguard.conf"
    text = SAMPLE_CONFIG.read_text()
    assert text.count("\n;notify = noc@example.com\n") == 1
    path.write_text(text.replace(";notify = noc@example.com", "notify = noc@example.com"))
    shutil.copy(SAMPLE_RATES, tmp_path / SAMPLE_RATES.name)
    shutil.copy(SAMPLE_SECRET, tmp_path / SAMPLE_SECRET.name)

    status = run_ctl("--config", str(path), "check-config")
    captured = capsys.readouterr()

    assert status == EXIT_OK
    assert captured.out.startswith(f"{path}: OK, 1 trunk,")
    assert (f"{path}: warning: [trunk gamma] notify = noc@example.com, but this trunk's "
            "alerts go nowhere until [smtp] host or [webhook] url is set") in captured.err


def sample_with_line(tmp_path, good: str, bad: str) -> tuple[Path, int]:
    """Copy the sample config with its line ``good`` replaced by ``bad``.

    Returns the copy's path and the number of the replaced line.
    """
    path = tmp_path / "callguard.conf"
    text = SAMPLE_CONFIG.read_text()
    assert text.count(f"\n{good}\n") == 1
    path.write_text(text.replace(f"\n{good}\n", f"\n{bad}\n"))
    shutil.copy(SAMPLE_RATES, tmp_path / SAMPLE_RATES.name)
    shutil.copy(SAMPLE_SECRET, tmp_path / SAMPLE_SECRET.name)
    return path, path.read_text().splitlines().index(bad) + 1


@pytest.mark.parametrize("good, bad, section, key", BROKEN)
def test_check_config_broken(tmp_path, capsys, good, bad, section, key):
    path, line = sample_with_line(tmp_path, good, bad)

    status = run_ctl("--config", str(path), "check-config")
    captured = capsys.readouterr()

    assert status == EXIT_CONFIG
    assert f"{path}:{line}: [{section}] {key}: " in captured.err
    assert "OK" not in captured.out


# fmt: off
URL_PASSWORD_LINES = [
    # (line of the sample config, the line with a password in its place, the
    # password, the problem shown)
    ("url = http://127.0.0.1:8088/", "url = http://callguard:Sup3rS3cret@127.0.0.1:8088/",
     "Sup3rS3cret",
     "[ari] url: 'http://callguard:***@127.0.0.1:8088/' has a query, fragment or "
     "credentials; write only scheme, host, port and path, and put the password in "
     "password_file"),
    (";url = https://hooks.example.com/callguard", "url = http://bob:HookPw9@127.0.0.1:9/hook",
     "HookPw9",
     "[webhook] url: 'http://bob:***@127.0.0.1:9/hook' has credentials or a fragment"),
    # urllib rejects the fullwidth "#", and its message quotes the password.
    ("url = http://127.0.0.1:8088/", "url = http://callguard:Sup3r\uff03S3cret@127.0.0.1:8088/",
     "S3cret", "[ari] url: 'http://callguard:***@127.0.0.1:8088/' is not a valid URL"),
    ("username = callguard", "username = callguard:Sup3rS3cret", "Sup3rS3cret",
     "[ari] username: contains ':', which ends the user name in HTTP Basic "
     "authentication"),
]
# fmt: on


@pytest.mark.parametrize("good, bad, password, shown", URL_PASSWORD_LINES)
def test_check_config_masks_url_password(tmp_path, capsys, good, bad, password, shown):
    path, line = sample_with_line(tmp_path, good, bad)

    status = run_ctl("--config", str(path), "check-config")
    captured = capsys.readouterr()

    assert status == EXIT_CONFIG
    assert password not in captured.out + captured.err
    assert f"{path}:{line}: {shown}" in captured.err


def test_check_config_all_problems(tmp_path, capsys):
    path = tmp_path / "callguard.conf"
    text = SAMPLE_CONFIG.read_text()
    for good, bad, _, _ in BROKEN:
        text = text.replace(f"\n{good}\n", f"\n{bad}\n")
    path.write_text(text)
    shutil.copy(SAMPLE_RATES, tmp_path / SAMPLE_RATES.name)
    shutil.copy(SAMPLE_SECRET, tmp_path / SAMPLE_SECRET.name)

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    for _, bad, section, key in BROKEN:
        line = text.splitlines().index(bad) + 1
        assert f"{path}:{line}: [{section}] {key}: " in err


def test_check_config_bad_rates(tmp_path, capsys):
    path = tmp_path / "callguard.conf"
    path.write_text(SAMPLE_CONFIG.read_text())
    shutil.copy(SAMPLE_SECRET, tmp_path / SAMPLE_SECRET.name)
    rates = SAMPLE_RATES.read_text().replace("1,United States and Canada,0.0090,,6/6",
                                             "1,United States and Canada,cheap,,6/6")
    (tmp_path / SAMPLE_RATES.name).write_text(rates)
    line = rates.splitlines().index("1,United States and Canada,cheap,,6/6") + 1

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert f"{tmp_path / SAMPLE_RATES.name}:{line}:" in err
    assert "cheap" in err


@pytest.mark.parametrize("secret, problem", [
    (b"change-me\x1b\n", "the ARI password contains a control character"),
    (b"change-\xffme\n", "is not UTF-8 text"),
    (b"\n", "is empty"),
])
def test_check_config_unusable_ari_password(tmp_path, capsys, secret, problem):
    # The daemon rejects these passwords at start and on reload, so the check
    # that systemd runs before both must reject them too.
    path = tmp_path / "callguard.conf"
    text = SAMPLE_CONFIG.read_text()
    path.write_text(text)
    (tmp_path / SAMPLE_SECRET.name).write_bytes(secret)
    (tmp_path / SAMPLE_SECRET.name).chmod(0o600)
    shutil.copy(SAMPLE_RATES, tmp_path / SAMPLE_RATES.name)
    line = text.splitlines().index("password_file = ari.secret") + 1

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert f"{path}:{line}: [ari] password_file: " in err
    assert problem in err


@pytest.mark.parametrize("url, ca_text, problem", [
    ("http://127.0.0.1:8088/", "", "is set but the ARI URL uses http://"),
    ("https://127.0.0.1:8089/", "no certificate here\n", "cannot load the ARI CA bundle"),
])
def test_check_config_unusable_ari_ca_file(tmp_path, capsys, url, ca_text, problem):
    path = tmp_path / "callguard.conf"
    text = (SAMPLE_CONFIG.read_text()
            .replace("url = http://127.0.0.1:8088/", f"url = {url}")
            .replace("ca_file =\n", "ca_file = ca.pem\n", 1))
    path.write_text(text)
    (tmp_path / "ca.pem").write_text(ca_text)
    shutil.copy(SAMPLE_SECRET, tmp_path / SAMPLE_SECRET.name)
    (tmp_path / SAMPLE_SECRET.name).chmod(0o600)
    shutil.copy(SAMPLE_RATES, tmp_path / SAMPLE_RATES.name)
    line = text.splitlines().index("ca_file = ca.pem") + 1

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert f"{path}:{line}: [ari] ca_file: " in err
    assert problem in err


NOBODY_ID = 65534


def run_ctl_unprivileged(*argv: str) -> tuple[int, str]:
    """Run callguardctl in a forked child and return its exit status and stderr.

    As root the child first becomes uid and gid 65534 (nobody), so that folder
    permissions apply to it as they do to the callguard user.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_end)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(NOBODY_ID)
                os.setuid(NOBODY_ID)
            os.dup2(write_end, sys.stderr.fileno())
            sys.stderr = open(sys.stderr.fileno(), "w", closefd=False)
            status = run_ctl(*argv)
        except BaseException:
            # Printed as the interpreter prints an uncaught exception.
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    os.close(write_end)
    with open(read_end, "rb") as output:
        err = output.read().decode()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), err


@contextlib.contextmanager
def folder_with_private_folder():
    """Yield a folder that everyone may read and, in it, ``private``.

    Both contain the sample rates, and the folder also the sample ARI secret. The
    unprivileged callguardctl of ``run_ctl_unprivileged`` may not search
    ``private``, as the callguard user may not search another service's folder.
    Both are removed on exit.
    """
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        folder = Path(name)
        folder.chmod(0o755)
        private = folder / "private"
        private.mkdir()
        for sample in (SAMPLE_RATES, SAMPLE_SECRET):
            shutil.copy(sample, folder / sample.name)
            (folder / sample.name).chmod(0o644)
        shutil.copy(SAMPLE_RATES, private / SAMPLE_RATES.name)
        private.chmod(0o700 if os.geteuid() == 0 else 0o000)
        try:
            yield folder, private
        finally:
            private.chmod(0o700)


def test_check_config_unsearchable_folder():
    with folder_with_private_folder() as (folder, private):
        text = SAMPLE_CONFIG.read_text().replace(
            "rates = rates-gamma.csv", "rates = private/rates-gamma.csv")
        path = folder / "callguard.conf"
        path.write_text(text)
        path.chmod(0o644)
        line = text.splitlines().index("rates = private/rates-gamma.csv") + 1

        status, err = run_ctl_unprivileged("--config", str(path), "check-config")

    assert status == EXIT_CONFIG
    assert "cannot read the config" not in err
    assert (f"{path}:{line}: [trunk gamma] rates: 'private/rates-gamma.csv' cannot be "
            f"checked (Permission denied at {private}/rates-gamma.csv); correct the path, "
            "or let the callguard user search every folder above the file") in err


def test_block_unsearchable_database_folder():
    with folder_with_private_folder() as (folder, private):
        database = private / "callguard.db"
        text = (SAMPLE_CONFIG.read_text()
                .replace("database = sqlite:////var/lib/callguard/callguard.db",
                         f"database = sqlite:///{database}")
                .replace("control_socket = /run/callguard/callguard.sock",
                         f"control_socket = {folder / 'callguard.sock'}"))
        path = folder / "callguard.conf"
        path.write_text(text)
        path.chmod(0o644)

        status, err = run_ctl_unprivileged("--config", str(path), "block", "1001",
                                           "--reason", "test")

    assert status == EXIT_FAILURE
    assert "Traceback" not in err
    assert (f"store: cannot check the SQLite database path {database} (Permission "
            "denied); let the user that callguard runs as search every folder above "
            "it, or change the database URL") in err


def test_check_config_missing_file(tmp_path, capsys):
    path = tmp_path / "absent.conf"

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert f"{path}: cannot be read" in err


# prefixes and rates


def test_prefixes_round_trip(config, capsys, db_url):
    options = ["--config", str(config), "--database", db_url]

    imported = run_ctl(*options, "prefixes", "import", str(SAMPLE_PREFIXES))
    import_out = capsys.readouterr().out
    listed = run_ctl(*options, "prefixes", "list", "--json")
    rows = read_json(capsys)
    premium = run_ctl(*options, "prefixes", "list", "--category", "premium", "--json")
    premium_rows = read_json(capsys)

    expected = csv_rows(SAMPLE_PREFIXES)
    assert imported == EXIT_OK
    assert f"imported {len(expected)} prefixes from {SAMPLE_PREFIXES}" in import_out
    assert listed == EXIT_OK
    assert sorted(rows, key=lambda r: r["prefix"]) == sorted(expected,
                                                             key=lambda r: r["prefix"])
    assert premium == EXIT_OK
    assert premium_rows
    assert {r["category"] for r in premium_rows} == {"premium"}
    assert len(premium_rows) == sum(r["category"] == "premium" for r in expected)


def test_prefixes_list_text(config, capsys):
    run_ctl("--config", str(config), "prefixes", "import", str(SAMPLE_PREFIXES))
    capsys.readouterr()

    status = run_ctl("--config", str(config), "prefixes", "list", "--category",
                     "emergency")
    lines = capsys.readouterr().out.splitlines()

    assert status == EXIT_OK
    assert sorted(line.split()[:2] for line in lines) == sorted(
        [r["prefix"], "emergency"] for r in csv_rows(SAMPLE_PREFIXES)
        if r["category"] == "emergency"
    )


@pytest.mark.parametrize("category, hint", [
    ("premum", "did you mean premium?"),
    ("bogus", "use one of emergency, "),
])
def test_prefixes_list_unknown_category(config, capsys, category, hint):
    run_ctl("--config", str(config), "prefixes", "import", str(SAMPLE_PREFIXES))
    capsys.readouterr()

    status = run_ctl("--config", str(config), "prefixes", "list", "--category", category)
    captured = capsys.readouterr()

    assert status == EXIT_CONFIG
    assert captured.out == ""
    assert f"{category!r} is not a barring category" in captured.err
    assert hint in captured.err


def test_prefixes_list_category_case(config, capsys):
    run_ctl("--config", str(config), "prefixes", "import", str(SAMPLE_PREFIXES))
    capsys.readouterr()

    status = run_ctl("--config", str(config), "prefixes", "list", "--category",
                     "Emergency", "--json")
    rows = read_json(capsys)

    assert status == EXIT_OK
    assert rows
    assert {r["category"] for r in rows} == {"emergency"}


def test_rates_round_trip(tmp_path, capsys, db_url):
    config = write_config(tmp_path, trunks=TWO_TRUNKS)
    options = ["--config", str(config), "--database", db_url]

    imported = run_ctl(*options, "rates", "import", str(SAMPLE_RATES), "--trunk",
                       "gamma")
    import_out = capsys.readouterr().out
    listed = run_ctl(*options, "rates", "list", "--trunk", "gamma", "--limit", "1000",
                     "--json")
    rows = read_json(capsys)
    other = run_ctl(*options, "rates", "list", "--trunk", "delta", "--json")
    other_rows = read_json(capsys)

    expected = csv_rows(SAMPLE_RATES)
    assert imported == EXIT_OK
    assert f"imported {len(expected)} rates for trunk gamma" in import_out
    assert f"from {SAMPLE_RATES}" in import_out
    assert listed == EXIT_OK
    stored = {row["prefix"]: row for row in rows}
    assert sorted(stored) == sorted(row["prefix"] for row in expected)
    for row in expected:
        got = stored[row["prefix"]]
        assert got["description"] == row["description"], row["prefix"]
        # Rates are kept to the digit: 0.0333333 stays 0.0333333.
        assert Decimal(got["rate"]) == Decimal(row["rate"]), row["prefix"]
        fee = row["connection_fee"] or "0"
        assert Decimal(got["connection_fee"]) == to_stored(fee), row["prefix"]
        assert got["increments"] == row["increments"], row["prefix"]
    assert other == EXIT_OK
    assert other_rows == []


@pytest.mark.parametrize("prefix, limit", [("44", "1000"), ("1", "1000"), ("", "3")])
def test_rates_list_filters(config, capsys, prefix, limit):
    run_ctl("--config", str(config), "rates", "import", str(SAMPLE_RATES), "--trunk",
            "gamma")
    capsys.readouterr()
    options = ["--prefix", prefix] if prefix else []

    status = run_ctl("--config", str(config), "rates", "list", "--trunk", "gamma",
                     "--limit", limit, "--json", *options)
    rows = read_json(capsys)

    expected = [r["prefix"] for r in csv_rows(SAMPLE_RATES)
                if r["prefix"].startswith(prefix)]
    assert status == EXIT_OK
    assert len(rows) == min(len(expected), int(limit))
    assert {row["prefix"] for row in rows} <= set(expected)


SHORT_CODE_RATES = """\
prefix,description,rate,connection_fee,increments
44,UK,0.0085,,1/1
44118,Reading,0.0090,,1/1
short:118,Directory,4.50,4.50,60/60
short:118500,Directory 118500,3.00,1.00,60/60
"""


def test_rates_short_code_round_trip(tmp_path, capsys, db_url):
    config = write_config(tmp_path, trunks=TWO_TRUNKS)
    deck = tmp_path / "short-rates.csv"
    deck.write_text(SHORT_CODE_RATES)
    options = ["--config", str(config), "--database", db_url]

    imported = run_ctl(*options, "rates", "import", str(deck), "--trunk", "gamma")
    import_out = capsys.readouterr().out
    listed = run_ctl(*options, "rates", "list", "--trunk", "gamma", "--prefix", "short:",
                     "--json")
    rows = read_json(capsys)
    text = run_ctl(*options, "rates", "list", "--trunk", "gamma", "--prefix",
                   "short:1185")
    lines = capsys.readouterr().out.splitlines()
    e164 = run_ctl(*options, "rates", "list", "--trunk", "gamma", "--prefix", "44",
                   "--json")
    e164_rows = read_json(capsys)

    assert imported == EXIT_OK
    assert "imported 4 rates for trunk gamma" in import_out
    assert listed == EXIT_OK
    assert rows == [
        {"prefix": "short:118", "description": "Directory", "rate": "4.50",
         "connection_fee": "4.500000", "increments": "60/60"},
        {"prefix": "short:118500", "description": "Directory 118500", "rate": "3.00",
         "connection_fee": "1.000000", "increments": "60/60"},
    ]
    assert text == EXIT_OK
    assert len(lines) == 1
    assert lines[0].split()[0] == "short:118500"
    assert e164 == EXIT_OK
    assert [row["prefix"] for row in e164_rows] == ["44", "44118"]


# A deck may write a free destination with eight zeros, or a rate below a
# micro-unit a minute. Decimal's str() writes both in exponent form.
TINY_RATES = """\
prefix,description,rate,connection_fee,increments
44,UK,0.0085,,1/1
44800,UK freephone,0.00000000,,60/60
447,UK mobile,0.0000001,,1/1
"""


def test_tiny_rates_written_plain(tmp_path, capsys):
    config = write_config(tmp_path, rates=TINY_RATES)
    options = ["--config", str(config)]

    run_ctl(*options, "rates", "import", str(tmp_path / "rates.csv"), "--trunk", "gamma")
    capsys.readouterr()
    listed = run_ctl(*options, "rates", "list", "--trunk", "gamma", "--json")
    rows = {row["prefix"]: row["rate"] for row in read_json(capsys)}
    run_ctl(*options, "rates", "list", "--trunk", "gamma", "--prefix", "44800")
    text = capsys.readouterr().out.split()
    run_ctl(*options, "check", "0800 123 4567", "--trunk", "gamma", "--json")
    free = read_json(capsys)
    run_ctl(*options, "check", "07700 900123", "--trunk", "gamma", "--json")
    mobile = read_json(capsys)

    with sqlite3.connect(tmp_path / "callguard.db") as conn:
        stored = dict(conn.execute("SELECT prefix, rate FROM rates"))

    assert listed == EXIT_OK
    assert rows == {"44": "0.0085", "44800": "0.00000000", "447": "0.0000001"}
    assert stored == rows
    assert text[:2] == ["44800", "0.00000000"]
    assert free["rate"] == "0.00000000"
    assert mobile["rate"] == "0.0000001"


def test_rates_list_bad_short_prefix(config, capsys):
    status = run_ctl("--config", str(config), "rates", "list", "--trunk", "gamma",
                     "--prefix", "SHORT:118")
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert err.startswith("callguardctl rates list: prefix 'SHORT:118' is invalid")


@pytest.mark.parametrize("prefix", ["short:", "short:+1", "short:1a", "SHORT:118"])
def test_rates_import_bad_short_prefix(config, tmp_path, capsys, prefix):
    bad = tmp_path / "bad-rates.csv"
    bad.write_text("prefix,description,rate,connection_fee,increments\n"
                   "44,United Kingdom,0.01,,60/60\n"
                   f"{prefix},Directory,4.50,4.50,60/60\n")

    status = run_ctl("--config", str(config), "rates", "import", str(bad), "--trunk",
                     "gamma")
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert err.startswith(f"callguardctl rates import: {bad}:3: prefix {prefix!r} ")
    assert "like short:118" in err


def test_rates_import_bad_file(config, tmp_path, capsys):
    bad = tmp_path / "bad-rates.csv"
    bad.write_text("prefix,description,rate,connection_fee,increments\n"
                   "44,United Kingdom,0.01,,60/60\n"
                   "447,United Kingdom mobile,-0.05,,60/60\n")

    status = run_ctl("--config", str(config), "rates", "import", str(bad), "--trunk",
                     "gamma")
    err = capsys.readouterr().err
    listed = run_ctl("--config", str(config), "rates", "list", "--trunk", "gamma",
                     "--json")
    rows = read_json(capsys)

    assert status == EXIT_CONFIG
    assert f"{bad}:3:" in err
    assert listed == EXIT_OK
    assert rows == []


def test_rates_import_unknown_trunk(tmp_path, capsys):
    config = write_config(tmp_path, trunks=TWO_TRUNKS)

    status = run_ctl("--config", str(config), "rates", "import", str(SAMPLE_RATES),
                     "--trunk", "gama")
    out, err = capsys.readouterr()

    assert status == EXIT_CONFIG
    assert "imported" not in out
    assert err == (f"trunk 'gama' is not in {config}; define [trunk gama] there or use "
                   "one of the trunks (delta, gamma)\n")
    with Store(load_config(config).general.database) as store:
        assert store.rate_trunks() == {}


def test_rates_list_unknown_trunk(config, capsys):
    status = run_ctl("--config", str(config), "rates", "list", "--trunk", "delta")
    out, err = capsys.readouterr()

    assert status == EXIT_CONFIG
    assert out == ""
    assert err == (f"trunk 'delta' is not in {config}; define [trunk delta] there or "
                   "use one of the trunks (gamma)\n")


@pytest.mark.parametrize("header, row, advice", [
    ("prefix,description,rate,connection_fee,increments", "34,Spain",
     "the row has 2 fields but the header has 5; give a field for every column and "
     "leave description or connection_fee empty when there is none, like "
     "34,Spain,0.05,,60/60"),
    ("rate,prefix,increments,description,connection_fee", "0.05,34",
     "the row has 2 fields but the header has 5; give a field for every column and "
     "leave description or connection_fee empty when there is none, like "
     "0.05,34,60/60,Spain,"),
    ("prefix,description,rate,connection_fee,increments",
     "82,Korea, Republic of,0.05,,60/60",
     "the row has 6 fields but the header has 5; quote a description that contains "
     "a comma"),
])
def test_rates_import_field_count_advice(config, tmp_path, capsys, header, row, advice):
    deck = tmp_path / "r.csv"
    deck.write_text(f"{header}\n{row}\n")

    status = run_ctl("--config", str(config), "rates", "import", str(deck), "--trunk",
                     "gamma")
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert f"{deck}:2: {advice}" in err
    if row.count(",") < header.count(","):
        assert "quote" not in err


@pytest.mark.parametrize("row, advice", [
    ("09,premium", "found 2 in '09,premium'; give a field for every column and leave "
     "the description empty when there is none, like '09,premium,'"),
    ("09", "found 1 in '09'; give a field for every column"),
    ("09,premium,Premium, high rate", "found 4 in '09,premium,Premium, high rate'; "
     "quote a description that contains commas"),
])
def test_prefixes_import_field_count_advice(config, tmp_path, capsys, row, advice):
    table = tmp_path / "p.csv"
    table.write_text(f"prefix,category,description\n{row}\n")

    status = run_ctl("--config", str(config), "prefixes", "import", str(table))
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert f"{table}:2: expected 3 columns (prefix, category, description), {advice}" in err


def test_prefixes_import_checks_home_rows(config, tmp_path, capsys):
    # The daemon rejects this table, so the import must not store it.
    table = tmp_path / "p.csv"
    table.write_text("prefix,category,description\n09,premium,\n+44,geographic,UK\n")

    status = run_ctl("--config", str(config), "prefixes", "import", str(table))
    captured = capsys.readouterr()
    listed = run_ctl("--config", str(config), "prefixes", "list")

    assert status == EXIT_CONFIG
    assert f"{table}:3: prefix '+44' can never match" in captured.err
    assert "imported" not in captured.out
    assert listed == EXIT_OK
    assert "+44" not in capsys.readouterr().out


def test_prefixes_list_empty_store(config, capsys):
    listed = run_ctl("--config", str(config), "prefixes", "list")
    captured = capsys.readouterr()
    listed_json = run_ctl("--config", str(config), "prefixes", "list", "--json")
    captured_json = capsys.readouterr()

    assert listed == EXIT_OK
    assert captured.out == ""
    assert "no prefix table is stored in sqlite:///" in captured.err
    assert "callguardctl prefixes import FILE" in captured.err
    assert listed_json == EXIT_OK
    assert json.loads(captured_json.out) == []
    assert captured_json.err == ""


def test_prefixes_list_empty_category(config, capsys):
    run_ctl("--config", str(config), "prefixes", "import", str(SAMPLE_PREFIXES))
    capsys.readouterr()
    table = config.parent / "no-pagers.csv"
    rows = [line for line in SAMPLE_PREFIXES.read_text().splitlines()
            if ",pager," not in line]
    table.write_text("\n".join(rows) + "\n")
    run_ctl("--config", str(config), "prefixes", "import", str(table))
    capsys.readouterr()

    listed = run_ctl("--config", str(config), "prefixes", "list", "--category", "pager")
    captured = capsys.readouterr()

    assert listed == EXIT_OK
    assert captured.out == ""
    assert "no prefix of category pager is stored in sqlite:///" in captured.err


def test_rates_list_empty_store(tmp_path, capsys):
    config = create_database(write_config(
        tmp_path, trunks=TWO_TRUNKS + "\n[trunk epsilon]\ndefault_rate = 0.05\n"))
    options = ["--config", str(config)]

    gamma = run_ctl(*options, "rates", "list", "--trunk", "gamma")
    gamma_err = capsys.readouterr().err
    epsilon = run_ctl(*options, "rates", "list", "--trunk", "epsilon")
    epsilon_err = capsys.readouterr().err
    run_ctl(*options, "rates", "import", str(SAMPLE_RATES), "--trunk", "gamma")
    capsys.readouterr()
    filtered = run_ctl(*options, "rates", "list", "--trunk", "gamma", "--prefix", "999")
    filtered_output = capsys.readouterr()

    assert gamma == EXIT_OK
    assert "no rate deck is stored for trunk gamma in sqlite:///" in gamma_err
    assert "callguardctl rates import FILE --trunk gamma" in gamma_err
    assert epsilon == EXIT_OK
    assert f"its section in {config} names no rates file" in epsilon_err
    assert filtered == EXIT_OK
    assert filtered_output.out == ""
    assert "no rate of trunk gamma whose prefix starts with 999" in filtered_output.err


# status and calls against a running Application


@pytest.fixture
async def pbx(tmp_path):
    """Start an emulated PBX and callguard, with 3.00 spent today, 10.00 this week."""
    pbx = Pbx(tmp_path, START, trunks=TRUNK, rates=RATES)
    await pbx.start()
    await pbx.app.stop()
    pbx.add_spend("day", DAY, "3.00", START)
    pbx.add_spend("week", WEEK, "10.00", START)
    await pbx.start_callguard()
    yield pbx
    await pbx.stop()


async def answered_calls(pbx: Pbx, numbers: list[str]) -> dict[str, object]:
    calls = {}
    for index, number in enumerate(numbers):
        call, result = await pbx.call(number, endpoint=f"{1001 + index}")
        assert result["CALLGUARD_RESULT"] == "ALLOW", result
        await pbx.ari.answer(call)
        calls[number] = call
    await eventually(lambda: len(pbx.legs()) == len(numbers)
                     and all(leg.state == "up" for leg in pbx.legs().values()),
                     what="answered legs")
    return calls


async def ctl_in_thread(*argv: str) -> int:
    return await asyncio.to_thread(run_ctl, *argv)


async def test_status_json_live(pbx, capsys):
    calls = await answered_calls(pbx, [GEOGRAPHIC, MOBILE])
    pbx.clock.advance(90)  # two blocks begun on each call

    status = await ctl_in_thread("--config", str(pbx.path), "status", "--json")
    reply = read_json(capsys)

    gamma = reply["trunks"]["gamma"]
    live = {leg["number"]: leg for leg in gamma["live_calls"]}
    assert status == EXIT_OK
    assert reply["ari_connected"] is True
    assert reply["currency"] == "GBP"
    # 3.00 before, then 2 blocks at 1.00 and 2 blocks at 2.00.
    assert gamma["daily_spend"] == "9.00"
    assert gamma["daily_limit"] == "20.00"
    assert gamma["daily_percent"] == "45.0"
    assert gamma["weekly_spend"] == "16.00"
    assert gamma["weekly_limit"] == "80.00"
    assert sorted(live) == ["+441632960123", "+447700900123"]
    geographic = live["+441632960123"]
    assert geographic["uniqueid"] == calls[GEOGRAPHIC].trunk_id
    assert geographic["state"] == "up"
    assert geographic["duration"] == 90
    assert geographic["cost"] == "2.00"
    assert geographic["rate"] == "1.00"
    assert datetime.fromisoformat(geographic["answered_at"]) == START
    assert live["+447700900123"]["cost"] == "4.00"
    assert live["+447700900123"]["category"] == "mobile"


async def test_status_text_live(pbx, capsys):
    await answered_calls(pbx, [GEOGRAPHIC])
    pbx.clock.advance(30)

    status = await ctl_in_thread("--config", str(pbx.path), "status")
    lines = capsys.readouterr().out.splitlines()

    assert status == EXIT_OK
    assert lines[0] == "callguard 0.1.0, ARI connected"
    assert "[gamma]" in lines
    assert "  daily   4.00 of 20.00 GBP (20.0%)" in lines
    assert "  weekly  11.00 of 80.00 GBP (13.8%)" in lines
    assert "  live calls 1, checks waiting for Dial 0" in lines
    call_lines = [line.split() for line in lines if "+441632960123" in line]
    assert len(call_lines) == 1
    assert call_lines[0][2:6] == ["up", "30", "s", "1.00"]


async def test_status_drops_expired_checks(pbx, capsys):
    # A check whose call never reaches Dial reserves its first block until
    # reservation_seconds (120 by default) have passed.
    outcome = await run_fastagi_call(
        "127.0.0.1", pbx.port,
        AGICall(extension=GEOGRAPHIC, uniqueid="1718355600.1", callerid="01632960010",
                arguments=(GEOGRAPHIC, "gamma")),
    )
    assert outcome.variables["CALLGUARD_RESULT"] == "ALLOW"

    await ctl_in_thread("--config", str(pbx.path), "status", "--json")
    waiting = read_json(capsys)["trunks"]["gamma"]
    pbx.clock.advance(121)
    await ctl_in_thread("--config", str(pbx.path), "status", "--json")
    expired = read_json(capsys)["trunks"]["gamma"]

    assert waiting["pending_checks"] == 1
    assert waiting["reserved"] == "1.00"
    assert expired["pending_checks"] == 0
    assert expired["reserved"] == "0.00"


async def test_calls_json_live_and_recent(pbx, capsys):
    calls = await answered_calls(pbx, [GEOGRAPHIC, MOBILE])
    pbx.clock.advance(90)
    await pbx.ari.hangup(calls[GEOGRAPHIC])
    await eventually(lambda: len(pbx.legs()) == 1, what="the first call to end")

    status = await ctl_in_thread("--config", str(pbx.path), "calls", "--json")
    reply = read_json(capsys)
    live_status = await ctl_in_thread("--config", str(pbx.path), "calls", "--live",
                                      "--json")
    live_reply = read_json(capsys)

    assert status == EXIT_OK
    assert [call["uniqueid"] for call in reply["live"]] == [calls[MOBILE].trunk_id]
    assert [call["uniqueid"] for call in reply["recent"]] == [
        calls[GEOGRAPHIC].trunk_id
    ]
    ended = reply["recent"][0]
    assert ended["state"] == "ended"
    assert ended["duration"] == 90
    assert ended["cost"] == "2.00"
    assert ended["hangup_cause"] == 16
    assert live_status == EXIT_OK
    assert [call["uniqueid"] for call in live_reply["live"]] == [calls[MOBILE].trunk_id]
    assert live_reply["recent"] == []


async def test_calls_from_store_when_stopped(pbx, capsys):
    calls = await answered_calls(pbx, [GEOGRAPHIC, MOBILE])
    pbx.clock.advance(90)
    await pbx.ari.hangup(calls[GEOGRAPHIC])
    await eventually(lambda: len(pbx.legs()) == 1, what="the first call to end")
    await pbx.app.guard.drain()
    await pbx.app.stop()
    pbx.app = None

    status = await ctl_in_thread("--config", str(pbx.path), "calls", "--json")
    captured = capsys.readouterr()
    reply = json.loads(captured.out)
    live_status = await ctl_in_thread("--config", str(pbx.path), "calls", "--live")
    live_err = capsys.readouterr().err

    stored = {call["uniqueid"]: call for call in reply["recent"]}
    assert status == EXIT_OK
    assert "showing calls from the store instead" in captured.err
    assert reply["live"] == []
    assert sorted(stored) == sorted(call.trunk_id for call in calls.values())
    ended = stored[calls[GEOGRAPHIC].trunk_id]
    assert ended["state"] == "ended"
    assert ended["duration"] == 90
    assert Decimal(ended["cost"]) == Decimal("2.00")
    assert ended["number"] == "+441632960123"
    assert stored[calls[MOBILE].trunk_id]["state"] == "up"
    assert live_status == EXIT_FAILURE
    assert "cannot reach the callguard daemon" in live_err


def test_status_not_running(config, capsys):
    status = run_ctl("--config", str(config), "status", "--json")
    captured = capsys.readouterr()

    socket_path = config.parent / "callguard.sock"
    assert status == EXIT_FAILURE
    assert captured.out == ""
    assert f"cannot reach the callguard daemon at {socket_path}" in captured.err
    assert "is it running" in captured.err


def test_status_silent_daemon_timed_out(tmp_path, capsys):
    # The kernel completes the connection into the listen backlog, and nothing
    # ever reads the request or replies.
    socket_path = tmp_path / "silent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(socket_path))
    listener.listen()
    try:
        status = live.cmd_status(socket_path, as_json=False, timeout=0.2)
    finally:
        listener.close()
    captured = capsys.readouterr()

    assert status == EXIT_FAILURE
    assert f"cannot reach the callguard daemon at {socket_path}: timed out after 0.2 s;" \
        in captured.err
    assert ": ;" not in captured.err


def test_calls_help_names_source(capsys):
    status = run_ctl("calls", "--help")
    # argparse wraps the description at the terminal width.
    text = " ".join(capsys.readouterr().out.split())

    assert status == 0
    assert "the calls that the running daemon holds in memory" in text
    assert "all seen since it started" in text
    assert "It does not read the store's history" in text
    assert "does not list the calls of other daemons that share the store" in text


# Text that callers control, in the listings

# ESC sequences (window title, colour), BEL, CR, LF, TAB, DEL, a C1 control and a
# bidirectional override, as a caller can put them in a number or a channel name.
HOSTILE = "\x1b]0;pwned\x07\x1b[31m09\r01\n2\t3\x7f\x9b\u202e"
HOSTILE_SHOWN = "\\x1b]0;pwned\\x07\\x1b[31m09\\x0d01\\x0a2\\x093\\x7f\\x9b\\u202e"
RAW_CONTROLS = ("\x1b", "\x07", "\r", "\t", "\x7f", "\x9b", "\u202e")


@pytest.mark.parametrize("text, shown", [
    ("\x1b[31mred", "\\x1b[31mred"),
    ("a\r\nb\tc", "a\\x0d\\x0ab\\x09c"),
    ("\x00\x07\x1f\x7f", "\\x00\\x07\\x1f\\x7f"),
    ("\x80\x9b\x9f", "\\x80\\x9b\\x9f"),
    ("\u202e1234\u2066\u2028", "\\u202e1234\\u2066\\u2028"),
    ("Zoë +44 20 7946 0000 東京 ✓", "Zoë +44 20 7946 0000 東京 ✓"),
    ("back\\slash", "back\\slash"),
])
def test_escape_controls(text, shown):
    assert escape_controls(text) == shown


def live_call(**fields) -> dict:
    call = {"uniqueid": "1718355600.2", "trunk": "gamma", "channel": "PJSIP/gamma-00000001",
            "number": "+441632960123", "category": "geographic", "state": "up",
            "duration": 30, "cost": "1.00", "hangup_cause": None, "hangup_reason": None}
    return call | fields


def test_status_escapes_control_characters(config, capsys, monkeypatch):
    trunk = {"daily_spend": "1.00", "daily_limit": "20.00", "daily_percent": "5.0",
             "weekly_spend": "1.00", "weekly_limit": None, "weekly_percent": None,
             "pending_checks": 0,
             "live_calls": [live_call(channel=f"PJSIP/{HOSTILE}", number=HOSTILE)]}
    reply = {"version": "0.1.0", "currency": "GBP", "ari_connected": True,
             "trunks": {"gamma": trunk}}
    monkeypatch.setattr(live, "query", lambda socket, request, timeout: reply)

    status = run_ctl("--config", str(config), "status")
    out = capsys.readouterr().out

    assert status == EXIT_OK
    for control in RAW_CONTROLS:
        assert control not in out
    assert out.count(HOSTILE_SHOWN) == 2
    assert "  weekly  1.00 GBP, no limit" in out.splitlines()


@pytest.mark.parametrize("fields, shown", [
    ({}, "  live calls 0, checks waiting for Dial 1"),
    ({"other_nodes_calls": 0}, "  live calls 0, checks waiting for Dial 1"),
    ({"other_nodes_calls": 3},
     "  live calls 0, checks waiting for Dial 1, calls and checks on other nodes 3"),
])
def test_status_shows_other_nodes_calls(config, capsys, monkeypatch, fields, shown):
    trunk = {"daily_spend": "1.00", "daily_limit": "20.00", "daily_percent": "5.0",
             "weekly_spend": "1.00", "weekly_limit": None, "weekly_percent": None,
             "pending_checks": 1, "live_calls": []} | fields
    reply = {"version": "0.1.0", "currency": "GBP", "ari_connected": True,
             "trunks": {"gamma": trunk}}
    monkeypatch.setattr(live, "query", lambda socket, request, timeout: reply)

    status = run_ctl("--config", str(config), "status")

    assert status == EXIT_OK
    assert shown in capsys.readouterr().out.splitlines()


def test_calls_escapes_control_characters(config, capsys, monkeypatch):
    reply = {"live": [live_call(channel=HOSTILE, category=HOSTILE)],
             "recent": [live_call(number=HOSTILE, state="ended", hangup_reason=HOSTILE)]}
    monkeypatch.setattr(live, "query", lambda socket, request, timeout: reply)

    status = run_ctl("--config", str(config), "calls")
    lines = capsys.readouterr().out.splitlines()

    assert status == EXIT_OK
    assert len(lines) == 4
    for control in RAW_CONTROLS:
        assert not [line for line in lines if control in line]
    assert lines[1].count(HOSTILE_SHOWN) == 2
    assert lines[3].count(HOSTILE_SHOWN) == 2


def test_stored_calls_escape_control_characters(config, capsys):
    with Store(load_config(config).general.database) as store:
        store.save_call(CallRecord(
            uniqueid="1718355600.2", trunk="gamma", channel=f"PJSIP/{HOSTILE}",
            caller=HOSTILE, dialled=HOSTILE, created_at=datetime.now(timezone.utc),
            guarded=False,
        ))

    status = run_ctl("--config", str(config), "calls")
    captured = capsys.readouterr()

    assert status == EXIT_OK
    assert "showing calls from the store instead" in captured.err
    for control in RAW_CONTROLS:
        assert control not in captured.out
    assert captured.out.count(HOSTILE_SHOWN) == 2


def test_alerts_escape_control_characters(config, capsys):
    now = datetime.now(timezone.utc)
    with Store(load_config(config).general.database) as store:
        store.queue_alert([OutboxRecord(
            created_at=now, kind="block", trunk="gamma", transport="webhook",
            subject=f"[callguard] blocked caller {HOSTILE}", body="",
            next_attempt_at=now, last_error=f"HTTP 500: {HOSTILE}",
        )])

    status = run_ctl("--config", str(config), "alerts")
    out = capsys.readouterr().out

    assert status == EXIT_OK
    for control in RAW_CONTROLS:
        assert control not in out
    assert out.count(HOSTILE_SHOWN) == 2


# the console scripts


@pytest.mark.parametrize("script, words", [
    ("callguard", ["usage: callguard", "run"]),
    ("callguardctl", ["usage: callguardctl", "check", "check-config", "status", "calls",
                      "prefixes", "rates"]),
])
def test_console_script_help(script, words):
    result = subprocess.run(
        [str(BIN / script), "--help"], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == EXIT_OK, result.stderr
    for word in words:
        assert word in result.stdout


@pytest.mark.parametrize("source", ["10.0.0.0/8", "sbc.example", "192.0.2.10:abc"])
def test_check_rejects_bad_source(config, capsys, source):
    status = run_ctl("--config", str(config), "check", GEOGRAPHIC, "--trunk", "gamma",
                     "--source", source, "--offline")

    assert status == EXIT_CONFIG
    assert "is not an IP address" in capsys.readouterr().err


@pytest.mark.parametrize("limit", ["0", "-1", "x", "99999999999999999999"])
def test_rates_list_rejects_bad_limit(config, capsys, limit):
    status = run_ctl("--config", str(config), "rates", "list", "--trunk", "gamma",
                     "--limit", limit)

    assert status == EXIT_CONFIG
    assert "argument --limit" in capsys.readouterr().err


def test_check_config_warns_odd_limits(tmp_path, capsys):
    trunks = (
        "[trunk gamma]\ndaily_limit = 300.00\nweekly_limit = 200.00\nrates = rates.csv\n"
        "\n[trunk delta]\nweekly_limit = 0\nrates = rates.csv\n"
    )
    path = write_config(tmp_path, trunks=trunks)

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err.splitlines()

    assert status == EXIT_OK
    assert err == [
        f"{path}: warning: [trunk gamma] daily_limit 300.00 is above weekly_limit "
        "200.00, so the weekly limit bites first; lower daily_limit or raise "
        "weekly_limit",
        f"{path}: warning: [trunk delta] weekly_limit is 0: every call is refused "
        "except emergency calls and opted-out callers; leave it empty for no limit",
        f"{path}: warning: [ari] enabled = no, so the daily and weekly limits of "
        "[trunk delta], [trunk gamma] count only the first block each allowed call "
        "reserves, and only for reservation_seconds: calls are not metered or hung "
        "up; set enabled = yes in [ari]",
    ]


def test_check_config_warns_outside_line_zero(tmp_path, capsys):
    path = write_config(tmp_path, general="outside_line_prefix = 0")

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "outside_line_prefix" in line]

    assert status == EXIT_OK
    assert len(warnings) == 2
    assert warnings[0].startswith(
        f"{path}: warning: [general] outside_line_prefix '0' begins the national "
        "prefix '0'")
    assert "rejected as invalid. Phones must always dial '0' first" in warnings[0]
    assert warnings[1].startswith(
        f"{path}: warning: [general] outside_line_prefix '0' begins the "
        "international prefix '00'")


@pytest.mark.parametrize("key, ignore, warned", [
    ("endpoint", "1001, 10.0.0.0/8, 192.0.2.10", "'10.0.0.0/8', '192.0.2.10'"),
    ("accountcode", "sales, 2001:db8::/32", "'2001:db8::/32'"),
    ("endpoint", "1001, alice", None),
    ("source", "10.0.0.0/8", None),
])
def test_check_config_ban_ignore_addresses(tmp_path, capsys, key, ignore, warned):
    trunks = TRUNK + f"offender_key = {key}\nban_ignore = {ignore}\n"
    path = write_config(tmp_path, trunks=trunks)

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err.splitlines()
    warnings = [line for line in err if "] ban_ignore lists" in line]

    assert status == EXIT_OK
    if warned is None:
        assert warnings == []
    else:
        assert warnings == [
            f"{path}: warning: [trunk gamma] ban_ignore lists {warned}, an IP address or "
            f"network, but offender_key is {key}, so it is compared with {key} names and "
            "exempts nothing; set offender_key = source to exempt addresses, or list the "
            "names"
        ]


BAD_PREFIX_ROWS = """\
prefix,category,description
09,premium,Premium rate
0 9,premium,Spaced
118,directry,Directory enquiries
09,premium,Premium again
08,special-084
"""


def test_check_config_lists_bad_prefix_rows(tmp_path, capsys):
    table = tmp_path / "prefixes.csv"
    table.write_text(BAD_PREFIX_ROWS)
    path = write_config(tmp_path, general="prefixes = prefixes.csv")

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err.splitlines()

    assert status == EXIT_CONFIG
    assert err[0].startswith(f"{table}:3: prefix '0 9' is invalid; write")
    assert err[1].startswith(f"{table}:4: category 'directry' is unknown; use one of")
    assert err[2] == (f"{table}:5: prefix '09' is already defined on line 2; remove "
                      "one of the two rows")
    assert err[3].startswith(f"{table}:6: expected 3 columns (prefix, category, "
                             "description), found 2 in '08,special-084'; give")
    assert len(err) == 4


@pytest.mark.parametrize("rows, first_line", [
    (BAD_PREFIX_ROWS, 3),
    ("prefix,category,description\n0,geographic,Home\n", None),
])
def test_check_config_lists_home_rows_too(tmp_path, capsys, rows, first_line):
    # A row that writes a home number in E.164 form is listed in the same run
    # as the rows that could not be read, not only once they are fixed.
    table = tmp_path / "prefixes.csv"
    line = len(rows.splitlines()) + 1
    table.write_text(rows + "+4420,geographic,London\n")
    path = write_config(tmp_path, general="prefixes = prefixes.csv")

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err.splitlines()

    assert status == EXIT_CONFIG
    if first_line is not None:
        assert err[0].startswith(f"{table}:{first_line}: ")
    assert err[-1] == (f"{table}:{line}: prefix '+4420' can never match, because numbers "
                       "with the home country code +44 are looked up on their national "
                       "form; write it as '020'")


def test_check_config_lists_every_bad_table(tmp_path, capsys):
    table = tmp_path / "prefixes.csv"
    table.write_text(BAD_PREFIX_ROWS)
    (tmp_path / "delta.csv").write_text(RATES.replace("\n44,", "\n44x,"))
    trunks = TWO_TRUNKS.replace("[trunk delta]\nrates = rates.csv",
                                "[trunk delta]\nrates = delta.csv")
    path = write_config(tmp_path, general="prefixes = prefixes.csv", trunks=trunks,
                        rates=RATES.replace(",2.00,", ",-2.00,"))

    status = run_ctl("--config", str(path), "check-config")
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert f"{table}:3: prefix '0 9' is invalid" in err
    assert f"{tmp_path / 'rates.csv'}:3: rate '-2.00' is invalid" in err
    assert f"{tmp_path / 'delta.csv'}:2: prefix '44x' is invalid" in err


def test_prefixes_import_lists_bad_rows(config, tmp_path, capsys):
    table = tmp_path / "p.csv"
    table.write_text(BAD_PREFIX_ROWS + "+4420,geographic,London\n")

    status = run_ctl("--config", str(config), "prefixes", "import", str(table))
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    for line in range(3, 7):
        assert f"{table}:{line}: " in err
    assert f"{table}:7: prefix '+4420' can never match" in err


@pytest.mark.parametrize("arguments, message", [
    (["rates", "list", "--trunk", ""], "trunk is empty"),
    (["rates", "list", "--trunk", "gamma", "--prefix", "abc"], "prefix 'abc' is invalid"),
    (["rates", "import", "/nonexistent.csv", "--trunk", "gamma"],
     "/nonexistent.csv: cannot read it: No such file or directory"),
    (["rates", "import", "/tmp", "--trunk", "gamma"], "cannot read it: Is a directory"),
])
def test_rates_bad_input_one_line(config, capsys, arguments, message):
    status = run_ctl("--config", str(config), *arguments)
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_check_escapes_dialled_text(config, capsys):
    status = run_ctl("--config", str(config), "check", "0163\x1b[2J2960125", "--trunk",
                     "gamma", "--offline")
    out = capsys.readouterr().out

    assert status == EXIT_OK
    assert "\x1b" not in out
    assert "dialled    0163\\x1b[2J2960125" in out.splitlines()


def test_log_lines_escape_control_characters():
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    record = logging.LogRecord("callguard", logging.WARNING, __file__, 1,
                               "blocked endpoint %s; the last call to %s",
                               ("80\x1b[31m01", "0163\r\nFAKE LINE"), None)

    line = formatter.format(record)

    assert line == ("WARNING blocked endpoint 80\\x1b[31m01; the last call to "
                    "0163\\x0d\n    FAKE LINE")


def test_log_time_matches_standard_formatter():
    ours = EscapingFormatter("%(asctime)s %(message)s")
    standard = logging.Formatter("%(asctime)s %(message)s")
    # Several records within one second, then the next second and an earlier one.
    for created in (1718366400.001, 1718366400.5, 1718366400.999, 1718366401.0,
                    1718366401.25, 1718366399.75, 1733356800.123):
        record = logging.LogRecord("callguard", logging.INFO, __file__, 1, "call", (), None)
        record.created = created
        record.msecs = int((created - int(created)) * 1000)

        assert ours.format(record) == standard.format(record)


@pytest.mark.parametrize("command", [["block", "1001", "--reason", "fraud"],
                                     ["unblock", "1001", "--reason", "done"],
                                     ["reset", "gamma", "--window", "day", "--reason", "x"]])
def test_change_with_broken_config_says_how(tmp_path, capsys, command):
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "\n[trunk gamma2]\ndaily_limit = fifty\n")

    status = run_ctl("--config", str(path), *command)
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert "daily_limit: 'fifty' is not an amount" in err
    assert (f"callguardctl {command[0]} needs a config that loads, to find the store and "
            "the daemon") in err
    assert "give --config a copy of the last good file" in err


@pytest.mark.parametrize("command", ["status", "calls"])
def test_query_with_broken_config_names_socket(tmp_path, capsys, command):
    path = write_config(tmp_path)
    path.write_text(path.read_text() + "\n[trunk gamma2]\ndaily_limit = fifty\n")

    status = run_ctl("--config", str(path), command)
    err = capsys.readouterr().err

    assert status == EXIT_CONFIG
    assert "daily_limit: 'fifty' is not an amount" in err
    assert f"callguardctl {command} reads control_socket from the config" in err
    assert "--socket PATH" in err


def test_journal_lines_carry_the_priority():
    formatter = JournalFormatter()
    record = logging.LogRecord("callguard.daemon", logging.ERROR, __file__, 1,
                               "cannot start: %s", ("first\nsecond",), None)

    assert formatter.format(record) == ("<3>ERROR callguard.daemon: cannot start: first\n"
                                        "<3>    second")


@pytest.mark.parametrize("level, priority", [
    (logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
    (logging.INFO, 6), (logging.DEBUG, 7), (logging.INFO + 5, 6),
])
def test_journal_priority_of_each_level(level, priority):
    assert journal_priority(level) == priority


def test_log_traceback_masks_url_password():
    formatter = EscapingFormatter("%(levelname)s %(message)s")
    try:
        raise ValueError("cannot open http://callguard:Sup3rS3cret@127.0.0.1:8088/ari")
    except ValueError:
        record = logging.LogRecord("callguard", logging.ERROR, __file__, 1,
                                   "the reload failed unexpectedly", (), sys.exc_info())

    text = formatter.format(record)

    assert "Sup3rS3cret" not in text
    assert "ValueError: cannot open http://callguard:***@127.0.0.1:8088/ari" in text


# Commands that only read the store, with the arguments they need.
READ_ONLY_COMMANDS = [
    ["blocks"],
    ["audit"],
    ["alerts"],
    ["calls"],
    ["check", GEOGRAPHIC, "--trunk", "gamma", "--offline"],
    ["prefixes", "list"],
    ["rates", "list", "--trunk", "gamma"],
    ["unblock", "1001", "--reason", "mistyped database"],
]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=lambda argv: argv[0])
def test_read_only_missing_sqlite_file(tmp_path, capsys, command):
    config = write_config(tmp_path)
    missing = tmp_path / "calguard.db"

    status = run_ctl("--config", str(config), "--database", f"sqlite:///{missing}",
                     *command)
    err = capsys.readouterr().err

    assert status == EXIT_FAILURE
    assert f"SQLite database {missing} does not exist" in err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["callguard.conf",
                                                                 "rates.csv"]


@pytest.mark.parametrize("command", READ_ONLY_COMMANDS, ids=lambda argv: argv[0])
def test_read_only_empty_database(tmp_path, capsys, db_url, command):
    config = write_config(tmp_path, database=db_url)
    if db_url.startswith("sqlite"):
        # An empty file, as a database that another program created.
        sqlite3.connect(tmp_path / "callguard.db").close()

    status = run_ctl("--config", str(config), *command)
    err = capsys.readouterr().err

    engine = sqlalchemy.create_engine(db_url)
    with engine.connect() as conn:
        tables = sqlalchemy.inspect(conn).get_table_names()
    engine.dispose()
    assert status == EXIT_FAILURE
    assert "has no callguard schema" in err
    assert tables == []
    if db_url.startswith("sqlite"):
        assert (tmp_path / "callguard.db").stat().st_size == 0


def test_read_only_while_write_locked(config, capsys):
    # WAL lets readers go on while another process holds the write lock.
    with sqlite_write_locked(config.parent / "callguard.db"):
        status = run_ctl("--config", str(config), "blocks")
    captured = capsys.readouterr()

    assert status == EXIT_OK
    assert captured.out == "no active blocks\n"
    assert captured.err == ""
