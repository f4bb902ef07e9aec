"""The spend of every trunk per window, as this daemon knows it.

Totals come from the store the first time a window is needed and are then
kept in memory; charges update memory at once and reach the store through
the store worker, so a decision never waits for a write.
"""

import asyncio
import logging
from datetime import datetime
from decimal import Decimal

from callguard.worker import StoreWorker

log = logging.getLogger(__name__)

WindowId = tuple[str, str, str]  # (trunk, window, key)


class Ledger:
    def __init__(self, worker: StoreWorker):
        self._worker = worker
        self._totals: dict[WindowId, Decimal] = {}
        self._loading: dict[WindowId, asyncio.Future[Decimal]] = {}

    async def load(self, trunk: str, keys: dict[str, str]) -> None:
        """Make sure the totals of these windows are in memory."""
        for window, key in keys.items():
            window_id = (trunk, window, key)
            if window_id in self._totals:
                continue
            pending = self._loading.get(window_id)
            if pending is None:
                pending = asyncio.ensure_future(
                    self._worker.call(self._worker.store.get_spend, trunk, window, key)
                )
                self._loading[window_id] = pending
            try:
                amount = await asyncio.shield(pending)
            finally:
                if pending.done():
                    self._loading.pop(window_id, None)
            self._totals.setdefault(window_id, amount)

    def spent(self, trunk: str, window: str, key: str) -> Decimal | None:
        """Return the known total, or None when the window has not been loaded."""
        return self._totals.get((trunk, window, key))

    def charge(self, trunk: str, keys: dict[str, str], amount: Decimal, at: datetime) -> None:
        """Add ``amount`` to the windows in ``keys``, in memory now and in the store soon."""
        for window, key in keys.items():
            window_id = (trunk, window, key)
            self._totals[window_id] = self._totals.get(window_id, Decimal(0)) + amount
            asyncio.ensure_future(self._persist(trunk, window, key, amount, at))

    async def _persist(self, trunk: str, window: str, key: str, amount: Decimal,
                       at: datetime) -> None:
        try:
            await self._worker.call(self._worker.store.add_spend, trunk, window, key, amount, at)
        except Exception:
            # NOTE: the in-memory total stays right; the store misses this charge
            # until a restart recomputes spend from the calls table.
            log.exception("%s: failed to store a charge of %s in %s %s", trunk, amount,
                          window, key)

    def forget(self, trunk: str | None = None) -> None:
        """Drop cached totals (all, or one trunk's) so they are read again from the store."""
        if trunk is None:
            self._totals.clear()
            return
        for window_id in [w for w in self._totals if w[0] == trunk]:
            del self._totals[window_id]
