"""The ARI client against a loopback ARI server replaying captured Asterisk replies."""

import asyncio
import base64
import json
import logging
import math
import random
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aiohttp import web

from callguard import __version__
from callguard.ari import AriClient, AriError, AriHTTPError
from callguard.ari.backoff import JITTER, Backoff
from callguard.ari.events import ReconcileBuffer, event_channel_id
from callguard.repeats import RepeatLimiter
from callguard.clock import ManualClock
from emulator.ari import AriEmulator
from support import self_signed_certificate

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"

USERNAME = "callguard"
PASSWORD = "callguard-test"
WRONG_PASSWORD = "WRONG-secret"
SECRETS = [
    PASSWORD,
    WRONG_PASSWORD,
    base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode(),
    base64.b64encode(f"{USERNAME}:{WRONG_PASSWORD}".encode()).decode(),
]

# Asterisk's reply to missing or wrong credentials (ari-auth-checks.txt).
AUTH_REQUIRED = {"message": "Authentication required"}
CHANNEL_NOT_FOUND = {"message": "Channel not found"}
ASTERISK_ID = "02:fc:00:00:00:01"

# Maximum wait, in seconds, for something a test expects to happen.
WAIT = 3.0


def load_capture(name: str):
    """Return a captured JSON reply, without the request line that heads the file."""
    text = (FIXTURES / name).read_text()
    return json.loads(text.split("\n", 1)[1])


def load_event_lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


async def until(predicate: Callable[[], bool], description: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {description}")
        await asyncio.sleep(0.005)


@dataclass
class SeenRequest:
    method: str
    path: str
    raw_path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


WebsocketScript = Callable[[web.WebSocketResponse, int], Awaitable[None]]


def send_then_wait(lines: list[str]) -> WebsocketScript:
    async def script(ws: web.WebSocketResponse, number: int) -> None:
        for line in lines:
            await ws.send_str(line)
        await drain(ws)

    return script


async def drain(ws: web.WebSocketResponse) -> None:
    """Read until the client closes, so that aiohttp replies to pings and closes."""
    async for _message in ws:
        pass


class FakeAri:
    """ARI's REST and events endpoints on aiohttp, replying like Asterisk 22.10.1.

    Unlike the emulator in tests/emulator/ari.py, it records request headers,
    serves TLS, holds replies back on request, and lets a test script each
    websocket to send invalid or oversized messages and floods.
    """

    def __init__(self, ssl_context: ssl.SSLContext | None = None):
        self.ssl_context = ssl_context
        self.authorization = "Basic " + base64.b64encode(
            f"{USERNAME}:{PASSWORD}".encode()
        ).decode("ascii")
        self.channels = load_capture("ari-channels-during-call.json")
        self.requests: list[SeenRequest] = []
        self.upgrades: list[SeenRequest] = []
        self.upgrade_status: int | None = None
        self.autoping = True
        self.script: WebsocketScript = self._idle
        self.release = asyncio.Event()
        self.reply_delay_paths: set[str] = set()
        self.filter_bodies: list[object] = []
        self.filter_status = 200
        self._sockets: set[web.WebSocketResponse] = set()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> "FakeAri":
        app = web.Application()
        app.router.add_get("/ari/asterisk/ping", self._ping)
        app.router.add_get("/ari/channels", self._list_channels)
        app.router.add_get("/ari/channels/{id}", self._get_channel)
        app.router.add_delete("/ari/channels/{id}", self._delete_channel)
        app.router.add_get("/ari/events", self._events)
        app.router.add_put("/ari/applications/{app}/eventFilter", self._event_filter)

        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, "127.0.0.1", 0, ssl_context=self.ssl_context
        )
        await site.start()

        port = self._runner.addresses[0][1]
        scheme = "https" if self.ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{port}/"
        return self

    async def stop(self) -> None:
        self.release.set()
        for ws in list(self._sockets):
            await ws.close()
        await self._runner.cleanup()

    def _record(self, request: web.Request, into: list[SeenRequest]) -> None:
        into.append(
            SeenRequest(
                request.method, request.path, request.raw_path, dict(request.headers)
            )
        )

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("Authorization") == self.authorization

    def _auth_failure(self) -> web.Response:
        return web.json_response(
            AUTH_REQUIRED,
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="Asterisk REST Interface"'},
        )

    async def _rest_preamble(self, request: web.Request) -> web.Response | None:
        self._record(request, self.requests)
        if request.path in self.reply_delay_paths:
            await self.release.wait()
        if not self._authorized(request):
            return self._auth_failure()
        return None

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        if failure := await self._rest_preamble(request):
            return failure
        return web.json_response(
            {
                "ping": "pong",
                "timestamp": "2026-12-04T15:18:21.263+0000",
                "asterisk_id": ASTERISK_ID,
            }
        )

    async def _list_channels(self, request: web.Request) -> web.StreamResponse:
        if failure := await self._rest_preamble(request):
            return failure
        return web.json_response(self.channels)

    async def _event_filter(self, request: web.Request) -> web.StreamResponse:
        if failure := await self._rest_preamble(request):
            return failure
        self.filter_bodies.append(await request.json())
        if self.filter_status != 200:
            return web.json_response({"message": "Application not found"},
                                     status=self.filter_status)
        return web.json_response(load_capture("ari-applications-while-connected.json")[0])

    async def _get_channel(self, request: web.Request) -> web.StreamResponse:
        if failure := await self._rest_preamble(request):
            return failure
        for channel in self.channels:
            if channel["id"] == request.match_info["id"]:
                return web.json_response(channel)
        return web.json_response(CHANNEL_NOT_FOUND, status=404)

    async def _delete_channel(self, request: web.Request) -> web.StreamResponse:
        if failure := await self._rest_preamble(request):
            return failure
        channel_id = request.match_info["id"]
        remaining = [c for c in self.channels if c["id"] != channel_id]
        if len(remaining) == len(self.channels):
            return web.json_response(CHANNEL_NOT_FOUND, status=404)
        self.channels = remaining
        return web.Response(status=204)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        self._record(request, self.upgrades)
        if not self._authorized(request):
            return self._auth_failure()
        if self.upgrade_status is not None:
            return web.json_response(
                {"message": "Service Unavailable"}, status=self.upgrade_status
            )

        ws = web.WebSocketResponse(autoping=self.autoping, max_msg_size=0)
        await ws.prepare(request)
        self._sockets.add(ws)
        try:
            await self.script(ws, len(self.upgrades))
        finally:
            self._sockets.discard(ws)
        if not ws.closed:
            await ws.close()
        return ws

    async def _idle(self, ws: web.WebSocketResponse, number: int) -> None:
        await drain(ws)


