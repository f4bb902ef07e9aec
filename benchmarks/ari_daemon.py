"""The callguard daemon in its own process, facing an ARI emulator in this one.

This process plays Asterisk: the ARI emulator from tests/emulator serves REST
and the events websocket, and each outbound call runs the FastAGI check against
the daemon before its Dial(), as the dialplan in etc/asterisk-snippets does.
"""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from ari_pbx import (  # noqa: E402
    APP,
    CALLER_ID,
    CHANNELVARS,
    PASSWORD,
    USERNAME,
    caller_endpoint,
    cpu_seconds,
    dialled_number,
    read_vmrss_kib,
)
from emulator.ari import AriEmulator, EmulatedCall  # noqa: E402
from emulator.fastagi import AGICall, run_fastagi_call  # noqa: E402

from callguard.agi.variables import CALLGUARD_RESULT  # noqa: E402
from callguard.daemon.control import ask  # noqa: E402
from callguard.policy.decision import ALLOW  # noqa: E402

START_TIMEOUT = 30.0
# Logged by the daemon once its first ARI reconciliation is done. Legs dialled
# before that are adopted from GET /ari/channels and not linked to their check.
CONNECTED_LOG_LINE = "ARI connected;"
# Bounds the run when callguard is stuck retrying hang-ups at shutdown.
STOP_TIMEOUT = 20.0
POLL_SECONDS = 0.01


class DeleteLog(list):
    """The DELETE /ari/channels/{id} requests that the emulator received, in order.

    ``arrivals`` contains the UTC time at which each request reached its handler.
    """

    def __init__(self) -> None:
        super().__init__()
        self.arrivals: list[datetime] = []

    def append(self, item: tuple[str, dict]) -> None:
        self.arrivals.append(datetime.now(timezone.utc))
        super().append(item)


class TimedAriEmulator(AriEmulator):
    """An AriEmulator on the system clock that records when each DELETE arrives."""

    def __init__(self) -> None:
        super().__init__(
            username=USERNAME, password=PASSWORD, app=APP, channelvars=CHANNELVARS
        )
        # The REST handler of DELETE /ari/channels/{id} appends to this list
        # before it does anything else.
        self._http.rest.deletes = DeleteLog()
        if not isinstance(self.deletes, DeleteLog):
            raise RuntimeError(
                "the ARI emulator no longer records DELETEs in _http.rest.deletes; "
                "update TimedAriEmulator to time-stamp them"
            )

    def delete_arrivals(self) -> list[tuple[str, datetime]]:
        """Return (channel id, arrival time) of every DELETE received so far."""
        log = self._http.rest.deletes
        return [(channel_id, at) for (channel_id, _), at in zip(log, log.arrivals)]


async def wait_until(condition, timeout: float, description: str) -> None:
    """Poll ``condition()`` until it is true; raise TimeoutError after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {description}")
        await asyncio.sleep(POLL_SECONDS)


class Daemon:
    """``callguard run`` as a child process that logs to callguard.log by its config."""

    def __init__(self, config: Path):
        self.config = config
        self.directory = config.parent
        self.database = self.directory / "callguard.db"
        self.control_socket = self.directory / "callguard.sock"
        self.log_file = self.directory / "callguard.log"
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError("the daemon is not running; call start() first")
        return self.process.pid

    async def start(self) -> None:
        """Start the daemon and wait until it has connected to ARI and reconciled."""
        environment = dict(os.environ)
        # Not a systemd service here: its readiness messages must go nowhere.
        environment.pop("NOTIFY_SOCKET", None)
        with open(self.log_file, "w") as log_file:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "callguard.cli.daemon",
                    "--config",
                    str(self.config),
                    "run",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=environment,
            )

        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"callguard exited with {self.process.returncode}; "
                    f"see {self.log_file}"
                )
            try:
                connected = (await self.status()).get("ari_connected")
            except OSError:
                connected = False  # the control socket is not up yet
            if connected and CONNECTED_LOG_LINE in self.log_file.read_text():
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"callguard did not log {CONNECTED_LOG_LINE!r} within "
                    f"{START_TIMEOUT} s; see {self.log_file}"
                )
            await asyncio.sleep(0.05)

    async def status(self) -> dict:
        return await ask(self.control_socket, {"command": "status"})

    def reload(self) -> None:
        os.kill(self.pid, signal.SIGHUP)

    async def stop(self) -> float | None:
        """Send SIGTERM and wait for the exit while this loop keeps serving ARI.

        Returns the seconds that the daemon took to exit, or None when it was
        still running after STOP_TIMEOUT and had to be killed.
        """
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.perf_counter()
        self.process.terminate()
        try:
            await asyncio.to_thread(self.process.wait, STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
            return None
        return time.perf_counter() - started

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_kib(self) -> int:
        return read_vmrss_kib(self.pid)

    def count_calls(self, state: str) -> int:
        """Return how many calls in the store are in ``state``, read-only."""
        uri = f"file:{self.database}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as connection:
            row = connection.execute(
                "SELECT count(*) FROM calls WHERE state = ?", (state,)
            ).fetchone()
        return row[0]


async def place_call(
    ari: AriEmulator, fastagi_port: int, trunk: str, index: int
) -> EmulatedCall:
    """Dial call number ``index`` on ``trunk``: the FastAGI check, then Dial().

    Raises RuntimeError when the daemon denies the call, because every
    benchmark call must be allowed for its figures to mean anything.
    """
    number = dialled_number(index)
    endpoint = caller_endpoint(index)
    results: dict[str, str] = {}

    async def check(caller_id: str) -> bool:
        outcome = await run_fastagi_call(
            "127.0.0.1",
            fastagi_port,
            AGICall(
                extension=number,
                uniqueid=caller_id,
                channel=f"PJSIP/{endpoint}-{index:08x}",
                callerid=CALLER_ID,
                arguments=(number, trunk, CALLER_ID),
            ),
        )
        results.update(outcome.variables)
        return outcome.variables.get(CALLGUARD_RESULT) == ALLOW

    call = await ari.dial_out(
        number,
        trunk=trunk,
        caller_endpoint=endpoint,
        callerid=CALLER_ID,
        dialstring=f"{number}@{trunk}",
        check=check,
    )
    if results.get(CALLGUARD_RESULT) != ALLOW:
        raise RuntimeError(
            f"callguard denied {number} on {trunk} ({results}), but every benchmark "
            "call must be allowed: update the config in ari_pbx.py"
        )
    return call
