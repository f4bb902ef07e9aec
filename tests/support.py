"""Helpers for tests: a callguard config and rate deck, a TLS certificate, a SQLite lock,
a free port, and a proxy that cuts the store off from the PostgreSQL server."""

import asyncio
import contextlib
import random
import socket
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

from callguard.config import load_config
from callguard.store import Store

# The kernel's range of local ports for outgoing connections, when /proc does not give it.
DEFAULT_EPHEMERAL_PORTS = (32768, 60999)
# Ports below this are left to the machine's own services.
LOWEST_TEST_PORT = 10000


def ephemeral_ports() -> range:
    """Return the ports that the kernel gives to outgoing connections."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(value) for value in text.split())
    except (OSError, ValueError):
        low, high = DEFAULT_EPHEMERAL_PORTS
    return range(low, high + 1)


def free_port() -> int:
    """Return a loopback TCP port that is free now, for a server that binds it later.

    The port lies outside the ephemeral range. Every outgoing connection of the
    suite takes its local port from that range, so one of them could take a
    port from it before the server binds.
    """
    ephemeral = ephemeral_ports()
    candidates = [port for port in range(LOWEST_TEST_PORT, 65536) if port not in ephemeral]
    for port in random.sample(candidates, len(candidates)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port outside the ephemeral range")


RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,0.0100,,60/60
441,United Kingdom geographic,0.0100,,60/60
447,United Kingdom mobile,0.0500,,60/60
449,United Kingdom premium rate,1.5000,0.10,60/60
4484,United Kingdom 084,0.1000,,60/60
4487,United Kingdom 087,0.1200,,60/60
short:118118,United Kingdom directory enquiries,3.0000,1.00,60/60
short:118500,United Kingdom directory enquiries,3.0000,1.00,60/60
353,Ireland,0.0200,,60/60
33,France,0.0200,,60/60
972,Israel,0.0800,,60/60
870,Inmarsat,6.0000,,60/60
"""

TRUNK = """\
[trunk gamma]
bar = premium, international, special-084, special-087, directory
daily_limit = 50.00
weekly_limit = 200.00
warn_percent = 80
max_concurrent_calls = 10
max_call_seconds = 7200
channel_pattern = PJSIP/gamma-*
rates = rates.csv
international_allow = IE
numbers = 01632960000-01632960099
opt_out = 01632960050
"""


def write_config(
    directory: Path,
    *,
    general: str = "",
    trunks: str = TRUNK,
    extra: str = "",
    rates: str = RATES,
    database: str | None = None,
    port: int = 4573,
    # Well above the first check's store read on a loaded machine. Tests of
    # the timeout itself set a short one.
    decision_timeout: str = "10s",
    ari: str = "enabled = no\n",
) -> Path:
    """Write callguard.conf and rates.csv into ``directory`` and return the config path."""
    (directory / "rates.csv").write_text(rates)
    database = database or f"sqlite:///{directory / 'callguard.db'}"
    path = directory / "callguard.conf"
    path.write_text(
        "[general]\n"
        f"database = {database}\n"
        f"fastagi_listen = 127.0.0.1:{port}\n"
        f"decision_timeout = {decision_timeout}\n"
        f"control_socket = {directory / 'callguard.sock'}\n"
        f"{general}\n"
        "[ari]\n"
        f"{ari}\n"
        f"{trunks}\n{extra}\n"
    )
    return path


def with_lock_timeout(url: str, timeout: str) -> str:
    """Return the PostgreSQL ``url`` with ``lock_timeout`` set to ``timeout`` in its options."""
    parsed = make_url(url)
    options = f"{parsed.query.get('options', '')} -clock_timeout={timeout}".strip()
    return parsed.update_query_dict({"options": options}).render_as_string(
        hide_password=False)


def create_database(config_path: Path) -> Path:
    """Create the store that the config at ``config_path`` names, as the daemon's first
    start does, and return ``config_path``."""
    with Store(load_config(config_path).general.database):
        pass
    return config_path


def self_signed_certificate(directory: Path, name: str = "cert") -> tuple[Path, Path]:
    """Write a new self-signed certificate for 127.0.0.1 and its key with openssl.

    Returns the paths of ``<name>.pem`` and ``<name>-key.pem`` in ``directory``.
    """
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    options = (
        "-x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
        "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1"
    )
    subprocess.run(
        ["openssl", "req", *options.split(), "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


@contextlib.contextmanager
def sqlite_write_locked(path: str | Path) -> Iterator[None]:
    """Hold the write lock of the SQLite database at ``path`` from another
    connection, as another process would."""
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        locker.execute("COMMIT")
        locker.close()


class PostgresProxy:
    """A loopback TCP proxy to the test PostgreSQL server that can stop listening."""

    def __init__(self, target_host: str, target_port: int):
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    @property
    def listening(self) -> bool:
        return self._server is not None

    async def listen(self) -> None:
        self._server = await asyncio.start_server(self._pipe, "127.0.0.1", self.port,
                                                  reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        """Close the listener and every open connection, so connecting is refused."""
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()
        self._server = None

    async def _pipe(self, client_reader: asyncio.StreamReader,
                    client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self._target)
        self._writers |= {client_writer, server_writer}

        async def copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        try:
            await asyncio.gather(copy(client_reader, server_writer),
                                 copy(server_reader, client_writer))
        finally:
            self._writers -= {client_writer, server_writer}
