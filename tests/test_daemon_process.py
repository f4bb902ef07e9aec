"""The real ``callguard run`` as a subprocess: sd_notify, signals, restarts, the unit.

Each test starts the console script with a config in its own folder, talks to it
over real sockets on loopback and waits in real time for what the daemon sends.
"""

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from callguard import __version__
from callguard.daemon.control import ask
from callguard.store import Store
from emulator.ari import AriEmulator
from emulator.fastagi import (
    AGICall,
    AsteriskAGISession,
    encode_environment,
    run_fastagi_call,
)
from live_support import PASSWORD, free_port
from support import TRUNK, write_config

BIN = Path(sys.executable).parent
CALLGUARD = BIN / "callguard"
CALLGUARDCTL = BIN / "callguardctl"
UNIT = Path(__file__).resolve().parent.parent / "systemd" / "callguard.service"

# Seconds allowed for start-up (READY=1, or a start that fails), for a stop, and
# for one awaited step. Start-up and callguardctl are mostly Python importing
# the dependencies, which took 3 to 6 s on a loaded two-core machine, so these
# bounds only end a wait that would otherwise hang.
START_TIMEOUT = 60.0
STOP_TIMEOUT = 3.0
STEP_TIMEOUT = 30.0

# sd_notify(3) assignments and the environment that systemd passes.
NOTIFY_SOCKET = "NOTIFY_SOCKET"
WATCHDOG_USEC = "WATCHDOG_USEC"
READY = "READY"
RELOADING = "RELOADING"
STOPPING = "STOPPING"
WATCHDOG = "WATCHDOG"

# The highest "Overall exposure level" that the unit file may score.
MAX_EXPOSURE = Decimal("4.0")

CALLER_ID = "01632960010"
GEOGRAPHIC = "0118 496 0000"
LONDON = ZoneInfo("Europe/London")

# Per-second billing (6.00 a minute at 1/1), so the cost follows the real clock.
TRUNK_PER_SECOND = """\
[trunk gamma]
bar = premium, international
daily_limit = 100.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""
RATES_PER_SECOND = (
    "prefix,description,rate,connection_fee,increments\n44,United Kingdom,6.00,,1/1\n"
)
PRICE_PER_SECOND = Decimal("0.10")


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket that collects the messages."""

    def __init__(self, path: Path):
        self.path = path
        self.messages: list[dict[str, str]] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.setblocking(False)

    def close(self) -> None:
        self._socket.close()

    async def expect(self, name: str, value: str = "1",
                     timeout: float = STEP_TIMEOUT) -> dict[str, str]:
        """Wait for the next message that sets ``name`` to ``value`` and return it."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    data = await loop.sock_recv(self._socket, 4096)
                    message = parse_notify(data)
                    self.messages.append(message)
                    if message.get(name) == value:
                        return message
        except TimeoutError:
            raise AssertionError(
                f"no {name}={value} from the daemon within {timeout} s; "
                f"received {self.messages}"
            ) from None

    def drain(self) -> list[dict[str, str]]:
        """Return the messages waiting on the socket, without waiting for more."""
        received = []
        while True:
            try:
                data = self._socket.recv(4096)
            except BlockingIOError:
                break
            received.append(parse_notify(data))
        self.messages.extend(received)
        return received


def parse_notify(data: bytes) -> dict[str, str]:
    """Split an sd_notify datagram of ``NAME=VALUE`` lines into a dict."""
    pairs = (line.partition("=") for line in data.decode().splitlines())
    return {name: value for name, _, value in pairs}


class DaemonProcess:
    """One ``callguard run`` subprocess, restartable, logging to a file."""

    def __init__(self, directory: Path, config: Path, port: int, *,
                 watchdog_usec: int | None = None, umask: int = 0o022,
                 arguments: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.directory = directory
        self.env = env or {}
        self.config = config
        self.arguments = arguments  # between --config FILE and run, like --database
        self.port = port
        self.control_socket = directory / "callguard.sock"
        self.log_path = directory / "callguard.log"
        self.notify = NotifySocket(directory / "notify.sock")
        self.watchdog_usec = watchdog_usec
        self.umask = umask
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the daemon and wait for READY=1."""
        env = {name: value for name, value in os.environ.items()
               if name not in (NOTIFY_SOCKET, WATCHDOG_USEC, "WATCHDOG_PID")}
        env[NOTIFY_SOCKET] = str(self.notify.path)
        env.update(self.env)
        if self.watchdog_usec is not None:
            env[WATCHDOG_USEC] = str(self.watchdog_usec)

        with open(self.log_path, "ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(CALLGUARD), "--config", str(self.config), *self.arguments, "run",
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env,
                umask=self.umask,
            )
        try:
            await self.notify.expect(READY, timeout=START_TIMEOUT)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\ndaemon log:\n{self.log()}") from None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send_signal(self, number: int) -> None:
        self.process.send_signal(number)

    async def reload(self) -> None:
        """Send SIGHUP and wait until the daemon reports the reload done."""
        self.send_signal(signal.SIGHUP)
        await self.notify.expect(RELOADING)
        await self.notify.expect(READY)

    async def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        try:
            return await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(
                f"the daemon did not exit within {timeout} s\ndaemon log:\n{self.log()}"
            ) from None

    async def status(self) -> dict:
        return await ask(self.control_socket, {"command": "status"})

    async def kill(self) -> None:
        if self.running:
            self.process.kill()
            await self.process.wait()


