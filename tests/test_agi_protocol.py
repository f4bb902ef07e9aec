"""The AGI protocol layer against captured Asterisk traffic and an emulated Asterisk."""

import ast
import asyncio
import socket
from pathlib import Path

import pytest

from callguard.agi.protocol import (
    MAX_COMMAND_BYTES,
    AGIChannel,
    AGICommandError,
    AGIError,
    AGIHangup,
    AGILimits,
    AGIProtocolError,
    AGIReply,
    AGITimeout,
    parse_reply,
    quote_argument,
    read_environment,
    script_name,
)
from callguard.agi.connection import MAX_QUEUED_LINES, NO_LINE, AGIConnection
from emulator.fastagi import AGICall, AsteriskAGISession, parse_agi_arguments

FIXTURES = Path(__file__).parent / "fixtures" / "asterisk"
LIMITS = AGILimits(
    max_line=4096, max_variables=128, block_timeout=0.5, reply_timeout=0.5
)


class Pipe:
    """Both ends of a real socket pair: ours speaks AGI, the peer plays Asterisk."""

    async def open(self, limits: AGILimits = LIMITS) -> "Pipe":
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        _, self.connection = await loop.connect_accepted_socket(
            lambda: AGIConnection(limits.max_line), sock=ours
        )
        self.peer_reader, self.peer_writer = await asyncio.open_connection(sock=theirs)
        self.channel = AGIChannel(self.connection, {}, limits, "test")
        return self

    async def feed(self, data: bytes, *, eof: bool = False) -> None:
        self.peer_writer.write(data)
        await self.peer_writer.drain()
        if eof:
            self.peer_writer.write_eof()

    async def sent_lines(self) -> list[str]:
        """Close our side and return the lines that reached the peer."""
        await self.channel.close()
        data = await self.peer_reader.read()
        return data.decode().splitlines()

    async def close(self) -> None:
        self.connection.close()
        self.peer_writer.close()
        try:
            await self.peer_writer.wait_closed()
        except ConnectionError:
            pass


@pytest.fixture
async def pipe():
    opened = await Pipe().open()
    yield opened
    await opened.close()


@pytest.fixture
async def asterisk(pipe):
    """An emulated Asterisk channel answering on the peer end of ``pipe``."""
    call = AGICall("0044123456", variables={"CALLGUARD_TRUNK": "trunk-a"})

    def send_hangup():
        pipe.peer_writer.write(b"HANGUP\n")

    session = AsteriskAGISession(call, pipe.peer_reader, pipe.peer_writer, send_hangup)
    task = asyncio.create_task(session.serve())
    yield session
    await pipe.channel.close()
    await asyncio.wait_for(task, 1)


# --- quoting -------------------------------------------------------------------

QUOTING = [
    # value, quoted form, and the value that Asterisk's parser returns for it
    ("ALLOW", '"ALLOW"', "ALLOW"),
    ("", '""', ""),
    ("two words", '"two words"', "two words"),
    ('say "hi"', '"say \\"hi\\""', 'say "hi"'),
    ("back\\slash", '"back\\\\slash"', "back\\slash"),
    ("trailing\\", '"trailing\\\\"', "trailing\\"),
    ('\\"', '"\\\\\\""', '\\"'),
    ('x"\nEXEC Hangup', '"x\\"EXEC Hangup"', 'x"EXEC Hangup'),
    ("a\r\nb", '"ab"', "ab"),
    ("nul\x00bell\x07tab\tdel\x7fnel\x85", '"nulbelltabdelnel"', "nulbelltabdelnel"),
    ("Zürich ☎ 東京", '"Zürich ☎ 東京"', "Zürich ☎ 東京"),
    ("lone\udc80surrogate", '"lonesurrogate"', "lonesurrogate"),
]


@pytest.mark.parametrize("value, quoted, parsed", QUOTING)
def test_quote_argument(value, quoted, parsed):
    assert quote_argument(value) == quoted

    argv = parse_agi_arguments(f"SET VARIABLE X {quoted}")
    assert argv == ["SET", "VARIABLE", "X", parsed]


@pytest.mark.parametrize("value, quoted, parsed", QUOTING)
async def test_set_variable_roundtrip(pipe, asterisk, value, quoted, parsed):
    await pipe.channel.set_variable("CALLGUARD_REASON", value)
    await pipe.channel.set_variable("CALLGUARD_RESULT", "DENY")

    assert asterisk.variables == {
        "CALLGUARD_REASON": parsed,
        "CALLGUARD_RESULT": "DENY",
    }
    assert len(asterisk.commands) == 2


def test_parse_arguments_like_asterisk():
    # Cases follow parse_args() in res_agi.c.
    cases = [
        ("GET VARIABLE X", ["GET", "VARIABLE", "X"]),
        ('VERBOSE   "a  b"\t2', ["VERBOSE", "a  b", "2"]),
        ('SET VARIABLE X ab"c d"e', ["SET", "VARIABLE", "X", "abc de"]),
        ("SET VARIABLE X a\\ b", ["SET", "VARIABLE", "X", "a b"]),
        ('SET VARIABLE X ""', ["SET", "VARIABLE", "X", ""]),
        ("", []),
    ]
    for line, argv in cases:
        assert parse_agi_arguments(line) == argv, line


