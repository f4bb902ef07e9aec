"""The FastAGI server over real loopback sockets, with an emulated Asterisk."""

import asyncio
import errno
import importlib.util
import logging
import socket
import struct
import time
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path

import pytest

from callguard.agi.protocol import AGIChannel, AGIHangup, AGILimits
from callguard.agi.server import (
    PEER_FAILURE_BURST,
    FastAGIServer,
    RejectionLog,
    peer_address,
)
from emulator.fastagi import (
    AGICall,
    AsteriskAGISession,
    encode_environment,
    run_fastagi_call,
)

LIMITS = AGILimits(
    max_line=4096, max_variables=128, block_timeout=0.5, reply_timeout=0.5
)
SERVER_LOG = "callguard.agi.server"

# The session of fastagi-transcript.txt connection #1.
FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"

CAPTURED_CALL = AGICall(
    extension="0044123456",
    channel="Local/0044123456@outbound-00000000;2",
    uniqueid="1796397405.1",
    variables={"CALLGUARD_TRUNK": "trunk-a", "CALLGUARD_ACCOUNT": "acct-001"},
)


async def captured_check(channel: AGIChannel) -> list[str | None]:
    """Send the command sequence of the capture and return what came back."""
    values = [
        await channel.get_variable("CALLGUARD_TRUNK"),
        await channel.set_variable("X", "Y"),
        await channel.get_full_variable("${CHANNEL}"),
        await channel.verbose("x", 1),
        await channel.get_variable("CALLGUARD_ACCOUNT"),
        await channel.get_variable("NOSUCHVAR"),
        await channel.get_full_variable(
            "${CHANNEL(uniqueid)}|${CALLERID(num)}|${EXTEN}"
        ),
    ]
    await channel.set_variable("CALLGUARD_RESULT", "ALLOW")
    return values


async def quick_check(channel: AGIChannel) -> None:
    trunk = await channel.get_variable("CALLGUARD_TRUNK")
    await channel.set_variable("CALLGUARD_RESULT", "ALLOW" if trunk else "DENY")
    await channel.set_variable("CALLGUARD_REASON", ",".join(channel.arguments))


class Recorder:
    """A route that keeps the channels it served and what its handler returned."""

    def __init__(self, handler=quick_check):
        self.handler = handler
        self.channels: list[AGIChannel] = []
        self.returned: list[object] = []

    async def __call__(self, channel: AGIChannel) -> None:
        self.channels.append(channel)
        self.returned.append(await self.handler(channel))


@pytest.fixture
async def start_server():
    servers = []

    async def start(routes, **options) -> tuple[FastAGIServer, str, int]:
        options.setdefault("limits", LIMITS)
        server = FastAGIServer(routes, options.pop("host", "127.0.0.1"), 0, **options)
        await server.start()
        servers.append(server)
        host, port = server.sockets[0]
        return server, host, port

    yield start
    for server in servers:
        await server.stop(grace=0.1)


