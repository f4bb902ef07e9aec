"""The ARI events websocket, reconnected with capped exponential backoff until close().

It subscribes with subscribeAll=true because ARI sends the events of
dialplan calls only then.
"""

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus, WebSocketException

from callguard.ari.backoff import Backoff
from callguard.ari.endpoint import USER_AGENT, AriEndpoint
from callguard.ari.events import (
    CLOSED_BY_CLIENT,
    ConnectHandler,
    EventDispatcher,
    EventHandler,
    close_discarding,
    serve_connection,
)
from callguard.ari.wslog import WEBSOCKET_LOGGER

log = logging.getLogger(__name__)

DisconnectHandler = Callable[[], Awaitable[None] | None]

HTTP_UNAUTHORIZED = 401

# Failed reconnect attempts in a row that are each logged as a warning. After
# them, one attempt in this many is a warning and the others are debug lines.
LOGGED_ATTEMPTS = 10

# websockets closes a connection whose ping got no pong within its ping_timeout,
# then waits up to close_timeout for the TCP close. Each of the three steps
# (ping interval, pong wait, close wait) gets a third of our ping_timeout, so
# that a silent server is detected within ping_timeout.
KEEPALIVE_STEPS = 3


@dataclass(frozen=True)
class ConnectionEnd:
    reason: str
    uptime: float = 0.0
    credentials_rejected: bool = False


@dataclass(frozen=True)
class StreamSettings:
    ping_timeout: float
    backoff_initial: float
    backoff_max: float
    open_timeout: float
    max_message: int


class EventStream:
    """Receives the events of one ARI application and reconnects after failures."""

    def __init__(self, endpoint: AriEndpoint, settings: StreamSettings):
        self._endpoint = endpoint
        self._settings = settings
        self._closing = asyncio.Event()
        self._running = False
        self._connected = False
        self._ws: ClientConnection | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    async def run(
        self,
        on_event: EventHandler,
        on_connect: ConnectHandler,
        on_disconnect: DisconnectHandler | None = None,
    ) -> None:
        """Connect, serve and reconnect until close(), as AriClient.run() describes."""
        if self._running:
            raise RuntimeError("AriClient.run() is already running on this client")
        if self._closing.is_set():
            log.debug("AriClient.run() called after close(); not connecting")
            return

        self._running = True
        dispatcher = EventDispatcher(on_event)
        url = self._endpoint.events_url
        log.info("starting the ARI events client for %s", url)

        try:
            await self._reconnect_loop(dispatcher, on_connect, on_disconnect)
        finally:
            self._running = False
            log.info("stopped the ARI events client for %s", url)

    async def close(self) -> None:
        """Stop run(), which returns soon after."""
        self._closing.set()

        # ws.close() waits for Asterisk's close frame. While a handler runs and
        # max_queue (16) messages wait unread before that frame, the wait lasts
        # up to close_timeout (ping_timeout / 3).
        ws = self._ws
        if ws is not None:
            await ws.close()

    async def _reconnect_loop(
        self,
        dispatcher: EventDispatcher,
        on_connect: ConnectHandler,
        on_disconnect: DisconnectHandler | None,
    ) -> None:
        settings = self._settings
        backoff = Backoff(settings.backoff_initial, settings.backoff_max)
        url = self._endpoint.events_url

        # Reconnect attempts since the last connection that lasted backoff_max.
        attempt = 0
        while not self._closing.is_set():
            end = await self._connect_and_serve(dispatcher, on_connect, on_disconnect)
            if self._closing.is_set():
                return

            if end.uptime >= settings.backoff_max:
                backoff.reset()
                attempt = 0
            attempt += 1

            if end.credentials_rejected:
                delay = settings.backoff_max
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
                # An outage of hours would otherwise log a warning every
                # backoff_max seconds, and the daemon logs an error for it too.
                level = logging.WARNING
                every = ""
                if attempt > LOGGED_ATTEMPTS:
                    level = logging.DEBUG if attempt % LOGGED_ATTEMPTS else logging.WARNING
                    every = f"; one attempt in {LOGGED_ATTEMPTS} is logged from now on"
                log.log(
                    level,
                    "ARI events at %s: %s; reconnect attempt %d in %.2f s%s",
                    url,
                    end.reason,
                    attempt,
                    delay,
                    every,
                )
            await self._sleep_unless_closed(delay)

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
            return ConnectionEnd(
                f"the websocket upgrade was rejected with HTTP {status}"
            )
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
                max_message=self._settings.max_message,
                closing=self._closing,
            )
        finally:
            self._connected = False
            self._ws = None
            await close_discarding(ws)
            await _notify_disconnect(on_disconnect)

        return ConnectionEnd(reason, uptime=loop.time() - opened_at)

    async def _open_unless_closed(self) -> ClientConnection | None:
        """Open the websocket, or return None if close() came first."""
        opening = asyncio.create_task(self._open())
        # When this coroutine is cancelled or close() comes first, no caller
        # awaits the connect any more, so its error is consumed here.
        opening.add_done_callback(_consume_outcome)
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
        settings = self._settings
        keepalive_step = settings.ping_timeout / KEEPALIVE_STEPS

        # proxy=None keeps HTTPS_PROXY and friends from rerouting ARI traffic.
        return await connect(
            self._endpoint.events_url,
            additional_headers={"Authorization": self._endpoint.authorization},
            user_agent_header=USER_AGENT,
            proxy=None,
            ssl=self._endpoint.ssl_context,
            open_timeout=settings.open_timeout,
            ping_interval=keepalive_step,
            ping_timeout=keepalive_step,
            close_timeout=keepalive_step,
            max_size=settings.max_message,
            # Asterisk's websocket server has no permessage-deflate; not asking
            # for it spares a zlib context per connection.
            compression=None,
            logger=WEBSOCKET_LOGGER,
        )

    async def _sleep_unless_closed(self, delay: float) -> None:
        try:
            await asyncio.wait_for(self._closing.wait(), delay)
        except TimeoutError:
            pass


def _consume_outcome(task: asyncio.Task) -> None:
    """Mark a finished connect's error as retrieved; its caller may have gone."""
    if not task.cancelled():
        task.exception()


async def _notify_disconnect(on_disconnect: DisconnectHandler | None) -> None:
    if on_disconnect is None:
        return
    try:
        result = on_disconnect()
        if inspect.isawaitable(result):
            await result
    # on_disconnect() is the caller's code, so its errors are logged and do not
    # stop the reconnect loop.
    except Exception:
        log.exception("on_disconnect failed")
