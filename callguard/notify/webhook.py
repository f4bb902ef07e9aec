"""Delivery of an alert as a signed JSON POST to the ``[webhook]`` URL.

The body is the alert as one JSON object. With ``secret_file`` set, the
``X-Callguard-Signature`` header carries ``sha256=`` and the hex HMAC-SHA256
of the raw body under that secret, so the receiver can check where it came
from. ``X-Callguard-Delivery`` carries the outbox id, which stays the same
across retries, so the receiver can drop a repeated delivery.
"""

import hashlib
import hmac
import json
import logging
import ssl
from urllib.parse import urlsplit

import httpx

from callguard import __version__
from callguard.config import WebhookConfig
from callguard.notify.tls import verified_context
from callguard.store import OutboxRecord

SIGNATURE_HEADER = "X-Callguard-Signature"
SIGNATURE_PREFIX = "sha256="
DELIVERY_HEADER = "X-Callguard-Delivery"
EVENT_HEADER = "X-Callguard-Event"
USER_AGENT = f"callguard/{__version__}"
JSON_TYPE = "application/json"
HTTPX_LOGGER = "httpx"

# Replies worth retrying besides 5xx: Request Timeout, Too Early, Too Many Requests.
RETRY_STATUSES = frozenset({408, 425, 429})


class _UrlRedactor(logging.Filter):
    """Replaces webhook URLs in httpx's request log lines with ``shown_url``.

    httpx logs every request's full URL at INFO, and a webhook URL may carry a
    token in its path or query.
    """

    def __init__(self) -> None:
        super().__init__()
        self.urls: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and self.urls:
            record.args = tuple(
                shown_url(str(arg)) if str(arg) in self.urls else arg
                for arg in record.args
            )
        return True


_REDACTOR = _UrlRedactor()
logging.getLogger(HTTPX_LOGGER).addFilter(_REDACTOR)


class WebhookError(Exception):
    """The receiver did not take the alert; the text names no secret or URL path.

    ``permanent`` is True when a retry cannot help, e.g. a 404 reply.
    ``server_down`` is True when the receiver is unreachable or failing, so
    other alerts would fail too.
    """

    def __init__(self, message: str, *, permanent: bool, server_down: bool):
        super().__init__(message)
        self.permanent = permanent
        self.server_down = server_down


def shown_url(url: str) -> str:
    """Return the scheme, host and port of ``url``, for messages and logs.

    The path and query are left out because receivers often take a token there,
    and so is any ``user:password@``.
    """
    parts = urlsplit(url)
    host_and_port = parts.netloc.rpartition("@")[2]
    return f"{parts.scheme}://{host_and_port}"


def payload(row: OutboxRecord) -> bytes:
    """Return the JSON body for an outbox row; a retry produces the same bytes."""
    if row.id is None:
        raise ValueError("an outbox row needs its id before it can be posted")

    document = {
        "id": row.id,
        "kind": row.kind,
        "trunk": row.trunk,
        "subject": row.subject,
        "body": row.body,
        "data": json.loads(row.data),
        "created_at": row.created_at.isoformat(),
        "dedupe_key": row.dedupe_key,
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return text.encode("utf-8")


def signature(secret: str, body: bytes) -> str:
    """Return the value of the signature header for ``body`` under ``secret``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return f"{SIGNATURE_PREFIX}{digest}"


def prepare(settings: WebhookConfig) -> tuple[str | None, ssl.SSLContext]:
    """Read the HMAC key (None when unset) and build the TLS context.

    Both read files, so the dispatcher runs this in a thread. Raises
    ``WebhookError`` when a file is unusable.
    """
    return _read_secret(settings), _tls_context(settings)


def _read_secret(settings: WebhookConfig) -> str | None:
    try:
        secret = settings.secret()
    except OSError as exc:
        raise WebhookError(
            f"cannot read [webhook] secret_file {settings.secret_file}: "
            f"{exc.strerror or exc}; let the callguard user read it",
            permanent=False,
            server_down=True,
        ) from None

    if secret == "":
        raise WebhookError(
            f"[webhook] secret_file {settings.secret_file} is empty; write the "
            "shared secret on its first line",
            permanent=False,
            server_down=True,
        )
    return secret


async def post_alert(
    settings: WebhookConfig,
    row: OutboxRecord,
    body: bytes,
    secret: str | None,
    context: ssl.SSLContext,
) -> int:
    """POST ``body``, the payload of ``row``; returns the receiver's 2xx status.

    ``secret`` and ``context`` come from ``prepare``. Raises ``WebhookError``
    for any other status or when the request fails.
    """
    headers = {
        "Content-Type": JSON_TYPE,
        "User-Agent": USER_AGENT,
        DELIVERY_HEADER: str(row.id),
        EVENT_HEADER: row.kind,
    }
    if secret is not None:
        headers[SIGNATURE_HEADER] = signature(secret, body)

    where = f"webhook {shown_url(settings.url)}"
    _REDACTOR.urls.add(str(httpx.URL(settings.url)))
    try:
        # trust_env=False keeps HTTP_PROXY and friends from rerouting alerts.
        async with httpx.AsyncClient(
            timeout=settings.timeout, verify=context, trust_env=False
        ) as client:
            response = await client.post(settings.url, content=body, headers=headers)
    except httpx.TimeoutException:
        raise WebhookError(
            f"{where} timed out after {settings.timeout:g} s",
            permanent=False,
            server_down=True,
        ) from None
    except httpx.TransportError as exc:
        detail = _first_line(exc).replace(settings.url, shown_url(settings.url))
        raise WebhookError(
            f"cannot reach {where}: {type(exc).__name__}: {detail}",
            permanent=False,
            server_down=True,
        ) from None

    status = response.status_code
    if 200 <= status < 300:
        return status

    retry = status >= 500 or status in RETRY_STATUSES
    reason = response.reason_phrase or "no reason given"
    hint = ""
    if 300 <= status < 400:
        hint = "; callguard does not follow redirects, so set url to the final address"
    raise WebhookError(
        f"{where} responded with HTTP {status} {reason}{hint}",
        permanent=not retry,
        server_down=retry,
    )


def _tls_context(settings: WebhookConfig) -> ssl.SSLContext:
    try:
        return verified_context(settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebhookError(
            f"cannot load [webhook] ca_file {settings.ca_file}: {exc}; give a "
            "readable PEM file of CA certificates",
            permanent=False,
            server_down=True,
        ) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else "no detail"