class Recorder:
    """The callbacks of AriClient.run(), recording what they were given."""

    def __init__(self, client: AriClient, on_connect_extra=None, on_event_extra=None):
        self.client = client
        self.events: list[dict] = []
        self.connects = 0
        self.disconnects = 0
        self.connected_in_on_connect: list[bool] = []
        self.connected_in_on_disconnect: list[bool] = []
        self.disconnected_at: list[float] = []
        self.in_on_connect = False
        self.events_during_on_connect = 0
        self._on_connect_extra = on_connect_extra
        self._on_event_extra = on_event_extra

    async def on_event(self, event: dict) -> None:
        if self.in_on_connect:
            self.events_during_on_connect += 1
        if self._on_event_extra is not None:
            self._on_event_extra(event)
        self.events.append(event)

    async def on_connect(self) -> None:
        self.in_on_connect = True
        self.connects += 1
        self.connected_in_on_connect.append(self.client.connected)
        try:
            if self._on_connect_extra is not None:
                await self._on_connect_extra(self.connects)
        finally:
            self.in_on_connect = False

    def on_disconnect(self) -> None:
        self.disconnected_at.append(time.monotonic())
        self.disconnects += 1
        self.connected_in_on_disconnect.append(self.client.connected)


class Running:
    """AriClient.run() in a task, stopped by close() at the end of the block."""

    def __init__(self, client: AriClient, recorder: Recorder):
        self.client = client
        self.recorder = recorder
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Running":
        self.task = asyncio.create_task(
            self.client.run(
                self.recorder.on_event,
                self.recorder.on_connect,
                self.recorder.on_disconnect,
            )
        )
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.client.close()
        await asyncio.wait_for(self.task, WAIT)


@pytest.fixture(autouse=True)
def no_secret_in_logs(caplog):
    """Log everything at DEBUG and check that no password or token was logged."""
    caplog.set_level(logging.DEBUG)
    yield
    for record in caplog.get_records("setup") + caplog.get_records("call"):
        text = record.getMessage() + (record.exc_text or "")
        for secret in SECRETS:
            assert secret not in text, f"a secret was logged by {record.name}"


@pytest.fixture
async def ari():
    server = await FakeAri().start()
    yield server
    await server.stop()


@pytest.fixture
async def make_client():
    clients: list[AriClient] = []

    def make(url: str, password: str = PASSWORD, **options) -> AriClient:
        settings = {
            "ping_timeout": 5.0,
            "backoff_initial": 0.01,
            "backoff_max": 0.05,
            "request_timeout": 1.0,
            "retry_delay": 0.01,
        }
        settings.update(options)
        client = AriClient(url, USERNAME, password, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def messages(caplog, logger: str, level: int = logging.DEBUG) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == logger and record.levelno >= level
    ]


# Construction


