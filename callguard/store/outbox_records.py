"""The record of one alert in the outbox, and the states and transports it may have."""

from dataclasses import dataclass
from datetime import datetime

from callguard.store.records import check_count, check_text
from callguard.store.types import check_aware

ALERT_PENDING = "pending"  # waiting for its next attempt
ALERT_SENT = "sent"  # accepted by the mail server or the webhook receiver
ALERT_FAILED = "failed"  # given up, or refused for good
ALERT_STATES = (ALERT_PENDING, ALERT_SENT, ALERT_FAILED)

TRANSPORT_EMAIL = "email"
TRANSPORT_WEBHOOK = "webhook"
TRANSPORTS = (TRANSPORT_EMAIL, TRANSPORT_WEBHOOK)

# Separates the addresses in the recipients columns. The address check in the
# config rejects commas, so no address contains one.
RECIPIENT_SEPARATOR = ","


def check_recipients(value: object, field: str) -> tuple[str, ...]:
    """Return ``value`` if it is a tuple of addresses that contain no separator."""
    if not isinstance(value, tuple):
        raise TypeError(
            f"{field} {value!r} is a {type(value).__name__}; expected a tuple of str"
        )

    for address in value:
        check_text(address, field)
        if RECIPIENT_SEPARATOR in address or address != address.strip():
            raise ValueError(
                f"{field} contains {address!r}; give one address per item, "
                "without commas or outer spaces"
            )
    return value


@dataclass(frozen=True, kw_only=True, slots=True)
class OutboxRecord:
    """One alert to deliver over one transport, and how far its delivery got.

    ``data`` is the alert's facts as a JSON object in text form. ``recipients``
    lists the e-mail addresses, and is empty for a webhook. ``pending_recipients``
    lists the addresses that still wait after a delivery that reached only some
    of them, and is None when every recipient still waits or has been reached.
    ``refused`` lists the permanent refusals of single addresses, as
    ``address: reply`` joined by ``; ``.
    """

    id: int | None = None  # assigned by the store
    created_at: datetime
    kind: str  # e.g. "warning", "limit", "test"
    trunk: str | None = None
    transport: str  # TRANSPORT_EMAIL or TRANSPORT_WEBHOOK
    dedupe_key: str | None = None
    subject: str
    body: str
    data: str = "{}"
    recipients: tuple[str, ...] = ()
    pending_recipients: tuple[str, ...] | None = None
    state: str = ALERT_PENDING
    attempts: int = 0
    next_attempt_at: datetime | None  # None once sent or failed
    last_attempt_at: datetime | None = None
    sent_at: datetime | None = None
    reply: str | None = None  # the server's reply to the delivery that succeeded
    last_error: str | None = None  # the error of the latest failed attempt
    refused: str | None = None

    def __post_init__(self) -> None:
        check_aware(self.created_at, "created_at")
        check_text(self.kind, "kind")
        if self.trunk is not None:
            check_text(self.trunk, "trunk")
        if self.transport not in TRANSPORTS:
            raise ValueError(
                f"transport {self.transport!r} is invalid; use one of "
                f"{', '.join(TRANSPORTS)}"
            )
        if self.dedupe_key is not None:
            check_text(self.dedupe_key, "dedupe_key")

        check_text(self.subject, "subject")
        check_text(self.body, "body", empty=True)
        check_text(self.data, "data")
        check_recipients(self.recipients, "recipients")
        if self.pending_recipients is not None:
            check_recipients(self.pending_recipients, "pending_recipients")
        if self.transport == TRANSPORT_EMAIL and not self.recipients:
            raise ValueError("an e-mail alert needs at least one recipient")

        self._check_state()
        check_count(self.attempts, "attempts")
        for field in ("reply", "last_error", "refused"):
            value = getattr(self, field)
            if value is not None:
                check_text(value, field, empty=True)

    def _check_state(self) -> None:
        if self.state not in ALERT_STATES:
            raise ValueError(
                f"state {self.state!r} is invalid; use one of {', '.join(ALERT_STATES)}"
            )

        for field in ("next_attempt_at", "last_attempt_at", "sent_at"):
            value = getattr(self, field)
            if value is not None:
                check_aware(value, field)

        if self.state == ALERT_PENDING and self.next_attempt_at is None:
            raise ValueError("a pending alert needs next_attempt_at")
        if self.state == ALERT_SENT and self.sent_at is None:
            raise ValueError("a sent alert needs sent_at")

    @property
    def waiting_recipients(self) -> tuple[str, ...]:
        """The addresses that the next attempt sends to."""
        if self.pending_recipients is None:
            return self.recipients
        return self.pending_recipients