# --- environment ----------------------------------------------------------------


def transcript_sessions(name: str) -> list[dict]:
    """Split a capture transcript into sessions: environment pairs and exchanges.

    Each exchange is a command line and the lines that Asterisk sent after it.
    """
    sessions: list[dict] = []
    for raw in (FIXTURES / name).read_text().splitlines():
        if raw.startswith(("=== FastAGI connection", "=== classic AGI run")):
            sessions.append({"env": [], "exchanges": [], "in_block": True})
            continue
        if not raw.startswith((">> ", "<< ")):
            continue

        payload = ast.literal_eval(raw[3:].removeprefix("(trailing) "))
        text = payload.decode() if isinstance(payload, bytes) else payload
        text = text.removesuffix("\n")
        session = sessions[-1]
        if raw.startswith(">> "):
            session["exchanges"].append((text, []))
        elif not session["in_block"]:
            session["exchanges"][-1][1].append(text)
        elif text == "":
            session["in_block"] = False
        else:
            session["env"].append(tuple(text.split(": ", 1)))
    return sessions


def raw_connections() -> list[bytes]:
    data = (FIXTURES / "fastagi-raw-inbound.bin").read_bytes()
    marker = b"agi_network: yes\n"
    return [marker + chunk for chunk in data.split(marker)[1:]]


def test_transcript_and_capture_agree():
    sessions = transcript_sessions("fastagi-transcript.txt")
    connections = raw_connections()

    assert len(sessions) == 6
    assert len(connections) == 6
    for session, raw in zip(sessions, connections):
        env = "".join(f"{k}: {v}\n" for k, v in session["env"]) + "\n"
        replies = "".join(f"{r}\n" for _, lines in session["exchanges"] for r in lines)
        assert raw == (env + replies).encode()


@pytest.mark.parametrize("index", range(6))
async def test_environment_from_capture(pipe, index):
    session = transcript_sessions("fastagi-transcript.txt")[index]
    await pipe.feed(raw_connections()[index], eof=True)

    env = await read_environment(pipe.connection, LIMITS)

    assert list(env.items()) == session["env"]
    assert env["agi_version"] == "22.10.1"
    assert env["agi_accountcode"] == ""
    assert script_name(env) == session["env"][1][1]


COMMAND_NAMES = [
    "GET FULL VARIABLE",
    "GET VARIABLE",
    "SET VARIABLE",
    "VERBOSE",
    "EXEC",
    "HANGUP",
]


@pytest.mark.parametrize("index", range(6))
async def test_replies_from_capture(pipe, index):
    session = transcript_sessions("fastagi-transcript.txt")[index]
    await pipe.feed(raw_connections()[index], eof=True)
    env = await read_environment(pipe.connection, LIMITS)
    channel = AGIChannel(pipe.connection, env, LIMITS)

    for command, lines in session["exchanges"]:
        name = next(n for n in COMMAND_NAMES if command.startswith(n))
        arguments = parse_agi_arguments(command)[len(name.split()) :]
        reply = await channel.command(name, *arguments)
        assert reply == parse_reply(lines[0]), command
    assert not channel.hung_up

    # Sessions 4 and 5 end with Asterisk's trailing HANGUP line, then the end of
    # the stream.
    with pytest.raises(AGIHangup):
        await channel.command("NOOP")
    assert channel.hung_up


def test_classic_environment_shape():
    (session,) = transcript_sessions("classic-agi-transcript.txt")
    env = dict(session["env"])
    names = [name for name, _ in session["env"]]

    assert names[0] == "agi_request"
    assert names[-3:] == ["agi_threadid", "agi_arg_1", "agi_arg_2"]
    assert script_name(env) == "echo.agi"


REPLIES = [
    ("200 result=1 (trunk-a)", AGIReply(200, 1, "trunk-a", "")),
    ("200 result=0", AGIReply(200, 0, None, "")),
    ("200 result=1", AGIReply(200, 1, None, "")),
    ("200 result=-1", AGIReply(200, -1, None, "")),
    ("200 result=-2", AGIReply(200, -2, None, "")),
    (
        "200 result=1 (Local/0044123456@outbound-00000000;2)",
        AGIReply(200, 1, "Local/0044123456@outbound-00000000;2", ""),
    ),
    (
        "200 result=1 (1796397405.1||0044123456)",
        AGIReply(200, 1, "1796397405.1||0044123456", ""),
    ),
    ("200 result=1 ()", AGIReply(200, 1, "", "")),
    ("200 result=1 (a (b) c)", AGIReply(200, 1, "a (b) c", "")),
    ("200 result=1 (x) y)", AGIReply(200, 1, "x) y", "")),
    ("200 result=0 endpos=24807", AGIReply(200, 0, None, "endpos=24807")),
    ("200 result=1 (timeout) endpos=1234", AGIReply(200, 1, "timeout", "endpos=1234")),
    (
        "200 result=1 (digit) digit=5 endpos=80",
        AGIReply(200, 1, "digit", "digit=5 endpos=80"),
    ),
    ("200 result=0 Gosub complete", AGIReply(200, 0, None, "Gosub complete")),
]


