"""The control socket's replies to malformed requests."""

import asyncio
import json

import pytest

from callguard.daemon.control import ControlServer


@pytest.fixture
async def control(tmp_path):
    server = ControlServer(tmp_path / "callguard.sock", {"status": lambda request: {"ok": 1}})
    await server.start()
    yield server
    await server.stop()


async def send_line(server: ControlServer, line: bytes) -> bytes:
    reader, writer = await asyncio.open_unix_connection(str(server.path))
    writer.write(line)
    await writer.drain()
    reply = await asyncio.wait_for(reader.readline(), 5)
    writer.close()
    return reply


@pytest.mark.parametrize("command", [["status"], {"name": "status"}, 7, None])
async def test_command_not_a_name_rejected(control, command):
    line = json.dumps({"command": command}).encode() + b"\n"

    reply = json.loads(await send_line(control, line))

    assert "status" in reply["error"]
    assert "unknown command" in reply["error"]


async def test_known_command_answered(control):
    reply = json.loads(await send_line(control, b'{"command": "status"}\n'))

    assert reply == {"ok": 1}


async def test_deeply_nested_request_rejected(control, caplog):
    # Nesting this deep fits in the line limit but exceeds the JSON decoder's
    # recursion limit.
    depth = 30_000
    line = b'{"command": "status", "x": ' + b"[" * depth + b"]" * depth + b"}\n"

    reply = json.loads(await send_line(control, line))

    assert reply["error"].startswith("invalid request")
    assert "Traceback" not in caplog.text
