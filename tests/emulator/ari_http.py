"""The HTTP side of the ARI emulator: authentication, REST resources, websockets.

Status codes and messages follow Asterisk 22's res_ari and res/ari/resource_*.c
and the replies captured in tests/fixtures/asterisk/ (ari-auth-checks.txt,
ari-asterisk-info.json, ari-applications-while-connected.json).
"""

import binascii
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable
from datetime import datetime

from aiohttp import BasicAuth, WSMsgType, hdrs, web

from tests.emulator.ari_hub import EventHub, EventSocket, encode_json
from tests.emulator.ari_model import (
    ASTERISK_ID,
    ASTERISK_VERSION,
    CAUSE_NORMAL_CLEARING,
    HANGUP_REASONS,
    format_timestamp,
)
from tests.emulator.ari_originate import Switch
from tests.emulator.ari_state import OriginateError, OriginateRequest

logger = logging.getLogger(__name__)

ARI_PREFIX = "/ari/"
EVENTS_PATH = "/ari/events"
AUTH_REALM = "Asterisk REST Interface"

# Largest request body or websocket message accepted; larger ones get 413.
MAX_BODY_BYTES = 64 * 1024

MESSAGE_AUTH_REQUIRED = "Authentication required"
MESSAGE_CHANNEL_NOT_FOUND = "Channel not found"
MESSAGE_APPLICATION_NOT_FOUND = "Application not found"
MESSAGE_RESOURCE_NOT_FOUND = "Resource not found"
MESSAGE_INVALID_METHOD = "Invalid method"
MESSAGE_UNAVAILABLE = "Service Unavailable"
MESSAGE_INTERNAL_ERROR = "Internal Server Error"
MESSAGE_REASON_AND_CODE = "The reason and reason_code can't both be specified"
MESSAGE_INVALID_REASON_CODE = "Invalid reason for hangup reason code provided"
MESSAGE_INVALID_REASON = "Invalid reason for hangup reason provided"
MESSAGE_STRING_VARIABLES = "Only string values in the 'variables' object allowed"

# The build section of GET /ari/asterisk/info, as captured.
BUILD_INFO = {
    "os": "Linux",
    "kernel": "6.18.44-fc-v1252",
    "machine": "x86_64",
    "options": "OPTIONAL_API",
    "date": "2026-12-04 15:01:07 UTC",
    "user": "root",
}
INFO_SECTIONS = ("build", "system", "config", "status")

# Values that Asterisk's ast_true() reads as true, for subscribeAll.
_TRUE_VALUES = {"yes", "true", "y", "t", "1", "on"}


def json_response(status: int, document: object) -> web.Response:
    return web.Response(
        status=status, text=encode_json(document), content_type="application/json"
    )


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    response = json_response(status, {"message": message})
    response.headers.update(headers or {})
    return response


