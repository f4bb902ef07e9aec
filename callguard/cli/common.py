"""Pieces shared by the ``callguard`` and ``callguardctl`` commands."""

import argparse
import asyncio
import logging
import os
import sys
import time
from typing import TextIO

from callguard.text import escape_log_message
from callguard.urls import mask_url
from callguard.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from callguard.config.categories import parse_categories
from callguard.config.errors import InvalidValue

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
# The change is stored, but the daemon's control socket exists and the request failed.
EXIT_DAEMON_UNREACHABLE = 3

# The largest LIMIT that SQLite and PostgreSQL accept, a signed 64-bit integer.
MAX_ROW_LIMIT = 2**63 - 1


def row_limit(text: str) -> int:
    """Parse a --limit: a whole number of rows from 1 to MAX_ROW_LIMIT."""
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a whole number of 1 or more; write it like 50"
        )
    if int(text) > MAX_ROW_LIMIT:
        raise argparse.ArgumentTypeError(
            f"{text!r} is more than {MAX_ROW_LIMIT}, the largest limit that the "
            "database takes; write a smaller number, like 50"
        )
    return int(text)


def category_name(text: str) -> str:
    """Parse a --category: one category of the prefix table, in any case."""
    try:
        categories = parse_categories(text, barring=False)
    except InvalidValue as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if len(categories) != 1:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not one category; write one, like premium"
        )
    return next(iter(categories))


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", default=DEFAULT_CONFIG_PATH, metavar="FILE",
        help=f"config file (default: {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--database", metavar="URL",
        help="database URL, overriding [general] database "
        "(sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)",
    )


def read_config(args: argparse.Namespace, change: str = "", advice: str = "") -> Config:
    """Load the config named on the command line, printing every problem and exiting on error.

    ``change`` names the operator command that needs the config, such as
    ``block``. Its error message then explains how to act while the file has
    errors. ``advice``, when given, is printed after the error instead, for a
    command that can run without the config.
    """
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        if advice:
            print(advice, file=sys.stderr)
        elif change:
            print(f"callguardctl {change} needs a config that loads, to find the store and "
                  "the daemon; the running daemon keeps its last good config. Fix the "
                  "lines above, or give --config a copy of the last good file.",
                  file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None
    except OSError as exc:
        print(f"{args.config}: cannot read the config: {exc.strerror}", file=sys.stderr)
        if advice:
            print(advice, file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None

    if getattr(args, "database", None):
        try:
            config = config.with_database(args.database)
        except ValueError as exc:
            print(f"--database: {exc}", file=sys.stderr)
            raise SystemExit(EXIT_CONFIG) from None
    return config


class EscapingFormatter(logging.Formatter):
    """A formatter that escapes the control characters callers put into messages.

    Dialled numbers, caller IDs and channel names reach log lines, and a
    carriage return or an escape sequence in one could rewrite the line on a
    terminal or in ``journalctl``. Tracebacks are added after this step.
    """

    def __init__(self, fmt: str):
        super().__init__(fmt)
        self._second = -1
        self._second_text = ""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_log_message(super().formatMessage(record))

    def formatException(self, ei) -> str:
        # An unexpected exception may quote a config value, such as a URL with
        # its password. Log messages mask the values that they name themselves.
        return mask_url(super().formatException(ei))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The daemon logs a line per call, so the date and time of the current
        # second are formatted once and the milliseconds added to each line.
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime(self.default_time_format,
                                              self.converter(record.created))
            self._second = second
        return self.default_msec_format % (self._second_text, record.msecs)


# Syslog priorities (RFC 5424) of the logging levels, for the journal.
JOURNAL_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
                      (logging.INFO, 6))
JOURNAL_DEBUG = 7


class JournalFormatter(EscapingFormatter):
    """A formatter for a service whose stderr is connected to systemd's journal.

    journald reads a ``<N>`` at the start of a line as the line's syslog
    priority (SyslogLevelPrefix=, on by default in systemd.exec(5)), so
    ``journalctl -p err`` finds errors. It also stamps the time itself, and
    stores each line of a message as an entry of its own, so every line
    carries the prefix.
    """

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{journal_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).split("\n"))


