"""The AGI protocol spoken by Asterisk's res_agi: its lines, replies and limits.

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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from callguard.agi.connection import AGIConnection

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

_NAME = re.compile(r"[A-Za-z0-9_]+")
_COMMAND_WORDS = re.compile(r"[A-Za-z]+( [A-Za-z]+)*")
_STATUS = re.compile(r"(\d{3})([ -])")
# The data is matched greedily because a variable's value may contain ") ".
# Extra text never starts with "(", so an unclosed bracket is an invalid reply.
# res_agi sends results as C ints, so a result of other characters or of more
# than 20 digits is invalid, and int() never gets more digits than it converts.
_SUCCESS = re.compile(
    r"200 result=(?P<result>-?[0-9]{1,20})(?: \((?P<data>.*)\))?(?: (?P<extra>[^(].*))?"
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
    max_block: int = 65536  # bytes of the whole environment block, or of one 520 reply
    block_timeout: float = 5.0  # seconds to read the whole environment block
    reply_timeout: float = 5.0  # seconds to send one command and read its reply

    def __post_init__(self):
        for name in ("max_line", "max_variables", "max_block", "block_timeout",
                     "reply_timeout"):
            value = getattr(self, name)
            if value <= 0:
                raise ValueError(f"AGILimits.{name} must be positive, got {value!r}")


def quote_argument(value: str) -> str:
    """Quote one argument for Asterisk's AGI argument parser.

    The result is wrapped in double quotes, with ``"`` and ``\\`` escaped by a
    backslash. Control characters (CR and LF included) and lone surrogates are
    dropped, so that no value can end the command line or start a second one.
    """
    if value.isascii() and value.isprintable():
        cleaned = value  # the common case: nothing to drop
    else:
        cleaned = "".join(
            ch for ch in value if unicodedata.category(ch) not in _DROPPED_CATEGORIES
        )
    escaped = cleaned.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def encoded_size(line: str) -> int:
    """Return the size of a peer's decoded ``line`` in UTF-8 bytes, for the byte limits.

    A byte that was not UTF-8 was decoded as U+FFFD and counts as three.
    """
    if line.isascii():
        return len(line)
    return len(line.encode("utf-8"))


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


class EnvironmentReader:
    """A collector of the ``agi_*`` block that opens a session, fed one line at a time.

    feed() raises AGIProtocolError for a line that is not ``agi_<name>:
    <value>``, more than ``limits.max_variables`` lines or more than
    ``limits.max_block`` bytes. Line length is the connection's to bound.
    """

    __slots__ = ("env", "_limits", "_count", "_size")

    def __init__(self, limits: AGILimits):
        self.env: dict[str, str] = {}
        self._limits = limits
        self._count = 0
        self._size = 0

    def feed(self, line: str) -> bool:
        """Take one line without its newline; return True at the empty line that ends the block."""
        return self.feed_lines([line])

    def feed_lines(self, lines: list[str]) -> bool:
        """Take lines as feed() does, in order, and return True at the empty line.

        Lines after the empty one are not read.
        """
        ended = "" in lines
        variables = lines[:lines.index("")] if ended else lines
        count = self._count + len(variables)
        joined = "\n".join(variables)
        size = self._size + encoded_size(joined) + (1 if variables else 0)
        limits = self._limits
        if count > limits.max_variables or size > limits.max_block:
            return self._feed_counted(lines)

        # Within both limits as a whole, so within them line by line too.
        env = self.env
        for line in variables:
            name, separator, value = line.partition(AGI_SEPARATOR)
            if not separator or not name.startswith(AGI_PREFIX):
                raise _invalid_line(line)
            env[name] = value
        self._count = count
        self._size = size
        return ended

    def _feed_counted(self, lines: list[str]) -> bool:
        """Take lines as feed_lines() does, counting each against the limits."""
        limits = self._limits
        env = self.env
        for line in lines:
            if line == "":
                return True
            self._count += 1
            if self._count > limits.max_variables:
                raise AGIProtocolError(
                    f"AGI environment has more than {limits.max_variables} lines"
                )
            self._size += encoded_size(line) + 1
            if self._size > limits.max_block:
                raise AGIProtocolError(
                    f"AGI environment is longer than the limit of {limits.max_block} bytes"
                )
            name, separator, value = line.partition(AGI_SEPARATOR)
            if not separator or not name.startswith(AGI_PREFIX):
                raise _invalid_line(line)
            env[name] = value
        return False

    def ended(self) -> AGIHangup:
        """Return the error for a stream that ended before the block did."""
        return AGIHangup(
            f"the connection closed after {self._count} lines of the "
            "AGI environment, before its empty line"
        )

    def timed_out(self) -> AGITimeout:
        """Return the error for a block not complete by ``limits.block_timeout``."""
        return AGITimeout(
            f"AGI environment not complete after {self._limits.block_timeout} s "
            f"({self._count} lines read)"
        )


async def read_environment(
    connection: "AGIConnection", limits: AGILimits
) -> dict[str, str]:
    """Read the ``agi_*`` block that opens a session, up to its empty line.

    Raises what EnvironmentReader.feed() raises, AGIProtocolError for a line
    over ``limits.max_line``, AGIHangup when the stream ends first, and
    AGITimeout when the whole block takes longer than ``limits.block_timeout``.
    """
    reader = EnvironmentReader(limits)
    deadline = asyncio.get_running_loop().time() + limits.block_timeout
    try:
        while True:
            # Asterisk sends the block at once, so its lines are usually all
            # queued already: read them without a coroutine per line.
            lines = connection.block_nowait()
            if lines is NO_LINE:
                await connection.wait(deadline)
                continue
            if lines is None:
                raise reader.ended()
            if reader.feed_lines(lines):
                return reader.env
    except TimeoutError:
        raise reader.timed_out() from None


def _invalid_line(line: str) -> AGIProtocolError:
    excerpt = line if len(line) <= 80 else line[:80] + "..."
    return AGIProtocolError(
        f"invalid AGI environment line {excerpt!r}: expected 'agi_<name>: <value>'"
    )


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


# Re-exported: AGIChannel lives in its own module but belongs to this layer.
from callguard.agi.channel import AGIChannel  # noqa: E402, F401
from callguard.agi.connection import NO_LINE  # noqa: E402
