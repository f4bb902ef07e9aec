"""The Asterisk side of an AGI session, for tests.

The environment blocks and replies follow captures from Asterisk 22.10.1
(tests/fixtures/asterisk/fastagi-transcript.txt and classic-agi-transcript.txt).
run_fastagi_call() connects to a FastAGI server like Asterisk's AGI() with an
``agi://`` URL. run_classic_agi() runs an agi-bin program on stdin and stdout
like AGI() with a path. Both reply to the commands they receive as res_agi does.
"""

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field

ASTERISK_VERSION = "22.10.1"
AGI_BIN = "/var/lib/asterisk/agi-bin"
THREAD_ID = "139655639484096"

# res_agi.c reads a command into a buffer of AGI_BUF_LEN = 2048 bytes and
# parses at most MAX_ARGS = 128 arguments.
AGI_BUF_LEN = 2048
MAX_ARGS = 128

REPLY_INVALID = "510 Invalid or unknown command"
REPLY_DEAD = "511 Command Not Permitted on a dead channel or intercept routine"
REPLY_USAGE_START = "520-Invalid command syntax.  Proper usage follows:"
REPLY_USAGE_END = "520 End of proper usage."
HANGUP_LINE = "HANGUP"

# callingpres 67 (0x43, number unavailable) is what Asterisk sent for a channel
# without caller ID, 0 (allowed) for one with a number.
PRESENTATION_UNAVAILABLE = "67"
PRESENTATION_ALLOWED = "0"
UNKNOWN = "unknown"

# Shortened usage texts: Asterisk sends the command's whole documentation.
_USAGE = {
    ("GET", "VARIABLE"): ["Usage: GET VARIABLE <variablename>"],
    ("GET", "FULL", "VARIABLE"): [
        "Usage: GET FULL VARIABLE <expression> [<channelname>]",
        "Evaluates <expression>, with variables and functions substituted.",
    ],
    ("SET", "VARIABLE"): [
        "Usage: SET VARIABLE <variablename> <value>",
        "Sets a variable to the current channel.",
    ],
    ("VERBOSE",): ["Usage: VERBOSE <message> <level>"],
    ("EXEC",): ["Usage: EXEC <application> <options>"],
    ("HANGUP",): ["Usage: HANGUP [<channelname>]"],
}

# Commands whose entry in res_agi.c's command table has dead = 0, so Asterisk
# replies 511 to them once the channel is dead. The others still work.
_LIVE_ONLY = {("HANGUP",), ("ANSWER",)}


@dataclass
class AGICall:
    """What the emulated channel looks like to the AGI program."""

    extension: str
    channel: str = "PJSIP/1001-00000012"
    uniqueid: str = "1796397405.1"
    callerid: str = UNKNOWN
    context: str = "outbound"
    arguments: tuple[str, ...] = ()
    variables: dict[str, str] = field(default_factory=dict)
    script: str = "check"
    accountcode: str = ""
    priority: int = 4

    @property
    def channel_type(self) -> str:
        return self.channel.partition("/")[0]

    def base_environment(self, request: str) -> list[tuple[str, str]]:
        """Return the agi_* pairs from agi_request on, in Asterisk's order."""
        pres = (
            PRESENTATION_UNAVAILABLE
            if self.callerid == UNKNOWN
            else PRESENTATION_ALLOWED
        )
        pairs = [
            ("agi_request", request),
            ("agi_channel", self.channel),
            ("agi_language", "en"),
            ("agi_type", self.channel_type),
            ("agi_uniqueid", self.uniqueid),
            ("agi_version", ASTERISK_VERSION),
            ("agi_callerid", self.callerid),
            ("agi_calleridname", UNKNOWN),
            ("agi_callingpres", pres),
            ("agi_callingani2", "0"),
            ("agi_callington", "0"),
            ("agi_callingtns", "0"),
            ("agi_dnid", UNKNOWN),
            ("agi_rdnis", UNKNOWN),
            ("agi_context", self.context),
            ("agi_extension", self.extension),
            ("agi_priority", str(self.priority)),
            ("agi_enhanced", "0.0"),
            ("agi_accountcode", self.accountcode),
            ("agi_threadid", THREAD_ID),
        ]
        for number, value in enumerate(self.arguments, start=1):
            pairs.append((f"agi_arg_{number}", value))
        return pairs

    def fastagi_environment(self, host: str, port: int) -> list[tuple[str, str]]:
        shown_host = f"[{host}]" if ":" in host else host
        url = f"agi://{shown_host}:{port}/{self.script}"
        network = [("agi_network", "yes"), ("agi_network_script", self.script)]
        return network + self.base_environment(url)

    def classic_environment(self, program: str) -> list[tuple[str, str]]:
        return self.base_environment(f"{AGI_BIN}/{program}")


@dataclass
class AGIResult:
    """What happened on the emulated channel during one AGI session."""

    variables: dict[str, str]  # set by SET VARIABLE or EXEC Set
    commands: list[str]  # command lines received, without the newline
    closed_by_server: bool  # the AGI program ended the session
    elapsed: float  # seconds from connecting to the end of the session
    hung_up: bool = False
    verbose: list[str] = field(default_factory=list)


