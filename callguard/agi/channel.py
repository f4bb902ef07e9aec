"""One AGI session over an AGIConnection: commands out, replies in."""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping

from callguard.agi.connection import NO_LINE, AGIConnection
from callguard.agi.protocol import (
    AGI_ARG_PREFIX,
    AGI_CHANNEL,
    AGI_UNIQUEID,
    CODE_DEAD_CHANNEL,
    CODE_SUCCESS,
    CODE_TRYING,
    CODE_USAGE,
    EXEC,
    GET_FULL_VARIABLE,
    GET_VARIABLE,
    HANGUP,
    HANGUP_LINE,
    MAX_COMMAND_BYTES,
    MAX_USAGE_LINES,
    SET_VARIABLE,
    VERBOSE,
    AGICommandError,
    AGIError,
    AGIHangup,
    AGILimits,
    AGIProtocolError,
    AGIReply,
    AGITimeout,
    _COMMAND_WORDS,
    _NAME,
    _STATUS,
    encoded_size,
    parse_reply,
    quote_argument,
    script_name,
    validate_name,
)

log = logging.getLogger(__name__)

# SET VARIABLE lines already checked and encoded, by (name, value). A check
# sets the same few results, reasons, categories and rates again and again.
# Only plain str names and values of up to MAX_CACHED_VALUE characters are
# kept, so the store stays small, and those that fail the checks never are.
MAX_CACHED_ASSIGNMENTS = 1024
MAX_CACHED_VALUE = 64
_assignment_cache: dict[tuple[str, str], bytes] = {}

# The reply to most commands, SET VARIABLE among them, parsed once.
REPLY_OK_LINE = "200 result=1"
REPLY_OK = AGIReply(code=CODE_SUCCESS, result=1, data=None, extra="")


