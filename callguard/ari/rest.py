"""ARI's REST interface on one aiohttp session, with retries and bounded replies.

Every request here is idempotent (GET, DELETE of a channel, and PUT of the
application's event filter), so a request that failed with a 5xx status, a timeout or a network error is sent again.
Other 4xx statuses are final. A 401 is logged as a credentials problem because
retrying cannot fix it.

A limit can end a hundred calls at once, one DELETE each, so the cost of a
request counts. benchmarks/bench_ari_rest.py measures aiohttp at about an
eighth of the CPU time that httpx needs per request.
"""

import asyncio
import json
import logging
import ssl
from dataclasses import dataclass
from urllib.parse import urlencode

import aiohttp
from yarl import URL

from callguard.ari.endpoint import USER_AGENT, AriEndpoint
from callguard.ari.errors import AriError, AriHTTPError
from callguard.repeats import RepeatLimiter, suppressed_note

log = logging.getLogger(__name__)

HTTP_UNAUTHORIZED = 401
HTTP_SERVER_ERROR = 500

# Maximum length, in characters, of a reply body quoted in an error message.
MAX_SHOWN_BODY = 200

# Connections kept open to Asterisk. They count against http.conf's
# sessionlimit, which every HTTP client of the PBX shares.
MAX_CONNECTIONS = 16
# Idle connections are closed before Asterisk's session_keep_alive closes them,
# so that a request rarely meets a stale one. NOTE: this assumes the usual
# session_keep_alive of 15 s; a shorter one is caught by the resend below.
KEEPALIVE_SECONDS = 5.0
READ_CHUNK = 65536


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how soon a failed request is sent again."""

    retries: int
    delay: float

    def delay_before(self, retry: int) -> float:
        """Return the seconds to wait before retry number `retry` (from 1)."""
        return self.delay * 2 ** (retry - 1)


class AriRest:
    """Sends ARI requests and maps failures to AriError and AriHTTPError."""

    def __init__(
        self,
        endpoint: AriEndpoint,
        *,
        timeout: float,
        retry: RetryPolicy,
        max_response: int,
    ):
        self._endpoint = endpoint
        self._retry = retry
        self._max_response = max_response
        self._timeout = timeout
        self._credential_errors = RepeatLimiter()
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    def _session(self) -> aiohttp.ClientSession:
        # Made on first use: an aiohttp session belongs to the running loop.
        if self._http is None:
            connector = aiohttp.TCPConnector(
                limit=MAX_CONNECTIONS,
                keepalive_timeout=KEEPALIVE_SECONDS,
                ssl=self._endpoint.ssl_context or True,
            )
            # trust_env=False keeps HTTP_PROXY and friends from rerouting ARI traffic.
            self._http = aiohttp.ClientSession(
                connector=connector,
                headers={
                    "Authorization": self._endpoint.authorization,
                    "User-Agent": USER_AGENT,
                },
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                trust_env=False,
            )
        return self._http

    async def aclose(self) -> None:
        self._closed = True
        if self._http is not None:
            await self._http.close()

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        body: object = None,
    ) -> Reply:
        """Send a request, retrying after 5xx replies and network errors.

        Returns the first other reply. Raises AriHTTPError at once for a 401,
        AriError at once for a failed certificate check, AriHTTPError when the
        last attempt got a 5xx, and AriError when it failed on the network.
        """
        if self._closed:
            raise AriError(f"cannot send ARI {method} {path}: the client is closed")

        shown_path = self._endpoint.rest_path + path
        attempts = self._retry.retries + 1

        for attempt in range(1, attempts + 1):
            try:
                reply = await self._send_once(method, path, params, body, shown_path)
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                failure: AriError = AriError(
                    f"ARI {method} {shown_path} to {self._endpoint.base_url} "
                    f"failed: {_describe_transport_error(exc)}"
                )
                failure.__cause__ = exc
                if _is_certificate_error(exc):
                    raise failure from exc
            else:
                if reply.status == HTTP_UNAUTHORIZED:
                    self._log_credentials_rejected()
                    raise http_error(reply, method, shown_path)
                if reply.status < HTTP_SERVER_ERROR:
                    return reply
                failure = http_error(reply, method, shown_path)

            if attempt == attempts:
                break

            delay = self._retry.delay_before(attempt)
            log.warning(
                "%s; retry %d of %d in %.2f s",
                failure,
                attempt,
                self._retry.retries,
                delay,
            )
            await asyncio.sleep(delay)

        if attempts > 1:
            failure.add_note(f"gave up after {attempts} attempts")
        raise failure

    def _log_credentials_rejected(self) -> None:
        suppressed = self._credential_errors.admit()
        if suppressed is not None:
            log.error(
                "ARI rejected the credentials of user %r at %s (HTTP 401); check "
                "the username and password against ari.conf%s",
                self._endpoint.username,
                self._endpoint.base_url,
                suppressed_note(suppressed),
            )

    async def _send_once(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: object,
        shown_path: str,
    ) -> Reply:
        try:
            return await self._send(method, path, params, body, shown_path)
        except aiohttp.ServerDisconnectedError:
            # Most often a kept-alive connection that Asterisk closed just as
            # it was reused, before the request reached it. Every request here
            # is idempotent, so it goes again at once on a new connection
            # instead of waiting out the retry delay.
            log.debug("ARI %s %s: the connection closed without a reply; sending "
                      "again on a new one", method, shown_path)
            return await self._send(method, path, params, body, shown_path)

    async def _send(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None,
        body: object,
        shown_path: str,
    ) -> Reply:
        target = self._endpoint.rest_base + path
        if params:
            target += "?" + urlencode(params)
        # The path is quoted already, because a channel id may contain any character.
        url = URL(target, encoded=True)
        data = headers = None
        if body is not None:
            data = json.dumps(body).encode()
            headers = {"Content-Type": "application/json"}
        async with self._session().request(
            method, url, data=data, headers=headers, allow_redirects=False
        ) as response:
            declared = response.content_length
            if declared is not None and declared > self._max_response:
                raise self._too_large(method, shown_path, declared)

            chunks = []
            size = 0
            async for chunk in response.content.iter_chunked(READ_CHUNK):
                size += len(chunk)
                if size > self._max_response:
                    raise self._too_large(method, shown_path, size)
                chunks.append(chunk)

            return Reply(response.status, b"".join(chunks))

    def _too_large(self, method: str, shown_path: str, size: int) -> AriError:
        return AriError(
            f"the reply to ARI {method} {shown_path} is larger than the limit of "
            f"{self._max_response} bytes (at least {size} bytes); raise max_response "
            "if the PBX really has that many channels"
        )


def http_error(reply: Reply, method: str, shown_path: str) -> AriHTTPError:
    """Build the error for a reply, with the message from Asterisk's JSON body."""
    return AriHTTPError(
        reply.status, error_message(reply), method=method, path=shown_path
    )


def error_message(reply: Reply) -> str:
    """Return the "message" of an ARI error body, else the start of the body."""
    try:
        body = json.loads(reply.body)
    except ValueError:
        body = None

    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]

    text = reply.body.decode("utf-8", errors="replace").strip()
    if not text:
        return "(empty body)"
    if len(text) > MAX_SHOWN_BODY:
        return text[:MAX_SHOWN_BODY] + "..."
    return text


def decode_json(reply: Reply, method: str, shown_path: str) -> object:
    """Parse a reply body as JSON, raising AriError when it is not."""
    try:
        return json.loads(reply.body)
    except ValueError as exc:
        raise AriError(
            f"the reply to ARI {method} {shown_path} is not valid JSON ({exc}): "
            f"{error_message(reply)!r}"
        ) from None


def _describe_transport_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return f"timed out ({type(exc).__name__})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
        return f"cannot connect ({type(cause).__name__}: {cause.strerror or cause})"
    detail = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {detail}"


def _is_certificate_error(exc: BaseException) -> bool:
    """Tell whether a certificate check failed somewhere in the exception's chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(
            current,
            ssl.SSLCertVerificationError | aiohttp.ClientConnectorCertificateError,
        ):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