@pytest.mark.parametrize(
    "url, options, fragment",
    [
        ("ftp://127.0.0.1:8088/", {}, "scheme must be http or https"),
        ("http:///", {}, "host is missing"),
        ("http://user:pw@127.0.0.1:8088/", {}, "contains credentials"),
        ("http://127.0.0.1:8088/?api_key=u:p", {}, "query or fragment"),
        ("http://127.0.0.1:8088/ari", {}, "ends in /ari"),
        ("http://127.0.0.1:99999/", {}, "invalid ARI URL"),
        ("http://user:p/w@127.0.0.1:8088/", {}, "port is not a number"),
        ("http://user:p\uff03w@127.0.0.1:8088/", {}, "unbalanced"),
        ("http://[::1:8088/", {}, "unbalanced"),
        ("http://127.0.0.1:8088/", {"ping_timeout": 0}, "ping_timeout"),
        ("http://127.0.0.1:8088/", {"ping_timeout": 31}, "at most 30"),
        ("http://127.0.0.1:8088/", {"backoff_initial": -1}, "backoff_initial"),
        (
            "http://127.0.0.1:8088/",
            {"backoff_initial": 5, "backoff_max": 1},
            "backoff_max",
        ),
        ("http://127.0.0.1:8088/", {"request_timeout": 0}, "request_timeout"),
        ("http://127.0.0.1:8088/", {"max_message": 0}, "max_message"),
        ("http://127.0.0.1:8088/", {"retries": -1}, "retries"),
        ("http://127.0.0.1:8088/", {"ca_file": "/x.pem"}, "uses http://"),
        ("https://127.0.0.1:8089/", {"ca_file": "/nonexistent.pem"}, "CA bundle"),
        ("http://127.0.0.1:8088/", {"app": ""}, "application name"),
    ],
)
def test_constructor_rejects(url, options, fragment):
    with pytest.raises(ValueError, match=fragment) as caught:
        AriClient(url, USERNAME, PASSWORD, **options)
    assert "pw@" not in str(caught.value)
    assert "user:p" not in str(caught.value)
    assert "u:p" not in str(caught.value)


@pytest.mark.parametrize(
    "username, password, fragment",
    [
        ("", PASSWORD, "invalid ARI username"),
        ("call:guard", PASSWORD, "invalid ARI username"),
        (USERNAME, "", "password .* is empty"),
        (USERNAME, "pass\nword", "control character"),
    ],
)
def test_constructor_rejects_credentials(username, password, fragment):
    with pytest.raises(ValueError, match=fragment):
        AriClient("http://127.0.0.1:8088/", username, password)


def test_constructor_hides_username_password():
    with pytest.raises(ValueError, match="contains ':'") as caught:
        AriClient("http://127.0.0.1:8088/", "callguard:Sup3rS3cret", PASSWORD)

    assert "Sup3rS3cret" not in str(caught.value)


@pytest.mark.parametrize(
    "url, rest_base, events_url",
    [
        (
            "http://127.0.0.1:8088/",
            "http://127.0.0.1:8088/ari/",
            "ws://127.0.0.1:8088/ari/events?app=callguard&subscribeAll=true",
        ),
        (
            "https://[::1]:8089/asterisk",
            "https://[::1]:8089/asterisk/ari/",
            "wss://[::1]:8089/asterisk/ari/events?app=callguard&subscribeAll=true",
        ),
    ],
)
def test_endpoint_urls(url, rest_base, events_url):
    client = AriClient(url, USERNAME, PASSWORD)
    assert client._endpoint.rest_base == rest_base
    assert client._endpoint.events_url == events_url
    assert PASSWORD not in repr(client._endpoint)


# Units


@pytest.mark.parametrize(
    "initial, maximum, ceilings",
    [
        (0.5, 30.0, [0.5, 1, 2, 4, 8, 16, 30, 30, 30]),
        (1.0, 1.0, [1, 1, 1]),
        (0.25, 1.0, [0.25, 0.5, 1, 1]),
    ],
)
def test_backoff_delays(initial, maximum, ceilings):
    backoff = Backoff(initial, maximum, rng=random.Random(7))
    for ceiling in ceilings:
        delay = backoff.next_delay()
        assert (1 - JITTER) * ceiling <= delay <= ceiling

    backoff.reset()
    assert (1 - JITTER) * initial <= backoff.next_delay() <= initial


def test_repeat_limiter_window():
    clock = ManualClock(datetime(2026, 12, 4, tzinfo=timezone.utc))
    limiter = RepeatLimiter(burst=2, interval=10.0, clock=clock)

    # (seconds to advance, expected admit() result)
    steps = [(0, 0), (1, 0), (1, None), (1, None), (10, 2), (0, 0), (0, None)]
    for advance, expected in steps:
        clock.advance(advance)
        assert limiter.admit() == expected


@pytest.mark.parametrize(
    "event, channel_id",
    [
        ({"type": "ChannelCreated", "channel": {"id": "1796397405.0"}}, "1796397405.0"),
        ({"type": "Dial", "peer": {"id": "1796397405.2"}}, "1796397405.2"),
        ({"type": "ApplicationReplaced"}, None),
        ({"type": "X", "channel": "not an object"}, None),
    ],
)
def test_event_channel_id(event, channel_id):
    assert event_channel_id(event) == channel_id


