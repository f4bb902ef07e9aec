"""Hang-ups when a budget runs out: the delay to each DELETE, and the overspend per call.

The daemon runs on the system clock with ``calls_per_trunk`` answered calls on
each trunk. Once every call is up, the config gets a daily limit per trunk that
runs out at a target instant a few seconds ahead, staggered between trunks, and
the daemon reloads it (SIGHUP). A trunk's limit is the cost of the blocks that
its calls begin before its target, so the limit bites at the first block start
at or after the target: the trunk's deadline. The benchmark computes it from
the answer times that the daemon reports, not from what the daemon decides.
"""

import asyncio
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from ari_daemon import Daemon, TimedAriEmulator, place_call, wait_until
from ari_pbx import (
    BLOCK_PRICE,
    BLOCK_SECONDS,
    free_port,
    trunk_name,
    window_timezone,
    write_config,
)

from callguard.store import Store
from callguard.store.records import STATE_ENDED, STATE_UP

# Enough for every call to pass its check while the calls are placed.
PLACING_LIMIT = Decimal("1000.00")
PLACING_CONCURRENCY = 50
# The reload must be applied this long before the first deadline.
MIN_RELOAD_MARGIN = timedelta(milliseconds=500)
# Seconds after the last deadline that the hang-ups get to reach the store.
HANGUP_TIMEOUT = 60.0

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
BLOCK_US = BLOCK_SECONDS * 1_000_000


