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


# What a flood of checks leaves behind must not be walked by every
# collection: reservations and the decisions kept for linking are stored as
# tuples of plain values, which the collector stops tracking, in dicts that
# stay in the oldest generation.


def generation_of(container) -> int | None:
    """Return the collector generation that contains ``container``, None if untracked."""
    for generation in (0, 1, 2):
        if any(found is container for found in gc.get_objects(generation=generation)):
            return generation
    return None


def test_reservations_leave_collector_alone():
    reservations = Reservations()
    now = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)
    keys = {DAY: "2024-06-14", WEEK: "2024-W24"}
    for n in range(1000):
        reservations.add("gamma", f"1718355600.{n}", Decimal("0.05"), keys, now, 120)
    reservations.mark_dialled("1718355600.7")

    gc.collect()

    assert not any(gc.is_tracked(row) for row in reservations._by_id.values())
    assert not gc.is_tracked(reservations._by_uniqueid)
    assert reservations.get("1718355600.7").dialled
    assert reservations.pending_count("gamma") == 999

    # A new reservation is a tracked tuple. Its dict stays in the oldest
    # generation, where young collections do not walk its 1,000 entries.
    reservations.add("gamma", "1718355600.1000", Decimal("0.05"), keys, now, 120)
    assert generation_of(reservations._by_id) == 2


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

    assert not any(gc.is_tracked(entry) for entry in book._entries.values())
    book.record(request, decision, at)  # its newest entry again, as a new tuple
    assert generation_of(book._entries) == 2
    request, decision = book.get("1718355600.7")
    assert (request.caller, request.dialled) == ("01632960010", "02079460007")
    assert (decision.trunk, decision.result, decision.reason) == ("gamma", "ALLOW", "ok")
    assert (decision.category, decision.e164) == ("geographic", "+442079460007")
    assert decision.tariff == tariff
    assert book.get("1718355600.8")[1].tariff is None