# REST


async def test_rest_sends_basic_auth(ari, make_client):
    client = make_client(ari.url)

    channels = await client.get_channels()

    assert channels == load_capture("ari-channels-during-call.json")
    seen = ari.requests[-1]
    assert seen.raw_path == "/ari/channels"
    assert seen.headers["Authorization"] == ari.authorization
    assert seen.headers["User-Agent"] == f"callguard/{__version__}"


async def test_rest_401_message(ari, make_client, caplog):
    client = make_client(ari.url, password=WRONG_PASSWORD, retries=3)

    with pytest.raises(AriHTTPError) as caught:
        await client.ping()

    assert caught.value.status == 401
    assert caught.value.message == AUTH_REQUIRED["message"]
    assert len(ari.requests) == 1
    assert any("credentials" in m for m in messages(caplog, "callguard.ari.rest"))


async def test_ping(ari, make_client):
    client = make_client(ari.url)

    assert await client.ping() is None
    assert ari.requests[-1].raw_path == "/ari/asterisk/ping"


async def test_hangup_401_not_retried(ari, make_client):
    client = make_client(ari.url, password=WRONG_PASSWORD, retries=3)

    with pytest.raises(AriHTTPError) as caught:
        await client.hangup("1796397405.0")

    assert caught.value.status == 401
    assert len(ari.requests) == 1


@pytest.mark.parametrize(
    "channel_id, options, raw_path",
    [
        ("1796397405.0", {"reason": "busy"}, "/ari/channels/1796397405.0?reason=busy"),
        ("../asterisk/ping", {}, "/ari/channels/..%2Fasterisk%2Fping"),
        ("a b?c", {}, "/ari/channels/a%20b%3Fc"),
    ],
)
async def test_hangup_request_path(ari, make_client, channel_id, options, raw_path):
    client = make_client(ari.url)

    await client.hangup(channel_id, **options)

    assert ari.requests[0].raw_path == raw_path


@pytest.mark.parametrize(
    "channel_id, options, fragment",
    [
        ("1796397405.0", {"reason_code": 21, "reason": "busy"}, "only one"),
        ("1796397405.0", {"reason_code": 128}, "Q.850 cause"),
        ("1796397405.0", {"reason_code": True}, "Q.850 cause"),
        ("1796397405.0", {"reason": ""}, "invalid hangup reason"),
        ("", {}, "invalid channel id"),
    ],
)
async def test_hangup_rejects(ari, make_client, channel_id, options, fragment):
    client = make_client(ari.url)

    with pytest.raises(ValueError, match=fragment):
        await client.hangup(channel_id, **options)
    assert ari.requests == []


async def test_request_timeout_retried(ari, make_client):
    client = make_client(ari.url, request_timeout=0.1, retries=1)
    ari.reply_delay_paths.add("/ari/asterisk/ping")

    with pytest.raises(AriError, match="timed out"):
        await client.ping()

    assert len(ari.requests) == 2


async def test_connection_refused(make_client):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/", retries=2)

    with pytest.raises(AriError, match=r"cannot connect \(ConnectionRefusedError") as caught:
        await client.hangup("1796397405.0")
    assert "gave up after 3 attempts" in caught.value.__notes__


async def test_response_size_bound(ari, make_client):
    client = make_client(ari.url, max_response=10_000)
    ari.channels = ari.channels * 20

    with pytest.raises(AriError, match="larger than the limit of 10000 bytes"):
        await client.get_channels()
    assert len(ari.requests) == 1


async def test_rest_after_close(ari, make_client):
    client = make_client(ari.url)
    await client.close()

    with pytest.raises(AriError, match="closed"):
        await client.ping()


# Events


async def test_events_upgrade_request(ari, make_client):
    client = make_client(ari.url)
    recorder = Recorder(client)

    async with Running(client, recorder):
        await until(lambda: recorder.connects == 1, "the first connection")

    upgrade = ari.upgrades[0]
    assert upgrade.raw_path == "/ari/events?app=callguard&subscribeAll=true"
    assert upgrade.headers["Authorization"] == ari.authorization
    assert upgrade.headers["User-Agent"] == f"callguard/{__version__}"
    assert PASSWORD not in upgrade.raw_path
    assert "@" not in upgrade.headers["Host"]
    assert "api_key" not in upgrade.raw_path
    assert recorder.connected_in_on_connect == [True]


async def test_events_in_order(ari, make_client):
    lines = load_event_lines("ari-events-subscribeall.jsonl")
    ari.script = send_then_wait(lines)
    client = make_client(ari.url)
    recorder = Recorder(client)

    async with Running(client, recorder):
        await until(lambda: len(recorder.events) == len(lines), "every event")

    assert recorder.events == [json.loads(line) for line in lines]
    assert recorder.connects == 1