@pytest.mark.parametrize("line, reply", REPLIES)
def test_parse_reply(line, reply):
    assert parse_reply(line) == reply


@pytest.mark.parametrize(
    "line",
    [
        "200",
        "200 result=",
        "200 result=x",
        "200 result=1.5",
        "200 result=1 (open",
        "200 result=\u0661",
        "200 result=" + "9" * 21,
        "200 result=" + "9" * 5000,
        "garbage",
        "",
    ],
)
def test_parse_reply_invalid(line):
    with pytest.raises(AGIProtocolError):
        parse_reply(line)


BAD_BLOCKS = [
    (b"agi_network: yes\nnot a variable\n\n", AGIProtocolError),
    (b"agi_network: yes\nagi_channel:no-space\n\n", AGIProtocolError),
    (b"channel: PJSIP/1\n\n", AGIProtocolError),
    (b"agi_network: yes\nHANGUP\n\n", AGIProtocolError),
    (b"agi_x: " + b"y" * 5000 + b"\n\n", AGIProtocolError),
    (b"".join(b"agi_v%d: x\n" % i for i in range(129)) + b"\n", AGIProtocolError),
    # Asterisk writes the block from C strings, so a NUL byte never comes from it.
    (b"agi_network: yes\nagi_arg_1: 0\x0090\n\n", AGIProtocolError),
    (b"agi_network: yes\nagi_channel: PJSIP/1", AGIHangup),
    (b"agi_network: yes\n", AGIHangup),
    (b"", AGIHangup),
]


@pytest.mark.parametrize("data, error", BAD_BLOCKS)
async def test_environment_rejected(pipe, data, error):
    await pipe.feed(data, eof=True)

    with pytest.raises(error):
        await read_environment(pipe.connection, LIMITS)


async def test_environment_leaves_next_line(pipe):
    await pipe.feed(b"agi_network: yes\nagi_arg_1: 999\n\n200 result=1\n")

    env = await read_environment(pipe.connection, LIMITS)

    assert env == {"agi_network": "yes", "agi_arg_1": "999"}
    assert pipe.connection.readline_nowait() == "200 result=1"


async def test_environment_byte_by_byte(pipe):
    block = b"agi_network: yes\r\nagi_arg_1: 01632 960000\r\n\r\n"

    async def trickle():
        for byte in block:
            await pipe.feed(bytes([byte]))
            await asyncio.sleep(0)

    task = asyncio.create_task(trickle())
    env = await read_environment(pipe.connection, LIMITS)
    await task

    assert env == {"agi_network": "yes", "agi_arg_1": "01632 960000"}


async def test_environment_lines_before_nul_read(pipe):
    await pipe.feed(b"agi_network: yes\nagi_arg_1: 0\x0090\n\n")
    lines = pipe.connection.block_nowait()
    while lines is NO_LINE:
        await asyncio.sleep(0.01)
        lines = pipe.connection.block_nowait()

    assert lines == ["agi_network: yes"]
    with pytest.raises(AGIProtocolError, match="NUL"):
        pipe.connection.block_nowait()


BLOCK_READINGS = [
    b"agi_network: yes\nagi_arg_1: 01632 960000\n\n",
    b"agi_network: yes\r\nagi_arg_1: 999\r\n\r\n200 result=1\r\n",
    b"agi_callerid: \xff\xfe caf\xc3\xa9\nagi_arg_1: \xe2\x82\n\nHANGUP\n",
    b"agi_network: yes\nagi_arg_1: 0\x0090\n\n",
    b"agi_network: yes\nagi_channel: PJSIP/1",
    b"\n200 result=0\n",
    b"agi_a: \r\r\n\n",
]


async def read_lines_singly(connection: AGIConnection) -> list:
    """Return what readline_nowait() gives up to the first empty line, NO_LINE
    or error included."""
    lines = []
    while True:
        try:
            line = connection.readline_nowait()
        except AGIError as exc:
            return lines + [type(exc)]
        lines.append(line)
        if line in ("", None) or line is NO_LINE:
            return lines


async def read_lines_as_block(connection: AGIConnection) -> list:
    """Return what block_nowait() gives until the first empty line, NO_LINE or error."""
    lines = []
    while True:
        try:
            block = connection.block_nowait()
        except AGIError as exc:
            return lines + [type(exc)]
        if block is None or block is NO_LINE:
            return lines + [block]
        lines.extend(block)
        if block[-1] == "":
            return lines


@pytest.mark.parametrize("data", BLOCK_READINGS)
async def test_block_read_as_lines(data):
    readings = []
    for read in (read_lines_singly, read_lines_as_block):
        opened = await Pipe().open()
        try:
            await opened.feed(data, eof=True)
            while not opened.connection._eof:
                await asyncio.sleep(0.01)
            first = await read(opened.connection)
            readings.append((first, opened.connection.readline_nowait()
                             if first[-1] == "" else None))
        finally:
            await opened.close()

    assert readings[0] == readings[1]


