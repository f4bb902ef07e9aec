"""The sd_notify protocol: READY, STOPPING, RELOADING and WATCHDOG over NOTIFY_SOCKET."""

import logging
import os
import socket
import time

log = logging.getLogger(__name__)


class Notifier:
    """Send state changes to systemd; does nothing when not started by systemd."""

    def __init__(self, environ: dict[str, str] | None = None):
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        self._address = address or None

        watchdog_usec = environ.get("WATCHDOG_USEC", "")
        self.watchdog_interval: float | None = None
        if watchdog_usec.isdigit() and int(watchdog_usec) > 0:
            # Ping at half the period systemd waits, as sd_watchdog_enabled(3) advises.
            self.watchdog_interval = int(watchdog_usec) / 2_000_000

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def send(self, message: str) -> None:
        if self._address is None:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError as exc:
            log.warning("failed to notify systemd (%s): %s", message.split("=")[0], exc)

    def ready(self, status: str = "") -> None:
        _write_waiting_log_lines()
        self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def reloading(self) -> None:
        _write_waiting_log_lines()
        monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send(f"RELOADING=1\nMONOTONIC_USEC={monotonic_usec}")

    def stopping(self) -> None:
        _write_waiting_log_lines()
        self.send("STOPPING=1")

    def status(self, status: str) -> None:
        self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        self.send("WATCHDOG=1")


def _write_waiting_log_lines() -> None:
    """Write the log lines waiting in the daemon's handler (BatchingStreamHandler).

    A state change then follows the lines of what led to it: once systemctl
    reload returns, the reload's lines are in the journal.
    """
    for handler in logging.getLogger().handlers:
        handler.flush()
