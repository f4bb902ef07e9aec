"""One connection of the ARI events websocket, from reconciliation to its end.

While the caller's on_connect() reconciles with GET /ari/channels, a reader
task keeps receiving events into a bounded buffer. Without it, websockets
would stop reading the socket once max_queue (16) messages wait unread, and
the keepalive pongs behind them would go unread too. The buffer is delivered
in order once on_connect() returns; after that, events are delivered as they
arrive.
"""

import asyncio
import inspect
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from callguard.repeats import RepeatLimiter, suppressed_note

log = logging.getLogger(__name__)

EventHandler = Callable[[dict], Awaitable[None] | None]
ConnectHandler = Callable[[], Awaitable[None]]

# Close reason that websockets (13 and later) sends when a ping gets no pong.
KEEPALIVE_CLOSE_REASON = "keepalive ping timeout"

# Bounds of the buffer filled while on_connect() runs: a count of events, and
# bytes as a multiple of max_message.
RECONCILE_MAX_EVENTS = 10_000
RECONCILE_MAX_MESSAGES_OF_MAX_SIZE = 64

CLOSED_BY_CLIENT = "the client was closed"

# The event Asterisk sends a websocket when another one registers its
# application. Asterisk then sends that application's events only to the
# other websocket, and this one stays open but receives nothing more
# (ari_websocket_send_event() in res/ari/ari_websockets.c).
APPLICATION_REPLACED = "ApplicationReplaced"


def event_channel_id(event: dict) -> str | None:
    """Return the id of the channel an event is about (a Dial event's peer)."""
    for key in ("channel", "peer"):
        snapshot = event.get(key)
        if isinstance(snapshot, dict) and isinstance(snapshot.get("id"), str):
            return snapshot["id"]
    return None


class EventDispatcher:
    """Parses websocket messages and feeds the events to the caller's handler."""

    def __init__(self, on_event: EventHandler):
        self._on_event = on_event
        self._invalid_messages = RepeatLimiter()
        self._handler_errors = RepeatLimiter()

    async def dispatch(self, message: str | bytes) -> str | None:
        """Deliver a message to on_event, or log and skip it if not a JSON object.

        Returns why the connection must end for an ApplicationReplaced event,
        which is not delivered, and None for every other message.
        """
        try:
            event = json.loads(message)
        except ValueError as exc:
            self._log_invalid(message, f"it is not JSON ({exc})")
            return None
        if not isinstance(event, dict):
            self._log_invalid(message, f"it is a JSON {type(event).__name__}")
            return None
        if event.get("type") == APPLICATION_REPLACED:
            return _replaced(event)

        try:
            result = self._on_event(event)
            if inspect.isawaitable(result):
                await result
        # The handler is the caller's code: any error it raises is logged here
        # and must not end the event loop.
        except Exception:
            suppressed = self._handler_errors.admit()
            if suppressed is not None:
                log.exception(
                    "on_event failed for ARI event %s on channel %s%s",
                    event.get("type"),
                    event_channel_id(event),
                    suppressed_note(suppressed),
                )
        return None

    def _log_invalid(self, message: str | bytes, problem: str) -> None:
        suppressed = self._invalid_messages.admit()
        if suppressed is not None:
            log.warning(
                "skipping an ARI websocket message of %d bytes because %s: %r%s",
                len(message),
                problem,
                message[:80],
                suppressed_note(suppressed),
            )


class ReconcileBuffer:
    """The events received while on_connect() runs, bounded in count and bytes."""

    def __init__(self, max_events: int, max_bytes: int):
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._messages: deque[str | bytes] = deque()
        self._bytes = 0

    def add(self, message: str | bytes) -> bool:
        """Append a message; return False, keeping nothing new, when it is full."""
        size = _message_size(message)
        if len(self._messages) >= self.max_events:
            return False
        if self._bytes + size > self.max_bytes:
            return False

        self._messages.append(message)
        self._bytes += size
        return True

    def drain(self) -> Iterator[str | bytes]:
        while self._messages:
            message = self._messages.popleft()
            self._bytes -= _message_size(message)
            yield message


def _message_size(message: str | bytes) -> int:
    """Return the size in bytes of a websocket message, encoding a text frame as UTF-8."""
    if isinstance(message, bytes) or message.isascii():
        return len(message)
    return len(message.encode("utf-8"))


