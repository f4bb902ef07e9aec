"""Live state for ``callguardctl status`` and ``callguardctl calls``, as plain JSON data."""

from datetime import datetime
from decimal import Decimal

from callguard import __version__
from callguard.metering.charges import elapsed_seconds
from callguard.metering.guard import LiveGuard
from callguard.metering.legs import Leg
from callguard.money import format_amount, format_rate
from callguard.windows import DAY, WEEK, window_keys


def _money(amount: Decimal | None) -> str | None:
    return None if amount is None else format_amount(amount)


def _percent(spent: Decimal, limit: Decimal | None) -> str | None:
    if not limit:
        return None
    return f"{(spent * 100 / limit).quantize(Decimal('0.1'))}"


def _billed(leg: Leg) -> Decimal:
    """Return what an ended leg was charged: its bill in the days its blocks began.

    Each block is counted in a day and in a week, so the days alone add up
    to the whole bill.
    """
    return sum((amount for (window, _), amount in leg.final_charges.items()
                if window == DAY), Decimal(0))


def leg_status(leg: Leg, now: datetime) -> dict:
    answered = leg.answered
    duration = None
    cost = Decimal(0)
    if answered is not None:
        # An end stamped by callguard's clock can precede an answer stamped
        # by Asterisk's; such a call shows no time.
        duration = max(0, int(elapsed_seconds(answered.answered_at, leg.ended_at or now)))
        cost = answered.total if leg.live else _billed(leg)
    return {
        "uniqueid": leg.id,
        "trunk": leg.trunk,
        "channel": leg.channel,
        "number": leg.e164 or leg.number,
        "category": leg.category,
        "state": leg.state,
        "guarded": leg.guarded,
        "protected": leg.protected,
        "created_at": leg.created_at.isoformat(),
        "answered_at": answered.answered_at.isoformat() if answered else None,
        "ended_at": leg.ended_at.isoformat() if leg.ended_at else None,
        "duration": duration,
        "rate": None if leg.tariff is None else format_rate(leg.tariff.rate),
        "cost": _money(cost),
        "hangup_cause": leg.hangup_cause,
        "hangup_reason": leg.hangup_requested or None,
    }


def status(guard: LiveGuard, currency: str, ari_connected: bool | None) -> dict:
    now = guard.clock.now()
    # Decisions expire reservations only when they run, so without this the
    # counts and held money would include checks whose Dial never came.
    guard.reservations.expire(now)
    trunks = {}
    for name, meter in guard.meters.items():
        meter.catch_up(now)
        config = meter.config
        keys = window_keys(now, config.timezone)
        spent = {window: guard.ledger.committed(name, window, keys[window])
                 + guard.ledger.live(name, window, keys[window])
                 + guard.ledger.others(name, window, keys[window])
                 for window in (DAY, WEEK)}
        trunks[name] = {
            "day": keys[DAY],
            "week": keys[WEEK],
            "daily_spend": _money(spent[DAY]),
            "daily_limit": _money(config.daily_limit),
            "daily_percent": _percent(spent[DAY], config.daily_limit),
            "weekly_spend": _money(spent[WEEK]),
            "weekly_limit": _money(config.weekly_limit),
            "weekly_percent": _percent(spent[WEEK], config.weekly_limit),
            "reserved": _money(guard.reservations.held(name, DAY, keys[DAY])),
            "pending_checks": guard.reservations.pending_count(name),
            # Calls up and pending checks that the other nodes sharing the
            # store last reported, which count toward max_concurrent_calls.
            "other_nodes_calls": guard.ledger.others_calls(name),
            "live_calls": [leg_status(leg, now) for leg in meter.legs.values()],
        }
    healthy = ari_connected is not False
    return {
        "version": __version__,
        "time": now.isoformat(),
        "currency": currency,
        "ari_connected": ari_connected,
        "healthy": healthy,
        "trunks": trunks,
    }


def calls(guard: LiveGuard, live_only: bool) -> dict:
    now = guard.clock.now()
    for trunk in guard.meters:
        guard.catch_up(trunk)  # charge the blocks begun since the last event
    live = [leg_status(leg, now) for leg in guard.legs.values()]
    recent = [] if live_only else [leg_status(leg, now) for leg in reversed(guard.recent)]
    return {"live": live, "recent": recent}
