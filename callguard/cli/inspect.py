"""``callguardctl check``: a dry run of the decision, with the reasons behind it."""

import asyncio
import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

from callguard.text import escape_controls
from callguard.clock import Clock, SystemClock
from callguard.config import Config
from callguard.daemon.control import ask
from callguard.daemon.operator import is_shared_store
from callguard.daemon.sharing import LIVE_SPEND_STALE_SECONDS
from callguard.daemon.state import build_state
from callguard.policy.blocks import BlockList
from callguard.policy.decision import CallRequest
from callguard.policy.engine import PolicyEngine
from callguard.policy.ledger import Ledger
from callguard.policy.report import (
    DECIDED_BY_DAEMON,
    DECIDED_OFFLINE,
    check_report,
    window_budgets,
)
from callguard.policy.reservations import Reservations
from callguard.store import Store
from callguard.windows import window_keys
from callguard.worker import StoreWorker


async def check_number(config: Config, request: CallRequest,
                       clock: Clock | None = None) -> dict:
    """Decide ``request`` from the config and the store alone, without reserving anything.

    The daemon's memory is not consulted, so the call-rate limits count for
    nothing here. Calls in progress and checks waiting for their Dial count
    only on a PostgreSQL store, as the live spend and the calls that the
    daemons last shared there, every node's own included.
    """
    tables = await asyncio.to_thread(build_state, config)
    store = Store(config.general.database, create_schema=False)
    worker = StoreWorker(store)
    try:
        await worker.call(store.open)
        clock = clock or SystemClock()
        blocks = BlockList()
        active = await worker.call(store.active_blocks, clock.now())
        blocks.replace((b.key_type, b.key, b.expires_at) for b in active)

        ledger = Ledger(worker)
        shared = is_shared_store(config.general.database)
        if shared:
            since = clock.now() - timedelta(seconds=LIVE_SPEND_STALE_SECONDS)
            ledger.replace_others(await worker.call(store.others_live_spend, None, since))
        reservations = Reservations()
        engine = PolicyEngine(tables.state, ledger, reservations, blocks, clock)
        decision = await engine.decide(request, reserve=False)

        trunk = config.trunks.get(request.trunk)
        if trunk is not None:
            await ledger.load(trunk.name, window_keys(clock.now(), trunk.timezone))
        budgets = window_budgets(trunk, ledger, reservations.held, clock.now())
    finally:
        await worker.call(store.close)
        worker.shutdown()
    report = check_report(decision, request, config.general.currency, budgets,
                          DECIDED_OFFLINE)
    # Whether the calls and spend that the daemons shared in the store counted.
    report["shared_store"] = shared
    return report


def ask_daemon(config: Config, request: CallRequest) -> dict | None:
    """Return the running daemon's dry-run decision, or None when it cannot be reached."""
    path = Path(config.general.control_socket)
    try:
        reply = asyncio.run(ask(path, {
            "command": "check", "number": request.dialled, "trunk": request.trunk,
            "caller": request.caller, "channel": request.channel,
            "accountcode": request.accountcode, "source": request.source,
        }))
    except (OSError, TimeoutError, ValueError):
        return None
    if "error" in reply:
        raise RuntimeError(reply["error"])
    return reply


def print_check(report: dict, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report, indent=2))
        return

    # The dialled number and the texts built from it come from the caller.
    report = {key: escape_controls(value) if isinstance(value, str) else value
              for key, value in report.items()}
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
            held = ""
            if Decimal(budget["held"] or 0):
                held = f", {budget['held']} held by checks waiting for Dial"
            print(f"{window:<10} {budget['remaining']} of {budget['limit']} {currency} left "
                  f"in {budget['window']}{held}")
    if report["max_seconds"] is not None:
        print(f"max        {report['max_seconds']} s")
    if report["detail"]:
        print(f"why        {report['detail']}")
    if report["decided_by"] == DECIDED_BY_DAEMON:
        print("source     the running daemon, with its live calls and pending checks")
    elif report.get("shared_store"):
        print("source     the config and the store only: the calls in progress and checks "
              "waiting for Dial that the daemons last shared, without the call-rate limits")
    else:
        print("source     the config and the store only: the concurrent-call cap, checks "
              "waiting for Dial and the call-rate limits are not counted")
