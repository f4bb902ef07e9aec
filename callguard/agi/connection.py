"""The byte stream under one AGI session: whole lines in, command lines out.

This is an asyncio Protocol, not a StreamReader and StreamWriter pair. A check
session reads some thirty short lines and sends five commands, and a stream
spends a coroutine and a buffer search on every readline and a drain on every
write. Here lines are split as data arrives, so reading a line that has
already arrived is a deque pop.

Every buffer a peer can fill is bounded: an unfinished line may not grow past
``max_line`` bytes, and reading pauses while more than MAX_QUEUED_LINES
complete lines or MAX_QUEUED_BYTES bytes wait to be read.
"""

import asyncio
from collections import deque
from collections.abc import Callable

from callguard.agi.protocol import AGIHangup, AGIProtocolError

# Sentinel that readline_nowait() returns while no line is complete.
NO_LINE = object()

# Complete lines, and their bytes, held before reading from the socket
# pauses. The AGI environment is at most a few dozen lines, and a reply is one
# line, or a few dozen for a 520 usage text.
MAX_QUEUED_LINES = 512
MAX_QUEUED_BYTES = 65536

# Seconds that close() leaves for buffered output to reach the peer before it
# aborts the connection.
CLOSE_TIMEOUT = 1.0


def release_transport(transport: asyncio.BaseTransport | None) -> None:
    """Break the reference cycle that a closed asyncio socket transport keeps.

    In Python 3.11 the selector transport keeps a bound method of itself in
    ``_read_ready_cb`` after it closes (CPython gh-100348), so only the cyclic
    garbage collector frees it. At hundreds of sessions a second, those
    transports make the collector run more often, and each run pauses every
    session. Call this once the transport has reported the loss.
    """
    if getattr(transport, "_read_ready_cb", None) is not None:
        transport._read_ready_cb = None  # type: ignore[union-attr]


