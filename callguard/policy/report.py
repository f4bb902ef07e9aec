"""A decision as ``callguardctl check`` shows it: the result and the figures behind it."""

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

from callguard.config import TrunkConfig
from callguard.money import format_amount, format_rate
from callguard.policy.decision import CallRequest, Decision
from callguard.policy.ledger import Ledger
from callguard.windows import DAY, WEEK, window_keys

# Values of the report's decided_by: the running daemon, or the config and store alone.
DECIDED_BY_DAEMON = "daemon"
DECIDED_OFFLINE = "offline"


def _money(amount: Decimal | None) -> str | None:
    return None if amount is None else format_amount(amount)


def window_budgets(
    trunk: TrunkConfig | None,
    ledger: Ledger,
    held: Callable[[str, str, str], Decimal],
    now: datetime,
) -> dict[str, dict[str, str | None]]:
    """Return, per window, the spend, the money held by pending checks and what is left.

    The windows' committed spend must be loaded into ``ledger`` already.
    """
    if trunk is None:
        return {}
    keys = window_keys(now, trunk.timezone)
    budgets = {}
    for window, limit in ((DAY, trunk.daily_limit), (WEEK, trunk.weekly_limit)):
        spent = ledger.spent(trunk.name, window, keys[window]) or Decimal(0)
        pending = held(trunk.name, window, keys[window])
        budgets[window] = {
            "window": keys[window],
            "spent": _money(spent),
            "held": _money(pending),
            "limit": _money(limit),
            "remaining": _money(None if limit is None else limit - spent - pending),
        }
    return budgets


def check_report(decision: Decision, request: CallRequest, currency: str,
                 budgets: dict, decided_by: str) -> dict:
    """Return the decision of a check as one JSON-ready object."""
    tariff = decision.tariff
    return {
        "result": decision.result,
        "reason": decision.reason,
        "trunk": request.trunk,
        "dialled": request.dialled,
        "e164": decision.e164,
        "category": decision.category,
        "region": decision.region,
        "matched_prefix": decision.matched_prefix,
        "caller": decision.caller_e164,
        "rate": None if tariff is None else format_rate(tariff.rate),  # per minute, as in the deck
        "rate_prefix": None if tariff is None else tariff.prefix,
        "rate_description": None if tariff is None else tariff.description,
        "connection_fee": None if tariff is None else format_amount(tariff.connection_fee),
        "increments": None if tariff is None else str(tariff.increments),
        "first_block_cost": None if tariff is None else format_amount(tariff.first_block_cost()),
        "max_seconds": decision.max_seconds,
        "currency": currency,
        "budgets": budgets,
        "detail": decision.detail,
        "decided_by": decided_by,
    }