@pytest.fixture
async def start_daemon(tmp_path):
    """Start ``callguard run`` on a fresh config, and kill what still runs after."""
    daemons: list[DaemonProcess] = []

    async def start(*, watchdog_usec=None, umask=0o022, arguments=(), control_socket=None,
                    env=None, listen_host=None, **config) -> DaemonProcess:
        port = free_port()
        path = write_config(tmp_path, port=port, **config)
        if listen_host is not None:
            path.write_text(path.read_text().replace(
                f"fastagi_listen = 127.0.0.1:{port}", f"fastagi_listen = {listen_host}:{port}"))
        if control_socket is not None:
            path.write_text(path.read_text().replace(
                f"control_socket = {tmp_path / 'callguard.sock'}",
                f"control_socket = {control_socket}"))
        daemon = DaemonProcess(tmp_path, path, port, watchdog_usec=watchdog_usec,
                               umask=umask, arguments=arguments, env=env)
        daemons.append(daemon)
        await daemon.start()
        return daemon

    yield start
    for daemon in daemons:
        await daemon.kill()
        daemon.notify.close()


@pytest.fixture
async def ari():
    emulator = AriEmulator(channelvars=("CALLGUARD_TRUNK", "BRIDGEPEER"))
    await emulator.start()
    yield emulator
    await emulator.stop()


def check_call(number: str, uniqueid: str = "1718355600.1") -> AGICall:
    return AGICall(extension=number, uniqueid=uniqueid, callerid=CALLER_ID,
                   arguments=(number, "gamma"))


async def check(
    port: int, number: str, uniqueid: str = "1718355600.1"
) -> dict[str, str]:
    """Run the FastAGI check as Asterisk's AGI() would; return the variables set."""
    outcome = await run_fastagi_call("127.0.0.1", port, check_call(number, uniqueid),
                                     timeout=STEP_TIMEOUT)
    return outcome.variables


async def poll(fetch, accept, description: str, timeout: float = STEP_TIMEOUT):
    """Call ``fetch()`` (sync or async) until ``accept`` takes its result; return it."""
    deadline = time.monotonic() + timeout
    while True:
        result = fetch()
        if asyncio.iscoroutine(result):
            result = await result
        if accept(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out waiting for {description}; last seen: {result!r}"
            )
        await asyncio.sleep(0.02)


def stored_call(database: str, uniqueid: str):
    with Store(database) as store:
        store.open()
        calls = {record.uniqueid: record for record in store.recent_calls(10)}
    return calls.get(uniqueid)


def stored_spend(database: str, day: str) -> Decimal:
    with Store(database) as store:
        store.open()
        return store.get_spend("gamma", "day", day)