async def test_reconcile_buffer_overflow(ari, make_client, caplog):
    event = json.loads(load_event_lines("ari-events-subscribeall.jsonl")[0])
    event["padding"] = "x" * 300
    line = json.dumps(event)
    max_message = 1000
    # The buffer accepts 64 messages of max_message bytes, 64,000 bytes here.
    count = 64_000 // len(line) + 20

    async def script(ws, number):
        if number == 1:
            for _ in range(count):
                await ws.send_str(line)
        await drain(ws)

    def overflowed() -> bool:
        return any(
            "arrived while on_connect ran" in m
            for m in messages(caplog, "callguard.ari.events")
        )

    async def slow_first_reconcile(number):
        if number == 1:
            await until(overflowed, "the buffer to overflow")

    ari.script = script
    client = make_client(ari.url, max_message=max_message)
    recorder = Recorder(client, on_connect_extra=slow_first_reconcile)

    async with Running(client, recorder):
        await until(lambda: recorder.connects == 2, "a second connection")

    assert recorder.events == []
    assert recorder.disconnects >= 1
    assert any(
        "reconciliation buffer overflowed" in m
        for m in messages(caplog, "callguard.ari.stream", logging.WARNING)
    )


def test_reconcile_buffer_counts_bytes():
    ascii_buffer = ReconcileBuffer(max_events=10, max_bytes=100)
    utf8_buffer = ReconcileBuffer(max_events=10, max_bytes=100)

    assert ascii_buffer.add("x" * 100)
    # 40 three-byte characters: 40 characters, but 120 bytes of UTF-8.
    assert not utf8_buffer.add("\u20ac" * 40)


async def test_non_json_skipped(ari, make_client, caplog):
    lines = load_event_lines("ari-events-s7-agi-block21.jsonl")[:2]

    async def script(ws, number):
        await ws.send_str(lines[0])
        await ws.send_str("not json {")
        await ws.send_str("[1, 2]")
        await ws.send_bytes(b"\xff\xfe")
        await ws.send_str(lines[1])
        await drain(ws)

    ari.script = script
    client = make_client(ari.url)
    recorder = Recorder(client)

    async with Running(client, recorder):
        await until(lambda: len(recorder.events) == 2, "two events")

    assert recorder.events == [json.loads(line) for line in lines]
    assert recorder.connects == 1
    warnings = messages(caplog, "callguard.ari.events", logging.WARNING)
    assert len([m for m in warnings if m.startswith("skipping")]) == 3


async def test_oversized_message_reconnects(ari, make_client, caplog):
    lines = load_event_lines("ari-events-s7-agi-block21.jsonl")
    first, lost, after = lines[0], lines[1], lines[2]
    max_message = 2000
    assert len(first) < max_message

    async def script(ws, number):
        if number == 1:
            await ws.send_str(first)
            await ws.send_str(json.dumps({"type": "Big", "data": "x" * 5000}))
            await ws.send_str(lost)
        else:
            await ws.send_str(after)
        await drain(ws)

    ari.script = script
    client = make_client(ari.url, max_message=max_message)
    recorder = Recorder(client)

    async with Running(client, recorder):
        await until(lambda: len(recorder.events) == 2, "the event after reconnecting")

    assert recorder.events == [json.loads(first), json.loads(after)]
    assert recorder.connects == 2
    assert any(
        "exceeded max_message (2000 bytes)" in m
        for m in messages(caplog, "callguard.ari.stream", logging.WARNING)
    )


async def test_on_event_error_logged(ari, make_client, caplog):
    lines = load_event_lines("ari-events-s6-agi-block.jsonl")[:3]
    ari.script = send_then_wait(lines)
    failing = json.loads(lines[1])

    def fail_on_second(event):
        if event == failing:
            raise KeyError("missing field")

    client = make_client(ari.url)
    recorder = Recorder(client, on_event_extra=fail_on_second)

    async with Running(client, recorder):
        await until(lambda: len(recorder.events) == 2, "the other events")

    assert recorder.events == [json.loads(lines[0]), json.loads(lines[2])]
    errors = messages(caplog, "callguard.ari.events", logging.ERROR)
    assert errors == [
        f"on_event failed for ARI event {failing['type']} on channel "
        f"{event_channel_id(failing)}"
    ]


async def test_on_connect_error_reconnects(ari, make_client, caplog):
    client = make_client(ari.url)

    async def fail_first(number):
        if number == 1:
            raise ConnectionError("database unavailable")

    recorder = Recorder(client, on_connect_extra=fail_first)

    async with Running(client, recorder):
        await until(lambda: recorder.connects == 2, "a second connection")

    assert recorder.disconnects >= 1
    assert any(
        "on_connect raised ConnectionError" in m
        for m in messages(caplog, "callguard.ari.stream", logging.WARNING)
    )


