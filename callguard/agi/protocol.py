"""The AGI protocol spoken by Asterisk's res_agi, over a pair of asyncio streams.

Asterisk opens a session with a block of ``agi_name: value`` lines ended by an
empty line, then reads one command line at a time and sends a reply to each:
``200 result=<n>`` with an optional `` (<data>)`` and trailing text such as
``endpos=<n>``, or ``510``, ``511`` or ``520`` (single- or multi-line). When the
channel hangs up, FastAGI sees a bare ``HANGUP`` line, which may arrive before
the reply to a pending command or after it.
"""

import asyncio
import logging
import posixpath
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Commands, as Asterisk's res_agi names them.
GET_VARIABLE = "GET VARIABLE"
GET_FULL_VARIABLE = "GET FULL VARIABLE"
SET_VARIABLE = "SET VARIABLE"
VERBOSE = "VERBOSE"
EXEC = "EXEC"
HANGUP = "HANGUP"

# Reply lines and codes.
HANGUP_LINE = "HANGUP"
CODE_SUCCESS = 200
CODE_TRYING = 100
CODE_INVALID_COMMAND = 510
CODE_DEAD_CHANNEL = 511
CODE_USAGE = 520
REPLY_INVALID_COMMAND = "510 Invalid or unknown command"
REPLY_DEAD_CHANNEL = "511 Command Not Permitted on a dead channel or intercept routine"
REPLY_USAGE_START = "520-Invalid command syntax.  Proper usage follows:"
REPLY_USAGE_END = "520 End of proper usage."

# Environment keys.
AGI_PREFIX = "agi_"
AGI_SEPARATOR = ": "
AGI_NETWORK_SCRIPT = "agi_network_script"
AGI_REQUEST = "agi_request"
AGI_UNIQUEID = "agi_uniqueid"
AGI_CHANNEL = "agi_channel"
AGI_ARG_PREFIX = "agi_arg_"

# Asterisk reads a command into a buffer of AGI_BUF_LEN = 2048 bytes (res_agi.c)
# and takes the rest of a longer line as a second command, so a line of more
# than 2047 bytes, newline included, is never sent.
MAX_COMMAND_BYTES = 2047

# Upper bound on the usage lines of one multi-line 520 reply. Asterisk's longest
# usage texts are a few dozen lines.
MAX_USAGE_LINES = 256

# Seconds that close() waits for buffered output before it aborts the connection.
CLOSE_TIMEOUT = 1.0

_NAME = re.compile(r"[A-Za-z0-9_]+")
_COMMAND_WORDS = re.compile(r"[A-Za-z]+( [A-Za-z]+)*")
_STATUS = re.compile(r"(\d{3})([ -])")
# The data is matched greedily because a variable's value may contain ") ".
# Extra text never starts with "(", so an unclosed bracket is an invalid reply.
_SUCCESS = re.compile(
    r"200 result=(?P<result>-?\d+)(?: \((?P<data>.*)\))?(?: (?P<extra>[^(].*))?"
)
# Unicode categories dropped from arguments: control characters, which include
# CR and LF, and lone surrogates, which cannot be encoded as UTF-8.
_DROPPED_CATEGORIES = frozenset({"Cc", "Cs"})


class AGIError(Exception):
    """A problem of the AGI peer or the connection, as opposed to a bug."""


class AGIProtocolError(AGIError):
    """The peer sent garbage, an over-long line, an oversized block or a bad reply."""


class AGIHangup(AGIError):
    """The channel is gone: a 511 reply or the end of the stream.

    A HANGUP line alone does not raise this. It sets AGIChannel.hung_up, and
    commands that Asterisk allows on a dead channel still work.
    """


class AGICommandError(AGIError):
    """Asterisk rejected a command with a 5xx reply such as 510 or 520."""

    def __init__(self, code: int, text: str):
        super().__init__(f"Asterisk rejected the command: {text}")
        self.code = code
        self.text = text


class AGITimeout(AGIError):
    """A read from the peer did not complete in time."""


