"""E-mail messages for outbox rows and for ``callguardctl test-mail``."""

import socket
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime, make_msgid

from callguard import __version__
from callguard.store import OutboxRecord

# RFC 3834: marks the message as sent by a program, so auto-responders stay quiet.
AUTO_SUBMITTED = "auto-generated"
KIND_HEADER = "X-Callguard-Kind"
TRUNK_HEADER = "X-Callguard-Trunk"
MAILER = f"callguard {__version__}"
TEST_KIND = "test"


def _domain(address: str) -> str:
    return address.rpartition("@")[2]


def _message(
    sender: str,
    recipients: tuple[str, ...],
    subject: str,
    body: str,
    created_at: datetime,
    message_id: str,
) -> EmailMessage:
    message = EmailMessage(policy=SMTP_POLICY)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Subject"] = subject
    message["Date"] = format_datetime(created_at)
    message["Message-ID"] = message_id
    message["Auto-Submitted"] = AUTO_SUBMITTED
    message["X-Mailer"] = MAILER
    message.set_content(body)
    return message


def build_alert_message(row: OutboxRecord, sender: str) -> EmailMessage:
    """Build the e-mail of an outbox row, addressed to all of its recipients.

    The Message-ID is made from the row's id and creation time, so every retry
    of the row carries the same one and a mail system can drop duplicates.
    """
    if row.id is None:
        raise ValueError("an outbox row needs its id before it can be mailed")

    stamp = int(row.created_at.timestamp())
    message_id = f"<callguard.{row.id}.{stamp}@{_domain(sender)}>"
    message = _message(
        sender, row.recipients, row.subject, row.body, row.created_at, message_id
    )
    message[KIND_HEADER] = row.kind
    if row.trunk is not None:
        message[TRUNK_HEADER] = row.trunk
    return message


def build_test_message(
    sender: str, recipients: tuple[str, ...], now: datetime
) -> EmailMessage:
    """Build the message of ``callguardctl test-mail``."""
    host = socket.gethostname()
    body = (
        f"This is a test message from callguard on {host}, sent at "
        f"{now.isoformat(timespec='seconds')}.\n\n"
        "It shows that callguard's alerts reach you through the [smtp] settings "
        "of its configuration.\n"
    )
    message = _message(
        sender,
        recipients,
        f"[callguard] test message from {host}",
        body,
        now,
        make_msgid("callguard", domain=_domain(sender)),
    )
    message[KIND_HEADER] = TEST_KIND
    return message