def whole_seconds_up(delta: timedelta) -> int:
    micros = delta // timedelta(microseconds=1)
    return -(-micros // 1_000_000)


# fmt: off
CHECKS = [
    # dialled,        result,  reason,           maxsecs
    (GEOGRAPHIC,      "ALLOW", "ok",             "7200"),
    ("09011234567",   "DENY",  "barred:premium", ""),
    ("999",           "ALLOW", "emergency",      ""),
]
# fmt: on


async def test_ready_then_checks(start_daemon):
    daemon = await start_daemon()

    for dialled, result, reason, maxsecs in CHECKS:
        variables = await check(daemon.port, dialled)
        assert variables["CALLGUARD_RESULT"] == result, dialled
        assert variables["CALLGUARD_REASON"] == reason, dialled
        assert variables["CALLGUARD_MAXSECS"] == maxsecs, dialled

    ready = daemon.notify.messages[-1]
    assert ready[READY] == "1"
    assert ready["STATUS"] == "deciding calls"
    assert all(WATCHDOG not in message for message in daemon.notify.drain())


async def test_watchdog_pings(start_daemon):
    # 200 ms: the daemon pings at half that, as sd_watchdog_enabled(3) advises.
    daemon = await start_daemon(watchdog_usec=200_000)
    started = time.monotonic()

    for _ in range(5):
        await daemon.notify.expect(WATCHDOG, timeout=1.0)
    elapsed = time.monotonic() - started

    assert elapsed < 1.5
    assert daemon.running


async def test_sighup_bad_config_kept(start_daemon):
    daemon = await start_daemon()
    good = daemon.config.read_text()
    daemon.config.write_text(good.replace("daily_limit = 50.00", "daily_limit = fifty"))
    line = daemon.config.read_text().splitlines().index("daily_limit = fifty") + 1

    await daemon.reload()
    old_config = await check(daemon.port, GEOGRAPHIC, "1718355600.1")

    assert daemon.running
    assert f"{daemon.config}:{line}: [trunk gamma] daily_limit: 'fifty'" in daemon.log()
    assert old_config["CALLGUARD_RESULT"] == "ALLOW"
    assert old_config["CALLGUARD_REASON"] == "ok"

    barred = good.replace("bar = premium,", "bar = geographic, premium,")
    daemon.config.write_text(barred)
    await daemon.reload()
    new_config = await check(daemon.port, GEOGRAPHIC, "1718355600.2")

    assert new_config["CALLGUARD_RESULT"] == "DENY"
    assert new_config["CALLGUARD_REASON"] == "barred:geographic"


async def test_notify_without_mail_warned(start_daemon):
    daemon = await start_daemon(trunks=TRUNK + "notify = noc@example.com\n")
    warning = (f"WARNING callguard.daemon.app: {daemon.config}: [trunk gamma] notify = "
               "noc@example.com, but this trunk's alerts go nowhere until [smtp] host or "
               "[webhook] url is set")
    at_start = daemon.log().count(warning)

    await daemon.reload()

    assert at_start == 1
    assert daemon.log().count(warning) == 2


async def test_sighup_compares_listeners_with_running(start_daemon, tmp_path):
    daemon = await start_daemon()
    good = daemon.config.read_text()
    running = f"127.0.0.1:{daemon.port}"
    moved_socket = tmp_path / "moved.sock"
    listen_warning = (f"fastagi_listen changed in {daemon.config} to 127.0.0.1:4574, but "
                      f"callguard keeps listening on {running}; restart callguard to use it")
    socket_warning = (f"control_socket changed in {daemon.config} to {moved_socket}, but "
                      f"callguard keeps {daemon.control_socket}; restart callguard to use it")

    daemon.config.write_text(good.replace(f"fastagi_listen = {running}",
                                          "fastagi_listen = 127.0.0.1:4574")
                             .replace(str(daemon.control_socket), str(moved_socket)))
    await daemon.reload()
    changed_log = daemon.log()
    daemon.config.write_text(good)
    await daemon.reload()
    restored_log = daemon.log()
    variables = await check(daemon.port, GEOGRAPHIC)
    status = await daemon.status()

    assert changed_log.count(listen_warning) == 1
    assert changed_log.count(socket_warning) == 1
    assert restored_log.count("fastagi_listen changed") == 1
    assert restored_log.count("control_socket changed") == 1
    assert restored_log.count(f"reloaded {daemon.config}") == 2
    assert variables["CALLGUARD_RESULT"] == "ALLOW"
    assert "gamma" in status["trunks"]
    assert not moved_socket.exists()


@pytest.mark.parametrize("configured, running", [
    ("", "uvloop"),
    ("event_loop = auto\n", "uvloop"),
    ("event_loop = asyncio\n", "asyncio"),
])
async def test_runs_on_configured_loop(start_daemon, configured, running):
    daemon = await start_daemon(general=configured)
    ready = f"INFO callguard: callguard {__version__} ready, on the {running} event loop"

    variables = await check(daemon.port, GEOGRAPHIC)
    barred = await check(daemon.port, "09011234567", "1718355600.2")

    assert daemon.log().count(ready) == 1
    assert variables["CALLGUARD_RESULT"] == "ALLOW"
    assert barred["CALLGUARD_REASON"] == "barred:premium"


async def test_listening_line_brackets_ipv6(start_daemon):
    daemon = await start_daemon(listen_host="[::1]")

    # READY=1 goes out after the log lines waiting to be written.
    assert f"INFO callguard.daemon.app: FastAGI listening on [::1]:{daemon.port}\n" in daemon.log()


async def test_sighup_keeps_running_loop(start_daemon):
    daemon = await start_daemon()
    good = daemon.config.read_text()
    warning = (f"WARNING callguard.daemon.app: event_loop in {daemon.config} now means "
               "asyncio, but callguard keeps running on uvloop; restart callguard to use it")

    daemon.config.write_text(good.replace("[general]\n", "[general]\nevent_loop = asyncio\n"))
    for _ in range(2):
        await daemon.reload()
    changed_log = daemon.log()
    daemon.config.write_text(good)
    await daemon.reload()
    variables = await check(daemon.port, GEOGRAPHIC)

    assert changed_log.count(warning) == 2
    assert daemon.log().count(warning) == 2
    assert daemon.log().count(f"reloaded {daemon.config}") == 3
    assert variables["CALLGUARD_RESULT"] == "ALLOW"


async def test_sighup_applies_log_level(start_daemon):
    daemon = await start_daemon()
    good = daemon.config.read_text()
    reloaded = f"INFO callguard.daemon.app: reloaded {daemon.config}"

    daemon.config.write_text(good.replace("[general]\n", "[general]\nlog_level = warning\n"))
    await daemon.reload()
    await daemon.reload()
    quiet_log = daemon.log()
    daemon.config.write_text(good)
    await daemon.reload()
    await daemon.reload()

    # The level applies once the reload that sets it is done.
    assert quiet_log.count(reloaded) == 1
    assert daemon.log().count(reloaded) == 2


async def test_sigterm_answers_check(start_daemon):
    daemon = await start_daemon()
    call = check_call(GEOGRAPHIC)
    block = encode_environment(call.fastagi_environment("127.0.0.1", daemon.port))
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    # Everything but the blank line that ends the block: the session is open.
    writer.write(block[:-1])
    await writer.drain()

    signalled = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    await daemon.notify.expect(STOPPING)
    await poll(daemon.control_socket.exists, lambda exists: not exists,
               "the control socket to go")
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", daemon.port)

    writer.write(block[-1:])
    await writer.drain()
    session = AsteriskAGISession(call, reader, writer, on_hangup=lambda: None)
    await asyncio.wait_for(session.serve(), STEP_TIMEOUT)
    writer.close()
    returncode = await daemon.wait()
    stopped = time.monotonic() - signalled

    assert session.variables.get("CALLGUARD_RESULT") == "ALLOW"
    assert session.variables.get("CALLGUARD_MAXSECS") == "7200"
    assert returncode == 0
    assert stopped < STOP_TIMEOUT
    assert not daemon.control_socket.exists()
    assert "callguard.daemon.app: stopped" in daemon.log()


async def test_control_socket_mode(start_daemon):
    # A umask of 0 would leave the socket world-writable unless the daemon sets it.
    daemon = await start_daemon(umask=0)

    mode = daemon.control_socket.stat().st_mode

    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o660


async def test_kill9_call_adopted(start_daemon, ari, tmp_path):
    secret = tmp_path / "ari.secret"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)
    daemon = await start_daemon(
        trunks=TRUNK_PER_SECOND, rates=RATES_PER_SECOND,
        ari=(f"enabled = yes\nurl = {ari.url}\nusername = callguard\n"
             "password_file = ari.secret\nping_timeout = 2s\n"),
    )
    database = f"sqlite:///{tmp_path / 'callguard.db'}"
    await poll(daemon.status, lambda reply: reply["ari_connected"], "ARI to connect")

    number = "01632960123"
    results = []

    async def run_check(caller_id: str) -> bool:
        variables = await check(daemon.port, number, caller_id)
        results.append(variables)
        return variables["CALLGUARD_RESULT"] == "ALLOW"

    call = await ari.dial_out(number, callerid=CALLER_ID, dialstring=f"{number}@gamma",
                              check=run_check)
    assert results[0]["CALLGUARD_RESULT"] == "ALLOW"
    await poll(daemon.status, lambda reply: reply["trunks"]["gamma"]["live_calls"],
               "the daemon to follow the dialled leg")
    await ari.ring(call)
    # Ringing in real time keeps the answer time apart from the channel's creation.
    await asyncio.sleep(0.3)

    before_answer = datetime.now(timezone.utc)
    await ari.answer(call)
    after_answer = datetime.now(timezone.utc)
    record = await poll(lambda: stored_call(database, call.trunk_id),
                        lambda record: record is not None and record.state == "up",
                        "the answered call in the store")
    answered_at = record.answered_at

    await daemon.kill()
    assert daemon.process.returncode == -signal.SIGKILL
    await daemon.start()
    await poll(daemon.status, lambda reply: reply["ari_connected"], "ARI to reconnect")
    ctl = await asyncio.create_subprocess_exec(
        str(CALLGUARDCTL), "--config", str(daemon.config), "status", "--json",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    output, errors = await asyncio.wait_for(ctl.communicate(), STEP_TIMEOUT)
    assert ctl.returncode == 0, errors.decode()
    live = json.loads(output)["trunks"]["gamma"]["live_calls"]

    assert [leg["uniqueid"] for leg in live] == [call.trunk_id]
    assert live[0]["state"] == "up"
    assert datetime.fromisoformat(live[0]["answered_at"]) == answered_at
    assert before_answer - timedelta(milliseconds=1) <= answered_at <= after_answer

    before_hangup = datetime.now(timezone.utc)
    await ari.hangup(call)
    after_hangup = datetime.now(timezone.utc)
    ended = await poll(lambda: stored_call(database, call.trunk_id),
                       lambda record: record.state == "ended", "the call to end")

    assert ended.answered_at == answered_at
    assert before_hangup - timedelta(milliseconds=1) <= ended.ended_at <= after_hangup
    billed_seconds = whole_seconds_up(ended.ended_at - answered_at)
    assert ended.cost == PRICE_PER_SECOND * billed_seconds
    shortest = whole_seconds_up(before_hangup - after_answer)
    longest = whole_seconds_up(after_hangup - before_answer)
    assert PRICE_PER_SECOND * shortest <= ended.cost <= PRICE_PER_SECOND * longest
    day = answered_at.astimezone(LONDON).date().isoformat()
    assert stored_spend(database, day) == ended.cost
    assert ari.deletes == []


def test_unit_exposure_low():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")

    result = subprocess.run(
        [tool, "security", "--offline=yes", str(UNIT)],
        capture_output=True, text=True, timeout=60,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)

    assert match is not None, result.stdout + result.stderr
    assert Decimal(match[1]) <= MAX_EXPOSURE


def test_unit_verifies(tmp_path):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that the programs exist, so the unit names this venv's.
    text = UNIT.read_text().replace("/usr/bin/callguardctl", str(CALLGUARDCTL))
    text = text.replace("/usr/bin/callguard ", f"{CALLGUARD} ")
    unit = tmp_path / UNIT.name
    unit.write_text(text)

    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True,
                            timeout=60)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "Unknown key" not in result.stderr
    assert "/usr/bin" not in text