@dataclass
class ClassicAGIResult(AGIResult):
    returncode: int | None = None
    stderr: str = ""


def encode_environment(pairs: list[tuple[str, str]]) -> bytes:
    lines = [f"{name}: {value}\n" for name, value in pairs]
    return ("".join(lines) + "\n").encode()


def parse_agi_arguments(line: str) -> list[str]:
    """Split a command line into arguments as parse_args() in res_agi.c does.

    A ``"`` toggles quoting, a backslash makes the next character literal, and
    spaces or tabs outside quotes separate arguments.
    """
    args: list[str] = []
    current: list[str] | None = None
    quoted = escaped = False

    for ch in line:
        if ch == '"' and not escaped:
            quoted = not quoted
            if quoted and current is None and len(args) < MAX_ARGS - 1:
                current = []
            continue
        if ch in " \t" and not quoted and not escaped:
            if current is not None:
                args.append("".join(current))
                current = None
            continue
        if ch == "\\" and not escaped:
            escaped = True
            continue

        if current is None:
            if len(args) >= MAX_ARGS - 1:
                continue
            current = []
        current.append(ch)
        escaped = False

    if current is not None:
        args.append("".join(current))
    return args


class AsteriskAGISession:
    """Replies to AGI commands on one stream pair as res_agi does.

    ``hangup_before_command`` (1-based) hangs the channel up just before the
    reply to that command: ``on_hangup`` is called, which sends the HANGUP
    line for FastAGI or SIGHUP for classic AGI. After the hang-up, HANGUP and
    ANSWER get 511, or every command does with ``reply_511_after_hangup``.
    """

    def __init__(
        self,
        call: AGICall,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_hangup: Callable[[], None],
        *,
        hangup_before_command: int | None = None,
        reply_511_after_hangup: bool = False,
    ):
        self.call = call
        self.reader = reader
        self.writer = writer
        self.on_hangup = on_hangup
        self.hangup_before_command = hangup_before_command
        self.reply_511_after_hangup = reply_511_after_hangup
        self.channel_variables = dict(call.variables)
        self.variables: dict[str, str] = {}
        self.commands: list[str] = []
        self.verbose: list[str] = []
        self.hung_up = False
        self._hangup_after_reply = False

    async def serve(self) -> None:
        """Reply to commands until the program closes the connection."""
        while True:
            try:
                line = await self._read_command()
            except ConnectionError:
                return
            if line is None:
                return

            self.commands.append(line)
            if len(self.commands) == self.hangup_before_command:
                self._hang_up()
            replies = self._answer(parse_agi_arguments(line))
            try:
                self.writer.write("".join(r + "\n" for r in replies).encode())
                if self._hangup_after_reply:
                    self._hangup_after_reply = False
                    self.on_hangup()
                await self.writer.drain()
            except ConnectionError:
                return

    async def _read_command(self) -> str | None:
        # Asterisk reads at most AGI_BUF_LEN - 1 bytes; the rest of a longer
        # line becomes the next command.
        data = b""
        while not data.endswith(b"\n") and len(data) < AGI_BUF_LEN - 1:
            chunk = await self.reader.read(1)
            if not chunk:
                return None if not data else data.decode(errors="replace")
            data += chunk
        return data.decode(errors="replace").removesuffix("\n")

    def _hang_up(self) -> None:
        if not self.hung_up:
            self.hung_up = True
            self.on_hangup()

    def _hang_up_after_reply(self) -> None:
        # HANGUP and EXEC Hangup: Asterisk replies first, then detects the hang-up.
        if not self.hung_up:
            self.hung_up = True
            self._hangup_after_reply = True

    def _answer(self, argv: list[str]) -> list[str]:
        command = self._find_command(argv)
        if command is None:
            return [REPLY_INVALID]
        if self.hung_up and (self.reply_511_after_hangup or command in _LIVE_ONLY):
            return [REPLY_DEAD]

        args = argv[len(command) :]
        reply = self._run(command, args)
        if reply is None:
            return [REPLY_USAGE_START, *_USAGE[command], REPLY_USAGE_END]
        return reply

    @staticmethod
    def _find_command(argv: list[str]) -> tuple[str, ...] | None:
        words = tuple(word.upper() for word in argv)
        known = sorted([*_USAGE, ("ANSWER",)], key=len, reverse=True)
        for command in known:
            if words[: len(command)] == command:
                return command
        return None

    def _run(self, command: tuple[str, ...], args: list[str]) -> list[str] | None:
        match command:
            case ("GET", "VARIABLE"):
                if len(args) != 1:
                    return None
                value = self._lookup(args[0])
                return (
                    ["200 result=0"] if value is None else [f"200 result=1 ({value})"]
                )
            case ("GET", "FULL", "VARIABLE"):
                if len(args) not in (1, 2):
                    return None
                if len(args) == 2 and args[1] != self.call.channel:
                    return ["200 result=0"]
                return [f"200 result=1 ({self._substitute(args[0])})"]
            case ("SET", "VARIABLE"):
                if len(args) != 2:
                    return None
                self._set(args[0], args[1])
                return ["200 result=1"]
            case ("VERBOSE",):
                if not args:
                    return None
                self.verbose.append(args[0])
                return ["200 result=1"]
            case ("EXEC",):
                if not args:
                    return None
                return self._exec(args[0], args[1] if len(args) > 1 else "")
            case ("HANGUP",):
                if len(args) > 1:
                    return None
                if args and args[0] != self.call.channel:
                    return ["200 result=-1"]
                self._hang_up_after_reply()
                return ["200 result=1"]
            case ("ANSWER",):
                return ["200 result=0"]
        raise AssertionError(f"no emulation for {command}")

    def _exec(self, application: str, options: str) -> list[str]:
        match application.lower():
            case "hangup":
                self._hang_up_after_reply()
                return ["200 result=-1"]
            case "set":
                name, _, value = options.partition("=")
                self._set(name, value)
                return ["200 result=0"]
            case "noop":
                return ["200 result=0"]
        return ["200 result=-2"]

    def _set(self, name: str, value: str) -> None:
        self.variables[name] = value
        self.channel_variables[name] = value

    def _lookup(self, name: str) -> str | None:
        builtins = {
            "CHANNEL": self.call.channel,
            "UNIQUEID": self.call.uniqueid,
            "CHANNEL(uniqueid)": self.call.uniqueid,
            "EXTEN": self.call.extension,
            "CONTEXT": self.call.context,
            "ACCOUNTCODE": self.call.accountcode,
            "CALLERID(num)": (
                "" if self.call.callerid == UNKNOWN else self.call.callerid
            ),
        }
        if name in self.channel_variables:
            return self.channel_variables[name]
        return builtins.get(name)

    def _substitute(self, expression: str) -> str:
        return re.sub(r"\$\{([^}]*)\}", lambda m: self._lookup(m[1]) or "", expression)


