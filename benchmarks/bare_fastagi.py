"""A bare asyncio FastAGI server that sends the same decision for every call.

It is the baseline for measuring the cost of callguard's own FastAGI layer: per
connection it reads the agi_* block, sends the five SET VARIABLE commands that a
call decision sends, reads each reply and closes.
"""

import asyncio
import logging

log = logging.getLogger(__name__)

# Bytes per line, as callguard's default AGILimits.max_line.
MAX_LINE = 4096

# The variables of an allowed call, quoted as callguard quotes values.
DECISION = [
    ("CALLGUARD_RESULT", "ALLOW"),
    ("CALLGUARD_REASON", "ok"),
    ("CALLGUARD_CATEGORY", "international"),
    ("CALLGUARD_MAXSECS", "3600"),
    ("CALLGUARD_RATE", "0.0500"),
]


async def start_bare_server(host: str, port: int) -> asyncio.Server:
    """Start the bare server on ``host``:``port``. The caller closes it."""
    return await asyncio.start_server(_answer_call, host, port, limit=MAX_LINE)


async def _answer_call(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    try:
        while True:
            line = await reader.readline()
            if line in (b"", b"\n", b"\r\n"):
                break

        if line:
            for name, value in DECISION:
                writer.write(f'SET VARIABLE {name} "{value}"\n'.encode())
                await writer.drain()
                await reader.readline()
    except (ConnectionError, ValueError) as exc:
        log.warning("bare FastAGI session failed: %s", exc)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass
