"""The events websockets of the ARI emulator and the delivery of events to them.

Without subscribeAll, Asterisk sends an application only the events of
channels subscribed to it, which are channels in Stasis or originated for it.
With subscribeAll it sends everything. Events go out in the order they were
published, through one sender task, so an event published by a REST handler
after its response still comes before the events of the next call flow.
"""

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone

from aiohttp import web

from .ari_events import Event
from .ari_model import Channel, format_timestamp

logger = logging.getLogger(__name__)

# Topic names that GET /ari/applications lists for a subscribeAll application,
# as captured in ari-applications-while-connected.json.
ALL_CHANNELS_TOPIC = "__AST_CHANNEL_ALL_TOPIC"
ALL_BRIDGES_TOPIC = "__AST_BRIDGE_ALL_TOPIC"
ALL_ENDPOINTS_TOPIC = "__AST_ENDPOINT_ALL_TOPIC"
ALL_DEVICES_TOPIC = "__AST_DEVICE_STATE_ALL_TOPIC"

# Close code for an orderly shutdown (RFC 6455 section 7.4.1, going away).
CLOSE_GOING_AWAY = 1001

# Seconds that stop() waits for queued events to reach clients that do not read.
STOP_SEND_TIMEOUT = 5.0

# The event sent to a websocket whose application a later websocket registered.
APPLICATION_REPLACED = "ApplicationReplaced"


def encode_json(document: object) -> str:
    # ari.conf "pretty = no": compact JSON, as in ari-auth-checks.txt.
    return json.dumps(document, separators=(",", ":"))


@dataclass(eq=False)
class EventSocket:
    """One open events websocket, the applications it serves and its options."""

    websocket: web.WebSocketResponse
    apps: list[str]
    subscribe_all: bool
    transport: asyncio.Transport | None
    peer: str
    silenced: bool = False
    sent: int = 0

    def wants(self, event: Event, app: str) -> bool:
        if event.only_app is not None:
            return event.only_app == app

        return self.subscribe_all or app in event.apps


@dataclass
class _Batch:
    events: list[Event]
    done: asyncio.Future = field(repr=False)