async def test_environment_limits_pass(pipe):
    lines = b"".join(b"agi_v%d: x\n" % i for i in range(127))
    long_line = b"agi_long: " + b"y" * (4096 - len(b"agi_long: \n")) + b"\n"
    await pipe.feed(lines + long_line + b"\n")

    env = await read_environment(pipe.connection, LIMITS)

    assert len(env) == 128
    assert len(env["agi_long"]) == 4096 - len(b"agi_long: \n")


async def test_environment_limit_counts_bytes(pipe):
    # 17 lines of 1,300 three-byte characters: about 22,000 characters, but
    # over 66,000 bytes, so the block is over max_block.
    lines = b"".join(b"agi_v%d: " % i + "\u20ac".encode() * 1300 + b"\n" for i in range(17))
    await pipe.feed(lines + b"\n")

    with pytest.raises(AGIProtocolError, match="65536 bytes"):
        await read_environment(pipe.connection, LIMITS)


def block_of_size(size: int) -> bytes:
    """Return agi_* lines of ``size`` bytes in all, newlines included, and the empty line."""
    lines = []
    left = size
    while left:
        length = min(left, 4000)
        name = b"agi_v%d: " % len(lines)
        lines.append(name + b"y" * (length - len(name) - 1) + b"\n")
        left -= length
    return b"".join(lines) + b"\n"


@pytest.mark.parametrize("size, fits", [(LIMITS.max_block, True), (LIMITS.max_block + 1, False)])
async def test_environment_block_size_boundary(pipe, size, fits):
    await pipe.feed(block_of_size(size))

    if fits:
        env = await read_environment(pipe.connection, LIMITS)
        assert sum(len(name) + 2 + len(value) + 1 for name, value in env.items()) == size
    else:
        with pytest.raises(AGIProtocolError, match="65536 bytes"):
            await read_environment(pipe.connection, LIMITS)


async def test_environment_crlf(pipe):
    await pipe.feed(b"agi_network: yes\r\nagi_accountcode: \r\nagi_arg_1: a b\r\n\r\n")

    env = await read_environment(pipe.connection, LIMITS)

    assert env == {"agi_network": "yes", "agi_accountcode": "", "agi_arg_1": "a b"}


async def test_environment_timeout(pipe):
    await pipe.feed(b"agi_network: yes\nagi_network_script: check\n")
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(AGITimeout):
        await read_environment(pipe.connection, LIMITS)
    assert loop.time() - started < LIMITS.block_timeout + 0.3


async def test_environment_timeout_whole_block(pipe):
    # A peer that trickles lines still has block_timeout for the whole block.
    async def trickle():
        for i in range(20):
            await pipe.feed(b"agi_v%d: x\n" % i)
            await asyncio.sleep(0.05)

    task = asyncio.create_task(trickle())
    with pytest.raises(AGITimeout):
        await read_environment(pipe.connection, LIMITS)
    task.cancel()


@pytest.mark.parametrize(
    "env, script, arguments",
    [
        ({"agi_network_script": "check", "agi_request": "agi://h/check"}, "check", []),
        ({"agi_network_script": "check?debug=1"}, "check", []),
        ({"agi_request": "agi://127.0.0.1:4573/check/"}, "check", []),
        ({"agi_request": "agi://127.0.0.1:4573"}, "", []),
        ({"agi_request": "/var/lib/asterisk/agi-bin/echo.agi"}, "echo.agi", []),
        ({"agi_arg_1": "a", "agi_arg_2": "", "agi_arg_3": "c"}, "", ["a", "", "c"]),
        ({"agi_arg_1": "a", "agi_arg_3": "c"}, "", ["a"]),
        ({"agi_arg_2": "b"}, "", []),
    ],
)
def test_channel_properties(env, script, arguments):
    channel = AGIChannel(None, env, LIMITS)

    assert channel.script == script
    assert channel.arguments == arguments
    assert channel.uniqueid == ""


# --- commands against an emulated Asterisk ----------------------------------------


async def test_commands_as_captured(pipe, asterisk):
    channel = pipe.channel

    assert await channel.get_variable("CALLGUARD_TRUNK") == "trunk-a"
    assert await channel.get_variable("NOSUCHVAR") is None
    assert await channel.get_full_variable("${CHANNEL}") == "PJSIP/1001-00000012"
    assert (
        await channel.get_full_variable(
            "${CHANNEL(uniqueid)}|${CALLERID(num)}|${EXTEN}"
        )
        == "1796397405.1||0044123456"
    )
    await channel.verbose("checking call", 3)
    await channel.set_variable("CALLGUARD_RESULT", "ALLOW")

    assert asterisk.commands == [
        "GET VARIABLE CALLGUARD_TRUNK",
        "GET VARIABLE NOSUCHVAR",
        'GET FULL VARIABLE "${CHANNEL}"',
        'GET FULL VARIABLE "${CHANNEL(uniqueid)}|${CALLERID(num)}|${EXTEN}"',
        'VERBOSE "checking call" 3',
        'SET VARIABLE CALLGUARD_RESULT "ALLOW"',
    ]
    assert asterisk.verbose == ["checking call"]
    assert asterisk.variables == {"CALLGUARD_RESULT": "ALLOW"}


