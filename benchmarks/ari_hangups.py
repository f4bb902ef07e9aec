"""Hang-ups when a budget runs out: the delay to each DELETE and the overspend per call.

The daemon runs on the system clock with ``calls_per_trunk`` answered calls on
each trunk. Once every call is up, the config gets a daily limit per trunk that
runs out at a target instant a few seconds ahead, staggered between trunks, and
the daemon reloads it (SIGHUP). A trunk's limit is the cost of the blocks that
its calls begin before its target, so the limit bites at the first block start
at or after the target: the trunk's deadline. The benchmark computes it from
the answer times that the daemon reports, not from what the daemon decides.
"""

import asyncio
import gc
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from ari_budget import TrunkPlan, from_us, plan_trunk, to_us
from ari_daemon import Daemon, EmulatedCall, TimedAriEmulator, place_call, wait_until
from ari_pbx import free_port, trunk_name, window_timezone, write_config

from callguard.store import Store
from callguard.store.records import STATE_ENDED, STATE_UP

# Enough for every call to pass its check while the calls are placed.
PLACING_LIMIT = Decimal("1000.00")
PLACING_CONCURRENCY = 50
# The reload must be applied this long before the first deadline.
MIN_RELOAD_MARGIN = timedelta(milliseconds=500)
# How long after the last deadline callguard gets to send every DELETE.
HANGUP_WAIT = timedelta(seconds=10)
# Seconds that the daemon gets to store answers and ends.
STORE_TIMEOUT = 60.0
STATUS_POLL_SECONDS = 0.05


async def place_and_answer(
    ari: TimedAriEmulator, fastagi_port: int, trunks: int, total: int
) -> list[EmulatedCall]:
    slots = asyncio.Semaphore(PLACING_CONCURRENCY)

    async def one(index: int) -> EmulatedCall:
        async with slots:
            trunk = trunk_name(index % trunks)
            call = await place_call(ari, fastagi_port, trunk, index)
            await ari.answer(call)
            return call

    return await asyncio.gather(*(one(index) for index in range(total)))


def answer_times(status: dict) -> dict[str, dict[str, int]]:
    """Return {trunk: {leg uniqueid: answer time in µs}} from the daemon's status."""
    result = {}
    for trunk, figures in status["trunks"].items():
        result[trunk] = {
            leg["uniqueid"]: to_us(datetime.fromisoformat(leg["answered_at"]))
            for leg in figures["live_calls"]
            if leg["state"] == STATE_UP
        }
    return result


async def apply_limits(daemon: Daemon, plans: list[TrunkPlan]) -> datetime:
    """Reload the daemon with the planned limits and return when it reports them."""
    daemon.reload()
    expected = {plan.trunk: plan.limit for plan in plans}
    while True:
        status = await daemon.status()
        reported = {
            trunk: Decimal(status["trunks"][trunk]["daily_limit"]) for trunk in expected
        }
        if reported == expected:
            return datetime.now(timezone.utc)
        await asyncio.sleep(STATUS_POLL_SECONDS)


def plan_trunks(
    answered: dict[str, dict[str, int]], lead: timedelta, stagger: timedelta
) -> list[TrunkPlan]:
    """Plan each trunk's limit for a target ``lead`` from now, ``stagger`` apart."""
    first_target_us = to_us(datetime.now(timezone.utc) + lead)
    stagger_us = stagger // timedelta(microseconds=1)
    return [
        plan_trunk(trunk, list(legs.values()), first_target_us + index * stagger_us)
        for index, (trunk, legs) in enumerate(sorted(answered.items()))
    ]