class EventHub:
    """The open events websockets and the ordered delivery of events to them."""

    def __init__(self) -> None:
        self.sockets: list[EventSocket] = []
        # Per application, the event filter set by PUT .../eventFilter:
        # (allowed, disallowed), each a list of {"type": ...} objects.
        self.filters: dict[str, tuple[list, list]] = {}
        self.events_sent = 0
        # Events websockets opened since the start, closed ones included.
        self.opened = 0
        self._changed = asyncio.Condition()
        self._queue: asyncio.Queue[_Batch] = asyncio.Queue()
        self._sender: asyncio.Task | None = None

    def start(self) -> None:
        self._sender = asyncio.create_task(self._send_batches(), name="ari-events")

    async def stop(self) -> None:
        """Send what is queued, then close every websocket as going away."""
        if self._sender is not None:
            try:
                async with asyncio.timeout(STOP_SEND_TIMEOUT):
                    await self._queue.join()
            except TimeoutError:
                logger.warning(
                    "stopping with %d event batches unsent after %s s",
                    self._queue.qsize(),
                    STOP_SEND_TIMEOUT,
                )
            self._sender.cancel()
            try:
                await self._sender
            except asyncio.CancelledError:
                pass
            self._sender = None

        for socket in list(self.sockets):
            await socket.websocket.close(code=CLOSE_GOING_AWAY)
        await self._set_sockets([])

    async def add(self, socket: EventSocket) -> None:
        """Start sending events to ``socket``.

        An application that an older websocket serves moves to the new one.
        The older one gets ApplicationReplaced, if the application's event
        filter lets it through, and no events of that application after it,
        as ari_websocket_send_event() in Asterisk's res/ari/ari_websockets.c
        drops the application from the replaced websocket.
        """
        self.opened += 1
        replaced = [(old, app) for old in self.sockets for app in socket.apps
                    if app in old.apps]
        for old, app in replaced:
            old.apps.remove(app)
        await self._set_sockets([*self.sockets, socket])
        logger.info(
            "events websocket from %s opened for %s (subscribeAll=%s)",
            socket.peer,
            ",".join(socket.apps),
            socket.subscribe_all,
        )
        for old, app in replaced:
            await self._send_replaced(old, app)

    async def _send_replaced(self, socket: EventSocket, app: str) -> None:
        logger.info("application %s of the events websocket from %s replaced",
                    app, socket.peer)
        if socket.silenced or not self.allows(app, APPLICATION_REPLACED):
            return
        event = {
            "type": APPLICATION_REPLACED,
            "timestamp": format_timestamp(datetime.now(timezone.utc)),
            "application": app,
        }
        try:
            await socket.websocket.send_str(encode_json(event))
        except ConnectionResetError as error:
            logger.warning("events websocket from %s failed, dropping it: %s",
                           socket.peer, error)
            await self.remove(socket)

    async def remove(self, socket: EventSocket) -> None:
        if socket in self.sockets:
            await self._set_sockets([s for s in self.sockets if s is not socket])
            logger.info("events websocket from %s closed", socket.peer)

    async def _set_sockets(self, sockets: list[EventSocket]) -> None:
        async with self._changed:
            self.sockets = sockets
            self._changed.notify_all()

    async def wait_for_count(self, count: int, timeout: float) -> None:
        async with self._changed:
            try:
                async with asyncio.timeout(timeout):
                    await self._changed.wait_for(lambda: len(self.sockets) >= count)
            except TimeoutError:
                raise TimeoutError(
                    f"{len(self.sockets)} events websockets open after {timeout} s, "
                    f"expected at least {count}"
                ) from None

    def enqueue(self, events: list[Event]) -> asyncio.Future:
        """Queue ``events`` for every socket and return a future done once sent."""
        if self._sender is None:
            raise RuntimeError("the ARI emulator is not running. Call start() first")

        batch = _Batch(events, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(batch)
        return batch.done

    async def publish(self, events: list[Event]) -> None:
        await self.enqueue(events)

    async def _send_batches(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                for event in batch.events:
                    await self._send(event)
            except Exception as error:
                # Passed to the publisher, so that one bad event does not stop
                # the delivery of later ones.
                logger.exception("sending ARI events failed")
                if not batch.done.done():
                    batch.done.set_exception(error)
            else:
                if not batch.done.done():
                    batch.done.set_result(None)
            finally:
                self._queue.task_done()

    async def _send(self, event: Event) -> None:
        for socket in list(self.sockets):
            if socket.silenced:
                continue

            for app in socket.apps:
                if not socket.wants(event, app) or not self.allows(app, event.type):
                    continue

                text = encode_json(event.for_application(app))
                try:
                    await socket.websocket.send_str(text)
                except ConnectionResetError as error:
                    logger.warning(
                        "events websocket from %s failed, dropping it: %s",
                        socket.peer,
                        error,
                    )
                    await self.remove(socket)
                    break

                socket.sent += 1
                self.events_sent += 1

    async def drop_all(self) -> int:
        """Abort every websocket's TCP connection without a close frame."""
        dropped = list(self.sockets)
        await self._set_sockets([])
        for socket in dropped:
            if socket.transport is not None:
                socket.transport.abort()
        logger.info("dropped %d events websockets", len(dropped))
        return len(dropped)

    def silence_all(self) -> None:
        for socket in self.sockets:
            socket.silenced = True
        logger.info("silenced %d events websockets", len(self.sockets))

    def allows(self, app: str, event_type: str) -> bool:
        """Apply the application's event filter as Asterisk does.

        A type in the disallowed list is never sent. Otherwise an empty
        allowed list lets everything through, and a non-empty one only the
        types it names.
        """
        allowed, disallowed = self.filters.get(app, ([], []))
        if any(entry.get("type") == event_type for entry in disallowed):
            return False
        return not allowed or any(entry.get("type") == event_type for entry in allowed)

    def set_filter(self, app: str, document: object) -> None:
        """Set an application's event filter from a PUT body, or raise ValueError.

        An empty object clears both lists. A list missing from a non-empty
        object is left as it was.
        """
        if not isinstance(document, dict):
            raise ValueError("the filter is not a JSON object")
        allowed, disallowed = self.filters.get(app, ([], []))
        if not document:
            self.filters[app] = ([], [])
            return
        lists = {"allowed": allowed, "disallowed": disallowed}
        for name in lists:
            if name not in document:
                continue
            entries = document[name]
            if not isinstance(entries, list) or not all(
                isinstance(entry, dict) for entry in entries
            ):
                raise ValueError(f"{name} is not an array of objects")
            lists[name] = entries
        self.filters[app] = (lists["allowed"], lists["disallowed"])

    def registered(self, app: str) -> bool:
        return any(app in socket.apps for socket in self.sockets)

    def applications(self, channels: list[Channel]) -> list[dict]:
        """Return the registered applications as GET /ari/applications lists them."""
        names: list[str] = []
        subscribe_all: dict[str, bool] = {}
        for socket in self.sockets:
            for app in socket.apps:
                if app not in subscribe_all:
                    names.append(app)
                    subscribe_all[app] = False
                subscribe_all[app] |= socket.subscribe_all

        return [
            application_json(
                name, subscribe_all[name], channels, self.filters.get(name, ([], []))
            )
            for name in names
        ]


def application_json(
    name: str,
    subscribe_all: bool,
    channels: list[Channel],
    event_filter: tuple[list, list] = ([], []),
) -> dict:
    if subscribe_all:
        channel_ids = [ALL_CHANNELS_TOPIC]
        bridge_ids = [ALL_BRIDGES_TOPIC]
        endpoint_ids = [ALL_ENDPOINTS_TOPIC]
        device_names = [ALL_DEVICES_TOPIC]
    else:
        channel_ids = [c.id for c in channels if name in c.subscribed_apps]
        bridge_ids, endpoint_ids, device_names = [], [], []

    return {
        "name": name,
        "channel_ids": channel_ids,
        "bridge_ids": bridge_ids,
        "endpoint_ids": endpoint_ids,
        "device_names": device_names,
        "events_allowed": list(event_filter[0]),
        "events_disallowed": list(event_filter[1]),
    }