async def test_exec_joins_options(pipe, asterisk):
    reply = await pipe.channel.exec("Set", "CALLGUARD_LIMIT=60", "x")

    assert reply == AGIReply(200, 0, None, "")
    assert asterisk.commands == ['EXEC Set "CALLGUARD_LIMIT=60,x"']
    assert asterisk.variables == {"CALLGUARD_LIMIT": "60,x"}


async def test_exec_unknown_application(pipe, asterisk):
    reply = await pipe.channel.exec("NoSuchApp")

    assert reply.result == -2


async def test_exec_hangup(pipe, asterisk):
    reply = await pipe.channel.exec("Hangup", "21")

    assert reply == AGIReply(200, -1, None, "")
    assert await pipe.channel.get_variable("CALLGUARD_TRUNK") == "trunk-a"
    assert pipe.channel.hung_up


async def test_hangup_command(pipe, asterisk):
    await pipe.channel.hangup()
    assert not pipe.channel.hung_up

    with pytest.raises(AGIHangup):
        await pipe.channel.hangup()
    assert pipe.channel.hung_up


async def test_hangup_before_reply(pipe, asterisk):
    asterisk.hangup_before_command = 2
    channel = pipe.channel

    await channel.set_variable("A", "1")
    assert not channel.hung_up
    assert await channel.get_variable("CALLGUARD_TRUNK") == "trunk-a"
    assert channel.hung_up
    await channel.set_variable("B", "2")

    assert asterisk.variables == {"A": "1", "B": "2"}


async def test_dead_channel_511(pipe, asterisk):
    asterisk.hangup_before_command = 1
    asterisk.reply_511_after_hangup = True

    with pytest.raises(AGIHangup, match="dead"):
        await pipe.channel.set_variable("A", "1")
    assert pipe.channel.hung_up

    # A 511 leaves the session in step: the next command is still answered.
    with pytest.raises(AGIHangup, match="dead"):
        await pipe.channel.get_variable("A")
    assert len(asterisk.commands) == 2


async def test_unknown_command_510(pipe, asterisk):
    with pytest.raises(AGICommandError) as caught:
        await pipe.channel.command("NO SUCH COMMAND", "x")

    assert caught.value.code == 510
    assert caught.value.text == "510 Invalid or unknown command"
    assert await pipe.channel.get_variable("CALLGUARD_TRUNK") == "trunk-a"


async def test_usage_520_multiline(pipe, asterisk):
    with pytest.raises(AGICommandError) as caught:
        await pipe.channel.command("SET VARIABLE", "ONLY_NAME")

    lines = caught.value.text.split("\n")
    assert caught.value.code == 520
    assert lines[0] == "520-Invalid command syntax.  Proper usage follows:"
    assert lines[1] == "Usage: SET VARIABLE <variablename> <value>"
    assert lines[-1] == "520 End of proper usage."
    assert await pipe.channel.get_variable("CALLGUARD_TRUNK") == "trunk-a"


async def test_usage_520_limit_counts_bytes(pipe):
    usage = "".join(f" Usage line {i}: " + "\u20ac" * 1300 + "\n" for i in range(17))
    await pipe.feed(
        b"520-Invalid command syntax.  Proper usage follows:\n"
        + usage.encode()
        + b"520 End of proper usage.\n"
    )

    with pytest.raises(AGIProtocolError, match="65536 bytes"):
        await pipe.channel.command("GET VARIABLE")


async def test_usage_520_single_line(pipe):
    await pipe.feed(
        b"520 Invalid command syntax.  Proper usage not available.\n"
        b"200 result=1 (v)\n"
    )

    with pytest.raises(AGICommandError) as caught:
        await pipe.channel.command("GET VARIABLE")
    assert caught.value.code == 520
    assert (
        caught.value.text == "520 Invalid command syntax.  Proper usage not available."
    )
    assert await pipe.channel.get_variable("X") == "v"


async def test_trying_then_reply(pipe):
    await pipe.feed(b"100 result=0 Trying...\n200 result=0 Gosub complete\n")

    reply = await pipe.channel.command("GOSUB", "sub", "s", "1")

    assert reply == AGIReply(200, 0, None, "Gosub complete")


@pytest.mark.parametrize(
    "data, error",
    [
        (b"garbage\n", AGIProtocolError),
        (b"300 result=1\n", AGIProtocolError),
        (b"200 result=one\n", AGIProtocolError),
        (b"200 result=1 (" + b"x" * 5000 + b")\n", AGIProtocolError),
        (b"200 result=1 (gam\x00ma)\n", AGIProtocolError),
        (b"520-Invalid command syntax.\n" + b"usage\n" * 300, AGIProtocolError),
        # Fewer lines than the limit, but more bytes than max_block.
        (b"520-Invalid command syntax.\n" + (b"u" * 1000 + b"\n") * 100, AGIProtocolError),
    ],
)
async def test_bad_reply_breaks_session(pipe, data, error):
    await pipe.feed(data + b"200 result=1\n")

    with pytest.raises(error):
        await pipe.channel.get_variable("X")
    with pytest.raises(error, match="unusable"):
        await pipe.channel.get_variable("X")