async def test_listener_fails_with_one_error(tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    ari_port = free_port()  # nothing listens there: the ARI client keeps failing
    (tmp_path / "ari.secret").write_text("secret\n")
    (tmp_path / "ari.secret").chmod(0o600)
    path = write_config(
        tmp_path, port=listener.getsockname()[1],
        ari=(f"enabled = yes\nurl = http://127.0.0.1:{ari_port}/\nusername = callguard\n"
             "password_file = ari.secret\n"),
    )
    try:
        finished = await asyncio.wait_for(asyncio.create_subprocess_exec(
            str(CALLGUARD), "--config", str(path), "run",
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        ), STEP_TIMEOUT)
        output, _ = await asyncio.wait_for(finished.communicate(), START_TIMEOUT)
    finally:
        listener.close()

    text = output.decode(errors="replace")
    assert finished.returncode == 1, text
    assert "cannot start" in text
    assert "address already in use" in text
    assert "Traceback" not in text
    assert "never retrieved" not in text


async def run_until_exit(config: Path) -> tuple[int, str, str]:
    """Run ``callguard run`` that is expected to fail at start; return its status and output."""
    process = await asyncio.create_subprocess_exec(
        str(CALLGUARD), "--config", str(config), "run",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), START_TIMEOUT)
    return process.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