async def wait_closed_by_server(host: str, port: int, payload: bytes = b"") -> float:
    """Connect, send ``payload`` and return the seconds until the server closes."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    try:
        if payload:
            writer.write(payload)
            try:
                await writer.drain()
            except ConnectionError:
                return time.monotonic() - started
        async with asyncio.timeout(5):
            while await reader.read(65536):
                pass
    except ConnectionError:
        pass
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
    return time.monotonic() - started


def server_messages(caplog, level=logging.WARNING) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == SERVER_LOG and r.levelno >= level
    ]


async def test_session_as_captured(start_server):
    route = Recorder(captured_check)
    server, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, CAPTURED_CALL)

    (channel,) = route.channels
    assert route.returned[0] == [
        "trunk-a",
        None,
        "Local/0044123456@outbound-00000000;2",
        None,
        "acct-001",
        None,
        "1796397405.1||0044123456",
    ]
    assert channel.uniqueid == "1796397405.1"
    assert channel.channel == "Local/0044123456@outbound-00000000;2"
    assert channel.env["agi_request"] == f"agi://{host}:{port}/check"
    assert channel.peer.startswith("127.0.0.1:")
    assert result.variables == {"X": "Y", "CALLGUARD_RESULT": "ALLOW"}
    assert len(result.commands) == 8
    assert result.closed_by_server
    assert server.active_sessions == 0


async def test_sockets_real_port(start_server):
    server, host, port = await start_server({"check": quick_check})

    assert host == "127.0.0.1"
    assert port > 0


@pytest.mark.parametrize(
    "script, arguments",
    [("check", ()), ("check?debug=1", ("0044123456", "gamma")), ("check/", ("x",))],
)
async def test_dispatch_on_script(start_server, script, arguments):
    check = Recorder()
    other = Recorder()
    _, host, port = await start_server({"check": check, "other": other})
    call = AGICall(
        "0044123456",
        script=script,
        arguments=arguments,
        variables={"CALLGUARD_TRUNK": "t"},
    )

    result = await run_fastagi_call(host, port, call)

    assert len(check.channels) == 1
    assert other.channels == []
    assert result.variables == {
        "CALLGUARD_RESULT": "ALLOW",
        "CALLGUARD_REASON": ",".join(arguments),
    }


async def test_unknown_script(start_server, caplog):
    route = Recorder()
    _, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, AGICall("0044123456", script="nosuch"))

    assert result.closed_by_server
    assert result.commands == []
    assert route.channels == []
    (message,) = server_messages(caplog)
    assert "unknown FastAGI script 'nosuch'" in message
    assert "uniqueid 1796397405.1" in message
    assert "the dialplan applies its fail policy" in message


async def test_disallowed_client(start_server, caplog):
    route = Recorder()
    server, host, port = await start_server(
        {"check": route}, allowed_clients=[ip_network("10.0.0.0/8")]
    )

    # The server closes without waiting for a single byte.
    for _ in range(5):
        assert await wait_closed_by_server(host, port) < 1
    result = await run_fastagi_call(host, port, CAPTURED_CALL)

    assert result.closed_by_server
    assert result.commands == []
    assert route.channels == []
    (first,) = server_messages(caplog)
    assert first.startswith("rejected FastAGI connection from 127.0.0.1:")
    assert "not in allowed_clients" in first

    server._rejections.summarise()
    assert server_messages(caplog)[1:] == [
        "rejected 5 more FastAGI connections from 127.0.0.1: the address is not "
        "in allowed_clients"
    ]

    server.set_allowed_clients(["127.0.0.0/8"])
    result = await run_fastagi_call(host, port, CAPTURED_CALL)
    assert result.variables["CALLGUARD_RESULT"] == "ALLOW"


async def test_ipv6_loopback(start_server):
    route = Recorder()
    server, host, port = await start_server({"check": route}, host="::1")

    result = await run_fastagi_call(host, port, CAPTURED_CALL)
    assert result.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert route.channels[0].peer.startswith("[::1]:")

    server.set_allowed_clients([ip_network("127.0.0.1/32")])
    assert await wait_closed_by_server(host, port) < 1
    assert len(route.channels) == 1


async def test_ipv6_any_takes_ipv4(start_server):
    # A dialplan that connects to agi://127.0.0.1 must reach a server on [::].
    route = Recorder()
    server, host, port = await start_server({"check": route}, host="::")

    ipv4 = await run_fastagi_call("127.0.0.1", port, CAPTURED_CALL)
    ipv6 = await run_fastagi_call("::1", port, CAPTURED_CALL)

    assert host == "::"
    assert ipv4.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert ipv6.variables["CALLGUARD_RESULT"] == "ALLOW"
    assert route.channels[0].peer.startswith("127.0.0.1:")
    assert route.channels[1].peer.startswith("[::1]:")


async def test_ipv6_any_checks_ipv4_clients(start_server):
    route = Recorder()
    server, host, port = await start_server(
        {"check": route}, host="::", allowed_clients=[ip_network("::1/128")]
    )

    assert await wait_closed_by_server("127.0.0.1", port) < 1
    assert route.channels == []


async def test_ipv6_any_port_in_use(start_server):
    server, host, port = await start_server({"check": quick_check}, host="::")
    second = FastAGIServer({"check": quick_check}, "::", port)

    with pytest.raises(OSError) as caught:
        await second.start()

    assert caught.value.errno == errno.EADDRINUSE
    assert f"error while attempting to bind on address ('::', {port}): " in str(
        caught.value
    )


@pytest.mark.parametrize(
    "peername, address, text",
    [
        (("127.0.0.1", 5000), IPv4Address("127.0.0.1"), "127.0.0.1:5000"),
        (("::ffff:127.0.0.1", 5000, 0, 0), IPv4Address("127.0.0.1"), "127.0.0.1:5000"),
        (("::ffff:10.1.2.3", 1, 0, 0), IPv4Address("10.1.2.3"), "10.1.2.3:1"),
        (("::1", 5000, 0, 0), IPv6Address("::1"), "[::1]:5000"),
        ("/run/asterisk.sock", None, "/run/asterisk.sock"),
        (None, None, "None"),
    ],
)
def test_peer_address(peername, address, text):
    assert peer_address(peername) == (address, text)


def test_mapped_address_matches_ipv4_network():
    address, _ = peer_address(("::ffff:127.0.0.1", 5000, 0, 0))

    assert address in ip_network("127.0.0.1/32")


@pytest.mark.parametrize("value", ["127.0.0.1/33", "localhost", "10.0.0.1/8", 42])
def test_set_allowed_clients_invalid(value):
    server = FastAGIServer({"check": quick_check})

    with pytest.raises(ValueError, match="invalid allowed_clients entry"):
        server.set_allowed_clients([value])


@pytest.mark.parametrize("name", ["", "a/b", "check?x"])
def test_invalid_route_name(name):
    with pytest.raises(ValueError, match="invalid FastAGI script name"):
        FastAGIServer({name: quick_check})


def test_invalid_session_timeout():
    with pytest.raises(ValueError, match="session_timeout"):
        FastAGIServer({"check": quick_check}, session_timeout=0)


async def test_bad_clients_beside_good_ones(start_server, caplog):
    caplog.set_level(logging.INFO, SERVER_LOG)
    route = Recorder()
    server, host, port = await start_server({"check": route})
    good_calls = [
        AGICall(
            "0044123456", uniqueid=f"1796397405.{i}", variables={"CALLGUARD_TRUNK": "t"}
        )
        for i in range(20)
    ]

    bad = [
        wait_closed_by_server(host, port, b"GET / HTTP/1.1\r\nHost: pbx\r\n\r\n"),
        wait_closed_by_server(host, port, b"agi_network: yes\n" + b"a" * 1_000_000),
        wait_closed_by_server(
            host, port, b"agi_network: yes\nagi_network_script: check\n"
        ),
        wait_closed_by_server(host, port, b"\x00\xff" * 100 + b"\n"),
        run_fastagi_call(host, port, CAPTURED_CALL, stall_block=True),
        run_fastagi_call(host, port, CAPTURED_CALL, close_after_lines=5),
    ]
    good = [run_fastagi_call(host, port, call) for call in good_calls]

    results = await asyncio.gather(*bad, *good)
    garbage, huge, unfinished, binary, stalled, early = results[: len(bad)]

    for seconds in (garbage, huge, binary):
        assert seconds < LIMITS.block_timeout
    for seconds in (unfinished, stalled.elapsed):
        assert LIMITS.block_timeout - 0.05 < seconds < LIMITS.block_timeout + 0.5
    assert stalled.closed_by_server
    assert early.commands == []
    for result in results[len(bad) :]:
        assert result.variables == {"CALLGUARD_RESULT": "ALLOW", "CALLGUARD_REASON": ""}
    assert len(route.channels) == len(good_calls)

    await asyncio.sleep(0.05)
    messages = server_messages(caplog, logging.INFO)
    assert len(messages) == len(bad)
    assert all("FastAGI session from 127.0.0.1:" in m for m in messages)
    assert sum("invalid AGI environment line" in m for m in messages) == 1
    assert sum("contains a NUL byte" in m for m in messages) == 1
    assert sum("line longer than the limit of 4096 bytes" in m for m in messages) == 1
    assert sum("not complete after 0.5 s" in m for m in messages) == 2
    assert sum("closed after 5 lines" in m for m in messages) == 1
    assert server.active_sessions == 0


async def test_handler_error_keeps_serving(start_server, caplog):
    async def broken(channel: AGIChannel) -> None:
        await channel.get_variable("CALLGUARD_TRUNK")
        raise RuntimeError("rate deck missing")

    route = Recorder()
    _, host, port = await start_server({"broken": broken, "check": route})

    failed = await run_fastagi_call(host, port, AGICall("0044123456", script="broken"))
    served = await run_fastagi_call(host, port, CAPTURED_CALL)

    assert failed.closed_by_server
    assert failed.commands == ["GET VARIABLE CALLGUARD_TRUNK"]
    assert served.variables["CALLGUARD_RESULT"] == "ALLOW"
    (record,) = [r for r in caplog.records if r.name == SERVER_LOG]
    assert record.levelno == logging.ERROR
    assert "handler for script 'broken' failed" in record.getMessage()
    assert "uniqueid 1796397405.1" in record.getMessage()
    assert record.exc_info[0] is RuntimeError


async def test_hangup_logged_as_info(start_server, caplog):
    caplog.set_level(logging.INFO, SERVER_LOG)

    async def check(channel: AGIChannel) -> None:
        await channel.get_variable("A")
        await channel.get_variable("B")

    _, host, port = await start_server({"check": check})

    result = await run_fastagi_call(
        host, port, CAPTURED_CALL, hangup_before_command=1, reply_511_after_hangup=True
    )

    assert result.commands == ["GET VARIABLE A"]
    assert result.closed_by_server
    (record,) = [r for r in caplog.records if r.name == SERVER_LOG]
    assert record.levelno == logging.INFO
    assert "channel hung up" in record.getMessage()


async def test_handler_sees_hangup(start_server):
    seen = []

    async def check(channel: AGIChannel) -> None:
        await channel.get_variable("CALLGUARD_TRUNK")
        seen.append(channel.hung_up)
        await channel.set_variable("CALLGUARD_RESULT", "DENY")
        seen.append(channel.hung_up)

    _, host, port = await start_server({"check": check})

    result = await run_fastagi_call(host, port, CAPTURED_CALL, hangup_before_command=2)

    assert seen == [False, True]
    assert result.variables == {"CALLGUARD_RESULT": "DENY"}


async def test_session_timeout(start_server, caplog):
    async def slow(channel: AGIChannel) -> None:
        await channel.get_variable("CALLGUARD_TRUNK")
        await asyncio.sleep(10)

    _, host, port = await start_server({"check": slow}, session_timeout=0.3)

    result = await run_fastagi_call(host, port, CAPTURED_CALL)

    assert result.closed_by_server
    assert 0.25 < result.elapsed < 1
    (message,) = server_messages(caplog)
    assert "session not finished after 0.3 s" in message
    assert "uniqueid 1796397405.1" in message


async def test_handler_timeout_error_not_session_timeout(start_server, caplog):
    async def check(channel: AGIChannel) -> None:
        raise TimeoutError("rating timed out")

    _, host, port = await start_server({"check": check})

    await run_fastagi_call(host, port, CAPTURED_CALL)

    (record,) = [r for r in caplog.records if r.name == SERVER_LOG]
    assert "handler for script 'check' failed" in record.getMessage()
    assert record.exc_info[0] is TimeoutError


async def test_reply_timeout_ends_session(start_server, caplog):
    async def check(channel: AGIChannel) -> None:
        await channel.get_variable("CALLGUARD_TRUNK")

    _, host, port = await start_server({"check": check})
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"agi_network: yes\nagi_network_script: check\nagi_uniqueid: 1.2\n\n")

    command = await reader.readline()
    started = time.monotonic()
    closed = await reader.read()
    writer.close()

    assert command == b"GET VARIABLE CALLGUARD_TRUNK\n"
    assert closed == b""
    assert time.monotonic() - started < LIMITS.reply_timeout + 0.3
    (message,) = server_messages(caplog)
    assert "no reply to 'GET VARIABLE CALLGUARD_TRUNK' within 0.5 s" in message
    assert "uniqueid 1.2" in message


async def test_stop_waits_for_session(start_server):
    release = asyncio.Event()

    async def check(channel: AGIChannel) -> None:
        await channel.get_variable("CALLGUARD_TRUNK")
        await release.wait()
        await channel.set_variable("CALLGUARD_RESULT", "ALLOW")

    server, host, port = await start_server({"check": check})
    call = asyncio.create_task(run_fastagi_call(host, port, CAPTURED_CALL))
    while server.active_sessions == 0:
        await asyncio.sleep(0.01)

    stop = asyncio.create_task(server.stop(grace=5))
    await asyncio.sleep(0.1)
    assert not stop.done()
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)

    release.set()
    await asyncio.wait_for(stop, 2)
    result = await call
    assert result.variables == {"CALLGUARD_RESULT": "ALLOW"}
    assert server.active_sessions == 0


@pytest.mark.parametrize("turns", range(6))
async def test_stop_serves_queued_connection(start_server, turns):
    # Asterisk connected and sent its block just before the server stopped:
    # still in the kernel's accept queue (no turn of the loop), or accepted
    # by asyncio and not yet seen by the server. The call gets its result
    # variables, not a reset.
    server, host, port = await start_server({"check": quick_check})
    client = socket.create_connection((host, port))
    client.sendall(encode_environment(CAPTURED_CALL.fastagi_environment(host, port)))
    client.setblocking(False)
    for _ in range(turns):
        await asyncio.sleep(0)

    stop = asyncio.ensure_future(server.stop(grace=5))
    reader, writer = await asyncio.open_connection(sock=client)
    session = AsteriskAGISession(CAPTURED_CALL, reader, writer, on_hangup=lambda: None)
    await asyncio.wait_for(session.serve(), 5)
    writer.close()
    await asyncio.wait_for(stop, 5)

    assert session.variables == {"CALLGUARD_RESULT": "ALLOW", "CALLGUARD_REASON": ""}
    assert server.active_sessions == 0


async def test_stop_cancels_after_grace(start_server, caplog):
    cancelled = []

    async def check(channel: AGIChannel) -> None:
        await channel.get_variable("CALLGUARD_TRUNK")
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(channel.uniqueid)
            raise

    server, host, port = await start_server({"check": check})
    call = asyncio.create_task(run_fastagi_call(host, port, CAPTURED_CALL))
    while server.active_sessions == 0:
        await asyncio.sleep(0.01)

    started = time.monotonic()
    await server.stop(grace=0.2)
    result = await call

    assert 0.15 < time.monotonic() - started < 1
    assert cancelled == ["1796397405.1"]
    assert result.closed_by_server
    assert server.active_sessions == 0
    messages = server_messages(caplog)
    assert any("cancelling 1 sessions still running after 0.2 s" in m for m in messages)
    assert any("session cancelled by the server stopping" in m for m in messages)


async def test_start_twice(start_server):
    server, _, _ = await start_server({"check": quick_check})

    with pytest.raises(RuntimeError, match="already started"):
        await server.start()


def test_rejection_log(caplog):
    caplog.set_level(logging.WARNING, SERVER_LOG)
    rejections = RejectionLog(max_addresses=2)

    for peer in ["10.0.0.1:1", "10.0.0.1:2", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.4:1"]:
        rejections.record(peer.split(":")[0], peer)
    assert len(caplog.records) == 2

    rejections.summarise()
    assert [r.getMessage() for r in caplog.records[2:]] == [
        "rejected 1 more FastAGI connections from 10.0.0.1: the address is not in "
        "allowed_clients",
        "rejected 2 more FastAGI connections from other addresses not in "
        "allowed_clients",
    ]

    # 10.0.0.2 had nothing new and is forgotten; its next rejection is logged in full.
    rejections.summarise()
    rejections.record("10.0.0.2", "10.0.0.2:9")
    assert (
        caplog.records[-1]
        .getMessage()
        .startswith("rejected FastAGI connection from 10.0.0.2:9")
    )
    assert len(caplog.records) == 5


@pytest.mark.skipif(importlib.util.find_spec("uvloop") is None,
                    reason="uvloop is not installed")
def test_reset_before_accept_on_uvloop(caplog):
    # uvloop reads the peer name with getpeername() when the connection is
    # made, which fails once the peer has reset it. The client connects from
    # the loop's own thread, so the server accepts no connection until all of
    # them are reset.
    import uvloop

    caplog.set_level(logging.WARNING, SERVER_LOG)

    async def reset_connections(count: int) -> int:
        server = FastAGIServer({"check": quick_check}, "127.0.0.1", 0, limits=LIMITS)
        await server.start()
        host, port = server.sockets[0]
        block = encode_environment(CAPTURED_CALL.fastagi_environment(host, port))
        try:
            for _ in range(count):
                with socket.create_connection((host, port)) as client:
                    client.sendall(block)
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
            await asyncio.sleep(0.3)
            return server.active_sessions
        finally:
            await server.stop(grace=0.1)

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        active = runner.run(reset_connections(5))

    messages = server_messages(caplog)
    assert active == 0
    assert not [m for m in messages if "allowed_clients" in m]
    assert messages
    assert all(m.startswith("FastAGI connection closed: the peer reset it before")
               for m in messages)


def load_bare_server():
    path = Path(__file__).parent.parent / "benchmarks" / "bare_fastagi.py"
    spec = importlib.util.spec_from_file_location("bare_fastagi", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_bare_server():
    bare = load_bare_server()
    server = await bare.start_bare_server("127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    try:
        result = await run_fastagi_call(host, port, CAPTURED_CALL)
    finally:
        server.close()
        await server.wait_closed()

    assert result.variables == dict(bare.DECISION)
    assert result.closed_by_server


async def test_port_in_use():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        server = FastAGIServer(
            {"check": quick_check}, "127.0.0.1", sock.getsockname()[1]
        )

        with pytest.raises(OSError):
            await server.start()


async def session_from(source: str, host: str, port: int) -> list[bytes]:
    """Play one captured session from the loopback address ``source``; return the
    commands the server sent before it closed."""
    reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
    block = FIXTURES.joinpath("fastagi-raw-inbound.bin").read_bytes().split(b"\n\n")[0]
    writer.write(block + b"\n\n")
    commands = []
    try:
        while line := await asyncio.wait_for(reader.readline(), 5):
            commands.append(line)
            writer.write(b"200 result=1\n")
    except ConnectionResetError:
        pass  # a refused client's block meets a closed socket
    writer.close()
    return commands


async def test_listed_client_served_while_other_refused(start_server):
    route = Recorder()
    _, host, port = await start_server(
        {"check": route}, allowed_clients=[ip_network("127.0.0.2/32")]
    )

    served, refused = await asyncio.gather(
        session_from("127.0.0.2", host, port), session_from("127.0.0.1", host, port)
    )

    assert served
    assert refused == []
    assert len(route.channels) == 1
    assert route.channels[0].peer.startswith("127.0.0.2:")


async def test_bad_session_warnings_bounded(start_server, caplog):
    caplog.set_level(logging.INFO, SERVER_LOG)
    _, host, port = await start_server({"check": Recorder()})

    await asyncio.gather(*(
        wait_closed_by_server(host, port, b"GET / HTTP/1.1\r\n\r\n") for _ in range(30)
    ))
    await asyncio.sleep(0.05)

    messages = server_messages(caplog, logging.INFO)
    assert len(messages) == PEER_FAILURE_BURST
    assert all("invalid AGI environment line" in m for m in messages)


async def test_unknown_script_warnings_bounded(start_server, caplog):
    caplog.set_level(logging.INFO, SERVER_LOG)
    _, host, port = await start_server({"check": Recorder()})

    await asyncio.gather(*(
        run_fastagi_call(host, port, AGICall("0044123456", script=f"nosuch{n}"))
        for n in range(30)
    ))
    await asyncio.sleep(0.05)

    messages = server_messages(caplog, logging.INFO)
    assert len(messages) == PEER_FAILURE_BURST
    assert all("unknown FastAGI script 'nosuch" in m for m in messages)


async def until_sessions(server: FastAGIServer, accept, timeout: float = 5.0) -> None:
    """Wait until ``accept`` takes the number of sessions that ``server`` has open."""
    async with asyncio.timeout(timeout):
        while not accept(server.active_sessions):
            await asyncio.sleep(0.01)


async def test_sessions_over_the_cap_closed_at_once(start_server, caplog):
    route = Recorder()
    # The stalled peers send nothing, so a block timeout far longer than the
    # test keeps their sessions open until they close.
    limits = AGILimits(max_line=4096, max_variables=128, block_timeout=30, reply_timeout=0.5)
    server, host, port = await start_server({"check": route}, max_sessions=2, limits=limits)
    stalled = [socket.create_connection((host, port)) for _ in range(2)]
    try:
        await until_sessions(server, lambda count: count == 2)
        assert await wait_closed_by_server(host, port) < 5.0

        stalled.pop().close()
        await until_sessions(server, lambda count: count < 2)
        result = await run_fastagi_call(host, port, CAPTURED_CALL)
        assert result.variables["CALLGUARD_RESULT"] == "ALLOW"
    finally:
        for sock in stalled:
            sock.close()
    assert any("sessions are open, the limit" in r.getMessage() for r in caplog.records)


async def test_environment_over_its_byte_limit_rejected(start_server):
    route = Recorder()
    limits = AGILimits(max_line=4096, max_variables=128, max_block=8192,
                       block_timeout=0.5, reply_timeout=0.5)
    _, host, port = await start_server({"check": route}, limits=limits)
    call = AGICall(extension="01632960123",
                   variables={"CALLGUARD_TRUNK": "trunk-a"},
                   arguments=tuple("a" * 3000 for _ in range(3)))

    result = await run_fastagi_call(host, port, call)

    assert route.channels == []
    assert "CALLGUARD_RESULT" not in result.variables