async def test_eof_waiting_for_reply(pipe):
    await pipe.feed(b"200 result=1 (partial", eof=True)

    with pytest.raises(AGIHangup):
        await pipe.channel.get_variable("X")
    assert pipe.channel.hung_up
    with pytest.raises(AGIHangup, match="unusable"):
        await pipe.channel.set_variable("X", "1")


async def test_reply_timeout(pipe):
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(AGITimeout):
        await pipe.channel.get_variable("X")
    assert loop.time() - started < LIMITS.reply_timeout + 0.3

    # A late reply must not be taken for the next command's reply.
    await pipe.feed(b"200 result=1 (late)\n")
    with pytest.raises(AGITimeout, match="unusable"):
        await pipe.channel.get_variable("Y")


@pytest.mark.parametrize("name", ["", "A B", "A\nB", "CDR(userfield)", "X;Y", "Ä"])
async def test_invalid_variable_name(pipe, name):
    with pytest.raises(ValueError, match="invalid channel variable name"):
        await pipe.channel.set_variable(name, "1")
    with pytest.raises(ValueError, match="invalid channel variable name"):
        await pipe.channel.get_variable(name)


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.command("GET VARIABLE\nHANGUP"),
        lambda c: c.command("GET  VARIABLE"),
        lambda c: c.command(),
        lambda c: c.exec("Set;Hangup"),
        lambda c: c.verbose("x", 0),
        lambda c: c.verbose("x", 5),
    ],
)
async def test_invalid_command_rejected(pipe, call):
    with pytest.raises(ValueError):
        await call(pipe.channel)

    assert await pipe.sent_lines() == []


async def test_command_length_limit(pipe, asterisk):
    overhead = len('SET VARIABLE X ""\n')
    await pipe.channel.set_variable("X", "v" * (MAX_COMMAND_BYTES - overhead))

    with pytest.raises(ValueError, match="longer than Asterisk's limit"):
        await pipe.channel.set_variable("X", "v" * (MAX_COMMAND_BYTES - overhead + 1))
    assert len(asterisk.commands) == 1
    assert len(asterisk.variables["X"]) == MAX_COMMAND_BYTES - overhead


async def test_close_twice(pipe):
    await pipe.channel.close()
    await pipe.channel.close()


async def test_close_after_peer_gone(pipe):
    pipe.peer_writer.transport.abort()
    await asyncio.sleep(0)

    await pipe.channel.close()


def test_limits_validated():
    with pytest.raises(ValueError, match="block_timeout"):
        AGILimits(block_timeout=0)
    with pytest.raises(ValueError, match="max_line"):
        AGILimits(max_line=-1)


async def test_reply_arriving_byte_by_byte(pipe):
    async def trickle():
        for byte in b"200 result=1 (slow)\r\n":
            await pipe.feed(bytes([byte]))
            await asyncio.sleep(0)

    task = asyncio.create_task(trickle())
    assert await pipe.channel.get_variable("X") == "slow"
    await task


async def test_line_at_the_limit_split_over_writes(pipe):
    value = b"y" * (LIMITS.max_line - len(b"agi_long: \n"))
    await pipe.feed(b"agi_long: " + value[:1000])
    await asyncio.sleep(0.01)
    await pipe.feed(value[1000:] + b"\n\n")

    env = await read_environment(pipe.connection, LIMITS)

    assert env["agi_long"] == value.decode()


async def test_unfinished_line_over_the_limit_split_over_writes(pipe):
    await pipe.feed(b"agi_long: " + b"y" * 3000)
    await asyncio.sleep(0.01)
    await pipe.feed(b"y" * 3000)

    with pytest.raises(AGIProtocolError, match="longer than the limit of 4096 bytes"):
        await read_environment(pipe.connection, LIMITS)


async def test_reading_pauses_while_lines_queue_up():
    pipe = await Pipe().open()
    try:
        lines = MAX_QUEUED_LINES * 4
        await pipe.feed(b"".join(b"agi_v%d: x\n" % i for i in range(lines)))
        await asyncio.sleep(0.05)
        transport = pipe.connection.transport
        # The kernel keeps what the connection does not take.
        assert not transport.is_reading()

        deadline = asyncio.get_running_loop().time() + 1.0
        received = [await pipe.connection.readline(deadline) for _ in range(lines)]
        assert received == [f"agi_v{i}: x" for i in range(lines)]
        assert transport.is_reading()
    finally:
        await pipe.close()


async def test_write_times_out_when_peer_reads_nothing(pipe):
    pipe.connection.transport.set_write_buffer_limits(high=1024)
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(TimeoutError):
        await pipe.connection.write(b"x" * 20_000_000, started + 0.2)
    assert loop.time() - started < 1.0


# --- set_variables: one command after another from the transport's callback ---

FIVE = [("CALLGUARD_RESULT", "ALLOW"), ("CALLGUARD_REASON", "ok"),
        ("CALLGUARD_CATEGORY", "geographic"), ("CALLGUARD_MAXSECS", "3600"),
        ("CALLGUARD_RATE", "0.0100")]


