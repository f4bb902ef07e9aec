"""The FastAGI server: accepts Asterisk's connections and runs one handler per session.

Whatever goes wrong in a session (a bad peer, a timeout, a handler that raises)
is logged once and ends only that session. Asterisk then finds the connection
closed, and the dialplan applies its fail policy unless the handler already set
the result.
"""

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import NamedTuple
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

from callguard.agi.connection import NO_LINE, AGIConnection
from callguard.agi.protocol import (
    AGIChannel,
    AGIError,
    AGIHangup,
    AGILimits,
    EnvironmentReader,
)

from callguard.repeats import RepeatLimiter, suppressed_note

log = logging.getLogger(__name__)

Handler = Callable[[AGIChannel], Awaitable[None]]


class QuickAnswer(NamedTuple):
    """Channel variables that a handler could decide on without waiting.

    A handler may offer ``answer_now(channel)``, which returns a QuickAnswer or
    None. With a QuickAnswer the server sets the variables from the
    transport's callbacks, with no task for the session, then calls ``done``
    once: with None, or with the AGIError that ended the commands, a server
    that stops among them included. With None, or without answer_now, the
    handler itself runs in a task.

    ``announce``, if given, is called once before ``done``: in the turn of the
    event loop after the first command is written, before any reply is
    read, or at once when the session turns out unusable before that. Work
    that need not precede the first command, such as logging and recording
    the decision, then overlaps Asterisk's reading of it, and sessions that
    start in the same turn all send their first command before any of them
    announces. An ``announce`` that raises ends the session as a failing
    handler does, and ``done`` is then not called.
    """

    variables: list[tuple[str, str]]
    done: Callable[[AGIError | None], None]
    announce: Callable[[], None] | None = None

DEFAULT_PORT = 4573
# The unspecified IPv6 address, on which a socket takes connections to every
# address of the host. asyncio's create_server sets IPV6_V6ONLY on each IPv6
# socket, so it would take IPv6 connections alone.
IPV6_ANY = "::"
DEFAULT_ALLOWED_CLIENTS = (ip_network("127.0.0.1/32"), ip_network("::1/128"))
FAIL_POLICY = "the dialplan applies its fail policy"
FAIL_POLICY_NOTE = f"closing the session; {FAIL_POLICY}"

# Warnings per minute about sessions that a peer broke; further ones are counted.
PEER_FAILURE_BURST = 20

# Seconds between the summary lines for repeated rejected connections.
REJECTION_SUMMARY_INTERVAL = 60.0

# Sessions served at once. A check lasts milliseconds, so even a busy PBX has
# a few dozen open. The cap bounds the memory and file descriptors that
# stalled peers can take. Beyond it, new connections are closed at once, and
# the dialplan applies its fail policy.
DEFAULT_MAX_SESSIONS = 256

# Turns of the event loop that stop() gives the connections asyncio has
# accepted to reach the server. Two are enough, and the rest is margin.
SETTLE_TURNS = 8

# Maximum number of rejected addresses counted one by one. Further addresses share
# one counter, so that a scan from many addresses cannot grow the table unbounded.
MAX_COUNTED_ADDRESSES = 1024


