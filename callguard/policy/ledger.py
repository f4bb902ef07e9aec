"""The spend of every trunk per window, as this daemon knows it.

A window's spend has two parts. ``committed`` is what finished calls cost: it
is read from the store the first time a window is needed and grows in memory
as calls end (the store is written by whoever ends the call). ``live`` is what
the blocks begun so far by calls still up cost; it lives in memory only and is
recomputed from answer times and tariffs after a restart.

When several daemons share one store, calls that the others end reach
``committed`` through refresh(), which reads the stored totals again. The
costs of this daemon's calls that ended but are not written yet are kept
apart (``unwritten``) and added to every total read from the store, so a read
that runs before or after such a write counts the call once. A read whose
window gets such a write while its result is on the way is sent again,
because the store may have run it before the write, and ``unwritten`` no
longer contains the call.

Those daemons also share what their calls still up have spent and what
their pending checks hold, which no stored total contains yet. Each writes
its own part to the store every few seconds, and ``others`` keeps the
parts of the other daemons as last read. ``spent()`` counts them with this
daemon's own spend. A daemon counts a call that ended in its share until the
store has the call (``unwritten``), so its share falls only once the
stored total has risen. The ledger also keeps the other daemons' calls up
and pending checks per trunk, read with their shares, for the concurrent-call
cap.
"""

import asyncio
import logging
from dataclasses import dataclass
from decimal import Decimal

from callguard.store import LiveShares
from callguard.worker import StoreWorker

log = logging.getLogger(__name__)

WindowId = tuple[str, str, str]  # (trunk, window, key)
WindowKey = tuple[str, str]  # (window, key)
ZERO = Decimal(0)
# Reads of one window's total in a row while this daemon's writes keep landing in it.
MAX_SPEND_READS = 5


@dataclass
class _ReadsInFlight:
    """The reads of one window's total that wait for the store."""

    count: int = 0
    # The costs of this daemon's writes that landed in the window meanwhile.
    landed: Decimal = ZERO