async def test_set_variables_roundtrip(pipe, asterisk):
    await pipe.channel.set_variables(FIVE)

    assert asterisk.variables == dict(FIVE)
    assert pipe.channel.answered == 5
    assert [command.split()[2] for command in asterisk.commands] == [n for n, _ in FIVE]


async def test_set_variables_then_other_commands(pipe, asterisk):
    await pipe.channel.set_variables(FIVE[:2])

    assert await pipe.channel.get_variable("CALLGUARD_TRUNK") == "trunk-a"
    assert pipe.channel.answered == 3


async def test_set_variables_none(pipe):
    await pipe.channel.set_variables([])

    assert pipe.channel.answered == 0
    assert await pipe.sent_lines() == []


async def test_set_variables_hangup_line(pipe, asterisk):
    asterisk.hangup_before_command = 2

    await pipe.channel.set_variables(FIVE)

    assert pipe.channel.hung_up
    assert asterisk.variables == dict(FIVE)
    assert pipe.channel.answered == 5


async def test_set_variables_stop_at_511(pipe, asterisk):
    asterisk.hangup_before_command = 3
    asterisk.reply_511_after_hangup = True

    with pytest.raises(AGIHangup, match="dead"):
        await pipe.channel.set_variables(FIVE)

    assert pipe.channel.hung_up
    assert pipe.channel.answered == 2
    assert len(asterisk.commands) == 3
    # As after set_variable(), a 511 leaves the session in step.
    with pytest.raises(AGIHangup, match="dead"):
        await pipe.channel.get_variable("A")
    assert len(asterisk.commands) == 4


async def test_set_variables_stop_at_520(pipe):
    await pipe.feed(
        b"200 result=1\n"
        b"520-Invalid command syntax.  Proper usage follows:\n"
        b"Usage: SET VARIABLE <variablename> <value>\n"
        b"520 End of proper usage.\n"
        b"200 result=1 (v)\n"
    )

    with pytest.raises(AGICommandError) as caught:
        await pipe.channel.set_variables(FIVE)

    assert caught.value.code == 520
    assert caught.value.text.split("\n")[-1] == "520 End of proper usage."
    assert pipe.channel.answered == 1
    assert await pipe.channel.get_variable("X") == "v"
    sent = await pipe.sent_lines()
    assert sent == ['SET VARIABLE CALLGUARD_RESULT "ALLOW"',
                    'SET VARIABLE CALLGUARD_REASON "ok"', "GET VARIABLE X"]


async def test_set_variables_trying_lines(pipe):
    await pipe.feed(b"100 result=0 Trying...\n200 result=1\n100 result=0 Trying...\n"
                    b"200 result=1\n")

    await pipe.channel.set_variables(FIVE[:2])

    assert pipe.channel.answered == 2


async def test_set_variables_timeout(pipe):
    await pipe.feed(b"200 result=1\n")
    loop = asyncio.get_running_loop()
    started = loop.time()

    with pytest.raises(AGITimeout, match="CALLGUARD_REASON"):
        await pipe.channel.set_variables(FIVE)

    # The second command has its own reply_timeout from when it was sent.
    assert loop.time() - started < LIMITS.reply_timeout + 0.3
    assert pipe.channel.answered == 1
    await pipe.feed(b"200 result=1\n")
    with pytest.raises(AGITimeout, match="unusable"):
        await pipe.channel.set_variables(FIVE)


async def test_set_variables_timeout_counts_per_command(pipe):
    async def answer_slowly():
        for _ in range(3):
            await asyncio.sleep(LIMITS.reply_timeout * 0.6)
            await pipe.feed(b"200 result=1\n")

    answering = asyncio.create_task(answer_slowly())
    await pipe.channel.set_variables(FIVE[:3])
    await answering

    assert pipe.channel.answered == 3


async def test_set_variables_eof(pipe):
    await pipe.feed(b"200 result=1\n200 result=1 (part", eof=True)

    with pytest.raises(AGIHangup):
        await pipe.channel.set_variables(FIVE)

    assert pipe.channel.hung_up
    assert pipe.channel.answered == 1
    with pytest.raises(AGIHangup, match="unusable"):
        await pipe.channel.set_variable("X", "1")


@pytest.mark.parametrize("data", [b"garbage\n", b"200 result=1 (" + b"x" * 5000 + b")\n",
                                  b"200 result=" + b"9" * 100 + b"\n"])
async def test_set_variables_bad_reply(pipe, data):
    await pipe.feed(data)

    with pytest.raises(AGIProtocolError):
        await pipe.channel.set_variables(FIVE)

    assert pipe.channel.answered == 0
    with pytest.raises(AGIProtocolError, match="unusable"):
        await pipe.channel.set_variables(FIVE)


async def test_set_variables_checks_before_sending(pipe):
    with pytest.raises(ValueError, match="longer than Asterisk's limit"):
        await pipe.channel.set_variables([("A", "1"), ("B", "x" * 3000)])
    with pytest.raises(ValueError, match="invalid channel variable name"):
        await pipe.channel.set_variables([("A", "1"), ("B C", "2")])

    assert await pipe.sent_lines() == []