class FastAGIServer:
    """A FastAGI server that dispatches each session on its script name."""

    def __init__(
        self,
        routes: Mapping[str, Handler],
        host: str = "127.0.0.1",
        port: int = DEFAULT_PORT,
        *,
        allowed_clients: Sequence[IPv4Network | IPv6Network] = DEFAULT_ALLOWED_CLIENTS,
        limits: AGILimits = AGILimits(),
        session_timeout: float = 30.0,
        max_sessions: int = DEFAULT_MAX_SESSIONS,
    ):
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be 1 or more, got {max_sessions!r}")
        if session_timeout <= 0:
            raise ValueError(
                f"session_timeout must be a positive number of seconds, "
                f"got {session_timeout!r}"
            )
        for name in routes:
            if not name or "/" in name or "?" in name:
                raise ValueError(
                    f"invalid FastAGI script name {name!r}: use a plain name "
                    "such as 'check'"
                )

        self._routes = dict(routes)
        self._host = host
        self._port = port
        self._limits = limits
        self._session_timeout = session_timeout
        self._max_sessions = max_sessions
        self._overloads = RepeatLimiter(burst=PEER_FAILURE_BURST)
        self._allowed = _networks(allowed_clients)
        # Peer address text -> allowed, so that a busy peer is parsed once.
        self._verdicts: dict[str, bool] = {}
        self._rejections = RejectionLog()
        # Sessions that a bad or stalled peer ends; a flood of them logs
        # PEER_FAILURE_BURST lines a minute and counts the rest.
        self._peer_failures = RepeatLimiter(burst=PEER_FAILURE_BURST)
        self._server: asyncio.Server | None = None
        # The loop that start() ran on, handed to each connection.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._summary_task: asyncio.Task | None = None
        self._sessions: set[_Session] = set()
        # Set once stop() has counted the sessions it waits for. A connection
        # that opens after that is closed.
        self._stopping = False
        self._drained: asyncio.Future | None = None
        # Connections that the protocol factory made and whose connection_made
        # has not run yet.
        self._opening = 0

    async def start(self) -> None:
        """Bind the listening socket and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("the FastAGI server is already started")
        self._stopping = False
        self._opening = 0

        loop = self._loop = asyncio.get_running_loop()
        if self._host == IPV6_ANY:
            self._server = await loop.create_server(
                self._connection, sock=dual_stack_socket(self._port)
            )
        else:
            self._server = await loop.create_server(
                self._connection, self._host, self._port
            )
        self._summary_task = asyncio.create_task(self._summarise_rejections())
        log.debug(
            "FastAGI server on %s serving scripts %s",
            self.sockets,
            ", ".join(sorted(self._routes)),
        )

    @property
    def active_sessions(self) -> int:
        """Sessions accepted and not finished."""
        return len(self._sessions)

    @property
    def sockets(self) -> list[tuple[str, int]]:
        """The bound addresses, with the real port when the server was given port 0."""
        if self._server is None:
            return []
        return [sock.getsockname()[:2] for sock in self._server.sockets]

    def set_allowed_clients(
        self, networks: Iterable[IPv4Network | IPv6Network | str]
    ) -> None:
        """Replace the networks that may connect.

        Connections already accepted keep running.
        """
        self._allowed = _networks(networks)
        self._verdicts.clear()

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting and let running sessions finish.

        Connections that Asterisk opened before the listening socket closed
        are served too, those still in the kernel's accept queue included:
        closing the socket would otherwise reset them. Sessions still running
        after ``grace`` seconds are cancelled.
        """
        if self._server is None:
            return

        loop = asyncio.get_running_loop()
        # Stop asyncio accepting first, so that the connections it has already
        # accepted reach _accept while the server is open. asyncio fails to
        # make a transport for a closed server and leaves its socket open.
        for listening in self._server.sockets:
            loop.remove_reader(listening.fileno())
        await self._settle_accepts()
        queued = self._take_accept_queue()
        self._server.close()
        for sock in queued:
            try:
                await loop.connect_accepted_socket(self._connection, sock)
            except OSError as exc:
                sock.close()
                log.debug("FastAGI connection lost while the server stops: %s", exc)
        self._stopping = True
        if self._summary_task is not None:
            self._summary_task.cancel()
            await asyncio.wait([self._summary_task])

        if self._sessions:
            self._drained = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._drained), grace)
            except TimeoutError:
                pending = list(self._sessions)
                log.warning(
                    "FastAGI server stopping: cancelling %d sessions still running "
                    "after %s s; the dialplan applies its fail policy for them",
                    len(pending),
                    grace,
                )
                tasks = [task for task in (session.cancel() for session in pending) if task]
                if tasks:
                    await asyncio.wait(tasks)
            self._drained = None

        await self._server.wait_closed()
        self._rejections.summarise()
        self._server = None
        log.debug("FastAGI server stopped")

    def _connection(self) -> AGIConnection:
        self._opening += 1
        return AGIConnection(self._limits.max_line, self._accept, self._loop)

    def _take_accept_queue(self) -> list[socket.socket]:
        """Accept, without serving yet, the connections the kernel has queued.

        Runs with no await, just before the listening sockets close.
        """
        accepted: list[socket.socket] = []
        assert self._server is not None
        for listening in self._server.sockets:
            # A duplicate descriptor of the same listening socket. Closing it
            # leaves the server's own descriptor open.
            with socket.fromfd(listening.fileno(), listening.family, listening.type) as dup:
                dup.setblocking(False)
                while len(accepted) < self._max_sessions:
                    try:
                        sock, _ = dup.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as exc:
                        log.warning("FastAGI server stopping: accepting a queued "
                                    "connection failed (%s); %s for the rest", exc,
                                    FAIL_POLICY)
                        break
                    sock.setblocking(False)
                    accepted.append(sock)
        return accepted

    async def _settle_accepts(self) -> None:
        """Let the connections that asyncio has accepted reach _accept.

        asyncio accepts in a callback, makes the protocol in a task, and calls
        connection_made a turn of the loop later: a few turns in all.
        """
        for _ in range(SETTLE_TURNS):
            await asyncio.sleep(0)
            if not self._opening:
                return

    def _accept(self, connection: AGIConnection) -> None:
        """Vet a new connection's peer, then start its session or close it."""
        self._opening -= 1
        peername = connection.transport.get_extra_info("peername")
        if peername is None:
            # uvloop (0.23, _call_connection_made in handles/tcp.pyx) reads the
            # peer name with getpeername(), not from accept(), and that call fails
            # once the peer has reset the connection. Such a peer can be neither
            # checked against allowed_clients nor sent a result.
            connection.close()
            self._warn_peer_failure(
                "FastAGI connection closed: the peer reset it before its address "
                "could be read; %s", FAIL_POLICY)
            return
        host = peername[0] if isinstance(peername, tuple) and peername else None
        allowed = self._verdicts.get(host)
        if allowed is None:
            address, _ = peer_address(peername)
            allowed = address is not None and self._is_allowed(address)
            if isinstance(host, str):
                if len(self._verdicts) >= MAX_COUNTED_ADDRESSES:
                    self._verdicts.clear()
                self._verdicts[host] = allowed
        if self._stopping:
            # Opened after stop() counted the sessions it waits for.
            connection.close()
            return
        if not allowed:
            address, peer = peer_address(peername)
            self._rejections.record(str(address) if address else peer, peer)
            connection.close()
            return
        if len(self._sessions) >= self._max_sessions:
            connection.abort()
            suppressed = self._overloads.admit()
            if suppressed is not None:
                log.warning(
                    "FastAGI connection from %s closed: %d sessions are open, the "
                    "limit; %s%s", peer_address(peername)[1], len(self._sessions),
                    FAIL_POLICY, suppressed_note(suppressed),
                )
            return

        session = _Session(self, connection, peername)
        self._sessions.add(session)
        session.start()

    def _ended(self, session: "_Session") -> None:
        self._sessions.discard(session)
        if not self._sessions and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _is_allowed(self, address: IPv4Address | IPv6Address) -> bool:
        return any(address in network for network in self._allowed)

    def _warn_peer_failure(self, message: str, *args: object) -> None:
        suppressed = self._peer_failures.admit()
        if suppressed is not None:
            log.warning(message + "%s", *args, suppressed_note(suppressed))

    async def _summarise_rejections(self) -> None:
        while True:
            await asyncio.sleep(REJECTION_SUMMARY_INTERVAL)
            self._rejections.summarise()


