"""The control command behind ``callguardctl check``: a dry run in the running daemon.

The daemon's engine decides with all of its state in memory (calls in
progress, checks waiting for their Dial, the call-rate counters), so the
result is the one a real call would get now. Nothing is reserved or counted.
"""

import os
from typing import TYPE_CHECKING

from callguard.daemon.control import InvalidRequest
from callguard.daemon.operator import store_identity
from callguard.policy.offenders import normalise_source
from callguard.policy.decision import CallRequest
from callguard.policy.report import DECIDED_BY_DAEMON, check_report, window_budgets
from callguard.windows import window_keys

if TYPE_CHECKING:
    from callguard.daemon.app import Application

FIELDS = ("number", "trunk", "caller", "channel", "accountcode", "source")

# Fields of the reply: the daemon's config file and its store_identity().
DAEMON_CONFIG = "daemon_config"
DAEMON_STORE = "daemon_store"


async def check_command(app: "Application", request: dict) -> dict:
    values = {name: request.get(name, "") for name in FIELDS}
    for name, value in values.items():
        if not isinstance(value, str):
            raise InvalidRequest(f"{name} {value!r} is not a string; give it as text")

    call = CallRequest(
        trunk=values["trunk"].strip(),
        dialled=values["number"],
        caller=values["caller"],
        channel=values["channel"],
        accountcode=values["accountcode"],
        source=normalise_source(values["source"]),
    )
    engine = app.engine
    decision = await engine.decide(call, reserve=False)

    now = app.clock.now()
    trunk = app.config.trunks.get(call.trunk)
    if trunk is not None:
        await app.ledger.load(trunk.name, window_keys(now, trunk.timezone))
        if engine.catch_up is not None:
            engine.catch_up(trunk.name)
    budgets = window_budgets(trunk, app.ledger, app.reservations.held, now)
    report = check_report(decision, call, app.config.general.currency, budgets,
                          DECIDED_BY_DAEMON)
    # callguardctl compares these with its own, and decides itself when they differ.
    report[DAEMON_CONFIG] = os.path.realpath(app.config.path)
    report[DAEMON_STORE] = store_identity(app.database)
    return report