class Outage:
    """A window of real time in which events websockets, and maybe REST, get 503."""

    def __init__(self) -> None:
        self._until: float | None = None
        self._rest_down = False

    def start(self, seconds: float, rest_down: bool) -> None:
        if not seconds >= 0:
            raise ValueError(
                f"invalid refusal time {seconds!r} s; give 0 or more seconds, "
                "or math.inf to refuse until allow_events()"
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
        self._password = password
        self._app = app
        self._switch = switch
        self._hub = hub
        self._outage = outage
        self._now = now
        self._started_at = now()
        self.deletes: list[tuple[str, dict]] = []
        self.fail_deletes = 0

    def build(self) -> web.Application:
        self._started_at = self._now()
        application = web.Application(
            client_max_size=MAX_BODY_BYTES, middlewares=[self._middleware]
        )
        routes = application.router
        routes.add_get("/ari/asterisk/info", self.asterisk_info)
        routes.add_get("/ari/asterisk/ping", self.asterisk_ping)
        routes.add_get("/ari/channels", self.list_channels)
        routes.add_post("/ari/channels", self.originate)
        routes.add_get("/ari/channels/{channel_id}", self.get_channel)
        routes.add_post("/ari/channels/{channel_id}", self.originate)
        routes.add_delete("/ari/channels/{channel_id}", self.hangup_channel)
        routes.add_get("/ari/applications", self.list_applications)
        routes.add_get("/ari/applications/{name}", self.get_application)
        routes.add_get(EVENTS_PATH, self.events)
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

        return hmac.compare_digest(
            username.encode(), self._username.encode()
        ) & hmac.compare_digest(password.encode(), self._password.encode())

    async def asterisk_info(self, request: web.Request) -> web.Response:
        started = format_timestamp(self._started_at)
        info = {
            "build": BUILD_INFO,
            "system": {"version": ASTERISK_VERSION, "entity_id": ASTERISK_ID},
            "config": {
                "name": "",
                "default_language": "en",
                "setid": {"user": "", "group": ""},
            },
            "status": {"startup_time": started, "last_reload_time": started},
        }
        only = request.query.get("only")
        if only:
            wanted = only.split(",")
            unknown = [section for section in wanted if section not in INFO_SECTIONS]
            if unknown:
                message = (
                    f"Invalid 'only' value {','.join(unknown)}; "
                    f"use {', '.join(INFO_SECTIONS)}"
                )
                return error_response(400, message)
            info = {key: value for key, value in info.items() if key in wanted}

        return json_response(200, info)

    async def asterisk_ping(self, request: web.Request) -> web.Response:
        reply = {
            "ping": "pong",
            "timestamp": format_timestamp(self._now()),
            "asterisk_id": ASTERISK_ID,
        }
        return json_response(200, reply)

    async def list_channels(self, request: web.Request) -> web.Response:
        channelvars = self._switch.builder.channelvars
        snapshots = [c.snapshot(channelvars) for c in self._switch.channels.values()]
        return json_response(200, snapshots)

    async def get_channel(self, request: web.Request) -> web.Response:
        channel = self._switch.channels.get(request.match_info["channel_id"])
        if channel is None:
            return error_response(404, MESSAGE_CHANNEL_NOT_FOUND)

        return json_response(200, channel.snapshot(self._switch.builder.channelvars))

    async def hangup_channel(self, request: web.Request) -> web.Response:
        channel_id = request.match_info["channel_id"]
        self.deletes.append((channel_id, dict(request.query)))
        if self.fail_deletes > 0:
            self.fail_deletes -= 1
            logger.info("DELETE of channel %s failed on purpose with 500", channel_id)
            return error_response(500, MESSAGE_INTERNAL_ERROR)

        if channel_id not in self._switch.channels:
            return error_response(404, MESSAGE_CHANNEL_NOT_FOUND)

        query = request.query
        try:
            cause = hangup_cause(query.get("reason"), query.get("reason_code"))
        except InvalidHangupReason as error:
            return error_response(400, str(error))

        events = self._switch.delete_channel(channel_id, cause)
        # Asterisk answers 204 at once and sends the hang-up events afterwards.
        self._hub.enqueue(events)
        return web.Response(status=204)

    async def originate(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        if "channel_id" in request.match_info:
            params["channelId"] = request.match_info["channel_id"]

        parsed = await read_originate_body(request)
        if isinstance(parsed, web.Response):
            return parsed
        body_params, variables = parsed
        params.update(body_params)

        try:
            priority = int(params.get("priority") or 0)
        except ValueError:
            message = f"Invalid priority {params['priority']!r}; give an integer"
            return error_response(400, message)

        originate = OriginateRequest(
            endpoint=params.get("endpoint", ""),
            extension=params.get("extension", ""),
            context=params.get("context", ""),
            priority=priority,
            app=params.get("app", ""),
            app_args=params.get("appArgs", ""),
            caller_id=params.get("callerId", ""),
            channel_id=params.get("channelId", ""),
            other_channel_id=params.get("otherChannelId", ""),
            variables=variables,
        )
        try:
            snapshot, events = self._switch.originate(originate)
        except OriginateError as error:
            return error_response(error.status, error.message)

        self._hub.enqueue(events)
        return json_response(200, snapshot)

    async def list_applications(self, request: web.Request) -> web.Response:
        channels = list(self._switch.channels.values())
        return json_response(200, self._hub.applications(channels))

    async def get_application(self, request: web.Request) -> web.Response:
        channels = list(self._switch.channels.values())
        for application in self._hub.applications(channels):
            if application["name"] == request.match_info["name"]:
                return json_response(200, application)

        return error_response(404, MESSAGE_APPLICATION_NOT_FOUND)

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Serve the events websocket of GET /ari/events?app=NAME."""
        if self._outage.events_refused():
            logger.info("refused events websocket from %s: outage", request.remote)
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
        websocket = web.WebSocketResponse(autoping=False, max_msg_size=MAX_BODY_BYTES)
        if not websocket.can_prepare(request).ok:
            return error_response(400, "GET /ari/events needs a websocket upgrade")

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
        finally:
            await self._hub.remove(socket)

        return websocket


class InvalidHangupReason(ValueError):
    pass


def hangup_cause(reason: str | None, reason_code: str | None) -> int:
    """Return the Q.850 cause for DELETE's parameters.

    Raises InvalidHangupReason with the message that Asterisk sends.
    """
    if reason and reason_code:
        raise InvalidHangupReason(MESSAGE_REASON_AND_CODE)

    if reason_code:
        # Asterisk reads the code with sscanf("%30d"), so leading digits count.
        match = re.match(r"\s*([+-]?\d+)", reason_code)
        if match is None:
            raise InvalidHangupReason(MESSAGE_INVALID_REASON_CODE)
        return int(match[1])

    if reason:
        cause = HANGUP_REASONS.get(reason)
        if cause is None:
            raise InvalidHangupReason(MESSAGE_INVALID_REASON)
        return cause

    return CAUSE_NORMAL_CLEARING


async def read_originate_body(
    request: web.Request,
) -> tuple[dict[str, str], dict[str, str]] | web.Response:
    """Return the parameters and ``variables`` of a POST body, or a 400 reply."""
    raw = await request.read()
    if not raw.strip():
        return {}, {}

    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        return error_response(400, f"Invalid JSON in the request body: {error}")

    if not isinstance(body, dict):
        return error_response(400, "The request body must be a JSON object")

    variables = body.pop("variables", {})
    if not isinstance(variables, dict) or not all(
        isinstance(value, str) for value in variables.values()
    ):
        return error_response(400, MESSAGE_STRING_VARIABLES)

    params = {}
    for key, value in body.items():
        if isinstance(value, (dict, list)):
            return error_response(400, f"Invalid value for {key!r}: {value!r}")
        params[key] = value if isinstance(value, str) else json.dumps(value)

    return params, variables