class AGIChannel:
    """One AGI session over one connection.

    Commands run one at a time. After a timeout, a protocol error or the end of
    the stream, the session is out of step with Asterisk and every further
    command raises at once.
    """

    def __init__(
        self,
        connection: AGIConnection,
        env: Mapping[str, str],
        limits: AGILimits,
        peer: object = "",
    ):
        self.env = env
        self._peer = peer
        self.hung_up = False
        self._connection = connection
        self._limits = limits
        self._lock = asyncio.Lock()
        self._broken: AGIError | None = None
        # Commands that got a 200 reply, so a caller can tell how far a failed
        # set_variables() went.
        self.answered = 0

    @property
    def peer(self) -> str:
        """The peer's address and port, as text for log lines."""
        return str(self._peer)

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

    async def set_variables(self, assignments: Iterable[tuple[str, str]]) -> None:
        """Set each (name, value) in turn, as set_variable() would, stopping at an error.

        Each command is sent from the transport's callback as soon as the
        reply to the one before it arrives, so the session's task wakes once
        for all of them. Raises what set_variable() raises; ``answered`` then
        counts the commands that got their reply.
        """
        lines = self._assignment_lines(assignments)
        if not lines:
            return

        async with self._lock:
            self._check_usable()
            batch = _Batch(self, lines)
            with self._breaking_on_failure(lambda: batch.current):
                await batch.run()

    def start_variables(self, assignments: Iterable[tuple[str, str]],
                        on_done: Callable[[AGIError | None], None],
                        deadline: float | None = None,
                        on_sent: Callable[[], None] | None = None) -> None:
        """Set each (name, value) as set_variables() does, without a task to wait in.

        ``on_done`` is called once, from the transport's callbacks or a timer,
        with None when every command got its reply or with the error that
        set_variables() would raise. ``deadline`` (loop time) bounds the whole
        batch besides each command's reply timeout. No other command may run
        on the session meanwhile. Raises ValueError, as set_variables() does,
        and AGIError for a session already unusable, before anything is sent.

        ``on_sent``, if given, is called once the first command is written
        and before any reply is read, so that its work overlaps Asterisk's
        reading of that command. It comes before ``on_done``, also when the
        write failed, or when there is nothing to set.
        """
        lines = self._assignment_lines(assignments)
        self._check_usable()
        if not lines:
            if on_sent is not None:
                on_sent()
            on_done(None)
            return
        _Batch(self, lines, on_done, deadline).start(on_sent)

    def _assignment_lines(self, assignments: Iterable[tuple[str, str]]) -> list[bytes]:
        lines = []
        for name, value in assignments:
            cacheable = (type(name) is str and type(value) is str
                         and len(value) <= MAX_CACHED_VALUE)
            key = (name, value)
            line = _assignment_cache.get(key) if cacheable else None
            if line is None:
                line = self._encode(
                    f"{SET_VARIABLE} {validate_name(name)} {quote_argument(value)}")
                if cacheable:
                    if len(_assignment_cache) >= MAX_CACHED_ASSIGNMENTS:
                        _assignment_cache.clear()
                    _assignment_cache[key] = line
            lines.append(line)
        return lines

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
        self._connection.close()

    @staticmethod
    def _encode(line: str) -> bytes:
        encoded = line.encode("utf-8") + b"\n"
        if len(encoded) > MAX_COMMAND_BYTES:
            raise ValueError(
                f"AGI command of {len(encoded)} bytes is longer than Asterisk's "
                f"limit of {MAX_COMMAND_BYTES}: {line[:60]!r}...; shorten the value"
            )
        return encoded

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise type(self._broken)(
                "the AGI session is unusable after an earlier error: "
                f"{self._broken}"
            )

    async def _request(self, line: str) -> AGIReply:
        encoded = self._encode(line)
        async with self._lock:
            self._check_usable()
            deadline = self._connection.loop.time() + self._limits.reply_timeout
            with self._breaking_on_failure(lambda: line[:60]):
                await self._send(encoded, deadline)
                reply = await self._read_reply(deadline)
            self.answered += 1
            return reply

    @contextlib.contextmanager
    def _breaking_on_failure(self, command: Callable[[], str]) -> Iterator[None]:
        """Mark the session unusable on a timeout or a protocol error, which put
        it out of step with Asterisk. ``command`` returns the command waiting
        for its reply, for the timeout's message."""
        try:
            yield
        except TimeoutError:
            self._broken = AGITimeout(
                f"no reply to {command()!r} within {self._limits.reply_timeout} s"
            )
            raise self._broken from None
        except AGIProtocolError as exc:
            self._broken = exc
            raise

    def _lost(self, error: AGIHangup) -> AGIHangup:
        self.hung_up = True
        self._broken = error
        return error

    async def _send(self, encoded: bytes, deadline: float) -> None:
        try:
            await self._connection.write(encoded, deadline)
        except (ConnectionError, OSError) as exc:
            raise self._lost(AGIHangup(f"the connection was lost: {exc}")) from None

    async def _read_reply(self, deadline: float) -> AGIReply:
        reader = _ReplyReader(self)
        while True:
            reply = reader.feed(await self._read_reply_line(deadline))
            if reply is not None:
                return reply

    async def _read_reply_line(self, deadline: float) -> str:
        try:
            line = await self._connection.readline(deadline)
        except AGIHangup as exc:
            raise self._lost(exc) from None

        if line is None:
            raise self._lost(
                AGIHangup("the connection closed while waiting for a reply")
            )
        return line


class _ReplyReader:
    """Reads the lines of one reply, which may follow HANGUP or 100 lines.

    feed() returns the ``200`` reply once it arrives and None while more lines
    are needed. It raises AGICommandError for a 5xx reply (after the whole
    usage text of a 520), AGIHangup for 511 and AGIProtocolError for anything
    else.
    """

    def __init__(self, channel: AGIChannel):
        self._channel = channel
        self._usage: list[str] = []
        self._usage_size = 0

    def feed(self, line: str) -> AGIReply | None:
        if self._usage:
            return self._feed_usage(line)
        if line == REPLY_OK_LINE:
            return REPLY_OK

        if line == HANGUP_LINE:
            self._channel.hung_up = True
            return None
        status = _STATUS.match(line)
        if status is None:
            raise AGIProtocolError(f"invalid AGI reply {line!r}")

        code = int(status[1])
        if code == CODE_TRYING:
            return None
        if code == CODE_SUCCESS:
            return parse_reply(line)
        if code == CODE_DEAD_CHANNEL:
            self._channel.hung_up = True
            raise AGIHangup(f"the channel is dead: {line}")
        if code == CODE_USAGE and status[2] == "-":
            self._usage = [line]
            self._usage_size = encoded_size(line) + 1
            return None
        if 500 <= code <= 599 and status[2] == " ":
            raise AGICommandError(code, line)
        raise AGIProtocolError(f"invalid AGI reply {line!r}")

    def _feed_usage(self, line: str) -> None:
        lines = self._usage
        lines.append(line)
        if line.startswith(f"{CODE_USAGE} "):
            raise AGICommandError(CODE_USAGE, "\n".join(lines))
        self._usage_size += encoded_size(line) + 1
        max_block = self._channel._limits.max_block
        if self._usage_size > max_block:
            raise AGIProtocolError(
                f"520 usage reply longer than the limit of {max_block} "
                "bytes without its end"
            )
        if len(lines) > MAX_USAGE_LINES:
            raise AGIProtocolError(
                f"520 usage reply longer than {MAX_USAGE_LINES} lines without its end"
            )
        return None