class _Session:
    """One FastAGI session, from its first byte to the close.

    The ``agi_*`` block is read in the transport's callbacks. A handler that
    offers a QuickAnswer is served there too, and the session then costs no
    task and no coroutine. Otherwise the handler runs in a task, under the
    session's time limit.
    """

    __slots__ = ("_server", "_connection", "_peername", "_reader", "_deadline",
                 "_block_deadline", "channel", "_task", "_done", "_announce_pending",
                 "_ended")

    def __init__(self, server: FastAGIServer, connection: AGIConnection, peername: object):
        self._server = server
        self._connection = connection
        self._peername = peername
        self._reader = EnvironmentReader(server._limits)
        now = connection.loop.time()
        self._deadline = now + server._session_timeout
        self._block_deadline = min(now + server._limits.block_timeout, self._deadline)
        self.channel: AGIChannel | None = None
        self._task: asyncio.Task | None = None
        self._done: Callable[[AGIError | None], None] | None = None
        # A QuickAnswer's announce(), until it is called.
        self._announce_pending: Callable[[], None] | None = None
        self._ended = False

    def start(self) -> None:
        connection = self._connection
        connection.set_listener(self._on_environment)
        connection.watch(self._block_deadline, self._on_environment_timeout)

    def cancel(self) -> asyncio.Task | None:
        """Stop the session for a server that stops; return its task, if it runs in one."""
        if self._task is not None:
            self._task.cancel()
            return self._task
        self._log_cancelled()
        if self._done is not None and not self._ended:
            # The commands of a QuickAnswer are in flight, so its handler learns why they stopped.
            self._answered(AGIError("the FastAGI server stopped before Asterisk replied"))
        else:
            self._end()
        return None

    def _on_environment(self) -> None:
        connection = self._connection
        reader = self._reader
        try:
            while True:
                lines = connection.block_nowait()
                if lines is NO_LINE:
                    return
                if lines is None:
                    raise reader.ended()
                if reader.feed_lines(lines):
                    break
        except AGIError as exc:
            self._peer_failed("%s: %s; %s", _session_name(self._peername, None), exc,
                              FAIL_POLICY_NOTE)
            return
        connection.set_listener(None)
        connection.unwatch()
        self._dispatch(reader.env)

    def _on_environment_timeout(self) -> None:
        if self._connection.loop.time() >= self._deadline:
            self._session_timed_out()
            return
        self._peer_failed("%s: %s; %s", _session_name(self._peername, None),
                          self._reader.timed_out(), FAIL_POLICY_NOTE)

    def _dispatch(self, env: dict[str, str]) -> None:
        server = self._server
        channel = self.channel = AGIChannel(self._connection, env, server._limits,
                                            _PeerName(self._peername))
        handler = server._routes.get(channel.script)
        if handler is None:
            # A mistyped AGI() line sends every call here, so these warnings
            # share the per-minute bound of other failed sessions.
            self._peer_failed(
                "%s: unknown FastAGI script %r (request %r); %s",
                _session_name(self._peername, channel),
                channel.script,
                env.get("agi_request", ""),
                FAIL_POLICY_NOTE,
            )
            self._end()
            return

        answer_now = getattr(handler, "answer_now", None)
        answer = None
        if answer_now is not None:
            try:
                answer = answer_now(channel)
            except AGIError as exc:
                self._agi_failed(exc)
                return
            except Exception:
                _log_handler_failure(self._peername, channel)
                self._end()
                return
        if answer is not None:
            self._done = answer.done
            self._announce_pending = answer.announce
            try:
                channel.start_variables(answer.variables, self._answered, self._deadline,
                                        self._schedule_announce)
            except AGIError as exc:
                # The session was unusable before anything was sent.
                # _answered() announces the decision first.
                self._answered(exc)
            except Exception:
                _log_handler_failure(self._peername, channel)
                # A bad variable fails before anything is sent: the decision
                # is still logged and recorded.
                self._announce_safely()
                self._end()
            return
        task = self._task = self._connection.loop.create_task(self._run(handler))
        task.add_done_callback(self._task_done)

    def _schedule_announce(self) -> None:
        if self._connection.has_input():
            # The peer sent lines before it could read the command, and they
            # are read as soon as this returns: announce before that.
            self._announce()
            return
        # A callback scheduled now runs before data that arrives later reaches
        # its protocol, on asyncio's loop and on uvloop.
        self._connection.loop.call_soon(self._announce_safely)

    def _announce(self) -> None:
        announce, self._announce_pending = self._announce_pending, None
        if announce is not None:
            announce()

    def _announce_safely(self) -> bool:
        """Call a pending announce(); on failure log it, end the session and return False."""
        try:
            self._announce()
        except Exception:
            _log_handler_failure(self._peername, self.channel)
            self._end()
            return False
        return True

    def _answered(self, error: AGIError | None) -> None:
        if not self._announce_safely():
            return  # announce() failed and ended the session
        try:
            self._done(error)
        except Exception:
            _log_handler_failure(self._peername, self.channel)
        self._end()

    async def _run(self, handler: Handler) -> None:
        channel = self.channel
        session_timeout = asyncio.timeout_at(self._deadline)
        try:
            async with session_timeout:
                await handler(channel)
        except TimeoutError:
            if not session_timeout.expired():
                _log_handler_failure(self._peername, channel)
                return
            self._session_timed_out()
        except asyncio.CancelledError:
            self._log_cancelled()
            raise
        except AGIError as exc:
            self._agi_failed(exc)
        except Exception:
            # Handlers may raise anything, and one failed call must not stop the server.
            _log_handler_failure(self._peername, channel)
        finally:
            self._end()

    def _task_done(self, task: asyncio.Task) -> None:
        if not self._ended:
            # Cancelled before its first step, so _run() never ran to end the session.
            self._log_cancelled()
            self._end()

    def _agi_failed(self, error: AGIError) -> None:
        """Log the AGIError that a handler raised, and end the session."""
        channel = self.channel
        if isinstance(error, AGIHangup):
            log.info(
                "%s: channel hung up (%s); closing the session",
                _session_name(self._peername, channel),
                error,
            )
            self._end()
            return
        self._peer_failed(
            "%s: %s; %s", _session_name(self._peername, channel), error, FAIL_POLICY_NOTE
        )

    def _log_cancelled(self) -> None:
        log.warning("%s: session cancelled by the server stopping; %s",
                    _session_name(self._peername, self.channel), FAIL_POLICY_NOTE)

    def _session_timed_out(self) -> None:
        self._peer_failed(
            "%s: session not finished after %s s; %s",
            _session_name(self._peername, self.channel),
            self._server._session_timeout,
            FAIL_POLICY_NOTE,
        )

    def _peer_failed(self, message: str, *args: object) -> None:
        self._server._warn_peer_failure(message, *args)
        self._end()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        connection = self._connection
        connection.set_listener(None)
        connection.close()
        self._server._ended(self)