async def run_fastagi_call(
    host: str,
    port: int,
    call: AGICall,
    *,
    hangup_before_command: int | None = None,
    reply_511_after_hangup: bool = False,
    stall_block: bool = False,
    close_after_lines: int | None = None,
    timeout: float = 10.0,
) -> AGIResult:
    """Connect to a FastAGI server as Asterisk does and play one call.

    ``stall_block`` sends half of the environment block and waits for the
    server to close. ``close_after_lines`` sends that many lines of the block
    and then closes the connection.
    """
    started = time.monotonic()
    reader, writer = await asyncio.open_connection(host, port)
    block = encode_environment(call.fastagi_environment(host, port))
    lines = block.splitlines(keepends=True)

    def send_hangup() -> None:
        writer.write(f"{HANGUP_LINE}\n".encode())

    session = AsteriskAGISession(
        call,
        reader,
        writer,
        send_hangup,
        hangup_before_command=hangup_before_command,
        reply_511_after_hangup=reply_511_after_hangup,
    )
    try:
        async with asyncio.timeout(timeout):
            if close_after_lines is not None:
                writer.write(b"".join(lines[:close_after_lines]))
                await writer.drain()
                closed_by_server = False
            elif stall_block:
                writer.write(b"".join(lines[: len(lines) // 2]))
                await writer.drain()
                await _wait_for_close(reader)
                closed_by_server = True
            else:
                writer.write(block)
                await writer.drain()
                await session.serve()
                closed_by_server = True
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass

    return AGIResult(
        variables=session.variables,
        commands=session.commands,
        closed_by_server=closed_by_server,
        elapsed=time.monotonic() - started,
        hung_up=session.hung_up,
        verbose=session.verbose,
    )


async def _wait_for_close(reader: asyncio.StreamReader) -> None:
    try:
        while await reader.read(4096):
            pass
    except ConnectionError:
        return


async def run_classic_agi(
    program: str,
    call: AGICall,
    *,
    env: dict[str, str] | None = None,
    hangup_before_command: int | None = None,
    reply_511_after_hangup: bool = False,
    timeout: float = 10.0,
) -> ClassicAGIResult:
    """Run an agi-bin program as Asterisk's AGI() does and answer its commands.

    The program gets the block on stdin and its commands' replies after it.
    A hang-up sends SIGHUP, as Asterisk does for classic AGI.
    """
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        program,
        *call.arguments,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None

    session = AsteriskAGISession(
        call,
        process.stdout,
        process.stdin,
        lambda: process.send_signal(signal.SIGHUP),
        hangup_before_command=hangup_before_command,
        reply_511_after_hangup=reply_511_after_hangup,
    )
    stderr_task = asyncio.create_task(process.stderr.read())
    try:
        async with asyncio.timeout(timeout):
            block = call.classic_environment(os.path.basename(program))
            process.stdin.write(encode_environment(block))
            await process.stdin.drain()
            await session.serve()
            returncode = await process.wait()
            stderr = await stderr_task
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    finally:
        process.stdin.close()

    return ClassicAGIResult(
        variables=session.variables,
        commands=session.commands,
        closed_by_server=True,
        elapsed=time.monotonic() - started,
        hung_up=session.hung_up,
        verbose=session.verbose,
        returncode=returncode,
        stderr=stderr.decode(errors="replace"),
    )
