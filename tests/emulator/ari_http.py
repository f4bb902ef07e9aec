"""The HTTP server of the ARI emulator: authentication, errors and the websocket.

Authentication and error replies follow Asterisk 22's res_ari and the replies
captured in tests/fixtures/asterisk/ari-auth-checks.txt. The websocket checks
of GET /ari/events follow res/ari/resource_events.c.
"""

import binascii
import hmac
import logging
import math
import time
from collections.abc import Callable
from datetime import datetime

from aiohttp import BasicAuth, WSMsgType, hdrs, web

from .ari_hub import EventHub, EventSocket
from .ari_rest import MESSAGE_RESOURCE_NOT_FOUND, RestResources, error_response
from .ari_switch import Switch

logger = logging.getLogger(__name__)

ARI_PREFIX = "/ari/"
EVENTS_PATH = "/ari/events"
AUTH_REALM = "Asterisk REST Interface"

# Maximum size in bytes of a request body or websocket message. A larger body
# gets 413.
MAX_BODY_BYTES = 64 * 1024

MESSAGE_AUTH_REQUIRED = "Authentication required"
MESSAGE_INVALID_METHOD = "Invalid method"
MESSAGE_UNAVAILABLE = "Service Unavailable"

# Seconds that closing a websocket waits for the client's close frame.
WEBSOCKET_CLOSE_TIMEOUT = 1.0

# Values that Asterisk's ast_true() reads as true, for subscribeAll.
_TRUE_VALUES = {"yes", "true", "y", "t", "1", "on"}


class Outage:
    """A window of real time in which events websockets, and maybe REST, get 503."""

    def __init__(self) -> None:
        self._until: float | None = None
        self._rest_down = False

    def start(self, seconds: float, rest_down: bool) -> None:
        if not seconds >= 0:
            raise ValueError(
                f"invalid refuse_for {seconds!r} s. Give 0 or more seconds, or "
                "math.inf to reject websocket upgrades until allow_events()"
            )

        self._until = time.monotonic() + seconds
        self._rest_down = rest_down

    def end(self) -> None:
        self._until = None
        self._rest_down = False

    def events_refused(self) -> bool:
        if self._until is None:
            return False

        return math.isinf(self._until) or time.monotonic() < self._until

    def rest_refused(self) -> bool:
        return self._rest_down and self.events_refused()


class AriHttp:
    """The aiohttp application that serves /ari/ for the emulator."""

    def __init__(
        self,
        *,
        username: str,
        password: str,
        app: str,
        switch: Switch,
        hub: EventHub,
        outage: Outage,
        now: Callable[[], datetime],
    ):
        self._username = username
        # Set anew to play a password changed in ari.conf: later requests need it.
        self.password = password
        self._app = app
        self._hub = hub
        self._outage = outage
        self._now = now
        self.rest = RestResources(switch, hub, now)

    def build(self) -> web.Application:
        self.rest.started_at = self._now()
        application = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._middleware]
        )
        self.rest.add_routes(application.router)
        application.router.add_get(EVENTS_PATH, self.events)
        return application

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        if not request.path.startswith(ARI_PREFIX):
            return error_response(404, MESSAGE_RESOURCE_NOT_FOUND)

        if not self._authorized(request):
            logger.info(
                "rejected %s %s from %s: missing or wrong credentials",
                request.method,
                request.path,
                request.remote,
            )
            challenge = {hdrs.WWW_AUTHENTICATE: f'Basic realm="{AUTH_REALM}"'}
            return error_response(401, MESSAGE_AUTH_REQUIRED, challenge)

        if request.path != EVENTS_PATH and self._outage.rest_refused():
            return error_response(503, MESSAGE_UNAVAILABLE)

        try:
            return await handler(request)
        except web.HTTPNotFound:
            return error_response(404, MESSAGE_RESOURCE_NOT_FOUND)
        except web.HTTPMethodNotAllowed:
            return error_response(405, MESSAGE_INVALID_METHOD)
        except web.HTTPRequestEntityTooLarge:
            message = f"Request body is larger than {MAX_BODY_BYTES} bytes"
            return error_response(413, message)

    def _authorized(self, request: web.Request) -> bool:
        """Check Basic credentials, or the ``api_key=user:password`` parameter."""
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is not None:
            try:
                credentials = BasicAuth.decode(header)
            except (ValueError, binascii.Error):
                return False
            username, password = credentials.login, credentials.password
        elif "api_key" in request.query:
            username, _, password = request.query["api_key"].partition(":")
        else:
            return False

        # Both comparisons run, so the time taken does not tell which failed.
        user_matches = hmac.compare_digest(username.encode(), self._username.encode())
        password_matches = hmac.compare_digest(
            password.encode(), self.password.encode()
        )
        return user_matches and password_matches

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Serve the events websocket of GET /ari/events?app=NAME."""
        if self._outage.events_refused():
            logger.info(
                "rejected events websocket from %s with 503 during an outage",
                request.remote,
            )
            return error_response(503, MESSAGE_UNAVAILABLE)

        apps = [
            name
            for value in request.query.getall("app", [])
            for name in value.split(",")
        ]
        if not apps:
            return error_response(400, "Missing param 'app'")
        if not all(apps):
            return error_response(400, "Invalid application provided in param 'app'.")
        if self._app not in apps:
            logger.warning(
                "events websocket for %s, but the emulator expects %s",
                ",".join(apps),
                self._app,
            )

        subscribe_all = request.query.get("subscribeAll", "").lower() in _TRUE_VALUES
        websocket = web.WebSocketResponse(
            timeout=WEBSOCKET_CLOSE_TIMEOUT,
            autoping=False,
            max_msg_size=MAX_BODY_BYTES,
            # Asterisk's websocket server offers no permessage-deflate.
            compress=False,
        )
        if not websocket.can_prepare(request).ok:
            return error_response(400, f"GET {EVENTS_PATH} needs a websocket upgrade")

        await websocket.prepare(request)
        socket = EventSocket(
            websocket=websocket,
            apps=apps,
            subscribe_all=subscribe_all,
            transport=request.transport,
            peer=str(request.remote),
        )
        await self._hub.add(socket)
        try:
            await self._serve(socket)
        finally:
            await self._hub.remove(socket)

        return websocket

    async def _serve(self, socket: EventSocket) -> None:
        """Read the client's frames until it closes; nothing it sends is a command."""
        websocket = socket.websocket
        async for message in websocket:
            # Pings are answered here rather than by aiohttp, so that a
            # silenced socket can stop answering them.
            if message.type == WSMsgType.PING and not socket.silenced:
                await websocket.pong(message.data)
            elif message.type == WSMsgType.ERROR:
                logger.warning(
                    "events websocket from %s failed: %s",
                    socket.peer,
                    websocket.exception(),
                )
