"""Tests of the ARI emulator against the traffic captured from Asterisk 22.10.1.

The clients are real: httpx for REST and websockets for the events socket,
both over loopback. Event sequences are compared with the captures in
tests/fixtures/asterisk/ by channel role, so that uniqueids and names may differ.
"""

import asyncio
import base64
import contextlib
import json
import math
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest
import websockets
from emulator.ari import AriEmulator
from emulator.ari_model import format_timestamp
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from callguard.clock import ManualClock

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
USERNAME = "callguard"
PASSWORD = "callguard-test"
APP = "callguard"
NUMBER = "0044123456"

TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}$")
UNIQUEID = re.compile(r"^\d+\.\d+$")
START = datetime(2026, 12, 4, 15, 16, 45, 649000, tzinfo=timezone.utc)

# Roles of the channels in ari-events-subscribeall.jsonl and the s2 capture.
# The caller runs the dialplan and Dial(), and the dialled Local leg is the trunk.
CAPTURE_ROLES = [
    (re.compile(r"^Local/\d+@outbound-[0-9a-f]{8};2$"), "caller"),
    (re.compile(r"^Local/\d+@sink-[0-9a-f]{8};1$"), "trunk"),
    (re.compile(r"^Local/\d+@sink-[0-9a-f]{8};2$"), "far-end"),
]
CAPTURE_TRUNK_DEVICE = f"Local/{NUMBER}@sink"


def load_events(name: str) -> list[dict]:
    lines = (FIXTURES / name).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load_reply(name: str) -> object:
    # The first line is a header such as "GET /channels -> HTTP 200".
    text = (FIXTURES / name).read_text()
    return json.loads(text.partition("\n")[2])


