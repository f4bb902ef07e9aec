"""The daemon keeps its loaded tables out of the collector's way, without leaking them."""

import gc
import weakref
from datetime import datetime, timezone
from decimal import Decimal

from callguard.cli.daemon import settle_heap
from callguard.metering.decisions import DecisionBook
from callguard.policy.decision import CallRequest, Decision
from callguard.policy.reservations import Reservations
from callguard.rating import Increments, Tariff
from callguard.windows import DAY, WEEK


class Node:
    def __init__(self):
        self.me = self  # a reference cycle: only the cyclic collector frees it


def test_start_freezes_loaded_objects():
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_reload_frees_old_cycles():
    try:
        old_table = Node()
        old_table_ref = weakref.ref(old_table)
        settle_heap()  # started: the table is frozen with everything else
        del old_table
        gc.collect()
        assert old_table_ref() is not None  # frozen: a collection does not see it

        settle_heap()  # reloaded: the old table is unreachable now
        assert old_table_ref() is None
    finally:
        gc.unfreeze()


# What a flood of checks leaves behind must not be walked by every full
# collection: reservations and the decisions kept for linking are stored as
# tuples of plain values, which the collector stops tracking.


def test_reservations_leave_collector_alone():
    reservations = Reservations()
    now = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
    keys = {DAY: "2024-06-14", WEEK: "2024-W24"}
    for n in range(1000):
        reservations.add("gamma", f"1718355600.{n}", Decimal("0.05"), keys, now, 120)
    reservations.mark_dialled("1718355600.7")

    gc.collect()

    # The containers are untracked once everything in them is.
    assert not gc.is_tracked(reservations._by_id)
    assert not gc.is_tracked(reservations._by_uniqueid)
    assert reservations.get("1718355600.7").dialled
    assert reservations.pending_count("gamma") == 999


def test_decision_book_leaves_collector_alone():
    book = DecisionBook()
    at = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
    tariff = Tariff("44", "UK", Decimal("0.05"), Decimal("0.10"), Increments(30, 6))
    for n in range(1000):
        request = CallRequest(trunk="gamma", dialled=f"0207946{n:04d}", caller="01632960010",
                              uniqueid=f"1718355600.{n}")
        decision = Decision("ALLOW", "ok", "gamma", request.dialled, category="geographic",
                            e164=f"+44207946{n:04d}", tariff=tariff if n % 2 else None)
        book.record(request, decision, at)

    gc.collect()

    assert not gc.is_tracked(book._entries)
    request, decision = book.get("1718355600.7")
    assert (request.caller, request.dialled) == ("01632960010", "02079460007")
    assert (decision.trunk, decision.result, decision.reason) == ("gamma", "ALLOW", "ok")
    assert (decision.category, decision.e164) == ("geographic", "+442079460007")
    assert decision.tariff == tariff
    assert book.get("1718355600.8")[1].tariff is None
