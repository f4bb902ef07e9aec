"""Budget arithmetic of the hang-up benchmark, and the figures taken from its run.

The benchmark's rate deck bills every block the same: BLOCK_SECONDS long at
BLOCK_PRICE, with no connection fee. So a call answered at ``a`` begins blocks
at ``a``, ``a + 1 block``, and so on, and the formulas here count blocks
directly instead of going through callguard's own rating code.
"""

import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from ari_pbx import BLOCK_PRICE, BLOCK_SECONDS

from callguard.store.records import STATE_ENDED

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
BLOCK_US = BLOCK_SECONDS * 1_000_000


def to_us(instant: datetime) -> int:
    delta = instant - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def from_us(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def blocks_before(answered_us: int, instant_us: int) -> int:
    """Return how many blocks of a call answered at ``answered_us`` begin before
    ``instant_us`` (strictly)."""
    return max(0, -(-(instant_us - answered_us) // BLOCK_US))


def blocks_billed(answered_us: int, ended_us: int) -> int:
    """Return the blocks that a call pays: every block begun before it ended."""
    return blocks_before(answered_us, ended_us)


@dataclass(frozen=True)
class TrunkPlan:
    """A trunk's daily limit and the deadline, in µs since the epoch, when it bites."""

    trunk: str
    limit: Decimal
    deadline_us: int


def plan_trunk(trunk: str, answered_us: list[int], target_us: int) -> TrunkPlan:
    """Return the limit that pays for every block begun before ``target_us``.

    Spend then exceeds the limit at the first block start at or after the
    target, over all of the trunk's calls, and not a microsecond before.
    """
    limit = BLOCK_PRICE * sum(
        blocks_before(answered, target_us) for answered in answered_us
    )
    deadline = min(
        answered + blocks_before(answered, target_us) * BLOCK_US
        for answered in answered_us
    )
    return TrunkPlan(trunk, limit, deadline)


def delay_figures(result: dict) -> dict:
    """Return the delays, in ms, from each trunk's deadline to the DELETE of each leg.

    Only DELETEs that arrived before the benchmark ended the leftover calls
    count. A leg without one has an infinite delay. A DELETE sent again after a
    failure counts once, at its first arrival.
    """
    plans: dict[str, TrunkPlan] = result["plans"]
    first_arrival: dict[str, datetime] = {}
    for channel_id, arrival in result["deletes"]:
        if arrival <= result["callers_ended_at"]:
            first_arrival.setdefault(channel_id, arrival)

    by_trunk: dict[str, list[float]] = {}
    for trunk, legs in result["answered"].items():
        deadline_us = plans[trunk].deadline_us
        by_trunk[trunk] = [
            (
                math.inf
                if leg not in first_arrival
                else (to_us(first_arrival[leg]) - deadline_us) / 1000
            )
            for leg in legs
        ]

    # callguard stores a hang-up row per attempt: the first one of each leg counts.
    first_request: dict[str, datetime] = {}
    for hangup in sorted(result["hangups"], key=lambda hangup: hangup.requested_at):
        first_request.setdefault(hangup.uniqueid, hangup.requested_at)
    trunk_of = {
        leg: trunk for trunk, legs in result["answered"].items() for leg in legs
    }
    requested_ms = [
        (to_us(at) - plans[trunk_of[leg]].deadline_us) / 1000
        for leg, at in first_request.items()
        if leg in trunk_of
    ]

    return {
        "delays_ms": [delay for delays in by_trunk.values() for delay in delays],
        "by_trunk": by_trunk,
        "requested_ms": requested_ms,
        "other_channels": len(set(first_arrival) - set(trunk_of)),
        "repeated": len(result["deletes"]) - len({cid for cid, _ in result["deletes"]}),
        "reasons": sorted({hangup.reason for hangup in result["hangups"]}),
        "outcomes": Counter(hangup.outcome for hangup in result["hangups"]),
    }


def overspend_figures(result: dict) -> dict:
    """Return the blocks and cost that each call was billed beyond its allowance.

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