def journal_priority(level: int) -> int:
    """Return the syslog priority of a logging level."""
    for threshold, priority in JOURNAL_PRIORITIES:
        if level >= threshold:
            return priority
    return JOURNAL_DEBUG


def connected_to_journal(stream: TextIO) -> bool:
    """Check whether ``stream`` is the stream to the journal that systemd gave this service.

    systemd sets JOURNAL_STREAM to the device and inode of that stream
    (systemd.exec(5)). A command run from such a service inherits the variable
    even when its stderr goes elsewhere, so the two are compared.
    """
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
    return (stat.st_dev, stat.st_ino) == (int(device), int(inode))


# Records that wait to be written together. A record beyond this many is
# written at once, with those waiting before it.
MAX_PENDING_RECORDS = 1000
# Seconds for which the daemon's INFO lines wait to be written together.
WRITE_INTERVAL = 0.05


class BatchingStreamHandler(logging.StreamHandler):
    """A stream handler that writes the INFO and DEBUG lines of the event loop in batches.

    The daemon logs a line per call. Formatting and writing each among the
    FastAGI work of its check costs more CPU time than formatting many back
    to back, in one write. So the lines logged in the event loop's thread
    wait up to ``interval`` seconds, and with ``interval`` 0 until the loop
    step ends. Records of WARNING and above, and records logged outside the
    event loop's thread or when no loop runs, are written at once, after the
    lines waiting before them, so lines keep their order.
    """

    def __init__(self, stream: TextIO, interval: float = WRITE_INTERVAL):
        super().__init__(stream)
        self._interval = interval
        self._pending: list[logging.LogRecord] = []
        # The loop on which a write of the pending lines is scheduled.
        self._scheduled_on: asyncio.AbstractEventLoop | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle() holds the handler's lock while this runs.
        if record.levelno < logging.WARNING:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None and len(self._pending) < MAX_PENDING_RECORDS:
                # The message is built now, from the arguments as they are now.
                try:
                    record.msg = record.getMessage()
                except Exception:
                    self.handleError(record)
                    return
                record.args = None
                self._pending.append(record)
                if self._scheduled_on is not loop:
                    self._scheduled_on = loop
                    if self._interval > 0:
                        loop.call_later(self._interval, self._write_scheduled)
                    else:
                        loop.call_soon(self._write_scheduled)
                return
        self._write_pending()
        super().emit(record)

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()
        super().flush()

    def _write_scheduled(self) -> None:
        self.acquire()
        try:
            self._scheduled_on = None
            self._write_pending()
        finally:
            self.release()

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        lines = []
        for record in pending:
            try:
                lines.append(self.format(record) + self.terminator)
            except Exception:
                self.handleError(record)
        try:
            self.stream.write("".join(lines))
            self.stream.flush()
        except Exception:
            self.handleError(pending[-1])


def setup_logging(level: str, *, batched: bool = False) -> None:
    """Log to stderr, in the journal's format when systemd connected stderr to it.

    With ``batched`` (the daemon), the event loop's INFO lines are written
    together, at most WRITE_INTERVAL seconds after they are logged
    (BatchingStreamHandler).
    """
    # No line format here shows the source line, thread or process, so log
    # records skip collecting them (the logging HOWTO's "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = BatchingStreamHandler(sys.stderr) if batched else logging.StreamHandler(sys.stderr)
    if connected_to_journal(sys.stderr):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(
            EscapingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(handlers=[handler])
    set_log_level(level)


def set_log_level(level: str) -> None:
    """Set the lowest level logged, a [general] log_level such as ``info``."""
    logging.getLogger().setLevel(getattr(logging, level.upper(), logging.INFO))
