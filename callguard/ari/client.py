"""A thin client for the Asterisk REST Interface: REST on httpx, events on websockets.

Credentials travel only in a Basic Authorization header, never in a URL, and
are never logged. The events websocket subscribes to all events
(subscribeAll=true), because ARI sends events for dialplan calls only then,
and reconnects with capped exponential backoff until close().
"""

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from callguard.ari.backoff import Backoff
from callguard.ari.endpoint import USER_AGENT, build_endpoint
from callguard.ari.errors import AriError, AriHTTPError
from callguard.ari.events import (
    CLOSED_BY_CLIENT,
    ConnectHandler,
    EventDispatcher,
    EventHandler,
    serve_connection,
)
from callguard.ari.rest import AriRest, RetryPolicy, decode_json, http_error
from callguard.ari.wslog import WEBSOCKET_LOGGER

log = logging.getLogger(__name__)

DisconnectHandler = Callable[[], Awaitable[None] | None]

HTTP_OK = 200
HTTP_NO_CONTENT = 204
HTTP_NOT_FOUND = 404
HTTP_UNAUTHORIZED = 401

# websockets closes a connection whose ping got no pong within its ping_timeout,
# then waits up to close_timeout for the TCP close. Each step gets a third of
# ping_timeout, so silence is detected within ping_timeout.
MAX_PING_TIMEOUT = 30.0
KEEPALIVE_STEPS = 3

# Q.850 cause values are 1 to 127; Asterisk also accepts 0 (AST_CAUSE_NOTDEFINED).
MAX_CAUSE_CODE = 127


@dataclass(frozen=True)
class ConnectionEnd:
    reason: str
    uptime: float = 0.0
    credentials_rejected: bool = False


