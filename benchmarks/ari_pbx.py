"""Shared pieces of the ARI benchmarks: the callguard config, the rate deck and /proc.

Every trunk bills calls to the United Kingdom at 0.60 per minute in 1-second
blocks, so one block costs exactly 0.01 and a budget converts to blocks by
division.
"""

import os
import socket
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

APP = "callguard"
USERNAME = "callguard"
PASSWORD = "callguard-bench"
# ari.conf channelvars that the daemon reads back from GET /ari/channels.
CHANNELVARS = ("CALLGUARD_TRUNK", "BRIDGEPEER")
CALLER_ID = "01632960010"

BLOCK_SECONDS = 1
BLOCK_PRICE = Decimal("0.01")
RATE_DECK = (
    "prefix,description,rate,connection_fee,increments\n"
    f"44,United Kingdom,0.60,,{BLOCK_SECONDS}/{BLOCK_SECONDS}\n"
)
# No call of a run lasts this long, but the cap gives every trunk with a live
# call a timer.
MAX_CALL_SECONDS = 7200

# The spend windows must not roll over during a run: see window_timezone().
MIDNIGHT_MARGIN = timedelta(minutes=30)
FAR_ZONE = "Etc/GMT+6"


def trunk_name(index: int) -> str:
    return f"trunk{index:02d}"


def channel_pattern(trunk: str) -> str:
    """Return the fnmatch pattern of the PJSIP legs that Dial() places on ``trunk``."""
    return f"PJSIP/{trunk}-*"


def dialled_number(index: int) -> str:
    """Return a UK number in 01632 960000-960999, which Ofcom reserves for drama."""
    return f"01632960{index % 1000:03d}"


def caller_endpoint(index: int) -> str:
    return f"{1000 + index % 9000}"


def window_timezone(now: datetime | None = None) -> str:
    """Return a time zone whose local midnight is at least 30 minutes away from ``now``.

    Daily spend windows start at local midnight, and a run that crossed one would
    start a new budget halfway.
    """
    now = now or datetime.now(timezone.utc)
    for name in ("UTC", FAR_ZONE):
        local = now.astimezone(ZoneInfo(name))
        since_midnight = local - local.replace(
            hour=0, minute=0, second=0, microsecond=0
        )
        if MIDNIGHT_MARGIN < since_midnight < timedelta(days=1) - MIDNIGHT_MARGIN:
            return name
    raise AssertionError(
        f"neither UTC nor {FAR_ZONE} is {MIDNIGHT_MARGIN} away from midnight"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_config(
    directory: Path,
    limits: dict[str, Decimal],
    *,
    zone: str,
    fastagi_port: int,
    ari_url: str | None = None,
) -> Path:
    """Write callguard.conf, rates.csv and ari.secret into ``directory``.

    ``limits`` maps each trunk to its daily limit. ARI is enabled when ``ari_url``
    is given. Returns the path of callguard.conf.
    """
    (directory / "rates.csv").write_text(RATE_DECK)
    secret = directory / "ari.secret"
    secret.write_text(PASSWORD + "\n")
    secret.chmod(0o600)

    if ari_url is None:
        ari = "enabled = no\n"
    else:
        ari = (
            f"enabled = yes\nurl = {ari_url}\nusername = {USERNAME}\n"
            f"password_file = {secret.name}\napp = {APP}\n"
        )

    trunks = "".join(
        f"[trunk {name}]\n"
        f"daily_limit = {limit}\n"
        f"max_call_seconds = {MAX_CALL_SECONDS}\n"
        f"channel_pattern = {channel_pattern(name)}\n"
        "rates = rates.csv\n\n"
        for name, limit in limits.items()
    )
    path = directory / "callguard.conf"
    path.write_text(
        "[general]\n"
        f"database = sqlite:///{directory / 'callguard.db'}\n"
        f"fastagi_listen = 127.0.0.1:{fastagi_port}\n"
        f"control_socket = {directory / 'callguard.sock'}\n"
        f"timezone = {zone}\n"
        "log_level = info\n\n"
        f"[ari]\n{ari}\n"
        f"{trunks}"
    )
    return path


def read_vmrss_kib(pid: int | str = "self") -> int:
    """Return the resident set size of process ``pid`` in KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no VmRSS line")


def cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