@dataclass(frozen=True, slots=True)
class AGIReply:
    """A ``200`` reply: the result, the text in brackets and the rest of the line."""

    code: int
    result: int
    data: str | None
    extra: str


@dataclass(frozen=True)
class AGILimits:
    """Bounds on what a peer may send, so that a bad one cannot hold a session."""

    max_line: int = 4096  # bytes per line, newline included
    max_variables: int = 128  # agi_* lines in the environment block
    block_timeout: float = 5.0  # seconds to read the whole environment block
    reply_timeout: float = 5.0  # seconds to send one command and read its reply

    def __post_init__(self):
        for name in ("max_line", "max_variables", "block_timeout", "reply_timeout"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"AGILimits.{name} must be positive, got {value!r}")


def quote_argument(value: str) -> str:
    """Quote one argument for Asterisk's AGI argument parser.

    The result is wrapped in double quotes, with ``"`` and ``\\`` escaped by a
    backslash. Control characters (CR and LF included) and lone surrogates are
    dropped, so that no value can end the command line or start a second one.
    """
    kept = "".join(
        ch for ch in value if unicodedata.category(ch) not in _DROPPED_CATEGORIES
    )
    escaped = kept.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def parse_reply(line: str) -> AGIReply:
    """Parse a ``200 result=<n> [(<data>)] [<extra>]`` line, without its newline.

    NOTE: the result must be an integer. GET DATA replies with the digits that
    the caller pressed, which may include ``*`` or be empty, and so cannot be
    parsed here.
    """
    match = _SUCCESS.fullmatch(line)
    if match is None:
        raise AGIProtocolError(f"invalid AGI reply {line!r}: expected 200 result=<n>")

    return AGIReply(
        code=CODE_SUCCESS,
        result=int(match["result"]),
        data=match["data"],
        extra=match["extra"] or "",
    )


async def read_line(reader: asyncio.StreamReader, max_line: int) -> str | None:
    """Read one line and strip its ``\\n`` or ``\\r\\n``; None at a clean end of stream.

    Raises AGIProtocolError for a line longer than ``max_line`` bytes and
    AGIHangup when the stream ends in the middle of a line.
    """
    try:
        raw = await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            return None
        raise AGIHangup("the connection closed in the middle of a line") from None
    except asyncio.LimitOverrunError:
        raise AGIProtocolError(
            f"line longer than the limit of {max_line} bytes"
        ) from None

    if len(raw) > max_line:
        raise AGIProtocolError(
            f"line of {len(raw)} bytes is longer than the limit of {max_line} bytes"
        )
    text = raw.decode("utf-8", errors="replace")
    return text.removesuffix("\n").removesuffix("\r")


async def read_environment(
    reader: asyncio.StreamReader, limits: AGILimits
) -> dict[str, str]:
    """Read the ``agi_*`` block that opens a session, up to its empty line.

    Raises AGIProtocolError for a line that is not ``agi_<name>: <value>``, a
    line over ``limits.max_line`` or more than ``limits.max_variables`` lines,
    AGIHangup when the stream ends first, and AGITimeout when the whole block
    takes longer than ``limits.block_timeout``.
    """
    env: dict[str, str] = {}
    count = 0
    try:
        async with asyncio.timeout(limits.block_timeout):
            while True:
                line = await read_line(reader, limits.max_line)
                if line is None:
                    raise AGIHangup(
                        f"the connection closed after {count} lines of the "
                        "AGI environment, before its empty line"
                    )
                if line == "":
                    return env

                count += 1
                if count > limits.max_variables:
                    raise AGIProtocolError(
                        f"AGI environment has more than {limits.max_variables} lines"
                    )
                name, value = _split_variable(line)
                env[name] = value
    except TimeoutError:
        raise AGITimeout(
            f"AGI environment not complete after {limits.block_timeout} s "
            f"({count} lines read)"
        ) from None


def _split_variable(line: str) -> tuple[str, str]:
    name, separator, value = line.partition(AGI_SEPARATOR)
    if not separator or not name.startswith(AGI_PREFIX):
        shown = line if len(line) <= 80 else line[:80] + "..."
        raise AGIProtocolError(
            f"invalid AGI environment line {shown!r}: expected 'agi_<name>: <value>'"
        )
    return name, value