async def test_sqlite_directory_missing_one_line(tmp_path):
    database = tmp_path / "missing" / "callguard.db"
    config = write_config(tmp_path, port=free_port(), database=f"sqlite:///{database}")

    status, stdout, stderr = await run_until_exit(config)

    assert status == 1, stderr
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if "ERROR" in line]
    assert "cannot start" in line
    assert str(database) in line
    assert f"directory {tmp_path / 'missing'} does not exist" in line


async def test_bad_rate_deck_no_traceback(tmp_path):
    rates = "prefix,description,rate,connection_fee,increments\n44,United Kingdom,-1,,60/60\n"
    config = write_config(tmp_path, port=free_port(), rates=rates)

    status, stdout, stderr = await run_until_exit(config)

    assert status == 2, stderr
    assert "Traceback" not in stderr
    [line] = [line for line in stderr.splitlines() if "ERROR" in line]
    assert "cannot start" in line
    assert f"{tmp_path / 'rates.csv'}:2: rate '-1' is invalid" in line


async def test_postgresql_refused_one_line(tmp_path):
    # Nothing listens on the port, so the connection is refused at once.
    url = f"postgresql+psycopg://callguard:s3cret-pw@127.0.0.1:{free_port()}/callguard"
    config = write_config(tmp_path, port=free_port(), database=url)

    status, stdout, stderr = await run_until_exit(config)

    assert status == 1, stderr
    assert "Traceback" not in stderr
    assert "s3cret-pw" not in stderr
    [line] = [line for line in stderr.splitlines() if "ERROR" in line]
    assert "callguard:***@127.0.0.1" in line
    assert "Connection refused" in line


# URLs with a password, as a sysadmin may write them: no log line, stored record
# or output may show the password.
ARI_URL_WITH_PASSWORD = "http://callguard:Sup3rS3cret@127.0.0.1:8088/"
WEBHOOK_URL_WITH_PASSWORD = "http://bob:HookPw9@127.0.0.1:9/hook"
URL_PASSWORDS = ("Sup3rS3cret", "HookPw9")
ARI_URL_SHOWN = ("[ari] url: 'http://callguard:***@127.0.0.1:8088/' has a query, "
                 "fragment or credentials; write only scheme, host, port and path")
WEBHOOK_URL_SHOWN = ("[webhook] url: 'http://bob:***@127.0.0.1:9/hook' has credentials "
                     "or a fragment")


def with_url_passwords(config: Path) -> tuple[int, int]:
    """Set the ARI and webhook URLs of ``config`` to URLs with passwords.

    Returns the lines of the two ``url`` keys.
    """
    text = config.read_text().replace(
        "[ari]\n", f"[ari]\nurl = {ARI_URL_WITH_PASSWORD}\n")
    text += f"\n[webhook]\nurl = {WEBHOOK_URL_WITH_PASSWORD}\n"
    config.write_text(text)
    lines = text.splitlines()
    return (lines.index(f"url = {ARI_URL_WITH_PASSWORD}") + 1,
            lines.index(f"url = {WEBHOOK_URL_WITH_PASSWORD}") + 1)


def stored_reload_details(database: str) -> list[str]:
    since = datetime.now(timezone.utc) - timedelta(hours=1)
    with Store(database) as store:
        return [change.detail for change in store.audit_trail(since, 100).changes]


