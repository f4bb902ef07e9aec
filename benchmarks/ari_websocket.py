"""ARI events per second through the real websocket: the daemon against the emulator.

Concurrent call flows each place a call (FastAGI check, then Dial), answer it
and hang it up from the caller's side, until ``calls`` calls are done. The run
ends when the daemon's store holds every call as ended, so its backlog of
events and store writes counts in the time.
"""

import asyncio
import itertools
import time
from decimal import Decimal
from pathlib import Path

from ari_daemon import Daemon, TimedAriEmulator, place_call, wait_until
from ari_pbx import free_port, trunk_name, window_timezone, write_config

from callguard.store.records import STATE_ENDED

UNREACHED_LIMIT = Decimal("1000000.00")
# Seconds that the daemon gets, after the last event is sent, to store every call.
BACKLOG_TIMEOUT = 120.0


async def measure_websocket(
    directory: Path, *, trunks: int, calls: int, concurrency: int, event_filter: bool
) -> dict:
    """Run the calls and return the figures.

    Without ``event_filter`` the emulator plays an Asterisk that has no
    event filters, so the daemon receives every event of every call.
    """
    ari = TimedAriEmulator()
    ari.event_filters = event_filter
    await ari.start()
    fastagi_port = free_port()
    limits = {trunk_name(index): UNREACHED_LIMIT for index in range(trunks)}
    config = write_config(
        directory,
        limits,
        zone=window_timezone(),
        fastagi_port=fastagi_port,
        ari_url=ari.url,
    )
    daemon = Daemon(config)
    try:
        await daemon.start()
        indexes = itertools.count()

        async def flow() -> None:
            while (index := next(indexes)) < calls:
                call = await place_call(
                    ari, fastagi_port, trunk_name(index % trunks), index
                )
                await ari.answer(call)
                await ari.hangup(call)

        events_before = ari.events_sent
        daemon_cpu_before = daemon.cpu_seconds()
        own_cpu_before = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(flow() for _ in range(concurrency)))
        sent_s = time.perf_counter() - started
        await wait_until(
            lambda: daemon.count_calls(STATE_ENDED) >= calls,
            BACKLOG_TIMEOUT,
            f"{calls} ended calls in the store",
        )
        elapsed_s = time.perf_counter() - started
        daemon_cpu_s = daemon.cpu_seconds() - daemon_cpu_before
        own_cpu_s = time.process_time() - own_cpu_before
        events = ari.events_sent - events_before
    finally:
        await daemon.stop()
        await ari.stop()

    return {
        "calls": calls,
        "concurrency": concurrency,
        "events": events,
        "sent_s": sent_s,
        "elapsed_s": elapsed_s,
        "per_s": events / elapsed_s,
        "calls_per_s": calls / elapsed_s,
        "event_filter": event_filter,
        "daemon_cpu_us_per_event": daemon_cpu_s / events * 1e6,
        "daemon_cpu_share": daemon_cpu_s / elapsed_s,
        "emulator_cpu_share": own_cpu_s / elapsed_s,
    }