def validate_name(name: str) -> str:
    """Return ``name`` if it is a channel variable name of letters, digits and ``_``."""
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"invalid channel variable name {name!r}: use only letters, digits and '_'"
        )
    return name


def script_name(env: Mapping[str, str]) -> str:
    """Return the script that a session requests, without a query string.

    FastAGI sends ``agi_network_script`` (``check`` for
    ``agi://127.0.0.1:4573/check``). Classic AGI only sends ``agi_request``,
    the path of the program, whose base name is used.
    """
    if AGI_NETWORK_SCRIPT in env:
        raw = env[AGI_NETWORK_SCRIPT]
    else:
        request = env.get(AGI_REQUEST, "")
        _, scheme_separator, location = request.partition("://")
        if scheme_separator:
            raw = location.partition("/")[2]
        else:
            raw = posixpath.basename(request)
    return raw.partition("?")[0].strip("/")


class AGIChannel:
    """One AGI session over a pair of asyncio streams (FastAGI socket, or stdin/stdout).

    Commands run one at a time. After a timeout, a protocol error or the end of
    the stream, the session is out of step with Asterisk and every further
    command raises at once.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        env: Mapping[str, str],
        limits: AGILimits,
        peer: str = "",
    ):
        self.env = env
        self.peer = peer
        self.hung_up = False
        self._reader = reader
        self._writer = writer
        self._limits = limits
        self._lock = asyncio.Lock()
        self._broken: AGIError | None = None

    @property
    def uniqueid(self) -> str:
        return self.env.get(AGI_UNIQUEID, "")

    @property
    def channel(self) -> str:
        return self.env.get(AGI_CHANNEL, "")

    @property
    def script(self) -> str:
        return script_name(self.env)

    @property
    def arguments(self) -> list[str]:
        """The ``agi_arg_1``, ``agi_arg_2``, ... values, up to the first missing one."""
        values = []
        while f"{AGI_ARG_PREFIX}{len(values) + 1}" in self.env:
            values.append(self.env[f"{AGI_ARG_PREFIX}{len(values) + 1}"])
        return values

    async def command(self, *words: str) -> AGIReply:
        """Send one command and return its ``200`` reply.

        The first word is the command itself (``GET VARIABLE``) and is sent as
        is. Every further word is quoted with quote_argument. Raises
        AGICommandError on a 5xx reply, AGIHangup on 511 or the end of the
        stream, AGITimeout and AGIProtocolError.
        """
        if not words:
            raise ValueError("command() needs at least the command name")
        if not _COMMAND_WORDS.fullmatch(words[0]):
            raise ValueError(
                f"invalid AGI command {words[0]!r}: use words of letters separated "
                "by single spaces, such as 'GET VARIABLE'"
            )
        return await self._request(
            " ".join([words[0], *map(quote_argument, words[1:])])
        )

    async def get_variable(self, name: str) -> str | None:
        """Return the value of channel variable ``name``, or None if it is not set."""
        reply = await self._request(f"{GET_VARIABLE} {validate_name(name)}")
        return reply.data if reply.result == 1 else None

    async def get_full_variable(self, expression: str) -> str | None:
        """Return ``expression`` with Asterisk's ``${...}`` substitution applied."""
        reply = await self._request(f"{GET_FULL_VARIABLE} {quote_argument(expression)}")
        return reply.data if reply.result == 1 else None

    async def set_variable(self, name: str, value: str) -> None:
        await self._request(
            f"{SET_VARIABLE} {validate_name(name)} {quote_argument(value)}"
        )

    async def verbose(self, message: str, level: int = 1) -> None:
        """Write ``message`` to the Asterisk console at verbose ``level`` (1 to 4)."""
        if not 1 <= level <= 4:
            raise ValueError(f"invalid verbose level {level!r}: use 1 to 4")
        await self._request(f"{VERBOSE} {quote_argument(message)} {level}")

    async def exec(self, application: str, *options: str) -> AGIReply:
        """Run a dialplan application and return Asterisk's reply.

        The result is -2 if the application does not exist.

        Asterisk passes one argument string to the application, so the options
        are joined with ``,``, the dialplan's argument separator.
        """
        if not _NAME.fullmatch(application):
            raise ValueError(
                f"invalid application name {application!r}: use only letters, "
                "digits and '_'"
            )
        line = f"{EXEC} {application}"
        if options:
            line += " " + quote_argument(",".join(options))
        return await self._request(line)

    async def hangup(self) -> None:
        """Hang up the channel. Asterisk then sends a HANGUP line."""
        await self._request(HANGUP)

    async def close(self) -> None:
        """Close the connection, which ends the AGI session for Asterisk."""
        await close_writer(self._writer, self.peer)

    async def _request(self, line: str) -> AGIReply:
        encoded = line.encode("utf-8") + b"\n"
        if len(encoded) > MAX_COMMAND_BYTES:
            raise ValueError(
                f"AGI command of {len(encoded)} bytes is longer than Asterisk's "
                f"limit of {MAX_COMMAND_BYTES}: {line[:60]!r}...; shorten the value"
            )

        async with self._lock:
            if self._broken is not None:
                raise type(self._broken)(
                    "the AGI session is unusable after an earlier error: "
                    f"{self._broken}"
                )
            try:
                async with asyncio.timeout(self._limits.reply_timeout):
                    await self._send(encoded)
                    return await self._read_reply()
            except TimeoutError:
                self._broken = AGITimeout(
                    f"no reply to {line[:60]!r} within {self._limits.reply_timeout} s"
                )
                raise self._broken from None
            except AGIProtocolError as exc:
                self._broken = exc
                raise

    def _lost(self, error: AGIHangup) -> AGIHangup:
        self.hung_up = True
        self._broken = error
        return error

    async def _send(self, encoded: bytes) -> None:
        try:
            self._writer.write(encoded)
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            raise self._lost(AGIHangup(f"the connection was lost: {exc}")) from None

    async def _read_reply(self) -> AGIReply:
        while True:
            line = await self._read_reply_line()

            if line == HANGUP_LINE:
                self.hung_up = True
                continue
            status = _STATUS.match(line)
            if status is None:
                raise AGIProtocolError(f"invalid AGI reply {line!r}")

            code = int(status[1])
            if code == CODE_TRYING:
                continue
            if code == CODE_SUCCESS:
                return parse_reply(line)
            if code == CODE_DEAD_CHANNEL:
                self.hung_up = True
                raise AGIHangup(f"the channel is dead: {line}")
            if code == CODE_USAGE and status[2] == "-":
                raise AGICommandError(code, await self._read_usage(line))
            if 500 <= code <= 599 and status[2] == " ":
                raise AGICommandError(code, line)
            raise AGIProtocolError(f"invalid AGI reply {line!r}")

    async def _read_usage(self, first: str) -> str:
        lines = [first]
        while len(lines) <= MAX_USAGE_LINES:
            line = await self._read_reply_line()
            lines.append(line)
            if line.startswith(f"{CODE_USAGE} "):
                return "\n".join(lines)
        raise AGIProtocolError(
            f"520 usage reply longer than {MAX_USAGE_LINES} lines without its end"
        )

    async def _read_reply_line(self) -> str:
        try:
            line = await read_line(self._reader, self._limits.max_line)
        except AGIHangup as exc:
            raise self._lost(exc) from None

        if line is None:
            raise self._lost(
                AGIHangup("the connection closed while waiting for a reply")
            )
        return line


async def close_writer(writer: asyncio.StreamWriter, peer: str = "") -> None:
    """Close ``writer``; never raises when the peer is already gone.

    Output that the peer does not read within CLOSE_TIMEOUT seconds is dropped
    by aborting the connection.
    """
    if not writer.is_closing():
        writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await writer.wait_closed()
    except TimeoutError:
        log.debug("%s: output not flushed in %s s; aborting", peer, CLOSE_TIMEOUT)
        writer.transport.abort()
    except (ConnectionError, OSError) as exc:
        log.debug("%s: connection already lost at close: %s", peer, exc)
