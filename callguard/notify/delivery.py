"""One attempt to deliver an outbox row, and the retry schedule after a failure."""

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from callguard.config import Config
from callguard.notify import smtp, webhook
from callguard.notify.mail import build_alert_message
from callguard.store import TRANSPORT_EMAIL, OutboxRecord

SENT = "sent"
RETRY = "retry"
FAILED = "failed"

# Delays between attempts of one row: 10 s, 20 s, 40 s ... up to 5 minutes.
BACKOFF_FIRST_SECONDS = 10.0
BACKOFF_MAX_SECONDS = 300.0
# give_up_after of a transport that the config no longer sets.
DEFAULT_GIVE_UP_SECONDS = 3600.0
REFUSAL_SEPARATOR = "; "


@dataclass(frozen=True)
class Delivery:
    """The outcome of one attempt.

    ``detail`` is the server's reply when sent, else the error. ``refused``
    lists recipients refused for good as ``address: reply``.
    ``retry_recipients`` lists the recipients that the server deferred, which
    the next attempt sends to. ``server_down`` is True when the failure
    concerns the server, so the transport's other rows wait as well.
    """

    outcome: str  # SENT, RETRY or FAILED
    detail: str
    server_down: bool = False
    refused: tuple[str, ...] = ()
    retry_recipients: tuple[str, ...] = ()


def backoff(attempts: int) -> timedelta:
    """Return the delay after the ``attempts``-th failed attempt (1 for the first)."""
    exponent = min(max(attempts - 1, 0), 16)
    seconds = min(BACKOFF_FIRST_SECONDS * 2**exponent, BACKOFF_MAX_SECONDS)
    return timedelta(seconds=seconds)


def give_up_after(config: Config, transport: str) -> timedelta:
    """Return how long the rows of ``transport`` are retried after being queued."""
    settings = config.smtp if transport == TRANSPORT_EMAIL else config.webhook
    seconds = DEFAULT_GIVE_UP_SECONDS if settings is None else settings.give_up_after
    return timedelta(seconds=seconds)


def lease_seconds(config: Config, transport: str) -> float:
    """Return how long a claimed row is held, longer than any one attempt lasts."""
    settings = config.smtp if transport == TRANSPORT_EMAIL else config.webhook
    timeout = 10.0 if settings is None else settings.timeout
    # An SMTP attempt takes up to eight steps, each bounded by the timeout.
    return 60.0 + 8 * timeout


def join_refusals(earlier: str | None, new: tuple[str, ...]) -> str | None:
    """Add ``new`` refusals to the text stored with the row."""
    parts = [earlier] if earlier else []
    parts.extend(new)
    return REFUSAL_SEPARATOR.join(parts) if parts else None


async def attempt(row: OutboxRecord, config: Config) -> Delivery:
    """Try to deliver ``row`` once, with the settings of ``config``."""
    if row.transport == TRANSPORT_EMAIL:
        return await _attempt_email(row, config)
    return await _attempt_webhook(row, config)


async def _attempt_email(row: OutboxRecord, config: Config) -> Delivery:
    settings = config.smtp
    if settings is None:
        return Delivery(
            RETRY,
            "e-mail is not configured; set host, from and to in [smtp] and reload",
            server_down=True,
        )

    try:
        message = build_alert_message(row, settings.sender)
    except ValueError as exc:
        return Delivery(FAILED, f"cannot build the e-mail: {exc}")

    recipients = row.waiting_recipients
    try:
        result = await asyncio.to_thread(smtp.send_mail, settings, message, recipients)
    except smtp.SmtpError as exc:
        outcome = FAILED if exc.permanent else RETRY
        return Delivery(outcome, str(exc), server_down=exc.server_down)

    refused = tuple(
        f"{address}: {reply}"
        for address, reply in result.refused.items()
        if reply.permanent
    )
    deferred = tuple(
        address for address, reply in result.refused.items() if not reply.permanent
    )
    if deferred:
        replies = REFUSAL_SEPARATOR.join(
            f"{address}: {result.refused[address]}" for address in deferred
        )
        return Delivery(
            RETRY,
            f"the server deferred {replies}",
            refused=refused,
            retry_recipients=deferred,
        )

    if result.reply is None:
        return Delivery(
            FAILED,
            f"the server refused every recipient: {REFUSAL_SEPARATOR.join(refused)}",
            refused=refused,
        )
    return Delivery(SENT, str(result.reply), refused=refused)


async def _attempt_webhook(row: OutboxRecord, config: Config) -> Delivery:
    settings = config.webhook
    if settings is None:
        return Delivery(
            RETRY,
            "the webhook is not configured; set url in [webhook] and reload",
            server_down=True,
        )

    try:
        body = webhook.payload(row)
    except ValueError as exc:
        return Delivery(FAILED, f"cannot build the webhook request: {exc}")

    try:
        secret, context = await asyncio.to_thread(webhook.prepare, settings)
        status = await webhook.post_alert(settings, row, body, secret, context)
    except webhook.WebhookError as exc:
        outcome = FAILED if exc.permanent else RETRY
        return Delivery(outcome, str(exc), server_down=exc.server_down)
    return Delivery(SENT, f"HTTP {status}")