async def test_upgrade_401_max_backoff(ari, make_client, caplog):
    backoff_max = 0.3
    client = make_client(
        ari.url, password=WRONG_PASSWORD, backoff_initial=0.01, backoff_max=backoff_max
    )
    recorder = Recorder(client)

    async with Running(client, recorder):
        await until(lambda: len(ari.upgrades) >= 2, "a second upgrade attempt")
        assert client.connected is False

    assert ari.upgrades[1].at - ari.upgrades[0].at >= backoff_max * 0.9
    assert recorder.connects == 0
    errors = messages(caplog, "callguard.ari.stream", logging.ERROR)
    assert any("rejected the credentials" in m and "HTTP 401" in m for m in errors)


async def test_close_during_backoff(ari, make_client):
    ari.upgrade_status = 503
    client = make_client(ari.url, backoff_initial=10.0, backoff_max=10.0)
    recorder = Recorder(client)
    task = asyncio.create_task(
        client.run(recorder.on_event, recorder.on_connect, recorder.on_disconnect)
    )
    await until(lambda: len(ari.upgrades) == 1, "the first attempt")

    started = time.monotonic()
    await client.close()
    await asyncio.wait_for(task, WAIT)

    assert time.monotonic() - started < 1.0
    assert len(ari.upgrades) == 1


async def test_run_after_close(ari):
    async with AriClient(ari.url, USERNAME, PASSWORD) as client:
        await client.ping()
    recorder = Recorder(client)

    await asyncio.wait_for(client.run(recorder.on_event, recorder.on_connect), WAIT)

    assert ari.upgrades == []
    assert recorder.connects == 0


async def test_on_disconnect_error_logged(ari, make_client, caplog):
    async def script(ws, number):
        await ws.close()

    ari.script = script
    client = make_client(ari.url)
    recorder = Recorder(client)

    def fail():
        recorder.disconnects += 1
        raise RuntimeError("state store closed")

    recorder.on_disconnect = fail

    async with Running(client, recorder):
        await until(lambda: recorder.connects >= 2, "a reconnection")

    errors = messages(caplog, "callguard.ari.stream", logging.ERROR)
    assert "on_disconnect failed" in errors


async def test_run_twice_rejected(ari, make_client):
    client = make_client(ari.url)
    recorder = Recorder(client)

    async with Running(client, recorder):
        await until(lambda: recorder.connects == 1, "the connection")
        with pytest.raises(RuntimeError, match="already running"):
            await client.run(recorder.on_event, recorder.on_connect)


# TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> tuple[Path, Path]:
    """Generate a self-signed certificate for 127.0.0.1 with the openssl command."""
    return self_signed_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
async def ari_tls(certificate):
    cert, key = certificate
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = await FakeAri(ssl_context=context).start()
    yield server
    await server.stop()


async def test_tls_untrusted_rejected(ari_tls, make_client, caplog):
    client = make_client(ari_tls.url, retries=3)

    with pytest.raises(AriError, match="CERTIFICATE_VERIFY_FAILED"):
        await client.ping()
    assert ari_tls.requests == []
    assert not any("retry" in m for m in messages(caplog, "callguard.ari.rest"))

    recorder = Recorder(client)
    async with Running(client, recorder):
        await until(
            lambda: any(
                "certificate verify failed" in m
                for m in messages(caplog, "callguard.ari.stream", logging.WARNING)
            ),
            "the failed TLS handshake",
        )
        assert client.connected is False

    assert recorder.connects == 0
    assert ari_tls.upgrades == []


async def test_tls_with_ca_file(ari_tls, make_client, certificate):
    lines = load_event_lines("ari-events-s7-agi-block21.jsonl")[:3]
    ari_tls.script = send_then_wait(lines)
    client = make_client(ari_tls.url, ca_file=str(certificate[0]))

    await client.ping()

    recorder = Recorder(client)
    async with Running(client, recorder):
        await until(lambda: len(recorder.events) == 3, "events over wss")

    assert recorder.events == [json.loads(line) for line in lines]
    assert ari_tls.upgrades[0].headers["Authorization"] == ari_tls.authorization


# Against the ARI emulator


@pytest.fixture
async def emulator():
    async with AriEmulator(username=USERNAME, password=PASSWORD) as server:
        yield server


def find_event(recorder: Recorder, kind: str, channel_id: str) -> dict | None:
    for event in recorder.events:
        if event["type"] == kind and event_channel_id(event) == channel_id:
            return event
    return None


async def test_get_channel(emulator, make_client):
    client = make_client(emulator.url)
    call = await emulator.dial_out("0044123456")

    assert await client.get_channel(call.trunk_id) == emulator.channels[call.trunk_id]
    assert await client.get_channel("1796397405.999") is None
    assert await client.get_channels() == list(emulator.channels.values())