class _Batch:
    """Sends commands one after another from the transport's callback.

    Each command goes out when the reply to the one before it has been read,
    and has reply_timeout from then on for its own reply. run() waits for the
    last reply or the first failure; start() returns at once and reports
    either to the ``on_done`` given.
    """

    def __init__(self, channel: AGIChannel, lines: list[bytes],
                 on_done: Callable[[AGIError | None], None] | None = None,
                 cap: float | None = None):
        self._channel = channel
        self._connection = channel._connection
        self._lines = lines
        self._next = 0
        self._reader: _ReplyReader | None = None
        self._done = False
        self._error: BaseException | None = None
        self._on_done = on_done
        self._cap = cap
        # Set while start() writes the first command: _finish() then leaves
        # the call of on_done to start().
        self._holding = False

    @property
    def current(self) -> str:
        """The command now waiting for its reply, shortened for messages."""
        index = max(self._next - 1, 0)
        return self._lines[index].decode("utf-8", errors="replace").rstrip("\n")[:60]

    async def run(self) -> None:
        connection = self._connection
        self._send_next()
        connection.set_listener(self._on_input)
        try:
            # Lines that arrived before the first command (a HANGUP) are read now.
            self._on_input()
            while not self._done:
                await connection.wait(self._deadline)
        finally:
            connection.set_listener(None)
        if self._error is not None:
            raise self._error

    def start(self, on_sent: Callable[[], None] | None = None) -> None:
        # A failed first write reports to on_done only after on_sent has run.
        self._holding = True
        try:
            self._send_next()
            if on_sent is not None:
                on_sent()
        finally:
            self._holding = False
        if self._done:
            self._on_done(self._error)  # the connection was already gone
            return
        self._connection.set_listener(self._on_input)
        self._on_input()

    def _send_next(self) -> None:
        connection = self._connection
        line = self._lines[self._next]
        self._next += 1
        self._reader = _ReplyReader(self._channel)
        self._deadline = connection.loop.time() + self._channel._limits.reply_timeout
        if self._on_done is None:
            connection.move_deadline(self._deadline)
        elif self._cap is not None and self._cap < self._deadline:
            connection.watch(self._cap, self._on_timeout)
        else:
            connection.watch(self._deadline, self._on_timeout)
        try:
            connection.write_nowait(line)
        except (ConnectionError, OSError) as exc:
            self._fail(self._channel._lost(AGIHangup(f"the connection was lost: {exc}")))

    def _on_input(self) -> None:
        channel = self._channel
        connection = self._connection
        while not self._done:
            try:
                line = connection.readline_nowait()
            except AGIHangup as exc:
                self._fail(channel._lost(exc))
                return
            except AGIError as exc:
                self._fail(exc)
                return
            if line is NO_LINE:
                return
            if line is None:
                self._fail(channel._lost(
                    AGIHangup("the connection closed while waiting for a reply")))
                return

            try:
                reply = self._reader.feed(line)
            except AGIError as exc:
                self._fail(exc)
                return
            if reply is None:
                continue
            channel.answered += 1
            if self._next == len(self._lines):
                self._finish(None)
                return
            self._send_next()

    def _on_timeout(self) -> None:
        if self._cap is not None and self._cap < self._deadline:
            limit = "before the session's time ran out"
        else:
            limit = f"within {self._channel._limits.reply_timeout} s"
        self._fail(AGITimeout(f"no reply to {self.current!r} {limit}"))

    def _fail(self, error: AGIError) -> None:
        if isinstance(error, (AGIProtocolError, AGITimeout)):
            # Out of step with Asterisk, so no later command can be trusted.
            self._channel._broken = error
        self._finish(error)

    def _finish(self, error: AGIError | None) -> None:
        self._error = error
        self._done = True
        connection = self._connection
        on_done = self._on_done
        if on_done is None:
            connection.wake()
            return
        connection.set_listener(None)
        connection.unwatch()
        if not self._holding:
            on_done(error)