async def test_sighup_masks_url_passwords(start_daemon, tmp_path):
    daemon = await start_daemon()
    good = daemon.config.read_text()
    ari_line, webhook_line = with_url_passwords(daemon.config)

    await daemon.reload()
    daemon.config.write_text(good)
    details = stored_reload_details(f"sqlite:///{tmp_path / 'callguard.db'}")
    listed = await run_ctl(daemon.config, "audit")
    listed_json = await run_ctl(daemon.config, "audit", "--json")

    log = daemon.log()
    assert daemon.running
    assert f"{daemon.config}:{ari_line}: {ARI_URL_SHOWN}" in log
    assert f"{daemon.config}:{webhook_line}: {WEBHOOK_URL_SHOWN}" in log
    assert len(details) == 1
    assert ARI_URL_SHOWN in details[0]
    assert WEBHOOK_URL_SHOWN in details[0]
    assert listed[0] == 0, listed
    assert listed_json[0] == 0, listed_json
    assert ARI_URL_SHOWN in listed[1]
    for password in URL_PASSWORDS:
        assert password not in log
        assert password not in details[0]
        assert password not in listed[1] + listed[2]
        assert password not in listed_json[1] + listed_json[2]


async def reload_with(daemon: DaemonProcess, old: str, new: str) -> tuple[str, list[str]]:
    """Reload ``daemon`` with ``old`` replaced by ``new`` in its config, then undo it.

    Returns the daemon's log and the details of the stored reload records.
    """
    good = daemon.config.read_text()
    daemon.config.write_text(good.replace(old, new))
    await daemon.reload()
    daemon.config.write_text(good)
    details = stored_reload_details(f"sqlite:///{daemon.directory / 'callguard.db'}")
    return daemon.log(), details


async def test_sighup_masks_unsplittable_url(start_daemon):
    # urllib rejects the fullwidth "#", and its message quotes the password.
    daemon = await start_daemon()

    log, details = await reload_with(
        daemon, "[ari]\n", "[ari]\nurl = http://callguard:Sup3r\uff03S3cret@127.0.0.1:8088/\n")

    assert daemon.running
    assert "[ari] url: 'http://callguard:***@127.0.0.1:8088/' is not a valid URL" in log
    assert "S3cret" not in log
    assert len(details) == 1
    assert "S3cret" not in details[0]


async def test_sighup_masks_password_in_ari_username(start_daemon, ari, tmp_path):
    daemon = await start_daemon()
    secret = tmp_path / "ari.secret"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)

    log, details = await reload_with(daemon, "[ari]\nenabled = no\n", (
        f"[ari]\nenabled = yes\nurl = {ari.url}\nusername = callguard:Sup3rS3cret\n"
        "password_file = ari.secret\n"))

    assert daemon.running
    assert "[ari] username: contains ':'" in log
    assert "Sup3rS3cret" not in log
    assert len(details) == 1
    assert "Sup3rS3cret" not in details[0]


async def test_start_masks_url_passwords(tmp_path):
    config = write_config(tmp_path, port=free_port())
    ari_line, webhook_line = with_url_passwords(config)

    status, stdout, stderr = await run_until_exit(config)

    assert status == 2, stderr
    assert f"{config}:{ari_line}: {ARI_URL_SHOWN}" in stderr
    assert f"{config}:{webhook_line}: {WEBHOOK_URL_SHOWN}" in stderr
    for password in URL_PASSWORDS:
        assert password not in stdout + stderr