@pytest.mark.parametrize(
    "failures, live, expected, attempts",
    [
        (0, True, True, 1),
        (0, False, False, 1),
        (2, True, True, 3),
        (3, False, False, 4),
    ],
)
async def test_hangup_statuses(
    emulator, make_client, failures, live, expected, attempts
):
    client = make_client(emulator.url, retries=3)
    call = await emulator.dial_out("0044123456")
    channel_id = call.trunk_id if live else "1796397405.999"
    emulator.fail_deletes = failures

    assert await client.hangup(channel_id, reason_code=21) is expected
    assert emulator.deletes == [(channel_id, {"reason_code": "21"})] * attempts
    assert channel_id not in emulator.channels


async def test_hangup_500_always(emulator, make_client):
    client = make_client(emulator.url, retries=3)
    call = await emulator.dial_out("0044123456")
    emulator.fail_deletes = 10

    with pytest.raises(AriError) as caught:
        await client.hangup(call.trunk_id)

    assert isinstance(caught.value, AriHTTPError)
    assert caught.value.status == 500
    assert caught.value.message == "Internal Server Error"
    assert len(emulator.deletes) == 4
    assert call.trunk_id in emulator.channels


async def test_hangup_ends_call(emulator, make_client):
    client = make_client(emulator.url)
    recorder = Recorder(client)

    async with Running(client, recorder):
        await emulator.wait_for_subscribers(1)
        call = await emulator.dial_out("0044123456")
        await emulator.answer(call)

        assert await client.hangup(call.trunk_id, reason_code=21) is True
        await until(
            lambda: find_event(recorder, "ChannelDestroyed", call.trunk_id),
            "ChannelDestroyed of the trunk leg",
        )
        await until(lambda: len(recorder.events) == emulator.events_sent, "all events")

    destroyed = find_event(recorder, "ChannelDestroyed", call.trunk_id)
    assert destroyed["cause"] == 21
    assert find_event(recorder, "ChannelCreated", call.trunk_id) is not None
    assert recorder.events.index(
        find_event(recorder, "ChannelCreated", call.trunk_id)
    ) < recorder.events.index(destroyed)
    assert call.trunk_id not in emulator.channels


async def test_events_held_during_on_connect(emulator, make_client):
    client = make_client(emulator.url)
    reconciled: list[list[str]] = []

    async def reconcile(number):
        # A call is dialled while reconciliation runs, so its events queue up.
        await emulator.wait_for_subscribers(1)
        await emulator.dial_out("0044123456")
        channels = await client.get_channels()
        reconciled.append(sorted(channel["id"] for channel in channels))

    recorder = Recorder(client, on_connect_extra=reconcile)

    async with Running(client, recorder):
        await until(lambda: reconciled, "the reconciliation")
        await until(lambda: len(recorder.events) == emulator.events_sent, "all events")

    assert emulator.events_sent > 0
    assert recorder.events_during_on_connect == 0
    assert reconciled == [sorted(emulator.channels)]
    assert recorder.events[0]["type"] == "ChannelCreated"


async def test_drop_reconnects(emulator, make_client, caplog):
    client = make_client(emulator.url, backoff_initial=0.01, backoff_max=0.2)
    live_channels: list[int] = []

    async def reconcile(number):
        live_channels.append(len(await client.get_channels()))

    recorder = Recorder(client, on_connect_extra=reconcile)

    async with Running(client, recorder):
        for round_number in range(1, 4):
            await until(lambda: len(live_channels) == round_number, "a reconcile")
            await emulator.wait_for_subscribers(1)
            await emulator.dial_out(f"004412345{round_number}")
            await emulator.drop_events()
        await until(lambda: recorder.connects == 4, "the fourth connection")

    per_call = len(emulator.channels) // 3
    assert live_channels == [0, per_call, 2 * per_call, 3 * per_call]
    assert recorder.disconnects >= 3
    assert all(recorder.connected_in_on_connect)
    assert not any(recorder.connected_in_on_disconnect)

    delays = [
        record.args[3]
        for record in caplog.records
        if record.name == "callguard.ari.stream" and "reconnect attempt" in record.msg
    ]
    assert len(delays) >= 3
    for delay in delays:
        assert (1 - JITTER) * 0.01 <= delay <= 0.2


async def test_long_outage_logs_fewer_attempts(emulator, make_client, caplog):
    client = make_client(emulator.url, backoff_initial=0.001, backoff_max=0.002)
    recorder = Recorder(client)
    caplog.set_level(logging.DEBUG, "callguard.ari.stream")

    def attempts() -> list[logging.LogRecord]:
        return [r for r in caplog.records
                if r.name == "callguard.ari.stream" and "reconnect attempt" in r.msg]

    async with Running(client, recorder):
        await until(lambda: recorder.connects == 1, "the first connection")
        await emulator.drop_events(refuse_for=math.inf)
        await until(lambda: len(attempts()) >= 31, "31 refused attempts")

    numbered = [(r.args[2], r.levelno) for r in attempts()[:31]]
    assert [number for number, _ in numbered] == list(range(1, 32))
    warned = [number for number, level in numbered if level == logging.WARNING]
    assert warned == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 30]
    assert "one attempt in 10 is logged from now on" in attempts()[19].getMessage()
    assert "one attempt in 10" not in attempts()[9].getMessage()


