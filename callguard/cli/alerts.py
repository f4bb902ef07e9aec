"""``callguardctl alerts`` and ``test-mail``: the alert outbox and a mail check."""

import argparse
import json
import sys
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from callguard.cli.common import EXIT_CONFIG, EXIT_FAILURE, EXIT_OK, read_config, row_limit
from callguard.text import escape_controls
from callguard.config.addresses import EMAIL_PATTERN, host_port
from callguard.notify.mail import build_test_message
from callguard.notify.smtp import SmtpError, send_mail
from callguard.store import ALERT_STATES, OutboxRecord, Store

DEFAULT_LIMIT = 50
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Add the ``alerts`` and ``test-mail`` commands to ``callguardctl``."""
    alerts = commands.add_parser(
        "alerts",
        help="sent, pending and failed alerts in the outbox, newest first",
    )
    alerts.add_argument("--json", action="store_true", help="print one JSON object")
    alerts.add_argument(
        "--limit",
        type=row_limit,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"show at most N alerts (default {DEFAULT_LIMIT})",
    )
    alerts.add_argument(
        "--state", choices=ALERT_STATES, help="show only alerts in this state"
    )

    test_mail = commands.add_parser(
        "test-mail",
        help="send a test message through the [smtp] server now and print its reply",
    )
    test_mail.add_argument(
        "address",
        nargs="?",
        help="the recipient (default: the [smtp] to addresses)",
    )


def cmd_alerts(args: argparse.Namespace) -> int:
    config = read_config(args)
    store = Store(config.general.database, create_schema=False)
    store.open()
    try:
        rows = store.recent_alerts(args.limit, args.state)
        counts = store.count_alerts()
    finally:
        store.close()

    if args.json:
        report = {"counts": counts, "alerts": [_alert_json(row) for row in rows]}
        print(json.dumps(report, indent=2))
        return EXIT_OK

    zone = config.general.timezone
    totals = ", ".join(f"{counts[state]} {state}" for state in ALERT_STATES)
    print(f"alerts: {totals}")
    if rows:
        print(
            f"{'ID':>6} {'CREATED (' + str(zone) + ')':<19} {'KIND':<10} "
            f"{'TRUNK':<10} {'VIA':<7} {'STATE':<7} {'TRIES':>3}  SUBJECT"
        )
    for row in rows:
        _print_alert(row, zone)
    return EXIT_OK


def cmd_test_mail(args: argparse.Namespace) -> int:
    config = read_config(args)
    settings = config.smtp
    if settings is None:
        print(
            f"{config.path}: e-mail is not configured; set host, from and to in [smtp]",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    if args.address is not None and not EMAIL_PATTERN.fullmatch(args.address):
        print(
            f"{args.address!r} is not an e-mail address; write it like "
            "noc@example.com",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    recipients = (args.address,) if args.address else settings.to
    message = build_test_message(
        settings.sender, recipients, datetime.now(timezone.utc)
    )
    where = host_port(settings.host, settings.port)
    try:
        result = send_mail(settings, message, recipients)
    except SmtpError as exc:
        print(f"test message failed: {escape_controls(exc)}", file=sys.stderr)
        return EXIT_FAILURE

    # The replies are the mail server's text.
    for address, reply in result.refused.items():
        print(f"{where} refused {address}: {escape_controls(reply)}", file=sys.stderr)
    if result.reply is None:
        print(
            "test message failed: the server refused every recipient",
            file=sys.stderr,
        )
        return EXIT_FAILURE

    accepted = ", ".join(result.accepted)
    print(f"{where} accepted the message for {accepted}: {escape_controls(result.reply)}")
    return EXIT_FAILURE if result.refused else EXIT_OK


def _alert_json(row: OutboxRecord) -> dict:
    def moment(value: datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "id": row.id,
        "created_at": moment(row.created_at),
        "kind": row.kind,
        "trunk": row.trunk,
        "transport": row.transport,
        "subject": row.subject,
        "recipients": list(row.recipients),
        "state": row.state,
        "attempts": row.attempts,
        "next_attempt_at": moment(row.next_attempt_at),
        "last_attempt_at": moment(row.last_attempt_at),
        "sent_at": moment(row.sent_at),
        "reply": row.reply,
        "last_error": row.last_error,
        "refused": row.refused,
        "dedupe_key": row.dedupe_key,
    }


def _print_alert(row: OutboxRecord, zone: ZoneInfo) -> None:
    """Print one alert, its text safe for a terminal.

    Subjects name dialled numbers and blocked keys, which come from calls, and
    errors and refusals quote the mail or webhook server.
    """
    created = row.created_at.astimezone(zone).strftime(TIME_FORMAT)
    kind, trunk = escape_controls(row.kind), escape_controls(row.trunk or "-")
    print(
        f"{row.id:>6} {created} {kind:<10} {trunk:<10} "
        f"{row.transport:<7} {row.state:<7} {row.attempts:>3}  "
        f"{escape_controls(row.subject)}"
    )

    if row.next_attempt_at is not None:
        next_at = row.next_attempt_at.astimezone(zone).strftime(TIME_FORMAT)
        print(f"{'':>7}next attempt {next_at}")
    if row.last_error:
        print(f"{'':>7}last error: {escape_controls(row.last_error)}")
    if row.refused:
        print(f"{'':>7}refused: {escape_controls(row.refused)}")
