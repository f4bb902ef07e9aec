"""A thin client for the Asterisk REST Interface: REST on httpx, events on websockets.

Credentials travel only in a Basic Authorization header, never in a URL, and
are never logged. The events websocket subscribes to all events
(subscribeAll=true), because ARI sends events for dialplan calls only then,
and reconnects with capped exponential backoff until close().
"""

import logging
from collections.abc import Iterable
from urllib.parse import quote

from callguard.ari.endpoint import build_endpoint
from callguard.ari.errors import AriError
from callguard.ari.events import ConnectHandler, EventHandler
from callguard.ari.rest import AriRest, RetryPolicy, decode_json, http_error
from callguard.ari.stream import DisconnectHandler, EventStream, StreamSettings

log = logging.getLogger(__name__)

HTTP_OK = 200
HTTP_NO_CONTENT = 204
HTTP_NOT_FOUND = 404

# A longer ping_timeout would leave a dead events connection, and the calls it
# no longer meters, unnoticed for too long.
MAX_PING_TIMEOUT = 30.0

# Q.850 cause values are 1 to 127, and Asterisk also accepts 0 (not defined).
MAX_CAUSE_CODE = 127


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
        self._app = app
        self._rest = AriRest(
            self._endpoint,
            timeout=request_timeout,
            retry=RetryPolicy(retries, retry_delay),
            max_response=max_response,
        )
        self._stream = EventStream(
            self._endpoint,
            StreamSettings(
                ping_timeout=ping_timeout,
                backoff_initial=backoff_initial,
                backoff_max=backoff_max,
                open_timeout=request_timeout,
                max_message=max_message,
            ),
        )

    @property
    def connected(self) -> bool:
        """True only while the events websocket is open and healthy."""
        return self._stream.connected

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
        Raises AriHTTPError at once for a 401 or another 4xx, and AriError when
        5xx replies, timeouts or network errors outlast the retries.
        """
        params = _hangup_params(reason_code, reason)
        path = _channel_path(channel_id)
        reply = await self._rest.request("DELETE", path, params)

        if reply.status == HTTP_NO_CONTENT:
            cause = ", ".join(f"{key}={value}" for key, value in params.items())
            log.debug("hung up ARI channel %s (%s)", channel_id, cause or "no cause")
            return True
        if reply.status == HTTP_NOT_FOUND:
            log.debug("ARI channel %s was already gone when hanging up", channel_id)
            return False
        raise http_error(reply, "DELETE", self._endpoint.rest_path + path)

    async def set_event_filter(self, allowed: Iterable[str]) -> None:
        """Ask Asterisk to send this application only events of the ``allowed`` types.

        PUT /ari/applications/{app}/eventFilter replaces the allowed list and
        clears the disallowed one. Raises AriHTTPError when Asterisk refuses
        it (404 from a version without event filters) and AriError when the
        request fails.
        """
        path = "applications/" + quote(self._app, safe="") + "/eventFilter"
        body = {
            "allowed": [{"type": event_type} for event_type in sorted(allowed)],
            "disallowed": [],
        }
        reply = await self._rest.request("PUT", path, body=body)
        if reply.status != HTTP_OK:
            raise http_error(reply, "PUT", self._endpoint.rest_path + path)

    async def get_system_name(self) -> str:
        """Return Asterisk's ``systemname`` from asterisk.conf, empty when it is not set.

        Reads the config section of GET /ari/asterisk/info. Raises
        AriHTTPError when Asterisk refuses the request and AriError when it
        fails or the reply has no config name.
        """
        config = await self._get_info_section("config")
        name = config.get("name") if isinstance(config, dict) else None
        if not isinstance(name, str):
            raise AriError(f"the reply to ARI GET {self._info_path} has no config name")
        return name

    async def get_startup_time(self) -> str:
        """Return when the running Asterisk process started, as ``status.startup_time``
        of GET /ari/asterisk/info shows it (``2026-12-04T15:16:36.150+0000``).

        Raises AriHTTPError when Asterisk refuses the request and AriError when
        it fails or the reply has no startup time.
        """
        status = await self._get_info_section("status")
        started = status.get("startup_time") if isinstance(status, dict) else None
        if not isinstance(started, str) or not started:
            raise AriError(f"the reply to ARI GET {self._info_path} has no "
                           "status.startup_time")
        return started

    @property
    def _info_path(self) -> str:
        return self._endpoint.rest_path + "asterisk/info"

    async def _get_info_section(self, section: str) -> object:
        """Return one section of GET /ari/asterisk/info, or None when the reply lacks it."""
        reply = await self._rest.request("GET", "asterisk/info", {"only": section})
        if reply.status != HTTP_OK:
            raise http_error(reply, "GET", self._info_path)

        document = decode_json(reply, "GET", self._info_path)
        return document.get(section) if isinstance(document, dict) else None

    async def get_global_variable(self, name: str) -> str:
        """Return the value of a dialplan global variable (GET /ari/asterisk/variable).

        Asterisk replies with an empty value for a variable that is not set.
        Raises AriHTTPError when Asterisk refuses the request and AriError when
        it fails or the reply is not a variable object.
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"invalid variable name {name!r}; give a name such as "
                             "CALLGUARD_EMERGENCY_NUMBERS")
        reply = await self._rest.request("GET", "asterisk/variable", {"variable": name})
        shown_path = self._endpoint.rest_path + "asterisk/variable"
        if reply.status != HTTP_OK:
            raise http_error(reply, "GET", shown_path)

        document = decode_json(reply, "GET", shown_path)
        value = document.get("value") if isinstance(document, dict) else None
        if not isinstance(value, str):
            raise AriError(f"the reply to ARI GET {shown_path} for {name} is not a "
                           "variable object")
        return value

    async def ping(self) -> None:
        """Send GET /ari/asterisk/ping and raise AriError unless ARI replies 200."""
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
        Events that arrive meanwhile are buffered and delivered after it, in
        order. on_disconnect() runs once after each connection that opened.
        Errors raised by the handlers are logged and do not stop the loop.
        """
        await self._stream.run(on_event, on_connect, on_disconnect)

    async def close(self) -> None:
        """Stop run() and release the connections. run() returns soon after."""
        await self._stream.close()
        await self._rest.aclose()


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


