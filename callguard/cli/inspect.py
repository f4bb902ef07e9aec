"""``callguardctl check``: a dry run of the decision, with the reasons behind it."""

import asyncio
import json
from decimal import Decimal

from callguard.clock import SystemClock
from callguard.config import Config
from callguard.daemon.state import build_state
from callguard.money import format_amount
from callguard.policy.blocks import BlockList
from callguard.policy.decision import CallRequest
from callguard.policy.engine import PolicyEngine
from callguard.policy.ledger import Ledger
from callguard.policy.reservations import Reservations
from callguard.store import Store
from callguard.windows import DAY, WEEK, window_keys
from callguard.worker import StoreWorker


def _money(amount: Decimal | None) -> str | None:
    return None if amount is None else format_amount(amount)


async def check_number(config: Config, number: str, trunk_name: str, caller: str) -> dict:
    """Decide ``number`` on ``trunk_name`` as the daemon would, without reserving anything."""
    tables = await asyncio.to_thread(build_state, config)
    store = Store(config.general.database)
    worker = StoreWorker(store)
    try:
        await worker.call(store.open)
        clock = SystemClock()
        blocks = BlockList()
        active = await worker.call(store.active_blocks, clock.now())
        blocks.replace({(b.key_type, b.key): b.expires_at for b in active})

        ledger = Ledger(worker)
        engine = PolicyEngine(tables.state, ledger, Reservations(), blocks, clock)
        request = CallRequest(trunk=trunk_name, dialled=number, caller=caller)
        decision = await engine.decide(request, reserve=False)

        remaining: dict[str, dict[str, str | None]] = {}
        trunk = config.trunks.get(trunk_name)
        if trunk is not None:
            keys = window_keys(clock.now(), trunk.timezone)
            await ledger.load(trunk.name, keys)
            for window, limit in ((DAY, trunk.daily_limit), (WEEK, trunk.weekly_limit)):
                spent = ledger.spent(trunk.name, window, keys[window]) or Decimal(0)
                remaining[window] = {
                    "window": keys[window],
                    "spent": _money(spent),
                    "limit": _money(limit),
                    "remaining": _money(None if limit is None else limit - spent),
                }
    finally:
        await worker.call(store.close)
        worker.shutdown()

    tariff = decision.tariff
    return {
        "result": decision.result,
        "reason": decision.reason,
        "trunk": trunk_name,
        "dialled": number,
        "e164": decision.e164,
        "category": decision.category,
        "region": decision.region,
        "matched_prefix": decision.matched_prefix,
        "caller": decision.caller_e164,
        "rate": None if tariff is None else str(tariff.rate),  # per minute, as in the deck
        "rate_prefix": None if tariff is None else tariff.prefix,
        "rate_description": None if tariff is None else tariff.description,
        "connection_fee": None if tariff is None else format_amount(tariff.connection_fee),
        "increments": None if tariff is None else str(tariff.increments),
        "first_block_cost": None if tariff is None else format_amount(tariff.first_block_cost()),
        "max_seconds": decision.max_seconds,
        "currency": config.general.currency,
        "budgets": remaining,
        "detail": decision.detail,
    }


def print_check(report: dict, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return

    currency = report["currency"]
    print(f"result     {report['result']} {report['reason']}")
    print(f"dialled    {report['dialled']}")
    print(f"e164       {report['e164'] or '-'}")
    category = report["category"] or "-"
    if report["matched_prefix"]:
        category += f" (prefix {report['matched_prefix']})"
    print(f"category   {category}")
    if report["rate"] is not None:
        print(f"rate       {report['rate']} {currency}/min, connection fee "
              f"{report['connection_fee']}, increments {report['increments']} "
              f"(deck prefix {report['rate_prefix'] or 'default'}: "
              f"{report['rate_description']})")
    for window, budget in report["budgets"].items():
        if budget["limit"] is None:
            print(f"{window:<10} {budget['spent']} {currency} spent in {budget['window']}, "
                  "no limit")
        else:
            print(f"{window:<10} {budget['remaining']} of {budget['limit']} {currency} left "
                  f"in {budget['window']}")
    if report["max_seconds"] is not None:
        print(f"max        {report['max_seconds']} s")
    if report["detail"]:
        print(f"why        {report['detail']}")