async def lines_queued(pipe: Pipe, count: int) -> None:
    """Wait until ``count`` lines the peer sent wait unread on our side."""
    async with asyncio.timeout(5):
        while len(pipe.connection._lines) < count:
            await asyncio.sleep(0)


async def test_start_variables_on_sent_before_queued_replies(pipe):
    # Replies that are already queued when the batch starts are read after
    # on_sent, so on_sent runs with no reply counted yet.
    await pipe.feed(b"200 result=1\n" * 2)
    await lines_queued(pipe, 2)
    events = []

    pipe.channel.start_variables(
        FIVE[:2], lambda error: events.append(("done", error, pipe.channel.answered)),
        None, lambda: events.append(("sent", pipe.channel.answered)))

    assert events == [("sent", 0), ("done", None, 2)]
    assert await pipe.sent_lines() == ['SET VARIABLE CALLGUARD_RESULT "ALLOW"',
                                       'SET VARIABLE CALLGUARD_REASON "ok"']


async def test_start_variables_on_sent_before_failed_write(pipe):
    pipe.connection.transport.abort()
    async with asyncio.timeout(5):
        while not pipe.connection._lost:
            await asyncio.sleep(0)
    events = []

    pipe.channel.start_variables(
        FIVE, lambda error: events.append(("done", type(error))),
        None, lambda: events.append(("sent",)))

    assert events == [("sent",), ("done", AGIHangup)]


async def test_start_variables_on_sent_with_nothing_to_set(pipe):
    events = []

    pipe.channel.start_variables([], lambda error: events.append(("done", error)),
                                 None, lambda: events.append(("sent",)))

    assert events == [("sent",), ("done", None)]


async def test_raising_on_sent_stops_batch(pipe):
    await pipe.feed(b"200 result=1\n")
    await lines_queued(pipe, 1)
    done = []

    def broken() -> None:
        raise RuntimeError("the announcement broke")

    with pytest.raises(RuntimeError, match="announcement"):
        pipe.channel.start_variables(FIVE, done.append, None, broken)

    # The first command went out; nothing more is read or reported.
    assert done == []
    assert pipe.channel.answered == 0


async def test_assignment_lines_kept_within_bound(pipe):
    from callguard.agi import channel as channel_module

    lines = pipe.channel._assignment_lines([("CALLGUARD_RESULT", "ALLOW")])
    again = pipe.channel._assignment_lines([("CALLGUARD_RESULT", "ALLOW")])
    for number in range(channel_module.MAX_CACHED_ASSIGNMENTS + 10):
        pipe.channel._assignment_lines([("CALLGUARD_MAXSECS", str(number))])

    assert lines == again == [b'SET VARIABLE CALLGUARD_RESULT "ALLOW"\n']
    assert len(channel_module._assignment_cache) <= channel_module.MAX_CACHED_ASSIGNMENTS


async def test_assignment_that_fails_checks_fails_every_time(pipe):
    for _ in range(2):
        with pytest.raises(ValueError, match="invalid channel variable name"):
            pipe.channel._assignment_lines([("B C", "2")])
        with pytest.raises(ValueError, match="longer than Asterisk's limit"):
            pipe.channel._assignment_lines([("B", "x" * 3000)])

    # A value with a quote and a line break is sent escaped, from the cache too.
    for _ in range(2):
        assert pipe.channel._assignment_lines([("A", 'say "hi"\nHANGUP')]) == [
            b'SET VARIABLE A "say \\"hi\\"HANGUP"\n']


async def test_assignment_cache_keeps_plain_short_strings_only(pipe):
    from callguard.agi import channel as channel_module

    class Renamed(str):
        def __format__(self, spec):
            return "OTHER_NAME"

    channel_module._assignment_cache.clear()
    pipe.channel._assignment_lines([("CALLGUARD_RESULT", "ALLOW")])
    renamed = pipe.channel._assignment_lines([(Renamed("CALLGUARD_RESULT"), "ALLOW")])
    long_value = "\x01" * 10_000

    assert renamed == [b'SET VARIABLE OTHER_NAME "ALLOW"\n']
    assert pipe.channel._assignment_lines([("A", long_value)]) == [b'SET VARIABLE A ""\n']
    assert list(channel_module._assignment_cache) == [("CALLGUARD_RESULT", "ALLOW")]


async def test_watch_before_transport_made():
    # The connection takes the running loop when it has none of its own yet.
    connection = AGIConnection(LIMITS.max_line)
    fired = []

    connection.watch(asyncio.get_running_loop().time(), lambda: fired.append(True))
    await asyncio.sleep(0.01)

    assert fired == [True]
    assert connection.loop is asyncio.get_running_loop()


@pytest.mark.parametrize("data, shown", [
    (b"x" * 99 + b"\n", "a line of 100 bytes"),
    (b"x" * 100, "100 bytes read so far without an end of line"),
])
async def test_long_line_error_names_length(data, shown):
    pipe = await Pipe().open(AGILimits(max_line=64))
    try:
        await pipe.feed(data)

        with pytest.raises(AGIProtocolError) as caught:
            await pipe.connection.readline(asyncio.get_running_loop().time() + 1)

        assert str(caught.value) == f"line longer than the limit of 64 bytes: {shown}"
    finally:
        await pipe.close()