class RejectionLog:
    """Logs rejected connections: the first from each address, then counts.

    summarise() logs one line per address with the rejections counted since the
    previous call. It drops the addresses that had none, so that a new burst
    from them is logged in full again.
    """

    def __init__(self, max_addresses: int = MAX_COUNTED_ADDRESSES):
        self._max_addresses = max_addresses
        self._counts: dict[str, int] = {}
        self._overflow = 0

    def record(self, address: str, peer: str) -> None:
        """Count one rejected connection. ``peer`` is ``address`` with its port."""
        if address in self._counts:
            self._counts[address] += 1
        elif len(self._counts) < self._max_addresses:
            self._counts[address] = 0
            log.warning(
                "rejected FastAGI connection from %s: the address is not in "
                "allowed_clients; further rejections are counted",
                peer,
            )
        else:
            self._overflow += 1

    def summarise(self) -> None:
        for address, count in list(self._counts.items()):
            if count:
                log.warning(
                    "rejected %d more FastAGI connections from %s: the address is "
                    "not in allowed_clients",
                    count,
                    address,
                )
                self._counts[address] = 0
            else:
                del self._counts[address]

        if self._overflow:
            log.warning(
                "rejected %d more FastAGI connections from other addresses not in "
                "allowed_clients",
                self._overflow,
            )
            self._overflow = 0