class AriClient:
    """REST calls and a self-healing event stream for one ARI application."""

    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        app: str = "callguard",
        *,
        ca_file: str | None = None,
        ping_timeout: float = 30.0,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        request_timeout: float = 5.0,
        max_message: int = 1 << 20,
        retries: int = 3,
        retry_delay: float = 0.2,
        max_response: int = 32 << 20,
    ):
        _check_positive("ping_timeout", ping_timeout, "seconds")
        if ping_timeout > MAX_PING_TIMEOUT:
            raise ValueError(
                f"ping_timeout must be at most {MAX_PING_TIMEOUT:g} seconds, got "
                f"{ping_timeout!r}"
            )
        _check_positive("backoff_initial", backoff_initial, "seconds")
        if backoff_max < backoff_initial:
            raise ValueError(
                f"backoff_max ({backoff_max!r} s) must be at least backoff_initial "
                f"({backoff_initial!r} s)"
            )
        _check_positive("request_timeout", request_timeout, "seconds")
        _check_positive("max_message", max_message, "bytes")
        _check_positive("max_response", max_response, "bytes")
        if not isinstance(retries, int) or retries < 0:
            raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
        if not retry_delay >= 0:
            raise ValueError(f"retry_delay must be >= 0 seconds, got {retry_delay!r}")

        self._endpoint = build_endpoint(url, username, password, app, ca_file)
        self._ping_timeout = ping_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._request_timeout = request_timeout
        self._max_message = max_message
        self._rest = AriRest(
            self._endpoint,
            timeout=request_timeout,
            retry=RetryPolicy(retries, retry_delay),
            max_response=max_response,
        )

        self._closing = asyncio.Event()
        self._running = False
        self._connected = False
        self._ws: ClientConnection | None = None

    @property
    def connected(self) -> bool:
        """True only while the events websocket is open and healthy."""
        return self._connected

    async def __aenter__(self) -> "AriClient":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # REST

    async def get_channels(self) -> list[dict]:
        """Return every channel Asterisk has (GET /ari/channels)."""
        reply = await self._rest.request("GET", "channels")
        shown_path = self._endpoint.rest_path + "channels"
        if reply.status != HTTP_OK:
            raise http_error(reply, "GET", shown_path)

        channels = decode_json(reply, "GET", shown_path)
        if not isinstance(channels, list) or not all(
            isinstance(channel, dict) for channel in channels
        ):
            raise AriError(
                f"the reply to ARI GET {shown_path} is not a list of channel objects"
            )
        return channels

    async def get_channel(self, channel_id: str) -> dict | None:
        """Return one channel (GET /ari/channels/{id}), or None when it is gone."""
        path = _channel_path(channel_id)
        reply = await self._rest.request("GET", path)
        shown_path = self._endpoint.rest_path + path
        if reply.status == HTTP_NOT_FOUND:
            return None
        if reply.status != HTTP_OK:
            raise http_error(reply, "GET", shown_path)

        channel = decode_json(reply, "GET", shown_path)
        if not isinstance(channel, dict):
            raise AriError(f"the reply to ARI GET {shown_path} is not a channel object")
        return channel

    async def hangup(
        self,
        channel_id: str,
        *,
        reason_code: int | None = None,
        reason: str | None = None,
    ) -> bool:
        """Hang up a channel (DELETE /ari/channels/{id}).

        Returns True when Asterisk accepted it (204) and False when the channel
        was already gone (404). A retry after a lost 204 also returns False.
        """
        params = _hangup_params(reason_code, reason)
        path = _channel_path(channel_id)
        reply = await self._rest.request("DELETE", path, params)

        if reply.status == HTTP_NO_CONTENT:
            log.info("hung up ARI channel %s (%s)", channel_id, params or "no reason")
            return True
        if reply.status == HTTP_NOT_FOUND:
            log.info("ARI channel %s was already gone when hanging up", channel_id)
            return False
        raise http_error(reply, "DELETE", self._endpoint.rest_path + path)

    async def ping(self) -> None:
        """Check that ARI answers (GET /ari/asterisk/ping); raise AriError if not."""
        reply = await self._rest.request("GET", "asterisk/ping")
        if reply.status != HTTP_OK:
            raise http_error(reply, "GET", self._endpoint.rest_path + "asterisk/ping")

    # Events

    async def run(
        self,
        on_event: EventHandler,
        on_connect: ConnectHandler,
        on_disconnect: DisconnectHandler | None = None,
    ) -> None:
        """Receive events until close(), reconnecting after every failure.

        on_connect() runs on each new connection before any event is delivered.
        on_disconnect() runs once after each connection that opened, when it ends.
        """
        if self._running:
            raise RuntimeError("AriClient.run() is already running on this client")
        if self._closing.is_set():
            log.debug("AriClient.run() called after close(); not connecting")
            return

        self._running = True
        dispatcher = EventDispatcher(on_event)
        backoff = Backoff(self._backoff_initial, self._backoff_max)
        url = self._endpoint.events_url
        log.info("starting the ARI events client for %s", url)

        try:
            # Reconnect attempts since the last connection that lasted backoff_max.
            attempt = 0
            while not self._closing.is_set():
                end = await self._connect_and_serve(
                    dispatcher, on_connect, on_disconnect
                )
                if self._closing.is_set():
                    break

                if end.uptime >= self._backoff_max:
                    backoff.reset()
                    attempt = 0
                attempt += 1

                if end.credentials_rejected:
                    delay = self._backoff_max
                    log.error(
                        "ARI rejected the credentials of user %r for the events "
                        "websocket at %s (HTTP 401); check the username and password "
                        "against ari.conf; attempt %d in %.2f s",
                        self._endpoint.username,
                        url,
                        attempt,
                        delay,
                    )
                else:
                    delay = backoff.next_delay()
                    log.warning(
                        "ARI events at %s: %s; reconnect attempt %d in %.2f s",
                        url,
                        end.reason,
                        attempt,
                        delay,
                    )
                await self._sleep_unless_closed(delay)
        finally:
            self._running = False
            log.info("stopped the ARI events client for %s", url)

    async def close(self) -> None:
        """Stop run() and release the connections; run() returns soon after."""
        self._closing.set()

        ws = self._ws
        if ws is not None:
            await ws.close()
        await self._rest.aclose()

    async def _connect_and_serve(
        self,
        dispatcher: EventDispatcher,
        on_connect: ConnectHandler,
        on_disconnect: DisconnectHandler | None,
    ) -> ConnectionEnd:
        try:
            ws = await self._open_unless_closed()
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status == HTTP_UNAUTHORIZED:
                return ConnectionEnd("HTTP 401", credentials_rejected=True)
            return ConnectionEnd(f"the websocket upgrade was rejected with HTTP {status}")
        except (OSError, TimeoutError, WebSocketException) as exc:
            detail = str(exc) or type(exc).__name__
            return ConnectionEnd(f"could not connect ({detail})")
        if ws is None:
            return ConnectionEnd(CLOSED_BY_CLIENT)

        loop = asyncio.get_running_loop()
        opened_at = loop.time()
        self._ws = ws
        self._connected = True
        log.info("ARI events connected to %s", self._endpoint.events_url)

        try:
            reason = await serve_connection(
                ws,
                dispatcher,
                on_connect,
                max_message=self._max_message,
                closing=self._closing,
            )
        finally:
            self._connected = False
            self._ws = None
            await ws.close()
            await _notify_disconnect(on_disconnect)

        return ConnectionEnd(reason, uptime=loop.time() - opened_at)

    async def _open_unless_closed(self) -> ClientConnection | None:
        """Open the websocket; return None if close() came first."""
        opening = asyncio.create_task(self._open())
        closing = asyncio.create_task(self._closing.wait())
        try:
            await asyncio.wait({opening, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not opening.done():
                opening.cancel()

        if opening.cancelled() or not opening.done():
            return None
        ws = opening.result()
        if self._closing.is_set():
            await ws.close()
            return None
        return ws

    async def _open(self) -> ClientConnection:
        keepalive_step = self._ping_timeout / KEEPALIVE_STEPS
        return await connect(
            self._endpoint.events_url,
            additional_headers={"Authorization": self._endpoint.authorization},
            user_agent_header=USER_AGENT,
            proxy=None,
            ssl=self._endpoint.ssl_context,
            open_timeout=self._request_timeout,
            ping_interval=keepalive_step,
            ping_timeout=keepalive_step,
            close_timeout=keepalive_step,
            max_size=self._max_message,
            logger=WEBSOCKET_LOGGER,
        )

    async def _sleep_unless_closed(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), delay)
        except TimeoutError:
            pass


async def _notify_disconnect(on_disconnect: DisconnectHandler | None) -> None:
    if on_disconnect is None:
        return
    try:
        result = on_disconnect()
        if inspect.isawaitable(result):
            await result
    # on_disconnect() is the caller's code; its errors are logged and must not
    # stop the reconnect loop.
    except Exception:
        log.exception("on_disconnect failed")


def _channel_path(channel_id: str) -> str:
    if not isinstance(channel_id, str) or not channel_id:
        raise ValueError(
            f"invalid channel id {channel_id!r}: use the channel's 'id' from ARI, "
            "such as '1796397405.0'"
        )
    return "channels/" + quote(channel_id, safe="")


def _hangup_params(reason_code: int | None, reason: str | None) -> dict[str, str]:
    if reason_code is not None and reason is not None:
        raise ValueError(
            f"hangup got both reason_code={reason_code!r} and reason={reason!r}; "
            "Asterisk accepts only one of them"
        )

    if reason_code is not None:
        if (
            isinstance(reason_code, bool)
            or not isinstance(reason_code, int)
            or not 0 <= reason_code <= MAX_CAUSE_CODE
        ):
            raise ValueError(
                f"invalid hangup reason_code {reason_code!r}: use a Q.850 cause "
                f"from 0 to {MAX_CAUSE_CODE}, such as 16 (normal clearing)"
            )
        return {"reason_code": str(reason_code)}

    if reason is not None:
        if not isinstance(reason, str) or not reason:
            raise ValueError(
                f"invalid hangup reason {reason!r}: use an ARI reason such as "
                "'normal', 'busy' or 'congestion'"
            )
        return {"reason": reason}

    return {}


def _check_positive(name: str, value: float, unit: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number of {unit}, got {value!r}")