async def watch_hangups(
    daemon: Daemon, ari: TimedAriEmulator, calls: list[EmulatedCall], wait_s: float
) -> dict:
    """Wait up to ``wait_s`` for a DELETE of every trunk leg, then end what is left.

    Returns the time waited, the CPU share of the daemon and of this process
    meanwhile, and the calls that their callers had to end.
    """
    daemon_cpu_before = daemon.cpu_seconds()
    own_cpu_before = time.process_time()
    started = time.perf_counter()
    trunk_legs = {call.trunk_id for call in calls}
    try:
        await wait_until(
            lambda: trunk_legs <= {channel for channel, _ in ari.delete_arrivals()},
            wait_s,
            "a DELETE of every trunk leg",
        )
    except TimeoutError:
        pass  # the legs without a DELETE are reported as never hung up
    hangup_s = time.perf_counter() - started
    cpu_shares = (
        (daemon.cpu_seconds() - daemon_cpu_before) / hangup_s,
        (time.process_time() - own_cpu_before) / hangup_s,
    )

    callers_ended_at = datetime.now(timezone.utc)
    live = ari.channels
    leftovers = [call for call in calls if call.trunk_id in live]
    for call in leftovers:
        await ari.hangup(call)
    return {
        "hangup_s": hangup_s,
        "cpu_shares": cpu_shares,
        "callers_ended_at": callers_ended_at,
        "ended_by_callers": {call.trunk_id for call in leftovers},
    }


async def measure_hangups(
    directory: Path,
    *,
    trunks: int,
    calls_per_trunk: int,
    lead: timedelta,
    stagger: timedelta,
) -> dict:
    """Place and answer the calls, let the limits hang them up, and return raw figures.

    Calls that callguard has not hung up ``HANGUP_WAIT`` after the last deadline
    are ended by their callers, so that every call gets its final cost.
    """
    total = trunks * calls_per_trunk
    zone = window_timezone()
    ari = TimedAriEmulator()
    await ari.start()
    fastagi_port = free_port()

    def configure(limits: dict[str, Decimal]) -> Path:
        return write_config(
            directory, limits, zone=zone, fastagi_port=fastagi_port, ari_url=ari.url
        )

    placing = {trunk_name(index): PLACING_LIMIT for index in range(trunks)}
    daemon = Daemon(configure(placing))
    try:
        await daemon.start()
        rss_idle_kib = daemon.rss_kib()
        calls = await place_and_answer(ari, fastagi_port, trunks, total)
        await wait_until(
            lambda: daemon.count_calls(STATE_UP) >= total,
            STORE_TIMEOUT,
            f"{total} answered calls in the store",
        )
        answered = answer_times(await daemon.status())
        rss_live_kib = daemon.rss_kib()

        # This process plays Asterisk, which has no garbage collector. Its heap
        # of 1,000 calls is frozen here, so that a full collection of it (50 to
        # 75 ms) cannot land inside the hang-ups being timed.
        gc.collect()
        gc.freeze()

        plans = plan_trunks(answered, lead, stagger)
        configure({plan.trunk: plan.limit for plan in plans})
        applied_at = await apply_limits(daemon, plans)
        margin = from_us(min(plan.deadline_us for plan in plans)) - applied_at
        if margin < MIN_RELOAD_MARGIN:
            raise RuntimeError(
                f"the reload was applied only {margin} before the first deadline; "
                "run again with a longer --lead"
            )

        last_deadline = from_us(max(plan.deadline_us for plan in plans))
        wait = last_deadline + HANGUP_WAIT - datetime.now(timezone.utc)
        watched = await watch_hangups(daemon, ari, calls, wait.total_seconds())
        await wait_until(
            lambda: daemon.count_calls(STATE_ENDED) >= total,
            STORE_TIMEOUT,
            f"{total} ended calls in the store",
        )
    finally:
        gc.unfreeze()
        stop_s = await daemon.stop()
        await ari.stop()

    with Store(f"sqlite:///{daemon.database}") as store:
        store.open()
        records = store.recent_calls(total * 2)
        hangups = store.recent_hangups(total * 2)

    return {
        **watched,
        "plans": {plan.trunk: plan for plan in plans},
        "answered": answered,
        "deletes": ari.delete_arrivals(),
        "records": records,
        "hangups": hangups,
        "margin": margin,
        "stop_s": stop_s,
        "rss_idle_kib": rss_idle_kib,
        "rss_live_kib": rss_live_kib,
    }