def basic_auth(username: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def events_url(ari: AriEmulator, query: str) -> str:
    return ari.url.replace("http://", "ws://", 1) + "ari/events?" + query


@contextlib.asynccontextmanager
async def events_socket(
    ari: AriEmulator,
    query: str = f"app={APP}&subscribeAll=true",
    headers: dict[str, str] | None = None,
):
    connection = websockets.connect(
        events_url(ari, query),
        additional_headers=(
            basic_auth(USERNAME, PASSWORD) if headers is None else headers
        ),
        proxy=None,
        max_queue=None,
        ping_interval=None,
    )
    async with connection as socket:
        yield socket


async def receive_until(socket, predicate, timeout: float = 2.0) -> list[dict]:
    """Read events up to and including the first one that matches ``predicate``."""
    events = []
    async with asyncio.timeout(timeout):
        while True:
            event = json.loads(await socket.recv())
            events.append(event)
            if predicate(event):
                return events


async def receive_count(socket, count: int, timeout: float = 2.0) -> list[dict]:
    async with asyncio.timeout(timeout):
        return [json.loads(await socket.recv()) for _ in range(count)]


def destroyed(channel_id: str):
    def matches(event: dict) -> bool:
        return (
            event["type"] == "ChannelDestroyed" and event["channel"]["id"] == channel_id
        )

    return matches


def bridgepeer_set(channel_id: str):
    def matches(event: dict) -> bool:
        if event["type"] != "ChannelVarset":
            return False
        return (
            event["channel"]["id"] == channel_id and event["variable"] == "BRIDGEPEER"
        )

    return matches


def shape(value: object) -> object:
    """Return the keys, their order and the value types of a JSON document."""
    if isinstance(value, dict):
        return tuple((key, shape(item)) for key, item in value.items())
    if isinstance(value, list):
        return ("list", tuple(sorted({repr(shape(item)) for item in value})))
    return type(value).__name__


def capture_role(channel: dict) -> str | None:
    for pattern, role in CAPTURE_ROLES:
        if pattern.match(channel["name"]):
            return role
    return None


def signatures(events: list[dict], role_of, trunk_device: str) -> list[tuple]:
    """Reduce events to (type, role, ...) tuples, merging repeats in a row.

    Events of channels without a role (the capture's originating Local half)
    and device states of other devices are left out. Runs of the same tuple
    become one, because the captured dialplan set more variables than ours.
    """
    result: list[tuple] = []
    for event in events:
        signature = _signature(event, role_of, trunk_device)
        if signature is not None and (not result or result[-1] != signature):
            result.append(signature)
    return result


def _signature(event: dict, role_of, trunk_device: str) -> tuple | None:
    kind = event["type"]
    if kind == "DeviceStateChanged":
        device = event["device_state"]
        if device["name"] != trunk_device:
            return None
        return (kind, device["state"])

    if kind in ("BridgeCreated", "BridgeDestroyed"):
        return (kind,)

    if kind == "Dial":
        peer = role_of(event["peer"])
        if peer is None:
            return None
        caller = role_of(event["caller"]) if "caller" in event else None
        return (kind, caller, peer, event["dialstatus"], bool(event["dialstring"]))

    role = role_of(event["channel"])
    if role is None:
        return None
    if kind == "ChannelHangupRequest":
        return (kind, role, event["cause"], event.get("soft", False))
    if kind == "ChannelDestroyed":
        return (kind, role, event["cause"], event["cause_txt"])
    return (kind, role)


def emulated_roles(call, far_end_id: str | None = None):
    roles = {call.caller_id: "caller", call.trunk_id: "trunk"}
    if far_end_id is not None:
        roles[far_end_id] = "far-end"

    def role_of(channel: dict) -> str | None:
        return roles.get(channel["id"])

    return role_of


def far_end_id(ari: AriEmulator, call) -> str:
    far_end_name = call.trunk_name.removesuffix(";1") + ";2"
    for channel_id, snapshot in ari.channels.items():
        if snapshot["name"] == far_end_name:
            return channel_id
    raise AssertionError(f"no channel named {far_end_name}")


@pytest.fixture
def clock():
    return ManualClock(START)


@pytest.fixture
async def ari(clock):
    async with AriEmulator(now=clock.now) as emulator:
        yield emulator


@pytest.fixture
async def rest(ari):
    client = httpx.AsyncClient(
        base_url=ari.url, auth=(USERNAME, PASSWORD), trust_env=False, timeout=5.0
    )
    async with client:
        yield client


# Authentication


AUTH_CASES = [
    ("good", basic_auth(USERNAME, PASSWORD), "ari/asterisk/ping", 200),
    ("wrong password", basic_auth(USERNAME, "WRONG"), "ari/asterisk/ping", 401),
    ("wrong user", basic_auth("admin", PASSWORD), "ari/channels", 401),
    ("missing", {}, "ari/channels", 401),
    ("not base64", {"Authorization": "Basic !!!"}, "ari/channels", 401),
    ("not basic", {"Authorization": "Bearer x"}, "ari/channels", 401),
    ("api_key", {}, f"ari/channels?api_key={USERNAME}:{PASSWORD}", 200),
    ("wrong api_key", {}, f"ari/channels?api_key={USERNAME}:x", 401),
    ("unknown path", {}, "ari/nothing", 401),
]


@pytest.mark.parametrize(
    "headers, path, status",
    [case[1:] for case in AUTH_CASES],
    ids=[case[0] for case in AUTH_CASES],
)
async def test_auth_credentials(ari, headers, path, status):
    async with httpx.AsyncClient(base_url=ari.url, trust_env=False) as client:
        response = await client.get(path, headers=headers)

    assert response.status_code == status
    if status == 401:
        captured = (FIXTURES / "ari-auth-checks.txt").read_text().splitlines()[4]
        assert response.text == captured
        assert response.headers["WWW-Authenticate"] == (
            'Basic realm="Asterisk REST Interface"'
        )


@pytest.mark.parametrize(
    "headers",
    [basic_auth(USERNAME, "WRONG"), {}],
    ids=["wrong", "missing"],
)
async def test_events_auth_rejected(ari, headers):
    with pytest.raises(InvalidStatus) as raised:
        async with events_socket(ari, headers=headers):
            pass

    assert raised.value.response.status_code == 401
    assert ari.subscribers() == 0


# REST resources


async def test_ping_matches_capture(ari, rest, clock):
    response = await rest.get("ari/asterisk/ping")
    captured = json.loads(
        (FIXTURES / "ari-auth-checks.txt").read_text().splitlines()[1]
    )

    assert response.status_code == 200
    assert shape(response.json()) == shape(captured)
    assert response.json()["timestamp"] == "2026-12-04T15:16:45.649+0000"
    assert response.json()["asterisk_id"] == captured["asterisk_id"]


async def test_info_matches_capture(ari, rest):
    response = await rest.get("ari/asterisk/info")
    captured = load_reply("ari-asterisk-info.json")

    assert response.status_code == 200
    assert shape(response.json()) == shape(captured)
    assert response.json()["system"] == captured["system"]
    assert response.json()["build"] == captured["build"]


async def test_info_only_filter(ari, rest):
    response = await rest.get("ari/asterisk/info", params={"only": "system"})
    rejected = await rest.get("ari/asterisk/info", params={"only": "nothing"})

    assert list(response.json()) == ["system"]
    assert rejected.status_code == 400


async def test_restart_clears_channels(ari, rest, clock):
    before = await ari.dial_out(NUMBER)
    clock.advance(90)
    await ari.restart()
    info = await rest.get("ari/asterisk/info", params={"only": "status"})
    listed = await rest.get("ari/channels")
    after = await ari.dial_out(NUMBER)

    assert info.json()["status"]["startup_time"] == format_timestamp(clock.now())
    assert listed.json() == []
    assert after.trunk_name == before.trunk_name
    assert after.caller_name == before.caller_name
    assert after.trunk_id != before.trunk_id
    assert after.caller_id.endswith(".0")


async def test_applications_match_capture(ari, rest):
    before = await rest.get("ari/applications")
    async with events_socket(ari):
        await ari.wait_for_subscribers()
        listed = await rest.get("ari/applications")
        single = await rest.get(f"ari/applications/{APP}")
        other = await rest.get("ari/applications/other")

    assert before.json() == []
    assert listed.json() == load_reply("ari-applications-while-connected.json")
    assert single.json() == listed.json()[0]
    assert other.status_code == 404
    assert other.json() == {"message": "Application not found"}


async def test_blind_transfer_keeps_trunk_leg(ari):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call = await ari.dial_out(NUMBER)
        await ari.answer(call)
        await receive_until(socket, lambda event: event["type"] == "ChannelEnteredBridge"
                            and event["channel"]["id"] == call.caller_id)
        await ari.blind_transfer(call, "1002")
        events = await receive_until(socket, lambda event: event["type"] == "Dial"
                                     and event["dialstatus"] == "ANSWER")

    transfer = next(event for event in events if event["type"] == "BridgeBlindTransfer")
    assert list(transfer) == ["type", "timestamp", "channel", "exten", "context", "result",
                              "is_external", "transferee", "bridge", "asterisk_id",
                              "application"]
    assert transfer["channel"]["id"] == call.caller_id
    assert transfer["transferee"]["id"] == call.trunk_id
    assert transfer["result"] == "Success"
    assert any(destroyed(call.caller_id)(event) for event in events)
    assert not any(destroyed(call.trunk_id)(event) for event in events)
    answer = events[-1]
    assert answer["caller"]["id"] == call.trunk_id
    assert answer["peer"]["name"].startswith("PJSIP/1002-")
    assert list(ari.channels) == [call.trunk_id, answer["peer"]["id"]]


async def test_attended_transfer_swaps_phone_in(ari):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call = await ari.dial_out(NUMBER)
        await ari.answer(call)
        await ari.attended_transfer(call, "1002")
        events = await receive_until(
            socket, lambda event: event["type"] == "BridgeDestroyed")

    transfer = next(event for event in events if event["type"] == "BridgeAttendedTransfer")
    assert transfer["transferee"]["id"] == call.trunk_id
    assert transfer["destination_type"] == "bridge"
    assert transfer["destination_bridge"] == transfer["transferer_first_leg_bridge"]["id"]
    assert any(destroyed(call.caller_id)(event) for event in events)
    assert list(ari.channels) == [call.trunk_id, transfer["transfer_target"]["id"]]


# Events and their filter


async def test_subscribe_all_filter(ari, rest):
    # Two websockets of one application would replace each other.
    async with events_socket(ari) as everything, events_socket(
        ari, "app=stasis-only"
    ) as stasis_only:
        await ari.wait_for_subscribers(2)
        call = await ari.dial_out(NUMBER)
        await ari.answer(call)
        await ari.hangup(call)
        dialplan_events = await receive_until(everything, destroyed(call.caller_id))

        reply = await rest.post(
            "ari/channels",
            params={"endpoint": f"PJSIP/{NUMBER}@gamma", "app": "stasis-only",
                    "appArgs": "x"},
        )
        originated = reply.json()["id"]
        await ari.answer(ari.call_for(originated))
        first, *_ = await receive_count(stasis_only, 1)
        rest_of_stasis = await receive_until(
            stasis_only, lambda event: event["type"] == "StasisStart"
        )

    assert len(dialplan_events) > 20
    assert first["type"] == "Dial"
    assert first["peer"]["id"] == originated
    assert [event["type"] for event in rest_of_stasis] == [
        "ChannelStateChange",
        "Dial",
        "ChannelVarset",
        "StasisStart",
    ]
    assert rest_of_stasis[-1]["args"] == ["x"]


FILTERED_TYPES = ["ChannelCreated", "ChannelDestroyed", "ChannelStateChange", "Dial"]


async def test_second_socket_replaces_application(ari):
    async with events_socket(ari) as first:
        await ari.wait_for_subscribers()
        async with events_socket(ari) as second:
            await ari.wait_for_subscribers(2)
            replaced = json.loads(await asyncio.wait_for(first.recv(), 5))
            call = await ari.dial_out(NUMBER)
            await ari.hangup(call)
            await receive_until(second, destroyed(call.caller_id))

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(first.recv(), 0.2)

    assert replaced["type"] == "ApplicationReplaced"
    assert replaced["application"] == APP


async def test_filter_can_hide_replacement(ari, rest):
    async with events_socket(ari) as first:
        await ari.wait_for_subscribers()
        await rest.put(f"ari/applications/{APP}/eventFilter",
                       json={"allowed": [{"type": "Dial"}]})
        async with events_socket(ari):
            await ari.wait_for_subscribers(2)

            with pytest.raises(TimeoutError):
                await asyncio.wait_for(first.recv(), 0.2)


async def test_event_filter_limits_events(ari, rest):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        reply = await rest.put(
            f"ari/applications/{APP}/eventFilter",
            json={"allowed": [{"type": kind} for kind in FILTERED_TYPES]},
        )
        call = await ari.dial_out(NUMBER)
        await ari.answer(call)
        await ari.hangup(call)
        events = await receive_until(socket, destroyed(call.caller_id))

    assert reply.status_code == 200
    assert reply.json()["events_allowed"] == [{"type": kind} for kind in FILTERED_TYPES]
    assert reply.json()["events_disallowed"] == []
    assert {event["type"] for event in events} == set(FILTERED_TYPES)


async def test_event_filter_disallowed_wins(ari, rest):
    path = f"ari/applications/{APP}/eventFilter"
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        await rest.put(path, json={"allowed": [{"type": "Dial"}],
                                   "disallowed": [{"type": "Dial"}]})
        silent = await ari.dial_out(NUMBER)
        await rest.put(path, json={"disallowed": []})  # allowed is kept
        application = (await rest.get(f"ari/applications/{APP}")).json()
        await rest.put(path, json={})
        call = await ari.dial_out(NUMBER)
        received = await receive_until(
            socket, lambda event: event["type"] == "Dial"
            and event.get("peer", {}).get("id") == call.trunk_id
        )

    assert application["events_allowed"] == [{"type": "Dial"}]
    assert application["events_disallowed"] == []
    silent_ids = {silent.caller_id, silent.trunk_id}
    assert not [event for event in received
                if event.get("channel", {}).get("id") in silent_ids]
    assert "ChannelVarset" in {event["type"] for event in received}


@pytest.mark.parametrize("body, status, message", [
    ({"allowed": "Dial"}, 400, "Invalid format definition"),
    ({"allowed": ["Dial"]}, 400, "Invalid format definition"),
    ([{"type": "Dial"}], 400, "Invalid format definition"),
])
async def test_event_filter_rejects_bad_bodies(ari, rest, body, status, message):
    async with events_socket(ari):
        await ari.wait_for_subscribers()
        reply = await rest.put(f"ari/applications/{APP}/eventFilter", json=body)

    assert reply.status_code == status
    assert reply.json() == {"message": message}
    assert ari.event_filter(APP) == {"events_allowed": [], "events_disallowed": []}


async def test_event_filter_not_found(ari, rest):
    missing = await rest.put(f"ari/applications/{APP}/eventFilter", json={})
    async with events_socket(ari):
        await ari.wait_for_subscribers()
        ari.event_filters = False
        older = await rest.put(f"ari/applications/{APP}/eventFilter", json={})

    assert (missing.status_code, missing.json()) == (404, {"message": "Application not found"})
    assert (older.status_code, older.json()) == (404, {"message": "Resource not found"})


async def test_sockets_each_get_events(ari):
    # A second websocket of the same application would replace the first.
    async with events_socket(ari) as first, events_socket(
        ari, "app=other&subscribeAll=true"
    ) as second:
        await ari.wait_for_subscribers(2)
        sent_before = ari.events_sent
        call = await ari.dial_out(NUMBER)
        sent = ari.events_sent - sent_before
        from_first = await receive_count(first, sent // 2)
        from_second = await receive_count(second, sent // 2)

    assert sent % 2 == 0
    assert [event["application"] for event in from_second] == ["other"] * (sent // 2)
    for event in from_second:
        event["application"] = APP
    assert from_first == from_second
    assert from_first[-1]["type"] == "Dial"
    assert from_first[-1]["peer"]["id"] == call.trunk_id


async def test_every_event_names_app(ari):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call = await ari.dial_out(NUMBER, tech="Local", dialstring=f"{NUMBER}@sink")
        events = await receive_until(socket, lambda event: event["type"] == "Dial")

    assert call.trunk_name.endswith(";1")
    for event in events:
        assert event["application"] == APP
        assert event["asterisk_id"] == "02:fc:00:00:00:01"
        assert TIMESTAMP.match(event["timestamp"])


# Structural comparison with the captures


async def run_captured_local_call(ari, rest, socket, delete: str, params: dict):
    """Play the captured scenario: a Local trunk call, answered, then DELETE."""
    call = await ari.dial_out(
        NUMBER,
        tech="Local",
        dialstring=f"{NUMBER}@sink",
        variables={"CALLGUARD_TRUNK": "trunk-a", "CALLGUARD_ACCOUNT": "acct-001"},
    )
    far_end = far_end_id(ari, call)
    await ari.answer(call)

    target = call.trunk_id if delete == "trunk" else call.caller_id
    response = await rest.delete(f"ari/channels/{target}", params=params)
    events = await receive_until(
        socket, lambda event: event["type"] == "BridgeDestroyed"
    )
    if delete == "caller":
        events += await receive_count(socket, 2)
    return call, far_end, response, events


async def test_local_call_matches_capture(ari, rest):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call, far_end, response, events = await run_captured_local_call(
            ari, rest, socket, "trunk", {}
        )

    captured = load_events("ari-events-subscribeall.jsonl")
    expected = signatures(captured, capture_role, CAPTURE_TRUNK_DEVICE)
    actual = signatures(events, emulated_roles(call, far_end), CAPTURE_TRUNK_DEVICE)

    assert response.status_code == 204
    assert actual == expected


async def test_delete_caller_matches_capture(ari, rest):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call, far_end, response, events = await run_captured_local_call(
            ari, rest, socket, "caller", {"reason_code": "21"}
        )

    def teardown(event_list, role_of):
        found = signatures(event_list, role_of, CAPTURE_TRUNK_DEVICE)
        start = next(i for i, s in enumerate(found) if s[0] == "ChannelHangupRequest")
        return found[start:]

    captured = load_events("ari-events-s2-delete-caller-leg.jsonl")
    causes = {
        event["channel"]["id"]: (event["cause"], event["cause_txt"])
        for event in events
        if event["type"] == "ChannelDestroyed"
    }

    assert response.status_code == 204
    assert teardown(events, emulated_roles(call, far_end)) == teardown(
        captured, capture_role
    )
    assert causes[call.caller_id] == (21, "Call Rejected")
    assert causes[call.trunk_id] == (16, "Normal Clearing")
    assert causes[far_end] == (16, "Normal Clearing")


def captured_shapes() -> dict[str, set]:
    shapes: dict[str, set] = {}
    for path in sorted(FIXTURES.glob("ari-events-*.jsonl")):
        for event in load_events(path.name):
            shapes.setdefault(event["type"], set()).add(shape(event))
    return shapes


async def test_event_shapes_match_captures(ari, rest):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        local = await ari.dial_out(NUMBER, tech="Local", variables={"__X": "1"})
        await ari.ring(local)
        await ari.answer(local)
        await ari.hangup(local, side="trunk")

        pjsip = await ari.dial_out(NUMBER)
        await ari.fail(pjsip, "BUSY", 17)

        inbound = await ari.inbound()
        await ari.answer(inbound)
        await ari.hangup(inbound, side="trunk")

        reply = await rest.post(
            "ari/channels",
            params={
                "endpoint": "Local/0044987654@outbound-classic",
                "app": APP,
                "appArgs": "originated-by-ari",
                "callerId": "15551230000",
            },
        )
        originated = ari.call_for(reply.json()["id"])
        await ari.answer(originated)
        await rest.delete(f"ari/channels/{originated.trunk_id}")
        events = await receive_until(socket, destroyed(originated.trunk_id))
        events += await receive_count(socket, 2)

    known = captured_shapes()
    emitted_types = {event["type"] for event in events}

    assert "StasisEnd" in emitted_types
    assert "DeviceStateChanged" in emitted_types
    for event in events:
        assert shape(event) in known[event["type"]], event


async def test_snapshots_match_capture(ari, rest):
    call = await ari.dial_out(NUMBER)
    await ari.answer(call)
    response = await rest.get("ari/channels")
    captured = load_reply("ari-channels-during-call.json")

    assert {shape(snapshot) for snapshot in response.json()} == {
        shape(snapshot) for snapshot in captured
    }


async def test_originate_reply_matches_capture(rest, clock):
    captured = load_reply("ari-post-channels-originate.json")
    clock.set(datetime(2026, 12, 4, 15, 17, 7, 726000, tzinfo=timezone.utc))
    response = await rest.post(
        "ari/channels",
        json={
            "endpoint": "Local/0044987654@outbound-classic",
            "app": APP,
            "appArgs": "originated-by-ari",
            "callerId": "15551230000",
        },
    )
    reply = response.json()

    assert response.status_code == 200
    assert UNIQUEID.match(reply["id"])
    assert reply["name"] == "Local/0044987654@outbound-classic-00000000;1"
    assert {**reply, "id": captured["id"], "name": captured["name"]} == captured


# PJSIP calls


async def test_pjsip_call_shape(ari):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call = await ari.dial_out(
            NUMBER, variables={"CALLGUARD_TRUNK": "gamma"}, callerid="01632960001"
        )
        events = await receive_until(socket, lambda event: event["type"] == "Dial")

    dial = events[-1]
    created = [e["channel"] for e in events if e["type"] == "ChannelCreated"]

    assert re.match(r"^PJSIP/1001-[0-9a-f]{8}$", call.caller_name)
    assert re.match(r"^PJSIP/gamma-[0-9a-f]{8}$", call.trunk_name)
    assert call.dialstring == f"gamma/{NUMBER}"
    assert [channel["id"] for channel in created] == [call.caller_id, call.trunk_id]
    assert created[0]["state"] == "Ring"
    assert created[0]["dialplan"]["context"] == "outbound"
    assert created[0]["dialplan"]["exten"] == NUMBER
    assert created[1]["state"] == "Down"
    assert dial["dialstatus"] == ""
    assert dial["dialstring"] == f"gamma/{NUMBER}"
    assert dial["caller"]["id"] == call.caller_id
    assert dial["caller"]["channelvars"]["CALLGUARD_TRUNK"] == "gamma"
    assert dial["caller"]["caller"]["number"] == "01632960001"
    assert dial["peer"]["id"] == call.trunk_id
    # Dial() gives the leg the caller's extension as its caller ID and the
    # caller's caller ID as its connected line (apps/app_dial.c).
    assert dial["peer"]["dialplan"]["exten"] == NUMBER
    assert dial["peer"]["caller"]["number"] == NUMBER
    assert dial["peer"]["connected"]["number"] == "01632960001"


DIALSTRING_CASES = [
    ("PJSIP", None, f"gamma/{NUMBER}", r"^PJSIP/gamma-[0-9a-f]{8}$"),
    ("PJSIP", f"{NUMBER}@gamma", f"{NUMBER}@gamma", r"^PJSIP/gamma-[0-9a-f]{8}$"),
    ("Local", None, f"{NUMBER}@gamma", rf"^Local/{NUMBER}@gamma-[0-9a-f]{{8}};1$"),
    (
        "Local",
        f"{NUMBER}@sink",
        f"{NUMBER}@sink",
        rf"^Local/{NUMBER}@sink-[0-9a-f]{{8}};1$",
    ),
]


@pytest.mark.parametrize("tech, given, dialstring, trunk_name", DIALSTRING_CASES)
async def test_dialstring_forms(ari, tech, given, dialstring, trunk_name):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call = await ari.dial_out(NUMBER, tech=tech, dialstring=given)
        events = await receive_until(socket, lambda event: event["type"] == "Dial")

    dial = events[-1]
    assert call.dialstring == dialstring
    assert re.match(trunk_name, call.trunk_name)
    assert dial["dialstring"] == dialstring
    assert dial["peer"]["name"] == call.trunk_name
    assert dial["caller"]["dialplan"]["app_data"] == f"{tech}/{dialstring},,"


async def test_pjsip_answer_sequence(ari):
    call = await ari.dial_out(NUMBER)
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        await ari.answer(call)
        events = await receive_until(socket, bridgepeer_set(call.caller_id))

    role_of = emulated_roles(call)
    assert signatures(events, role_of, "") == [
        ("ChannelStateChange", "trunk"),
        ("ChannelVarset", "caller"),
        ("Dial", "caller", "trunk", "ANSWER", False),
        ("ChannelStateChange", "caller"),
        ("BridgeCreated",),
        ("ChannelDialplan", "trunk"),
        ("ChannelEnteredBridge", "trunk"),
        ("ChannelEnteredBridge", "caller"),
        ("ChannelVarset", "trunk"),
        ("ChannelVarset", "caller"),
    ]
    assert events[-1]["value"] == call.trunk_name


async def test_clock_sets_timestamps_and_ids(ari, clock):
    call = await ari.dial_out(NUMBER)
    snapshot = ari.channels[call.caller_id]

    assert call.caller_id == "1796397405.0"
    assert call.trunk_id == "1796397405.1"
    # chan_pjsip numbers all its channels with one counter.
    assert call.caller_name == "PJSIP/1001-00000000"
    assert call.trunk_name == "PJSIP/gamma-00000001"
    assert snapshot["creationtime"] == "2026-12-04T15:16:45.649+0000"

    clock.advance(61.5)
    second = await ari.dial_out(NUMBER)
    assert second.caller_id == "1796397467.2"
    assert second.caller_name == "PJSIP/1001-00000002"
    assert ari.channels[second.caller_id]["creationtime"] == (
        "2026-12-04T15:17:47.149+0000"
    )


async def test_inherited_variables(ari, rest):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call = await ari.dial_out(
            NUMBER, variables={"__CALLGUARD_TRUNK": "gamma", "_CALLGUARD_ACCOUNT": "a1"}
        )
        events = await receive_until(socket, lambda event: event["type"] == "Dial")

    trunk_varsets = [
        event["variable"]
        for event in events
        if event["type"] == "ChannelVarset" and event["channel"]["id"] == call.trunk_id
    ]
    listed = {c["id"]: c for c in (await rest.get("ari/channels")).json()}

    assert trunk_varsets == [
        "DIALEDPEERNUMBER",
        "CALLGUARD_ACCOUNT",
        "__CALLGUARD_TRUNK",
    ]
    assert listed[call.trunk_id]["channelvars"] == {
        "CALLGUARD_TRUNK": "gamma",
        "CALLGUARD_ACCOUNT": "a1",
    }
    assert listed[call.caller_id]["channelvars"]["CALLGUARD_TRUNK"] == "gamma"


# Hang-ups


async def test_delete_trunk_ends_call(ari, rest):
    call = await ari.dial_out(NUMBER)
    await ari.answer(call)
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        response = await rest.delete(f"ari/channels/{call.trunk_id}")
        events = await receive_until(socket, destroyed(call.caller_id))

    request = events[0]
    causes = {
        event["channel"]["id"]: (event["cause"], event["cause_txt"])
        for event in events
        if event["type"] == "ChannelDestroyed"
    }

    assert response.status_code == 204
    assert response.content == b""
    assert request["type"] == "ChannelHangupRequest"
    assert request["channel"]["id"] == call.trunk_id
    assert request["cause"] == 32
    assert request["soft"] is True
    assert causes == {
        call.trunk_id: (16, "Normal Clearing"),
        call.caller_id: (16, "Normal Clearing"),
    }
    assert ari.deletes == [(call.trunk_id, {})]
    assert ari.channels == {}


async def test_delete_events_keep_order(ari, rest):
    first = await ari.dial_out(NUMBER)
    await ari.answer(first)
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        await rest.delete(f"ari/channels/{first.trunk_id}")
        second = await ari.dial_out(NUMBER)
        events = await receive_until(socket, lambda event: event["type"] == "Dial")

    kinds = [(event["type"], event.get("channel", {}).get("id")) for event in events]
    first_ended = kinds.index(("ChannelDestroyed", first.caller_id))
    second_created = kinds.index(("ChannelCreated", second.caller_id))

    assert first_ended < second_created


DELETE_REASONS = [
    ({"reason": "busy"}, 17, "User busy"),
    ({"reason": "no_answer"}, 19, "User alerting, no answer"),
    ({"reason": "rejected"}, 21, "Call Rejected"),
    ({"reason": "congestion"}, 34, "Circuit/channel congestion"),
    ({"reason_code": "21"}, 21, "Call Rejected"),
    ({"reason_code": "127"}, 127, "Interworking, unspecified"),
    ({"reason_code": "99x"}, 99, "Info. element nonexist or not implemented"),
    ({"reason_code": "200"}, 200, "Unknown"),
]


@pytest.mark.parametrize("params, cause, cause_txt", DELETE_REASONS)
async def test_delete_reason_sets_cause(ari, rest, params, cause, cause_txt):
    call = await ari.dial_out(NUMBER)
    await ari.answer(call)
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        response = await rest.delete(f"ari/channels/{call.trunk_id}", params=params)
        events = await receive_until(socket, destroyed(call.caller_id))

    trunk_end = next(e for e in events if destroyed(call.trunk_id)(e))

    assert response.status_code == 204
    assert trunk_end["cause"] == cause
    assert trunk_end["cause_txt"] == cause_txt
    assert events[-1]["cause"] == 16
    assert ari.deletes == [(call.trunk_id, params)]


DELETE_ERRORS = [
    ({"reason": "bogus"}, 400, "Invalid reason for hangup reason provided"),
    ({"reason_code": "x21"}, 400, "Invalid reason for hangup reason code provided"),
    (
        {"reason": "busy", "reason_code": "17"},
        400,
        "The reason and reason_code can't both be specified",
    ),
]


@pytest.mark.parametrize("params, status, message", DELETE_ERRORS)
async def test_delete_rejects_bad_reason(ari, rest, params, status, message):
    call = await ari.dial_out(NUMBER)
    response = await rest.delete(f"ari/channels/{call.trunk_id}", params=params)

    assert response.status_code == status
    assert response.json() == {"message": message}
    assert call.trunk_id in ari.channels


async def test_delete_unknown_channel(ari, rest):
    response = await rest.delete("ari/channels/1796397405.99")
    fetched = await rest.get("ari/channels/1796397405.99")

    assert response.status_code == 404
    assert response.json() == {"message": "Channel not found"}
    assert fetched.status_code == 404
    assert fetched.json() == {"message": "Channel not found"}
    assert ari.deletes == [("1796397405.99", {})]


async def test_fail_deletes(ari, rest):
    call = await ari.dial_out(NUMBER)
    await ari.answer(call)
    ari.fail_deletes = 2

    first = await rest.delete(f"ari/channels/{call.trunk_id}")
    second = await rest.delete(
        f"ari/channels/{call.trunk_id}", params={"reason": "busy"}
    )
    assert call.trunk_id in ari.channels
    third = await rest.delete(f"ari/channels/{call.trunk_id}")

    assert first.status_code == 500
    assert first.json() == {"message": "Internal Server Error"}
    assert second.status_code == 500
    assert third.status_code == 204
    assert ari.fail_deletes == 0
    assert ari.deletes == [
        (call.trunk_id, {}),
        (call.trunk_id, {"reason": "busy"}),
        (call.trunk_id, {}),
    ]
    assert ari.channels == {}


async def test_channels_follow_call(ari, rest):
    call = await ari.dial_out(NUMBER)
    dialling = {c["id"]: c["state"] for c in (await rest.get("ari/channels")).json()}
    await ari.answer(call)
    answered = {c["id"]: c["state"] for c in (await rest.get("ari/channels")).json()}
    single = await rest.get(f"ari/channels/{call.trunk_id}")
    await ari.hangup(call, side="caller")
    ended = await rest.get("ari/channels")
    gone = await rest.get(f"ari/channels/{call.trunk_id}")

    assert dialling == {call.caller_id: "Ring", call.trunk_id: "Down"}
    assert answered == {call.caller_id: "Up", call.trunk_id: "Up"}
    assert single.json()["state"] == "Up"
    assert single.json()["dialplan"]["exten"] == ""
    assert ended.json() == []
    assert gone.status_code == 404


async def test_hangup_by_party(ari):
    call = await ari.dial_out(NUMBER)
    await ari.answer(call)
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        await ari.hangup(call, side="caller", cause=17)
        events = await receive_until(socket, destroyed(call.trunk_id))

    request = events[0]
    assert request["type"] == "ChannelHangupRequest"
    assert request["channel"]["id"] == call.caller_id
    assert request["cause"] == 17
    assert "soft" not in request
    caller_end = next(e for e in events if destroyed(call.caller_id)(e))
    assert caller_end["cause"] == 17
    assert caller_end["cause_txt"] == "User busy"
    assert events[-1]["cause"] == 16


async def test_fail_unanswered(ari):
    call = await ari.dial_out(NUMBER)
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        await ari.ring(call)
        await ari.fail(call)
        events = await receive_until(socket, destroyed(call.caller_id))

    ringing, dial, trunk_end = events[:3]
    assert ringing["type"] == "ChannelStateChange"
    assert ringing["channel"]["state"] == "Ringing"
    assert dial["type"] == "Dial"
    assert dial["dialstatus"] == "NOANSWER"
    assert dial["dialstring"] == ""
    assert trunk_end["type"] == "ChannelDestroyed"
    assert trunk_end["channel"]["id"] == call.trunk_id
    assert (trunk_end["cause"], trunk_end["cause_txt"]) == (
        19,
        "User alerting, no answer",
    )
    assert events[-2]["variable"] == "DIALSTATUS"
    assert events[-2]["value"] == "NOANSWER"
    assert ari.channels == {}


async def test_caller_cancels_before_answer(ari, rest):
    call = await ari.dial_out(NUMBER)
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        response = await rest.delete(f"ari/channels/{call.caller_id}")
        events = await receive_until(socket, destroyed(call.caller_id))

    dial = next(event for event in events if event["type"] == "Dial")
    assert response.status_code == 204
    assert dial["dialstatus"] == "CANCEL"
    assert dial["peer"]["id"] == call.trunk_id
    assert ari.channels == {}


async def test_forward(ari):
    call = await ari.dial_out(NUMBER)
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        forwarded = await ari.forward(call, "0044999888")
        events = await receive_until(socket, destroyed(call.trunk_id))

    dials = [event for event in events if event["type"] == "Dial"]
    new_dial, cancel = dials

    assert forwarded.caller_id == call.caller_id
    assert forwarded.trunk_id != call.trunk_id
    assert forwarded.dialstring == "gamma/0044999888"
    assert new_dial["peer"]["id"] == forwarded.trunk_id
    assert new_dial["dialstring"] == "gamma/0044999888"
    assert cancel["dialstatus"] == "CANCEL"
    assert cancel["forward"] == "PJSIP/gamma/0044999888"
    assert cancel["peer"]["id"] == call.trunk_id
    assert cancel["forwarded"]["id"] == forwarded.trunk_id
    assert list(ari.channels) == [call.caller_id, forwarded.trunk_id]

    await ari.answer(forwarded)
    assert ari.channels[forwarded.trunk_id]["state"] == "Up"


async def test_inbound_has_no_dial(ari):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call = await ari.inbound(callerid="02079460000", exten="01632960001")
        await ari.answer(call)
        await ari.hangup(call, side="trunk")
        events = await receive_until(socket, destroyed(call.trunk_id))

    created = events[0]["channel"]
    assert call.caller_id is None
    assert created["name"].startswith("PJSIP/gamma-")
    assert created["state"] == "Ring"
    assert created["caller"]["number"] == "02079460000"
    assert created["dialplan"]["exten"] == "01632960001"
    assert "Dial" not in [event["type"] for event in events]


async def test_originate_out(ari):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        call = await ari.originate_out(NUMBER)
        await ari.answer(call)
        events = await receive_until(
            socket, lambda event: event["type"] == "Dial" and event["dialstatus"]
        )

    dials = [event for event in events if event["type"] == "Dial"]
    assert call.caller_id is None
    assert [d["dialstatus"] for d in dials] == ["", "ANSWER"]
    assert all("caller" not in d for d in dials)
    assert all(d["peer"]["id"] == call.trunk_id for d in dials)
    assert all(d["dialstring"] == f"gamma/{NUMBER}" for d in dials)
    assert ari.channels[call.trunk_id]["dialplan"]["app_name"] == "Wait"


# Outages


async def test_drop_events_refuses_until_allowed(ari, rest):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        await ari.drop_events(refuse_for=math.inf)
        with pytest.raises(ConnectionClosedError) as closed:
            await asyncio.wait_for(socket.recv(), 2.0)

    assert closed.value.rcvd is None
    assert ari.subscribers() == 0
    with pytest.raises(InvalidStatus) as refused:
        async with events_socket(ari):
            pass
    assert refused.value.response.status_code == 503
    assert (await rest.get("ari/channels")).status_code == 200

    ari.allow_events()
    async with events_socket(ari):
        await ari.wait_for_subscribers()
        assert ari.subscribers() == 1


async def test_drop_events_refusal_expires(ari):
    await ari.drop_events(refuse_for=0.05)
    with pytest.raises(InvalidStatus):
        async with events_socket(ari):
            pass

    # The refusal is measured in real time by design, so this waits for it.
    await asyncio.sleep(0.1)
    async with events_socket(ari):
        await ari.wait_for_subscribers()


async def test_drop_events_rest_down(ari, rest):
    await ari.drop_events(refuse_for=math.inf, rest_down=True)
    down = await rest.get("ari/channels")
    ari.allow_events()
    up = await rest.get("ari/channels")

    assert down.status_code == 503
    assert down.json() == {"message": "Service Unavailable"}
    assert up.status_code == 200


async def test_silence_stops_events_and_pongs(ari):
    async with events_socket(ari) as socket:
        await ari.wait_for_subscribers()
        answered = await socket.ping()
        await asyncio.wait_for(answered, 2.0)

        await ari.silence()
        sent = ari.events_sent
        await ari.dial_out(NUMBER)
        unanswered = await socket.ping()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(unanswered, 0.2)

        assert ari.events_sent == sent
        assert ari.subscribers() == 1


async def test_wait_for_subscribers_times_out(ari):
    with pytest.raises(TimeoutError, match="expected at least 1"):
        await ari.wait_for_subscribers(1, timeout=0.01)


# Bad requests


BAD_REQUESTS = [
    ("POST", "ari/channels", {"content": b"{not json"}, 400),
    ("POST", "ari/channels", {"content": b"[1, 2]"}, 400),
    ("POST", "ari/channels", {"content": b"x" * (64 * 1024 + 1)}, 413),
    ("POST", "ari/channels", {"json": {"app": APP}}, 400),
    ("POST", "ari/channels", {"json": {"endpoint": "gamma", "app": APP}}, 400),
    ("POST", "ari/channels", {"json": {"endpoint": "PJSIP/1@gamma"}}, 400),
    (
        "POST",
        "ari/channels",
        {"json": {"endpoint": "PJSIP/1@gamma", "app": APP, "variables": {"A": 1}}},
        400,
    ),
    (
        "POST",
        "ari/channels",
        {"params": {"endpoint": "PJSIP/1@gamma", "app": APP, "priority": "x"}},
        400,
    ),
    ("PUT", "ari/channels", {}, 405),
    ("GET", "ari/nothing", {}, 404),
    ("GET", "elsewhere", {}, 404),
    ("GET", f"ari/events?app={APP}", {}, 400),
    ("GET", "ari/events", {}, 400),
]


@pytest.mark.parametrize("method, path, options, status", BAD_REQUESTS)
async def test_bad_requests(ari, rest, method, path, options, status):
    response = await rest.request(method, path, **options)
    after = await rest.get("ari/asterisk/ping")

    assert response.status_code == status
    assert isinstance(response.json()["message"], str)
    assert after.status_code == 200


async def test_originate_to_extension(ari, rest):
    reply = await rest.post(
        "ari/channels",
        params={
            "endpoint": f"PJSIP/{NUMBER}@gamma",
            "extension": "100",
            "context": "internal",
            "priority": "2",
            "callerId": '"Front desk" <1001>',
        },
    )
    call = ari.call_for(reply.json()["id"])
    await ari.answer(call)
    snapshot = ari.channels[call.trunk_id]

    assert reply.status_code == 200
    assert reply.json()["name"].startswith("PJSIP/gamma-")
    assert reply.json()["caller"] == {"name": "Front desk", "number": "1001"}
    assert call.number == NUMBER
    assert call.dialstring == f"{NUMBER}@gamma"
    assert snapshot["state"] == "Up"
    assert snapshot["dialplan"]["context"] == "internal"
    assert snapshot["dialplan"]["exten"] == "100"
    assert snapshot["dialplan"]["priority"] == 2


async def test_originate_rejects_duplicate_id(ari, rest):
    params = {"endpoint": "PJSIP/1@gamma", "app": APP, "channelId": "fixed-id"}
    first = await rest.post("ari/channels", params=params)
    second = await rest.post("ari/channels", params=params)

    assert first.json()["id"] == "fixed-id"
    assert second.status_code == 409


async def test_stop_closes_sockets(clock):
    emulator = AriEmulator(now=clock.now)
    await emulator.start()
    async with events_socket(emulator) as socket:
        await emulator.wait_for_subscribers()
        await emulator.stop()
        with pytest.raises(websockets.ConnectionClosedOK) as closed:
            await asyncio.wait_for(socket.recv(), 2.0)

    assert closed.value.rcvd.code == 1001
    assert emulator.subscribers() == 0


async def test_start_rejects_non_loopback():
    emulator = AriEmulator()
    with pytest.raises(ValueError, match="loopback"):
        await emulator.start(host="192.0.2.1")


async def test_leg_listed_only_after_check(ari, rest):
    listed_during_check = []

    async def check(caller_id: str) -> bool:
        reply = await rest.get("ari/channels")
        listed_during_check.extend(channel["id"] for channel in reply.json())
        return True

    call = await ari.dial_out(NUMBER, check=check)
    listed_after = [channel["id"] for channel in (await rest.get("ari/channels")).json()]

    # Asterisk creates the dialled leg at Dial(), after the check.
    assert listed_during_check == [call.caller_id]
    assert sorted(listed_after) == sorted([call.caller_id, call.trunk_id])


async def test_call_methods_reject_ended_call(ari):
    call = await ari.dial_out(NUMBER)
    await ari.fail(call)

    with pytest.raises(LookupError, match=call.trunk_id):
        await ari.answer(call)
    with pytest.raises(ValueError, match="invalid tech"):
        await ari.dial_out(NUMBER, tech="SIP")


def test_timestamp_text_follows_each_zone():
    # One instant in three zones, twice over: the text must never come from
    # the same instant formatted in another zone.
    instant = datetime(2024, 3, 31, 1, 0, 1, 5000, tzinfo=timezone.utc)
    zones = [timezone.utc, ZoneInfo("Europe/London"), timezone(timedelta(hours=5, minutes=30))]
    expected = ["2024-03-31T01:00:01.005+0000", "2024-03-31T02:00:01.005+0100",
                "2024-03-31T06:30:01.005+0530"]

    for _ in range(2):
        texts = [format_timestamp(instant.astimezone(zone)) for zone in zones]
        assert texts == expected
