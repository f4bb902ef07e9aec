"""callguard's ARI event path in this process: events per second, memory per live call.

Both feed EventTracker.on_event(), the method that the daemon's ARI listener
calls for every event, on an Application started as the daemon starts it, with
its SQLite store in a temporary directory and logging at info to a file.
"""

import asyncio
import gc
import logging
import time
from collections import deque
from decimal import Decimal
from pathlib import Path

from ari_calls import CallSource
from ari_pbx import free_port, read_vmrss_kib, trunk_name, window_timezone, write_config

from callguard.config import load_config
from callguard.daemon.app import Application
from callguard.metering.legs import UP

# The daemon's log line format (callguard.cli.common.setup_logging).
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# A daily limit that no run comes near: decisions and timers, but no hang-ups.
UNREACHED_LIMIT = Decimal("1000000.00")
# Calls per trunk that warm the store and the code paths before memory is read.
WARM_UP_CALLS = 2
# Calls between waits for the store writes to finish while live calls are built.
DRAIN_EVERY = 50


def log_to_file(directory: Path) -> None:
    """Log at info to a file in ``directory``, as the daemon logs to journald."""
    logging.basicConfig(
        filename=directory / "callguard.log",
        level=logging.INFO,
        format=LOG_FORMAT,
        force=True,
    )
    logging.getLogger("emulator").setLevel(logging.WARNING)


async def start_app(directory: Path, trunks: int, daily_limit: Decimal) -> Application:
    limits = {trunk_name(index): daily_limit for index in range(trunks)}
    path = write_config(
        directory, limits, zone=window_timezone(), fastagi_port=free_port()
    )
    app = Application(load_config(path))
    await app.start()
    return app


def feed(app: Application, events: list[dict]) -> None:
    for event in events:
        app.tracker.on_event(event)


def check_live(app: Application, expected: int) -> None:
    """Raise AssertionError unless callguard follows ``expected`` legs, all answered."""
    legs = app.guard.legs
    answered = sum(1 for leg in legs.values() if leg.state == UP)
    if len(legs) != expected or answered != expected:
        raise AssertionError(
            f"callguard follows {len(legs)} legs, {answered} answered; expected "
            f"{expected} answered legs"
        )


async def set_daily_limit(app: Application, limit: Decimal) -> None:
    """Write ``limit`` on every trunk into the config and reload it, as SIGHUP does."""
    config = app.config
    write_config(
        config.path.parent,
        {name: limit for name in config.trunks},
        zone=config.general.timezone.key,
        fastagi_port=config.general.fastagi_port,
    )
    if not await app.reload():
        raise RuntimeError(f"callguard rejected the config written to {config.path}")


async def feed_steps(
    app: Application, source: CallSource, live: deque, names: list[str], calls: int
) -> dict:
    """Feed ``calls`` steps and time them. Each step dials and answers a call, ends
    the oldest live call on the same trunk, and waits for the store writes."""
    # time.thread_time() run on the store's thread returns that thread's CPU time.
    store_cpu_before = await app.worker.call(time.thread_time)
    events_fed = 0
    on_event_s = 0.0
    store_s = 0.0
    for index in range(calls):
        call, events = await source.dial(names[index % len(names)])
        events += source.answer(call)
        events += source.hang_up(live.popleft())
        live.append(call)

        started = time.perf_counter()
        feed(app, events)
        fed = time.perf_counter()
        await app.guard.drain()
        on_event_s += fed - started
        store_s += time.perf_counter() - fed
        events_fed += len(events)

    store_cpu_s = await app.worker.call(time.thread_time) - store_cpu_before
    return {
        "calls": calls,
        "events": events_fed,
        "on_event_per_s": events_fed / on_event_s,
        "with_store_per_s": events_fed / (on_event_s + store_s),
        "store_ms_per_call": store_s / calls * 1e3,
        "store_cpu_ms_per_call": store_cpu_s / calls * 1e3,
    }


async def measure_event_path(
    directory: Path,
    *,
    trunks: int,
    live_per_trunk: int,
    calls: int,
    limits: tuple[Decimal, ...] = (UNREACHED_LIMIT,),
) -> list[dict]:
    """Feed ``calls`` whole calls while ``live_per_trunk`` calls stay up on each trunk,
    once per daily limit in ``limits``, and return the figures of each run.

    The emulator building the events and the check are not timed. The store
    writes are timed apart from on_event(), because their thread would otherwise
    take the GIL in the middle of the timed calls.
    """
    app = await start_app(directory, trunks, limits[0])
    source = CallSource(app)
    names = [trunk_name(index) for index in range(trunks)]
    live: deque = deque()

    for index in range(trunks * live_per_trunk):
        call, events = await source.dial(names[index % trunks])
        feed(app, events + source.answer(call))
        live.append(call)
        await app.guard.drain()

    results = []
    for run, limit in enumerate(limits):
        if run:
            await set_daily_limit(app, limit)
        figures = await feed_steps(app, source, live, names, calls)
        results.append({"live_per_trunk": live_per_trunk, "limit": limit, **figures})

    check_live(app, trunks * live_per_trunk)
    await app.stop()
    return results


async def measure_memory(directory: Path, *, trunks: int, calls: int) -> dict:
    """Read VmRSS before and after ``calls`` answered calls over ``trunks`` trunks."""
    gc.collect()
    at_start_kib = read_vmrss_kib()
    app = await start_app(directory, trunks, UNREACHED_LIMIT)
    source = CallSource(app)
    names = [trunk_name(index) for index in range(trunks)]

    for index in range(trunks * WARM_UP_CALLS):
        call, events = await source.dial(names[index % trunks])
        feed(app, events + source.answer(call) + source.hang_up(call))
        await asyncio.sleep(0)
    await app.guard.drain()
    gc.collect()
    before_kib = read_vmrss_kib()

    source.keep_calls = False
    started = time.perf_counter()
    for index in range(calls):
        call, events = await source.dial(names[index % trunks])
        feed(app, events + source.answer(call))
        if index % DRAIN_EVERY == 0:
            # A backlog of store writes would leave its memory in the figure.
            await app.guard.drain()
        else:
            await asyncio.sleep(0)
    await app.guard.drain()
    build_s = time.perf_counter() - started
    gc.collect()
    after_kib = read_vmrss_kib()

    check_live(app, calls)
    now = app.clock.now()
    timed_trunks = sum(
        1 for meter in app.guard.meters.values() if meter.next_deadline(now) is not None
    )
    await app.stop()
    return {
        "calls": calls,
        "trunks": trunks,
        "timed_trunks": timed_trunks,
        "at_start_kib": at_start_kib,
        "before_kib": before_kib,
        "after_kib": after_kib,
        "build_s": build_s,
    }