class AGIConnection(asyncio.Protocol):
    """One AGI byte stream, read by one coroutine at a time.

    ``on_open``, if given, is called with the connection once the transport
    exists; the FastAGI server uses it to vet the peer and start the session.
    """

    def __init__(self, max_line: int,
                 on_open: Callable[["AGIConnection"], None] | None = None,
                 loop: asyncio.AbstractEventLoop | None = None):
        self._max_line = max_line
        self._on_open = on_open
        # The event loop, from the server or else the running one. A session
        # reads it several times, and asyncio.get_running_loop() makes a
        # getpid() system call each time in Python 3.11.
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._lines: deque[bytes] = deque()
        self._queued_bytes = 0
        self._partial = b""
        self._paused = False
        # An over-long line, raised once the lines before it are read.
        self._error: AGIProtocolError | None = None
        self._eof = False
        self._lost = False
        self._waiter: asyncio.Future | None = None
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._listener: Callable[[], None] | None = None
        self._on_timeout: Callable[[], None] | None = None

    # -- asyncio.Protocol --------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        if self._on_open is not None:
            self._on_open(self)

    def data_received(self, data: bytes) -> None:
        if self._error is not None:
            return  # After an over-long line the session is out of step, so nothing more is read.
        if b"\n" not in data:
            self._partial += data
            if len(self._partial) >= self._max_line:
                self._fail(len(self._partial))
            return

        joined = self._partial + data
        pieces = joined.split(b"\n")
        self._partial = pieces.pop()
        limit = self._max_line
        # The newline counts towards the limit.
        if max(map(len, pieces)) < limit:
            self._lines.extend(pieces)
            self._queued_bytes += len(joined) - len(self._partial)
            if len(self._partial) >= limit:
                self._fail(len(self._partial))
        else:
            for piece in pieces:
                if len(piece) >= limit:
                    self._fail(len(piece) + 1, ended=True)
                    break
                self._lines.append(piece)
                self._queued_bytes += len(piece) + 1
        if not self._paused and (len(self._lines) > MAX_QUEUED_LINES
                                 or self._queued_bytes > MAX_QUEUED_BYTES):
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        # Stay half-open: output already written still reaches the peer.
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._lost = True
        release_transport(self.transport)
        self._cancel_timer()
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._wake()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake()

    # -- reading -----------------------------------------------------------

    async def readline(self, deadline: float) -> str | None:
        """Return the next line without its ``\\n`` or ``\\r\\n``; None at a clean end.

        Raises TimeoutError when no line is complete by ``deadline`` (loop time),
        AGIProtocolError for a line longer than ``max_line`` bytes and AGIHangup
        when the stream ends in the middle of a line.
        """
        while True:
            line = self.readline_nowait()
            if line is not NO_LINE:
                return line
            await self.wait(deadline)

    def has_input(self) -> bool:
        """Check whether readline_nowait() would return at once: a whole line,
        the end or an error waits."""
        return bool(self._lines) or self._eof or self._error is not None

    def readline_nowait(self) -> "str | None | object":
        """Return the next line as readline() does, or NO_LINE while none is complete."""
        if not self._lines:
            if self._error is not None:
                raise self._error
            if self._eof:
                if self._partial:
                    raise AGIHangup("the connection closed in the middle of a line")
                return None
            return NO_LINE

        raw = self._lines.popleft()
        self._queued_bytes -= len(raw) + 1
        self._resume_if_drained()
        if raw[-1:] == b"\r":
            raw = raw[:-1]
        if b"\x00" in raw:
            # Asterisk writes AGI lines from C strings, which cannot contain NUL.
            self._error = AGIProtocolError(f"AGI line {_shown(raw)} contains a NUL byte")
            raise self._error
        return raw.decode("utf-8", errors="replace")

    def block_nowait(self) -> "list[str] | None | object":
        """Return the complete lines queued up to the first empty one, that one
        included, each as readline() returns it.

        Returns NO_LINE while no line is complete and None at a clean end,
        and raises as readline_nowait() does. A line with a NUL byte stays
        queued behind the lines returned, so the next call raises for it.
        Asterisk writes the agi_* block line after line without waiting for
        a reply, so a session usually finds much of it queued at once.
        """
        queue = self._lines
        if not queue:
            return self.readline_nowait()
        joined = b"\n".join(queue)
        if b"\x00" in joined:
            lines = self._lines_before_nul()
        else:
            # One decode for all lines gives the same text as decoding each,
            # because the newlines between them are ASCII and end any sequence.
            lines = joined.decode("utf-8", errors="replace").split("\n")
            if b"\r" in joined:
                lines = [line[:-1] if line[-1:] == "\r" else line for line in lines]
            if "" in lines:
                del lines[lines.index("") + 1:]
            if len(lines) == len(queue):
                queue.clear()
                self._queued_bytes -= len(joined) + 1
            else:
                for _ in lines:
                    self._queued_bytes -= len(queue.popleft()) + 1
        if not lines:
            return self.readline_nowait()
        self._resume_if_drained()
        return lines

    def _lines_before_nul(self) -> list[str]:
        """Take the lines queued before the first one with a NUL byte, up to the
        first empty one, as block_nowait() returns them."""
        lines = []
        queue = self._lines
        while queue and b"\x00" not in queue[0]:
            raw = queue.popleft()
            self._queued_bytes -= len(raw) + 1
            if raw[-1:] == b"\r":
                raw = raw[:-1]
            line = raw.decode("utf-8", errors="replace")
            lines.append(line)
            if not line:
                break
        return lines

    def _resume_if_drained(self) -> None:
        """Read from the socket again once the queue paused for is half empty."""
        if (self._paused and self._error is None
                and len(self._lines) <= MAX_QUEUED_LINES // 2
                and self._queued_bytes <= MAX_QUEUED_BYTES // 2):
            self._paused = False
            if not self._lost:
                self.transport.resume_reading()

    # -- writing -----------------------------------------------------------

    async def write(self, data: bytes, deadline: float) -> None:
        """Send ``data``, waiting while the peer does not read, up to ``deadline``.

        Raises ConnectionResetError when the connection is gone and TimeoutError
        at the deadline.
        """
        if self._lost or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)
        while self._write_paused:
            await self.wait(deadline)
            if self._lost:
                raise ConnectionResetError("the connection is closed")

    def write_nowait(self, data: bytes) -> None:
        """Send ``data`` without waiting for a peer that does not read.

        For commands of a few kilobytes in all: the transport buffers them
        until the peer reads, and the reply timeout bounds the wait.
        Raises ConnectionResetError when the connection is gone.
        """
        if self._lost or self.transport.is_closing():
            raise ConnectionResetError("the connection is closed")
        self.transport.write(data)

    def close(self) -> None:
        """Close the connection once buffered output is sent, or abort after CLOSE_TIMEOUT."""
        transport = self.transport
        self._cancel_timer()
        if transport is None or self._lost:
            return
        if not transport.is_closing():
            transport.close()
        if transport.get_write_buffer_size() and self._close_timer is None:
            self._close_timer = self.loop.call_later(
                CLOSE_TIMEOUT, transport.abort
            )

    def abort(self) -> None:
        self._cancel_timer()
        if self.transport is not None:
            self.transport.abort()

    # -- waiting -----------------------------------------------------------

    async def wait(self, deadline: float) -> None:
        """Wait until the transport reports data, an end or a loss, or until wake().

        Raises TimeoutError at ``deadline``, or at a later one that
        move_deadline() sets meanwhile. While a listener is set, the transport's
        reports go to it instead, and only wake() ends the wait.

        One timer handle serves the whole connection: a later deadline only
        moves a number, and the handle re-schedules itself when it fires early.
        """
        loop = self._loop()
        if self._timer is not None and deadline < self._deadline:
            self._cancel_timer()
        self._deadline = deadline
        if self._timer is None:
            self._timer = loop.call_at(deadline, self._expire)
        waiter = self._waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _expire(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None:
            if self._on_timeout is None:
                return
        elif waiter.done():
            return
        loop = self._loop()
        if loop.time() < self._deadline:
            self._timer = loop.call_at(self._deadline, self._expire)
            return
        if waiter is not None:
            waiter.set_exception(TimeoutError())
            return
        on_timeout, self._on_timeout = self._on_timeout, None
        on_timeout()

    def watch(self, deadline: float, on_timeout: Callable[[], None]) -> None:
        """Call ``on_timeout`` once, at ``deadline`` (loop time), unless unwatch() comes first.

        This is the deadline of a session driven by a listener instead of
        wait(). A later call moves the deadline, which costs no new timer when
        it is later. on_timeout runs in a timer callback and must not raise.
        """
        if self._timer is not None and deadline < self._deadline:
            self._cancel_timer()
        self._deadline = deadline
        self._on_timeout = on_timeout
        if self._timer is None and not self._lost:
            self._timer = self._loop().call_at(deadline, self._expire)

    def _loop(self) -> asyncio.AbstractEventLoop:
        """Return the connection's loop, or the running one before the transport is made."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        return loop

    def unwatch(self) -> None:
        """Forget the on_timeout of watch(); a later wait() sets its own deadline."""
        self._on_timeout = None

    def move_deadline(self, deadline: float) -> None:
        """Move the deadline of the current wait() to ``deadline``, which must be later."""
        self._deadline = max(self._deadline, deadline)

    def set_listener(self, listener: Callable[[], None] | None) -> None:
        """Call ``listener`` in place of waking wait() when data, an end or a loss arrives.

        The listener runs inside the transport's callback, so it reads with
        readline_nowait() and must not raise. None restores the waking.
        """
        self._listener = listener

    def wake(self) -> None:
        """End the current wait()."""
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake(self) -> None:
        if self._listener is not None:
            self._listener()
        else:
            self.wake()

    def _cancel_timer(self) -> None:
        self._on_timeout = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, length: int, *, ended: bool = False) -> None:
        # An unfinished line is reported with the bytes read so far, which
        # depend on how the peer's data was split, not with its whole length.
        seen = (f"a line of {length} bytes" if ended
                else f"{length} bytes read so far without an end of line")
        self._error = AGIProtocolError(
            f"line longer than the limit of {self._max_line} bytes: {seen}"
        )
        self._partial = b""
        if not self._paused:
            self._paused = True
            self.transport.pause_reading()
        self._wake()


def _shown(raw: bytes) -> str:
    """Return the start of a peer's line for an error message."""
    return repr(raw[:60]) + ("..." if len(raw) > 60 else "")
