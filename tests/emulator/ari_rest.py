"""The REST resources of the ARI emulator: asterisk, channels and applications.

Status codes and messages follow Asterisk 22's res/ari/resource_*.c, and the
replies follow ari-asterisk-info.json, ari-auth-checks.txt,
ari-post-channels-originate.json and ari-applications-while-connected.json in
tests/fixtures/asterisk/.
"""

import json
import logging
import re
from collections.abc import Callable
from datetime import datetime

from aiohttp import web

from .ari_causes import CAUSE_NORMAL_CLEARING, HANGUP_REASONS
from .ari_hub import EventHub, encode_json
from .ari_model import ASTERISK_ID, ASTERISK_VERSION, format_timestamp
from .ari_state import OriginateError, OriginateRequest
from .ari_switch import Switch

logger = logging.getLogger(__name__)

MESSAGE_CHANNEL_NOT_FOUND = "Channel not found"
MESSAGE_APPLICATION_NOT_FOUND = "Application not found"
# Asterisk's error message for a path that has no handler.
MESSAGE_RESOURCE_NOT_FOUND = "Resource not found"
MESSAGE_INVALID_FILTER = "Invalid format definition"
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


class BadRequest(ValueError):
    """A request that gets 400 with this message."""


class RestResources:
    """Handlers of the REST resources, over the emulated channels."""

    def __init__(self, switch: Switch, hub: EventHub, now: Callable[[], datetime]):
        self._switch = switch
        self._hub = hub
        self._now = now
        self.started_at = now()
        self.deletes: list[tuple[str, dict]] = []
        self.fail_deletes = 0
        self.ignore_deletes = 0
        self.event_filters = True
        # How many of the next filter requests find the application not yet
        # registered, as just after the websocket handshake.
        self.filter_misses = 0
        # Dialplan globals, as [globals] of extensions.conf sets them.
        self.global_variables: dict[str, str] = {}
        # systemname of asterisk.conf. Asterisk also starts each uniqueid with it,
        # which the emulator's uniqueids do not.
        self.system_name = ""

    def add_routes(self, routes: web.UrlDispatcher) -> None:
        routes.add_get("/ari/asterisk/info", self.asterisk_info)
        routes.add_get("/ari/asterisk/ping", self.asterisk_ping)
        routes.add_get("/ari/asterisk/variable", self.get_global_variable)
        routes.add_get("/ari/channels", self.list_channels)
        routes.add_post("/ari/channels", self.originate)
        routes.add_get("/ari/channels/{channel_id}", self.get_channel)
        routes.add_post("/ari/channels/{channel_id}", self.originate)
        routes.add_delete("/ari/channels/{channel_id}", self.hangup_channel)
        routes.add_get("/ari/applications", self.list_applications)
        routes.add_get("/ari/applications/{name}", self.get_application)
        routes.add_put("/ari/applications/{name}/eventFilter", self.filter_application)

    async def asterisk_info(self, request: web.Request) -> web.Response:
        started = format_timestamp(self.started_at)
        info = {
            "build": BUILD_INFO,
            "system": {"version": ASTERISK_VERSION, "entity_id": ASTERISK_ID},
            "config": {
                "name": self.system_name,
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

    async def get_global_variable(self, request: web.Request) -> web.Response:
        # res/ari/resource_asterisk.c: a variable that is not set reads as "".
        name = request.query.get("variable", "")
        if not name:
            return error_response(400, "Variable name is required")
        return json_response(200, {"value": self.global_variables.get(name, "")})

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
        except BadRequest as error:
            return error_response(400, str(error))

        if self.ignore_deletes > 0:
            self.ignore_deletes -= 1
            logger.info("DELETE of channel %s accepted, but the channel stays up", channel_id)
            return web.Response(status=204)

        events = self._switch.delete_channel(channel_id, cause)
        # Asterisk answers 204 at once and sends the hang-up events afterwards.
        self._hub.enqueue(events)
        return web.Response(status=204)

    async def originate(self, request: web.Request) -> web.Response:
        """Serve POST /ari/channels and POST /ari/channels/{channel_id}."""
        try:
            originate = await read_originate(request)
            snapshot, events = self._switch.originate(originate)
        except BadRequest as error:
            return error_response(400, str(error))
        except OriginateError as error:
            return error_response(error.status, error.message)

        self._hub.enqueue(events)
        return json_response(200, snapshot)

    async def list_applications(self, request: web.Request) -> web.Response:
        channels = list(self._switch.channels.values())
        return json_response(200, self._hub.applications(channels))

    async def filter_application(self, request: web.Request) -> web.Response:
        """Serve PUT /ari/applications/{name}/eventFilter."""
        name = request.match_info["name"]
        if not self.event_filters:
            return error_response(404, MESSAGE_RESOURCE_NOT_FOUND)
        if not self._hub.registered(name) or self.filter_misses > 0:
            self.filter_misses = max(0, self.filter_misses - 1)
            return error_response(404, MESSAGE_APPLICATION_NOT_FOUND)
        try:
            self._hub.set_filter(name, json.loads(await request.read() or b"{}"))
        except ValueError as error:
            logger.info("event filter for %s rejected: %s", name, error)
            return error_response(400, MESSAGE_INVALID_FILTER)

        channels = list(self._switch.channels.values())
        for application in self._hub.applications(channels):
            if application["name"] == name:
                return json_response(200, application)
        return error_response(404, MESSAGE_APPLICATION_NOT_FOUND)

    async def get_application(self, request: web.Request) -> web.Response:
        channels = list(self._switch.channels.values())
        for application in self._hub.applications(channels):
            if application["name"] == request.match_info["name"]:
                return json_response(200, application)

        return error_response(404, MESSAGE_APPLICATION_NOT_FOUND)


def hangup_cause(reason: str | None, reason_code: str | None) -> int:
    """Return the Q.850 cause for the parameters of DELETE /ari/channels/{id}.

    Raises BadRequest with the message that Asterisk sends.
    """
    if reason and reason_code:
        raise BadRequest(MESSAGE_REASON_AND_CODE)

    if reason_code:
        # Asterisk reads the code with sscanf("%30d"), so leading digits count.
        match = re.match(r"\s*([+-]?\d+)", reason_code)
        if match is None:
            raise BadRequest(MESSAGE_INVALID_REASON_CODE)
        return int(match[1])

    if reason:
        cause = HANGUP_REASONS.get(reason)
        if cause is None:
            raise BadRequest(MESSAGE_INVALID_REASON)
        return cause

    return CAUSE_NORMAL_CLEARING


async def read_originate(request: web.Request) -> OriginateRequest:
    """Merge the query and the JSON body of an originate. Body keys win.

    Raises BadRequest for a body that is not a JSON object, for ``variables``
    that are not strings and for a priority that is not an integer.
    """
    params = dict(request.query)
    if "channel_id" in request.match_info:
        params["channelId"] = request.match_info["channel_id"]

    body_params, variables = parse_originate_body(await request.read())
    params.update(body_params)

    try:
        priority = int(params.get("priority") or 0)
    except ValueError:
        raise BadRequest(
            f"Invalid priority {params['priority']!r}. Give an integer"
        ) from None

    return OriginateRequest(
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


def parse_originate_body(raw: bytes) -> tuple[dict[str, str], dict[str, str]]:
    """Return the parameters and the ``variables`` of an originate's JSON body."""
    if not raw.strip():
        return {}, {}

    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise BadRequest(f"Invalid JSON in the request body: {error}") from None

    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object")

    variables = body.pop("variables", {})
    if not isinstance(variables, dict) or not all(
        isinstance(value, str) for value in variables.values()
    ):
        raise BadRequest(MESSAGE_STRING_VARIABLES)

    params = {}
    for key, value in body.items():
        if isinstance(value, (dict, list)):
            raise BadRequest(f"Invalid value {value!r} for {key!r}. Give a string")
        params[key] = value if isinstance(value, str) else json.dumps(value)

    return params, variables