def _networks(
    values: Iterable[IPv4Network | IPv6Network | str],
) -> tuple[IPv4Network | IPv6Network, ...]:
    networks = []
    for value in values:
        try:
            if not isinstance(value, (str, IPv4Network, IPv6Network)):
                raise TypeError(f"expected a network, got {type(value).__name__}")
            networks.append(ip_network(value))
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"invalid allowed_clients entry {value!r}: {exc}; use a network "
                "such as 127.0.0.1/32 or 192.0.2.0/24"
            ) from None
    return tuple(networks)


def dual_stack_socket(port: int) -> socket.socket:
    """Bind an IPv6 socket on ``[::]:port`` that takes IPv4 connections too.

    An IPv4 client then connects from an IPv4-mapped address such as
    ``::ffff:127.0.0.1``, which ``peer_address`` reads as ``127.0.0.1``. Where
    the system cannot clear IPV6_V6ONLY, the socket takes IPv6 alone, and a
    warning is logged.
    """
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        # As asyncio's create_server does, so a restart can bind the port at
        # once while connections of the old process linger.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        except OSError as exc:
            log.warning(
                "FastAGI server on [::]:%d cannot take IPv4 connections on its IPv6 "
                "socket (%s), so IPv4 clients such as 127.0.0.1 cannot connect; set "
                "fastagi_listen to an IPv4 address for them",
                port,
                exc,
            )
        try:
            sock.bind((IPV6_ANY, port))
        except OSError as exc:
            # The message that asyncio's create_server gives, which names the address.
            raise OSError(
                exc.errno,
                f"error while attempting to bind on address {(IPV6_ANY, port)!r}: "
                f"{(exc.strerror or str(exc)).lower()}",
            ) from None
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def peer_address(peername: object) -> tuple[IPv4Address | IPv6Address | None, str]:
    """Return a socket peer name's address, IPv4-mapped IPv6 as IPv4, and its text form.

    The address is None for a peer name that is not an IP address and port.
    """
    if not isinstance(peername, tuple) or len(peername) < 2:
        return None, str(peername)

    try:
        address = ip_address(peername[0])
    except ValueError:
        return None, str(peername[0])
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped

    if isinstance(address, IPv6Address):
        return address, f"[{address}]:{peername[1]}"
    return address, f"{address}:{peername[1]}"


def _log_handler_failure(peername: object, channel: AGIChannel | None) -> None:
    log.exception(
        "%s: handler for script %r failed; %s",
        _session_name(peername, channel),
        channel.script if channel else "",
        FAIL_POLICY_NOTE,
    )


class _PeerName:
    """A peer's address as text, built only when a log line needs it."""

    __slots__ = ("_peername",)

    def __init__(self, peername: object):
        self._peername = peername

    def __str__(self) -> str:
        return peer_address(self._peername)[1]


def _session_name(peername: object, channel: AGIChannel | None) -> str:
    peer = peer_address(peername)[1]
    if channel is None or not channel.uniqueid:
        return f"FastAGI session from {peer}"
    return f"FastAGI session from {peer} uniqueid {channel.uniqueid}"
