"""Recent check decisions, by the uniqueid of the channel the AGI ran on."""

import itertools
from datetime import datetime, timedelta

from callguard.policy.decision import CallRequest, Decision
from callguard.rating import Increments, Tariff
from callguard.rating.tariff import tariff_from_checked_fields
from callguard.tracked import LongLivedDict

# Decisions kept for linking trunk legs: long enough for any ring time, and
# bounded so that a flood of checks cannot grow memory without end.
DECISION_LIFETIME = timedelta(hours=1)
MAX_DECISIONS = 200_000
# A book that reaches MAX_DECISIONS + EVICTION_BATCH entries drops its oldest
# down to MAX_DECISIONS at once.
EVICTION_BATCH = MAX_DECISIONS // 16
# The book looks for expired entries at most once per this much decision time,
# so an entry can outlive DECISION_LIFETIME by up to this much.
EXPIRY_CHECK_INTERVAL = timedelta(seconds=1)


class DecisionBook:
    """The fields of recent decisions that linking a trunk leg reads.

    Each entry is a tuple of strings, numbers and datetimes, in a dict kept
    in insertion order. The garbage collector stops tracking such tuples, so
    a full book adds one walk of its entries to each full collection and
    nothing to young ones, because the dict is a LongLivedDict. Whole
    CallRequest and Decision objects would add about seven tracked objects
    each.

    The oldest entries are dropped in batches. Finding a dict's first entry
    skips every slot deleted before it until the dict is next resized. So
    dropping one entry per decision from the front cost time in proportion
    to the entries dropped before. A full book took 73 us per decision after
    100,000 more decisions (benchmarks/bench_books.py).
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple] = LongLivedDict()
        self._next_expiry_check: datetime | None = None

    def record(self, request: CallRequest, decision: Decision, at: datetime) -> None:
        self.add(request.uniqueid, at, caller=request.caller, dialled=request.dialled,
                 trunk=decision.trunk, result=decision.result, reason=decision.reason,
                 category=decision.category, e164=decision.e164, tariff=decision.tariff)

    def add(self, uniqueid: str, at: datetime, *, caller: str, dialled: str, trunk: str,
            result: str, reason: str, category: str, e164: str,
            tariff: Tariff | None) -> None:
        """Add the decision made at ``at`` for the channel ``uniqueid``, replacing its last.

        ``category`` and ``e164`` are "" when the number has none. Decisions
        must be added in about the order they were made, because the oldest
        are dropped first, and an entry older than the one before it waits
        for that one to expire. The daemon adds each decision within a loop
        turn of making it, so its entries are at most that far out of order.
        """
        if not uniqueid:
            return
        entries = self._entries
        entries.pop(uniqueid, None)
        entries[uniqueid] = (
            at, caller, dialled, trunk, result, reason, category, e164,
            *_tariff_fields(tariff),
        )
        if len(entries) >= MAX_DECISIONS + EVICTION_BATCH:
            self._drop_oldest(len(entries) - MAX_DECISIONS)
        if self._next_expiry_check is None or at >= self._next_expiry_check:
            self._next_expiry_check = at + EXPIRY_CHECK_INTERVAL
            self._drop_expired(at)

    def _drop_oldest(self, count: int) -> None:
        entries = self._entries
        for uniqueid in list(itertools.islice(entries, count)):
            del entries[uniqueid]

    def _drop_expired(self, now: datetime) -> None:
        """Drop the entries older than DECISION_LIFETIME at ``now``, in one pass from the front."""
        expired = []
        for uniqueid, entry in self._entries.items():
            if now - entry[0] <= DECISION_LIFETIME:
                break
            expired.append(uniqueid)
        for uniqueid in expired:
            del self._entries[uniqueid]

    def get(self, uniqueid: str) -> tuple[CallRequest, Decision] | None:
        entry = self._entries.get(uniqueid)
        if entry is None:
            return None
        _, caller, dialled, trunk, result, reason, category, e164, *tariff = entry
        request = CallRequest(trunk=trunk, dialled=dialled, caller=caller, uniqueid=uniqueid)
        decision = Decision(result, reason, trunk, dialled, category=category, e164=e164,
                            tariff=_tariff_from(tariff))
        return request, decision

    def __len__(self) -> int:
        return len(self._entries)


# A tuple in a tuple can stay tracked after a collection that untracks the
# inner one, so the tariff's fields are stored flat, all None for no tariff.
NO_TARIFF = (None,) * 6


def _tariff_fields(tariff: Tariff | None) -> tuple:
    if tariff is None:
        return NO_TARIFF
    return (tariff.prefix, tariff.description, tariff.rate, tariff.connection_fee,
            tariff.increments.first, tariff.increments.later)


def _tariff_from(fields: list) -> Tariff | None:
    if fields[0] is None:
        return None
    prefix, description, rate, connection_fee, first, later = fields
    return tariff_from_checked_fields(prefix, description, rate, connection_fee,
                                      Increments(first, later))
