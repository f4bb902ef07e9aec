"""The FastAGI server: accepts Asterisk's connections and runs one handler per session.

Whatever goes wrong in a session (a bad peer, a timeout, a handler that raises)
is logged once and ends only that session. Asterisk then finds the connection
closed, and the dialplan applies its fail policy unless the handler already set
the result.
"""

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)

from callguard.agi.connection import AGIConnection
from callguard.agi.protocol import (
    AGIChannel,
    AGIError,
    AGIHangup,
    AGILimits,
    read_environment,
)

from callguard.repeats import RepeatLimiter, suppressed_note

log = logging.getLogger(__name__)

Handler = Callable[[AGIChannel], Awaitable[None]]

DEFAULT_PORT = 4573
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
        self._summary_task: asyncio.Task | None = None
        self._connections: set[asyncio.Task] = set()
        self.active_sessions = 0

    async def start(self) -> None:
        """Bind the listening socket and start accepting connections."""
        if self._server is not None:
            raise RuntimeError("the FastAGI server is already started")

        loop = asyncio.get_running_loop()
        max_line = self._limits.max_line
        self._server = await loop.create_server(
            lambda: AGIConnection(max_line, self._accept), self._host, self._port
        )
        self._summary_task = asyncio.create_task(self._summarise_rejections())
        log.debug(
            "FastAGI server on %s serving scripts %s",
            self.sockets,
            ", ".join(sorted(self._routes)),
        )

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

        Sessions still running after ``grace`` seconds are cancelled.
        """
        if self._server is None:
            return

        self._server.close()
        if self._summary_task is not None:
            self._summary_task.cancel()
            await asyncio.wait([self._summary_task])

        running = set(self._connections)
        if running:
            _, pending = await asyncio.wait(running, timeout=grace)
            if pending:
                log.warning(
                    "FastAGI server stopping: cancelling %d sessions still running "
                    "after %s s; the dialplan applies its fail policy for them",
                    len(pending),
                    grace,
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)

        await self._server.wait_closed()
        self._rejections.summarise()
        self._server = None
        log.debug("FastAGI server stopped")

    def _accept(self, connection: AGIConnection) -> None:
        """Vet a new connection's peer, then start its session or close it."""
        peername = connection.transport.get_extra_info("peername")
        host = peername[0] if isinstance(peername, tuple) and peername else None
        allowed = self._verdicts.get(host)
        if allowed is None:
            address, _ = peer_address(peername)
            allowed = address is not None and self._is_allowed(address)
            if isinstance(host, str):
                if len(self._verdicts) >= MAX_COUNTED_ADDRESSES:
                    self._verdicts.clear()
                self._verdicts[host] = allowed
        if not allowed:
            address, peer = peer_address(peername)
            self._rejections.record(str(address) if address else peer, peer)
            connection.close()
            return
        if len(self._connections) >= self._max_sessions:
            connection.abort()
            suppressed = self._overloads.admit()
            if suppressed is not None:
                log.warning(
                    "FastAGI connection from %s closed: %d sessions are open, the "
                    "limit; %s%s", peer_address(peername)[1], len(self._connections),
                    FAIL_POLICY, suppressed_note(suppressed),
                )
            return

        task = asyncio.get_running_loop().create_task(
            self._serve_connection(connection, peername)
        )
        self._connections.add(task)
        task.add_done_callback(self._connections.discard)

    async def _serve_connection(self, connection: AGIConnection, peername: object) -> None:
        self.active_sessions += 1
        try:
            await self._run_session(connection, peername)
        finally:
            self.active_sessions -= 1
            connection.close()

    def _is_allowed(self, address: IPv4Address | IPv6Address) -> bool:
        return any(address in network for network in self._allowed)

    async def _run_session(self, connection: AGIConnection, peername: object) -> None:
        channel: AGIChannel | None = None
        session_timeout = asyncio.timeout(self._session_timeout)
        try:
            async with session_timeout:
                env = await read_environment(connection, self._limits)
                channel = AGIChannel(connection, env, self._limits, _PeerName(peername))

                handler = self._routes.get(channel.script)
                if handler is None:
                    log.warning(
                        "%s: unknown FastAGI script %r (request %r); %s",
                        _session_name(peername, channel),
                        channel.script,
                        env.get("agi_request", ""),
                        FAIL_POLICY_NOTE,
                    )
                    return
                await handler(channel)
        except TimeoutError:
            if not session_timeout.expired():
                _log_handler_failure(peername, channel)
                return
            self._warn_peer_failure(
                "%s: session not finished after %s s; %s",
                _session_name(peername, channel),
                self._session_timeout,
                FAIL_POLICY_NOTE,
            )
        except asyncio.CancelledError:
            log.warning(
                "%s: session cancelled by the server stopping; %s",
                _session_name(peername, channel),
                FAIL_POLICY_NOTE,
            )
            raise
        except AGIHangup as exc:
            if channel is None:
                self._warn_peer_failure(
                    "%s: %s; %s", _session_name(peername, channel), exc, FAIL_POLICY_NOTE
                )
            else:
                log.info(
                    "%s: channel hung up (%s); closing the session",
                    _session_name(peername, channel),
                    exc,
                )
        except AGIError as exc:
            self._warn_peer_failure(
                "%s: %s; %s", _session_name(peername, channel), exc, FAIL_POLICY_NOTE
            )
        except Exception:
            # Handlers may raise anything, and one failed call must not stop the server.
            _log_handler_failure(peername, channel)

    def _warn_peer_failure(self, message: str, *args: object) -> None:
        suppressed = self._peer_failures.admit()
        if suppressed is not None:
            log.warning(message + "%s", *args, suppressed_note(suppressed))

    async def _summarise_rejections(self) -> None:
        while True:
            await asyncio.sleep(REJECTION_SUMMARY_INTERVAL)
            self._rejections.summarise()


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