async def test_disconnected_while_down(emulator, make_client, caplog):
    client = make_client(emulator.url)
    recorder = Recorder(client)

    def refusals() -> int:
        return sum(
            "rejected with HTTP 503" in message
            for message in messages(caplog, "callguard.ari.stream", logging.WARNING)
        )

    async with Running(client, recorder):
        await until(lambda: recorder.connects == 1, "the first connection")
        await emulator.drop_events(refuse_for=math.inf)
        await until(lambda: refusals() >= 2, "two refused upgrades")

        assert client.connected is False
        assert recorder.connects == 1
        assert recorder.disconnects == 1

        emulator.allow_events()
        await until(lambda: recorder.connects == 2, "the reconnection")
        assert client.connected is True

    assert client.connected is False


async def test_silent_server_detected(emulator, make_client, caplog):
    ping_timeout = 0.5
    client = make_client(
        emulator.url, ping_timeout=ping_timeout, backoff_initial=1.0, backoff_max=1.0
    )
    recorder = Recorder(client)

    def detected() -> bool:
        return any(
            "did not answer a keepalive ping" in message
            for message in messages(caplog, "callguard.ari.stream", logging.WARNING)
        )

    async with Running(client, recorder):
        await until(lambda: recorder.connects == 1, "the connection")
        await emulator.wait_for_subscribers(1)
        silenced_at = time.monotonic()
        await emulator.silence()
        await until(detected, "the keepalive to fail")
        assert client.connected is False

    assert recorder.disconnected_at[0] - silenced_at <= ping_timeout + 0.25
    assert recorder.disconnects == 1



async def test_set_event_filter(ari, make_client):
    client = make_client(ari.url, app="pbx/1")

    await client.set_event_filter({"Dial", "ChannelCreated"})
    ari.filter_status = 404
    with pytest.raises(AriHTTPError, match="Application not found") as caught:
        await client.set_event_filter(["Dial"])

    assert ari.requests[0].raw_path == "/ari/applications/pbx%2F1/eventFilter"
    assert ari.requests[0].headers["Content-Type"] == "application/json"
    assert ari.filter_bodies[0] == {
        "allowed": [{"type": "ChannelCreated"}, {"type": "Dial"}],
        "disallowed": [],
    }
    assert caught.value.status == 404
    assert len(ari.requests) == 2  # a 404 is final


async def closing_server(replies: list[bytes | None]):
    """Serve one reply per connection from ``replies``; None closes without a reply."""
    pending = list(replies)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        await reader.readuntil(b"\r\n\r\n")
        reply = pending.pop(0) if pending else None
        if reply is not None:
            writer.write(reply)
            await writer.drain()
        writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


async def test_closed_connection_sent_again_at_once(make_client):
    server = await closing_server([None, NO_CONTENT])
    port = server.sockets[0].getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/", retry_delay=5.0)

    started = asyncio.get_running_loop().time()
    async with server:
        assert await client.hangup("1796397405.0", reason_code=16) is True

    assert asyncio.get_running_loop().time() - started < 2.0  # no 5 s retry delay


async def test_connection_closed_every_time(make_client):
    server = await closing_server([])
    port = server.sockets[0].getsockname()[1]
    client = make_client(f"http://127.0.0.1:{port}/", retries=1)

    async with server:
        with pytest.raises(AriError, match="ServerDisconnectedError") as caught:
            await client.hangup("1796397405.0")

    assert "gave up after 2 attempts" in caught.value.__notes__


async def test_get_global_variable(emulator, make_client):
    client = make_client(emulator.url)
    emulator.global_variables["CALLGUARD_EMERGENCY_NUMBERS"] = "999,112,18000"

    assert await client.get_global_variable("CALLGUARD_EMERGENCY_NUMBERS") == "999,112,18000"
    # Asterisk reads a variable that is not set as empty.
    assert await client.get_global_variable("CALLGUARD_OUTSIDE_PREFIX") == ""
    with pytest.raises(ValueError):
        await client.get_global_variable("")


async def test_get_system_name(emulator, make_client):
    client = make_client(emulator.url)

    assert await client.get_system_name() == ""
    emulator.system_name = "pbx-a"
    assert await client.get_system_name() == "pbx-a"


async def test_get_startup_time(emulator, make_client):
    client = make_client(emulator.url)

    started = await client.get_startup_time()
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}", started)