def to_us(instant: datetime) -> int:
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def blocks_before(answered_us: int, instant_us: int) -> int:
    """Return how many 1-block-long billing blocks begin strictly before ``instant_us``."""
    return max(0, -(-(instant_us - answered_us) // BLOCK_US))


def blocks_billed(answered_us: int, ended_us: int) -> int:
    """Return the blocks that a call pays: every block begun before it ended."""
    return blocks_before(answered_us, ended_us)


@dataclass(frozen=True)
class TrunkPlan:
    """A trunk's daily limit and the deadline at which that limit bites."""

    trunk: str
    limit: Decimal
    deadline_us: int


def plan_trunk(trunk: str, answered_us: list[int], target_us: int) -> TrunkPlan:
    limit = BLOCK_PRICE * sum(blocks_before(answered, target_us) for answered in answered_us)
    # The first block start at or after the target, over all of the trunk's calls.
    deadline = min(answered + blocks_before(answered, target_us) * BLOCK_US
                   for answered in answered_us)
    return TrunkPlan(trunk, limit, deadline)


async def place_and_answer(ari: TimedAriEmulator, fastagi_port: int, trunks: int,
                           total: int) -> None:
    slots = asyncio.Semaphore(PLACING_CONCURRENCY)

    async def one(index: int) -> None:
        async with slots:
            call = await place_call(ari, fastagi_port, trunk_name(index % trunks), index)
            await ari.answer(call)

    await asyncio.gather(*(one(index) for index in range(total)))


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
    wanted = {plan.trunk: plan.limit for plan in plans}
    while True:
        status = await daemon.status()
        shown = {trunk: Decimal(status["trunks"][trunk]["daily_limit"]) for trunk in wanted}
        if shown == wanted:
            return datetime.now(timezone.utc)
        await asyncio.sleep(0.05)


async def measure_hangups(directory: Path, *, trunks: int, calls_per_trunk: int,
                          lead: timedelta, stagger: timedelta) -> dict:
    """Place, answer and let the limits hang up every call; return raw figures."""
    total = trunks * calls_per_trunk
    zone = window_timezone()
    names = [trunk_name(index) for index in range(trunks)]
    ari = TimedAriEmulator()
    await ari.start()
    fastagi_port = free_port()

    def configure(limits: dict[str, Decimal]) -> Path:
        return write_config(directory, limits, zone=zone, fastagi_port=fastagi_port,
                            ari_url=ari.url)

    daemon = Daemon(configure({name: PLACING_LIMIT for name in names}))
    try:
        await daemon.start()
        rss_idle_kib = daemon.rss_kib()
        await place_and_answer(ari, fastagi_port, trunks, total)
        await wait_until(lambda: daemon.count_calls(STATE_UP) >= total, HANGUP_TIMEOUT,
                         f"{total} answered calls in the store")
        answered = answer_times(await daemon.status())
        rss_live_kib = daemon.rss_kib()

        start_us = to_us(datetime.now(timezone.utc) + lead)
        plans = [
            plan_trunk(name, list(answered[name].values()),
                       start_us + index * int(stagger / timedelta(microseconds=1)))
            for index, name in enumerate(names)
        ]
        configure({plan.trunk: plan.limit for plan in plans})
        applied_at = await apply_limits(daemon, plans)
        margin = from_us(min(plan.deadline_us for plan in plans)) - applied_at
        if margin < MIN_RELOAD_MARGIN:
            raise RuntimeError(f"the reload was applied only {margin} before the first "
                               "deadline; run again with a longer --lead")

        last_deadline = from_us(max(plan.deadline_us for plan in plans))
        timeout = (last_deadline - datetime.now(timezone.utc)).total_seconds()
        await wait_until(lambda: len(ari.delete_arrivals()) >= total,
                         timeout + HANGUP_TIMEOUT, f"{total} DELETE requests")
        await wait_until(lambda: daemon.count_calls(STATE_ENDED) >= total, HANGUP_TIMEOUT,
                         f"{total} ended calls in the store")
    finally:
        await daemon.stop()
        await ari.stop()

    with Store(f"sqlite:///{daemon.database}") as store:
        store.open()
        records = store.recent_calls(total * 2)
        hangups = store.recent_hangups(total * 2)

    return {
        "plans": {plan.trunk: plan for plan in plans},
        "answered": answered,
        "deletes": ari.delete_arrivals(),
        "records": records,
        "hangups": hangups,
        "margin": margin,
        "rss_idle_kib": rss_idle_kib,
        "rss_live_kib": rss_live_kib,
    }


def delay_figures(result: dict) -> dict:
    """Return the delays, in ms, from each trunk's deadline to its DELETE requests."""
    plans: dict[str, TrunkPlan] = result["plans"]
    trunk_of = {leg: trunk for trunk, legs in result["answered"].items() for leg in legs}
    deletes = result["deletes"]

    delays_ms = []
    by_trunk: dict[str, list[float]] = {trunk: [] for trunk in plans}
    for channel_id, arrival in deletes:
        trunk = trunk_of.get(channel_id)
        if trunk is None:
            continue
        delay = (to_us(arrival) - plans[trunk].deadline_us) / 1000
        delays_ms.append(delay)
        by_trunk[trunk].append(delay)

    own_ms = [(to_us(hangup.requested_at) - plans[hangup.trunk].deadline_us) / 1000
              for hangup in result["hangups"]]
    return {
        "delays_ms": delays_ms,
        "by_trunk": by_trunk,
        "requested_ms": own_ms,
        "unknown_channels": sum(1 for channel_id, _ in deletes if channel_id not in trunk_of),
        "repeated": len(deletes) - len({channel_id for channel_id, _ in deletes}),
        "reasons": sorted({hangup.reason for hangup in result["hangups"]}),
    }


def overspend_figures(result: dict) -> dict:
    """Return each call's billed blocks and cost beyond what its trunk's budget paid for.

    A call's allowance is the blocks it began before its trunk's deadline: the
    budget paid for those, and for no block that begins at the deadline or later.
    """
    plans: dict[str, TrunkPlan] = result["plans"]
    over_blocks = []
    over_money = []
    spend = {trunk: Decimal(0) for trunk in plans}
    cost_mismatches = []
    answer_mismatches = 0

    for record in result["records"]:
        plan = plans[record.trunk]
        answered_us = to_us(record.answered_at)
        billed = blocks_billed(answered_us, to_us(record.ended_at))
        allowed = blocks_before(answered_us, plan.deadline_us)
        over_blocks.append(billed - allowed)
        over_money.append(record.cost - allowed * BLOCK_PRICE)
        spend[record.trunk] += record.cost
        if record.cost != billed * BLOCK_PRICE:
            cost_mismatches.append((record.uniqueid, record.cost, billed * BLOCK_PRICE))
        if result["answered"][record.trunk].get(record.uniqueid) != answered_us:
            answer_mismatches += 1

    return {
        "calls": len(result["records"]),
        "ended": sum(1 for record in result["records"] if record.state == STATE_ENDED),
        "over_blocks": over_blocks,
        "over_money": over_money,
        "trunk_over": {trunk: spend[trunk] - plans[trunk].limit for trunk in plans},
        "cost_mismatches": cost_mismatches,
        "answer_mismatches": answer_mismatches,
    }