async def ctl_check_output(config: Path, *options: str) -> tuple[dict, str]:
    """Run callguardctl check --json; return its report and what it wrote to stderr."""
    ctl = await asyncio.create_subprocess_exec(
        str(CALLGUARDCTL), "--config", str(config), "check", GEOGRAPHIC, "--trunk",
        "gamma", "--json", *options, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    output, errors = await asyncio.wait_for(ctl.communicate(), STEP_TIMEOUT)
    assert ctl.returncode == 0, errors.decode()
    return json.loads(output), errors.decode()


async def ctl_check(config: Path, *options: str) -> dict:
    report, _ = await ctl_check_output(config, *options)
    return report


async def test_ctl_check_asks_daemon(start_daemon):
    daemon = await start_daemon(trunks=TRUNK.replace("max_concurrent_calls = 10",
                                                     "max_concurrent_calls = 1"))
    first = await check(daemon.port, GEOGRAPHIC)  # its reservation fills the cap
    assert first["CALLGUARD_RESULT"] == "ALLOW"

    live = await ctl_check(daemon.config)
    offline = await ctl_check(daemon.config, "--offline")
    blocked = await asyncio.create_subprocess_exec(
        str(CALLGUARDCTL), "--config", str(daemon.config), "block", "1001",
        "--type", "endpoint", "--reason", "test", stdout=subprocess.DEVNULL,
    )
    await blocked.wait()
    by_channel = await ctl_check(daemon.config, "--channel", "PJSIP/1001-0000002a")

    assert (live["result"], live["reason"], live["decided_by"]) == (
        "DENY", "limit:concurrent", "daemon")
    assert Decimal(live["budgets"]["day"]["held"]) > 0
    assert (offline["result"], offline["reason"], offline["decided_by"]) == (
        "ALLOW", "ok", "offline")
    assert by_channel["reason"] == "blocked:offender"
    # A dry run reserves nothing, so the daemon still has one pending check.
    status = await daemon.status()
    assert status["trunks"]["gamma"]["pending_checks"] == 1


async def test_ctl_check_with_other_config(start_daemon, tmp_path):
    daemon = await start_daemon()
    other = tmp_path / "other"
    other.mkdir()
    # The same control socket and store, and another file, as a copy being edited.
    copy = other / "callguard.conf"
    copy.write_text(daemon.config.read_text())
    shutil.copy(tmp_path / "rates.csv", other / "rates.csv")

    own, own_errors = await ctl_check_output(daemon.config)
    elsewhere, errors = await ctl_check_output(copy)

    assert own["decided_by"] == "daemon"
    assert own_errors == ""
    assert "daemon_config" not in own
    assert elsewhere["decided_by"] == "offline"
    assert f"warning: the running daemon uses {daemon.config.resolve()}" in errors
    assert f"not {copy} and" in errors


@pytest.mark.parametrize("number, result, reason", [
    ("1" * 70_000, "DENY", "invalid-number"),
    ("0" * 65, "DENY", "invalid-number"),
    ("9" + " " * 70 + "99", "ALLOW", "emergency"),
])
async def test_ctl_check_overlong_number_json(start_daemon, number, result, reason):
    # Each number is longer than a dialled number may be, and the first longer
    # than a request to the daemon may be. The decision is still printed as JSON.
    daemon = await start_daemon()
    ctl = await asyncio.create_subprocess_exec(
        str(CALLGUARDCTL), "--config", str(daemon.config), "check", number,
        "--trunk", "gamma", "--json", stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    output, errors = await asyncio.wait_for(ctl.communicate(), STEP_TIMEOUT)

    assert ctl.returncode == 0, errors.decode()
    report = json.loads(output)
    assert (report["result"], report["reason"]) == (result, reason)


async def test_second_daemon_leaves_control_socket(start_daemon, tmp_path):
    first = await start_daemon()
    other = tmp_path / "other"
    other.mkdir()
    config = write_config(other, port=free_port(), database=f"sqlite:///{other / 'db'}")
    text = config.read_text().replace(f"control_socket = {other / 'callguard.sock'}",
                                      f"control_socket = {first.control_socket}")
    config.write_text(text)

    second = await asyncio.create_subprocess_exec(
        str(CALLGUARD), "--config", str(config), "run",
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(second.communicate(), START_TIMEOUT)

    assert second.returncode == 1
    assert "another callguard daemon is running" in output.decode()
    assert first.control_socket.is_socket()
    assert "trunks" in await first.status()


async def test_status_by_socket_with_broken_config(start_daemon):
    daemon = await start_daemon()
    daemon.config.write_text(daemon.config.read_text() + "\n[general]\nnonsense = 1\n")

    async def ctl(*options: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            str(CALLGUARDCTL), "--config", str(daemon.config), "status", "--json",
            *options, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        output, _ = await asyncio.wait_for(process.communicate(), STEP_TIMEOUT)
        return process.returncode, output.decode()

    broken, _ = await ctl()
    by_socket, output = await ctl("--socket", str(daemon.control_socket))

    assert broken == 2
    assert by_socket == 0
    assert "gamma" in json.loads(output)["trunks"]


# Operator changes, the daemon's store and its control socket

async def run_ctl(config: Path, *arguments: str, cwd: Path | None = None
                  ) -> tuple[int, str, str]:
    """Run callguardctl and return its exit status, standard output and standard error."""
    process = await asyncio.create_subprocess_exec(
        str(CALLGUARDCTL), "--config", str(config), *arguments,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd,
    )
    output, errors = await asyncio.wait_for(process.communicate(), STEP_TIMEOUT)
    return process.returncode, output.decode(), errors.decode()


async def endpoint_check(port: int, endpoint: str, uniqueid: str) -> str:
    """Run the check for a geographic call from ``endpoint`` and return CALLGUARD_REASON."""
    call = AGICall(extension=GEOGRAPHIC, uniqueid=uniqueid, callerid=CALLER_ID,
                   arguments=(GEOGRAPHIC, "gamma"), channel=f"PJSIP/{endpoint}-00000012")
    outcome = await run_fastagi_call("127.0.0.1", port, call, timeout=STEP_TIMEOUT)
    return outcome.variables["CALLGUARD_REASON"]


def active_block_keys(database: str) -> list[str]:
    with Store(database) as store:
        return [block.key for block in store.active_blocks(datetime.now(timezone.utc))]


async def test_block_for_other_store_rejected(start_daemon, tmp_path):
    in_use = f"sqlite:///{tmp_path / 'callguard.db'}"
    other = f"sqlite:///{tmp_path / 'other.db'}"
    daemon = await start_daemon(database=f"sqlite:///{tmp_path / 'configured.db'}",
                                arguments=("--database", in_use))

    status, output, errors = await run_ctl(daemon.config, "--database", other, "block",
                                           "1004", "--reason", "x")

    assert status == 1, output + errors
    assert "applied to the running daemon" not in output
    assert (f"callguardctl changed the store {other}, but this daemon uses {in_use}"
            in errors)
    assert f"The change is stored in {other}, which that daemon does not use" in errors
    assert await endpoint_check(daemon.port, "1004", "1718355600.1") == "ok"
    assert active_block_keys(in_use) == []
    assert "rejected the control command block" in daemon.log()

    status, _, errors = await run_ctl(daemon.config, "--database", other, "unblock",
                                      "1004", "--reason", "x")
    assert status == 1
    assert "rejected the change" in errors
    status, _, errors = await run_ctl(daemon.config, "--database", other, "reset",
                                      "gamma", "--window", "day", "--reason", "x")
    assert status == 1
    assert "rejected the change" in errors


async def test_block_same_store_other_path(start_daemon, tmp_path):
    daemon = await start_daemon()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "link").symlink_to(tmp_path)

    relative = await run_ctl(daemon.config, "--database", "sqlite:///../callguard.db",
                             "block", "1004", "--reason", "fraud", cwd=elsewhere)
    linked = await run_ctl(daemon.config, "--database",
                           f"sqlite:///{tmp_path / 'link' / 'callguard.db'}", "block",
                           "1005", "--reason", "fraud")

    for status, output, errors in (relative, linked):
        assert status == 0, output + errors
        assert "applied to the running daemon" in output
    assert await endpoint_check(daemon.port, "1004", "1718355600.1") == "blocked:offender"
    assert await endpoint_check(daemon.port, "1005", "1718355600.2") == "blocked:offender"


async def test_sighup_keeps_database_override(start_daemon, tmp_path):
    in_use = f"sqlite:///{tmp_path / 'callguard.db'}"
    daemon = await start_daemon(database=f"sqlite:///{tmp_path / 'configured.db'}",
                                arguments=("--database", in_use))

    await daemon.reload()
    assert "database changed" not in daemon.log()

    text = daemon.config.read_text()
    daemon.config.write_text(text.replace("configured.db", "changed.db"))
    await daemon.reload()
    assert "database changed" not in daemon.log()

    status, output, errors = await run_ctl(daemon.config, "--database", in_use, "block",
                                           "1004", "--reason", "fraud")
    assert status == 0, output + errors
    assert "applied to the running daemon" in output


async def test_sighup_warns_database_changed(start_daemon, tmp_path):
    daemon = await start_daemon()
    in_use = f"sqlite:///{tmp_path / 'callguard.db'}"
    changed = f"sqlite:///{tmp_path / 'changed.db'}"

    await daemon.reload()
    assert "database changed" not in daemon.log()

    daemon.config.write_text(daemon.config.read_text().replace(in_use, changed))
    await daemon.reload()
    assert (f"database changed in {daemon.config} to {changed}, but callguard keeps "
            f"using {in_use} until it restarts") in daemon.log()

    # callguardctl now writes to the file's new database, which the daemon does not use.
    status, _, errors = await run_ctl(daemon.config, "block", "1004", "--reason", "fraud")
    assert status == 1
    assert f"but this daemon uses {in_use}" in errors
    assert await endpoint_check(daemon.port, "1004", "1718355600.1") == "ok"


async def test_no_control_socket_logged_and_ctl(start_daemon, tmp_path):
    # Not even root can create a directory below a regular file.
    (tmp_path / "file").write_text("")
    unusable = tmp_path / "file" / "callguard.sock"
    daemon = await start_daemon(control_socket=unusable)
    assert f"control_socket = {unusable}" in daemon.config.read_text()

    log = daemon.log()
    assert f"ERROR callguard.daemon.app: no control socket at {unusable}: " in log
    assert f"control socket directory {unusable.parent} is not a directory" in log
    assert ("Blocks, unblocks and spend resets from callguardctl reach this daemon only "
            "through the store, within about 10 s.") in log

    status, output, errors = await run_ctl(daemon.config, "block", "1004", "--reason",
                                           "fraud")
    assert status == 0, errors
    assert f"no control socket exists at {unusable}" in output
    assert "a running daemon, if any, was not notified" in output
    assert "applies the change within about 10 seconds and needs no restart" in output
    assert "callguard is not running" not in output


@pytest.mark.parametrize("connected", [True, False])
async def test_log_lines_for_the_journal(start_daemon, tmp_path, connected):
    # systemd names the journal stream by its device and inode. Here the log
    # file is that stream, or another file is, as for a command whose stderr moved.
    log_file = tmp_path / "callguard.log"
    log_file.touch()
    other_file = tmp_path / "other.log"
    other_file.touch()
    named = os.stat(log_file if connected else other_file)
    daemon = await start_daemon(env={"JOURNAL_STREAM": f"{named.st_dev}:{named.st_ino}"})

    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    writer.write(b"not an agi line\n\n")
    await reader.read()
    writer.close()
    daemon.send_signal(signal.SIGTERM)
    assert await daemon.wait() == 0

    lines = daemon.log().splitlines()
    warning = next(line for line in lines if "invalid AGI environment line" in line)
    if connected:
        assert all(re.match(r"<[2-7]>", line) for line in lines)
        assert any(line.startswith("<6>INFO callguard.") for line in lines)
        assert warning.startswith("<4>WARNING callguard.agi.server: FastAGI session from ")
    else:
        assert all(re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} ", line) for line in lines)
        assert " WARNING callguard.agi.server: FastAGI session from " in warning