class Ledger:
    def __init__(self, worker: StoreWorker):
        self._worker = worker
        self._committed: dict[WindowId, Decimal] = {}
        self._live: dict[WindowId, Decimal] = {}
        self._loading: dict[WindowId, asyncio.Future[None]] = {}
        self._unwritten: dict[WindowId, Decimal] = {}
        # Costs that commit() added to windows not read from the store yet.
        # Until the read succeeds, they are the least those windows contain.
        self._unread: dict[WindowId, Decimal] = {}
        # The windows being read from the store.
        self._reads: dict[WindowId, _ReadsInFlight] = {}
        # The live spend and holds of the other daemons sharing the store.
        self._others: dict[WindowId, Decimal] = {}
        # The calls up and pending checks of the other daemons, per trunk.
        self._others_calls: dict[str, int] = {}

    async def load(self, trunk: str, keys: dict[str, str]) -> None:
        """Make sure the committed totals of these windows are in memory."""
        for window, key in keys.items():
            window_id = (trunk, window, key)
            if window_id in self._committed:
                continue
            pending = self._loading.get(window_id)
            if pending is None:
                pending = asyncio.ensure_future(self._load_window(window_id))
                self._loading[window_id] = pending
            try:
                await asyncio.shield(pending)
            finally:
                if pending.done():
                    self._loading.pop(window_id, None)

    async def _load_window(self, window_id: WindowId) -> None:
        total = await self._read_total(window_id)
        # Set before any other callback runs, so that a commit() from now on
        # adds to it. The total contains every cost that _unread counted.
        self._committed.setdefault(window_id, total)
        self._unread.pop(window_id, None)

    async def _read_total(self, window_id: WindowId) -> Decimal:
        """Read a window's stored total and return it plus this daemon's unwritten costs there.

        The sum is taken in the same step as the read's result arrives. The
        read is sent again while writes land in the window during it, up to
        MAX_SPEND_READS times. After that the costs written during the last
        read are added as well: the store may have counted them already, but
        a cost counted twice only refuses calls early, and one missed lets
        them overspend. The next refresh() reads the exact total.
        """
        trunk, window, key = window_id
        reads = self._reads.setdefault(window_id, _ReadsInFlight())
        reads.count += 1
        try:
            for _ in range(MAX_SPEND_READS):
                landed_before = reads.landed
                stored = await self._worker.call(self._worker.store.get_spend, trunk,
                                                 window, key)
                landed = reads.landed - landed_before
                if not landed:
                    break
            return stored + self._unwritten.get(window_id, ZERO) + landed
        finally:
            reads.count -= 1
            if reads.count == 0:
                del self._reads[window_id]

    def loaded(self, trunk: str, window: str, key: str) -> bool:
        return (trunk, window, key) in self._committed

    def committed(self, trunk: str, window: str, key: str) -> Decimal:
        """Return what finished calls cost in one window.

        Until the window is read from the store, that is only what the calls
        this daemon ended there cost, as while the store cannot be reached.
        """
        window_id = (trunk, window, key)
        total = self._committed.get(window_id)
        if total is None:
            return self._unread.get(window_id, ZERO)
        return total

    def live(self, trunk: str, window: str, key: str) -> Decimal:
        return self._live.get((trunk, window, key), ZERO)

    def others(self, trunk: str, window: str, key: str) -> Decimal:
        """Return the live spend and holds of the other daemons in one window."""
        return self._others.get((trunk, window, key), ZERO)

    def others_calls(self, trunk: str) -> int:
        """Return the calls up and pending checks of the other daemons on ``trunk``."""
        return self._others_calls.get(trunk, 0)

    def spent(self, trunk: str, window: str, key: str) -> Decimal | None:
        """Return committed plus live spend, the other daemons' included, or None
        when the window was never loaded."""
        window_id = (trunk, window, key)
        if window_id not in self._committed:
            return None
        return (self._committed[window_id] + self._live.get(window_id, ZERO)
                + self._others.get(window_id, ZERO))

    def unstored(self, trunk: str, window: str, key: str) -> Decimal:
        """Return this daemon's spend in one window that the store's total lacks:
        the live spend and the calls that ended but are not written yet."""
        window_id = (trunk, window, key)
        return self._live.get(window_id, ZERO) + self._unwritten.get(window_id, ZERO)

    def others_fallen(self, others: dict[WindowId, Decimal]) -> list[WindowId]:
        """Return the windows in which ``others`` is less than the shares counted now.

        A share falls when calls end, and their cost is in the store's totals
        by then, so those totals must be read again before the new shares count.
        """
        return [window_id for window_id, amount in self._others.items()
                if others.get(window_id, ZERO) < amount]

    def replace_others(self, shares: LiveShares) -> set[str]:
        """Count ``shares`` as the other daemons' spend and calls from now on.

        Returns the trunks whose spend shares changed.
        """
        others = shares.spend
        changed = {window_id[0] for window_id in self._others.keys() | others.keys()
                   if self._others.get(window_id, ZERO) != others.get(window_id, ZERO)}
        self._others = {window_id: amount for window_id, amount in others.items() if amount}
        self._others_calls = {trunk: count for trunk, count in shares.calls.items() if count}
        return changed

    def add_live(self, trunk: str, charges: dict[WindowKey, Decimal]) -> None:
        _add(self._live, trunk, charges, 1)

    def remove_live(self, trunk: str, charges: dict[WindowKey, Decimal]) -> None:
        _add(self._live, trunk, charges, -1)

    def commit(self, trunk: str, charges: dict[WindowKey, Decimal]) -> None:
        """Add a finished call's cost to the committed totals, until its write lands.

        Call written() once the store has the call. Windows not loaded yet
        get the cost when they are read.
        """
        for (window, key), amount in charges.items():
            window_id = (trunk, window, key)
            if window_id in self._committed:
                self._committed[window_id] += amount
            else:
                self._unread[window_id] = self._unread.get(window_id, ZERO) + amount
        _add(self._unwritten, trunk, charges, 1)

    def written(self, trunk: str, charges: dict[WindowKey, Decimal]) -> None:
        """Note that the store now contains a call whose cost commit() added."""
        _add(self._unwritten, trunk, charges, -1)
        for (window, key), amount in charges.items():
            reads = self._reads.get((trunk, window, key))
            if reads is not None:
                reads.landed += amount

    async def refresh(self, windows: list[WindowId]) -> set[str]:
        """Read again the committed totals of those ``windows`` that are in memory.

        This brings in the calls that other daemons sharing the store ended.
        Returns the trunks whose totals changed.
        """
        changed = set()
        for window_id in windows:
            if window_id not in self._committed:
                continue
            total = await self._read_total(window_id)
            if window_id not in self._committed:
                continue  # forgotten while it was read, as by a reset
            if total != self._committed[window_id]:
                self._committed[window_id] = total
                changed.add(window_id[0])
        return changed

    def forget(self, trunk: str | None = None) -> None:
        """Drop committed totals (all, or one trunk's) so they are read again from the store."""
        if trunk is None:
            self._committed.clear()
            self._unread.clear()
            return
        for window_id in [w for w in self._committed if w[0] == trunk]:
            del self._committed[window_id]
        for window_id in [w for w in self._unread if w[0] == trunk]:
            del self._unread[window_id]


def _add(totals: dict[WindowId, Decimal], trunk: str, charges: dict[WindowKey, Decimal],
         sign: int) -> None:
    for (window, key), amount in charges.items():
        window_id = (trunk, window, key)
        total = totals.get(window_id, ZERO) + sign * amount
        if total:
            totals[window_id] = total
        else:
            totals.pop(window_id, None)
