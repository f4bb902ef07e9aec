"""Store records of live legs: the call row and the hang-up row.

Channel names, uniqueids, caller IDs and dialled strings come from ARI
events, so each passes through storable() on its way to the store.
"""

from datetime import datetime
from decimal import Decimal

from callguard.metering.legs import Leg
from callguard.store import CallRecord, HangupRecord
from callguard.text import storable


def call_record(leg: Leg, cost: Decimal) -> CallRecord:
    tariff = leg.tariff
    answered_at = leg.answered.answered_at if leg.answered is not None else None
    return CallRecord(
        uniqueid=storable(leg.id),
        decision_uniqueid=storable(leg.decision_uniqueid) or None,
        trunk=leg.trunk,
        channel=storable(leg.channel),
        caller=storable(leg.caller),
        dialled=storable(leg.number),
        e164=leg.e164 or None,
        category=leg.category or None,
        tariff_prefix=None if tariff is None else tariff.prefix,
        rate=None if tariff is None else tariff.rate,
        connection_fee=None if tariff is None else tariff.connection_fee,
        first_increment=None if tariff is None else tariff.increments.first,
        later_increment=None if tariff is None else tariff.increments.later,
        created_at=leg.created_at,
        answered_at=answered_at,
        ended_at=leg.ended_at,
        state=leg.state,
        cost=cost,
        hangup_cause=leg.hangup_cause,
        hangup_reason=leg.hangup_requested or None,
        guarded=leg.guarded,
    )


def hangup_record(leg: Leg, reason: str, at: datetime, daily: Decimal | None,
                  weekly: Decimal | None, cost: Decimal, outcome: str) -> HangupRecord:
    return HangupRecord(
        requested_at=at,
        trunk=leg.trunk,
        uniqueid=storable(leg.id),
        channel=storable(leg.channel),
        number=leg.e164 or storable(leg.number),
        reason=reason,
        daily_spend=daily,
        weekly_spend=weekly,
        call_cost=cost,
        outcome=outcome,
    )