@dataclass(frozen=True)
class ReaderEnd:
    reason: str
    events_lost: bool = False


def describe_close(exc: ConnectionClosed, max_message: int) -> str:
    """Return why a websocket connection ended, worded for the log."""
    sent, received = exc.sent, exc.rcvd

    if sent is not None and sent.code == CloseCode.MESSAGE_TOO_BIG:
        return f"a message exceeded max_message ({max_message} bytes)"
    if sent is not None and sent.reason == KEEPALIVE_CLOSE_REASON:
        return "Asterisk did not answer a keepalive ping in time"
    if received is not None:
        detail = f": {received.reason}" if received.reason else ""
        return f"Asterisk closed the websocket (code {received.code}{detail})"
    if sent is not None:
        return f"the websocket was closed (code {sent.code})"
    return "the connection was lost"


async def serve_connection(
    ws: ClientConnection,
    dispatcher: EventDispatcher,
    on_connect: ConnectHandler,
    *,
    max_message: int,
    closing: asyncio.Event,
) -> str:
    """Run on_connect(), then deliver events, and return why the connection ended."""
    buffer = ReconcileBuffer(
        RECONCILE_MAX_EVENTS, RECONCILE_MAX_MESSAGES_OF_MAX_SIZE * max_message
    )
    reader = asyncio.create_task(_fill_buffer(ws, buffer, max_message))
    try:
        reconcile_failure = await _reconcile(on_connect)
    finally:
        reader.cancel()
        await asyncio.wait({reader})

    reader_end = None if reader.cancelled() else reader.result()
    if reconcile_failure is not None:
        return reconcile_failure
    if reader_end is not None and reader_end.events_lost:
        return reader_end.reason

    for message in buffer.drain():
        if closing.is_set():
            return CLOSED_BY_CLIENT
        replaced = await dispatcher.dispatch(message)
        if replaced is not None:
            return replaced
    if reader_end is not None:
        return reader_end.reason

    while not closing.is_set():
        try:
            message = await ws.recv()
        except ConnectionClosed as exc:
            return describe_close(exc, max_message)
        replaced = await dispatcher.dispatch(message)
        if replaced is not None:
            return replaced
    return CLOSED_BY_CLIENT


def _replaced(event: dict) -> str:
    """Log an ApplicationReplaced event and return why the connection ends.

    Reconnecting registers the application again, so events flow to this
    client again. Two clients that share an application name take it from
    each other at every reconnect.
    """
    app = event.get("application")
    log.error("another ARI client registered application %r, so Asterisk sends its "
              "events there and none to this connection; reconnecting to register it "
              "again. Give each callguard daemon on this Asterisk its own app in [ari]",
              app if isinstance(app, str) else "?")
    return f"another client registered application {app!r} (ApplicationReplaced)"


async def close_discarding(ws: ClientConnection) -> None:
    """Close the websocket, discarding unread messages meanwhile.

    websockets stops reading from the socket while its queue of unread messages
    is full, and the peer's close frame waits behind them. Without a reader,
    close() would then wait for close_timeout.
    """
    discarder = asyncio.create_task(_discard_messages(ws))
    try:
        await ws.close()
    finally:
        discarder.cancel()
        await asyncio.wait({discarder})


async def _discard_messages(ws: ClientConnection) -> None:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        return


async def _reconcile(on_connect: ConnectHandler) -> str | None:
    """Await on_connect() and return why it failed, or None if it succeeded."""
    try:
        result = on_connect()
        if inspect.isawaitable(result):
            await result
    # on_connect() is the caller's code. Whatever it raises is logged, and the
    # connection is dropped so that reconciliation runs again on reconnect.
    except Exception as exc:
        log.exception("on_connect failed; dropping the ARI events connection")
        return f"on_connect raised {type(exc).__name__}: {exc}"
    return None


async def _fill_buffer(
    ws: ClientConnection, buffer: ReconcileBuffer, max_message: int
) -> ReaderEnd:
    while True:
        try:
            message = await ws.recv()
        except ConnectionClosed as exc:
            return ReaderEnd(describe_close(exc, max_message))

        if not buffer.add(message):
            log.error(
                "more than %d events or %d bytes arrived while on_connect ran; "
                "dropping the ARI events connection to reconcile again",
                buffer.max_events,
                buffer.max_bytes,
            )
            return ReaderEnd("the reconciliation buffer overflowed", events_lost=True)
