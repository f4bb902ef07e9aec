"""Live spend that the daemons sharing a PostgreSQL store show each other.

A trunk's stored totals contain only the calls that have ended. So every
LIVE_SPEND_SECONDS each daemon writes to the store what its calls still up
have spent and what its pending checks hold, per trunk and current day and
week. With the day's spend it writes how many calls it has up plus pending
checks on the trunk. It then reads the same of the other daemons. The ledger
counts their spend in every decision and limit search, and their calls in
the concurrent-call cap. A daemon whose rows are older than
LIVE_SPEND_STALE_SECONDS is taken to be down, and its rows no longer count.
Rows older than LIVE_SPEND_EXPIRY_SECONDS are deleted.
"""

import asyncio
import logging
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from callguard.clock import TimerHandle
from callguard.metering.legs import Leg
from callguard.repeats import RepeatLimiter, suppressed_note
from callguard.store import LiveSpendRow, StoreError
from callguard.windows import DAY, WEEK, window_keys

if TYPE_CHECKING:
    from callguard.daemon.app import Application

log = logging.getLogger(__name__)

# Seconds between two rounds of writing this daemon's live spend and reading
# the others'. A shared trunk can overrun its limit by what the calls up on
# the other nodes begin in about twice this time. Up to one round passes
# before a node writes a new block, and up to one more before another reads it.
LIVE_SPEND_SECONDS = 2.0
# Rows of a node not updated for this long are ignored, as those of a node
# that crashed or lost the store. It is well above the 25 s that a statement
# on a vanished PostgreSQL host may take to fail, so one slow write does not
# make a running node's rows stale.
LIVE_SPEND_STALE_SECONDS = 60.0
# Rows not updated for this long are deleted, as those of a node that stopped
# for good or was renamed. A running node rewrites its rows every round, so
# they are deleted only after a day of failed writes, when they count for
# nothing already, or when its clock is a day behind the deleting node's.
LIVE_SPEND_EXPIRY_SECONDS = 24 * 3600.0
# Seconds between two deletions of expired rows. A daemon deletes them in its
# first round, and again in the round after a failed deletion.
LIVE_SPEND_PURGE_SECONDS = 3600.0


class LiveSpendShare:
    """Writes this daemon's live spend to the store and reads the other daemons'."""

    def __init__(self, app: "Application"):
        self._app = app
        self._timer: TimerHandle | None = None
        self._task: asyncio.Task | None = None
        # True while the store may contain rows of this node that are not zero.
        self._rows_stored = True
        # When this daemon last stored its rows, or None when it does not know
        # which rows under its node name it stored: since its start, and after
        # a failed write.
        self._written_at: datetime | None = None
        self._errors = RepeatLimiter(clock=app.clock)
        self._namesakes = RepeatLimiter(clock=app.clock)
        self._stopped = False
        # When this daemon last deleted the expired rows, None before it has.
        self._purged_at: datetime | None = None

    def start(self) -> None:
        """Run a round every LIVE_SPEND_SECONDS on the daemon's clock."""
        self._stopped = False
        self._schedule()

    async def stop(self) -> None:
        """Stop the rounds, and wait for the one running to end.

        The rows stay in the store: the calls of this node go on while it
        restarts, and the rows count for the others until they are stale.
        """
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def settle(self) -> None:
        """Wait for the round that is running, if any."""
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    def _schedule(self) -> None:
        clock = self._app.clock
        at = clock.now() + timedelta(seconds=LIVE_SPEND_SECONDS)
        self._timer = clock.call_at(at, self._start_round)

    def _start_round(self) -> None:
        self._timer = None
        if self._stopped:
            return
        self._task = asyncio.get_running_loop().create_task(self._round(),
                                                            name="live-spend-share")

    async def _round(self) -> None:
        try:
            await self.share()
        except Exception:
            # A bug here must not end the rounds: the next one may succeed.
            log.exception("sharing live spend with the other nodes failed unexpectedly; "
                          "trying again in %g s", LIVE_SPEND_SECONDS)
        finally:
            if not self._stopped:
                self._schedule()

    async def share(self) -> None:
        """Write this daemon's live spend, then read the other daemons' and count it,
        and delete the rows of nodes that stopped long ago.

        A store error is logged and the round ends. The ledger then keeps the
        shares of the others that it read last, until they are read again.
        """
        app = self._app
        now = app.clock.now()
        rows = self._own_rows(now)
        if rows or self._rows_stored:
            try:
                replaced = await app.worker.call(app.store.replace_live_spend, app.node,
                                                 rows, now)
            except StoreError as exc:
                self._written_at = None
                self._log_error("failed to store this node's live spend for the other "
                                "nodes", exc)
            else:
                self._check_namesake(replaced)
                self._rows_stored = bool(rows)
                self._written_at = now if rows else None

        since = now - timedelta(seconds=LIVE_SPEND_STALE_SECONDS)
        try:
            others = await app.worker.call(app.store.others_live_spend, app.node, since)
            fallen = app.ledger.others_fallen(others.spend)
            changed = await app.ledger.refresh(fallen) if fallen else set()
        except StoreError as exc:
            self._log_error("failed to read the live spend of the other nodes", exc)
            return
        changed |= app.ledger.replace_others(others)
        for trunk in changed:
            log.debug("%s: live spend of the other nodes changed", trunk)
            app.guard.reschedule_soon(trunk)
        await self._purge(now)

    async def _purge(self, now: datetime) -> None:
        """Delete the rows of every node not updated for LIVE_SPEND_EXPIRY_SECONDS,
        at most once every LIVE_SPEND_PURGE_SECONDS."""
        purge_interval = timedelta(seconds=LIVE_SPEND_PURGE_SECONDS)
        if self._purged_at is not None and now - self._purged_at < purge_interval:
            return
        app = self._app
        before = now - timedelta(seconds=LIVE_SPEND_EXPIRY_SECONDS)
        try:
            deleted = await app.worker.call(app.store.delete_live_spend_before, before)
        except StoreError as exc:
            self._log_error("failed to delete the live spend rows of stopped nodes", exc)
            return
        self._purged_at = now
        if deleted:
            log.info("deleted %d live spend rows not updated since %s, of nodes that "
                     "stopped", deleted, before.isoformat())

    def _own_rows(self, now: datetime) -> list[LiveSpendRow]:
        """Return this daemon's live spend and the first blocks its pending checks
        reserve, in each trunk's windows at ``now``, with its calls up plus
        pending checks per trunk on the day's row.

        Calls taken over from the store that this Asterisk has not listed yet
        are left out, because until ARI connects they may be other nodes'
        calls, which those nodes share themselves.
        NOTE: this node's own calls taken over are left out too until then.
        While its Asterisk is down they are gone, but while only ARI cannot be
        reached the other nodes do not count them.
        """
        app = self._app
        app.reservations.expire(now)
        rows = []
        for name, trunk in app.config.trunks.items():
            app.guard.catch_up(name)
            keys = window_keys(now, trunk.timezone)
            unconfirmed = app.guard.unconfirmed_legs(name)
            calls = (app.guard.live_count(name) - len(unconfirmed)
                     + app.reservations.pending_count(name))
            for window in (DAY, WEEK):
                live = (app.ledger.unstored(name, window, keys[window])
                        - _answered_cost(unconfirmed, window, keys[window]))
                held = app.reservations.held(name, window, keys[window])
                count = calls if window == DAY else 0
                if live or held or count:
                    rows.append(LiveSpendRow(name, window, keys[window], live, held, count))
        return rows

    def _check_namesake(self, replaced: set[datetime]) -> None:
        """Log an error when the rows just replaced are not the ones this daemon stored.

        Another daemon that shares the store under the same node name then
        writes them, and each daemon replaces the other's share with its own,
        so neither counts the other's calls.
        """
        if self._written_at is None or replaced <= {self._written_at}:
            return
        suppressed = self._namesakes.admit()
        if suppressed is not None:
            log.error("another daemon stores its live spend under this node's name %r; "
                      "neither counts the other's calls toward the shared limits. Give "
                      "each daemon that shares the store its own node_name in "
                      "[general]%s",
                      self._app.node, suppressed_note(suppressed))

    def _log_error(self, failure: str, exc: StoreError) -> None:
        suppressed = self._errors.admit()
        if suppressed is not None:
            log.error("%s: %s; trying again in %g s%s", failure, exc, LIVE_SPEND_SECONDS,
                      suppressed_note(suppressed))


def _answered_cost(legs: list[Leg], window: str, key: str) -> Decimal:
    """Return the blocks that ``legs`` have begun in one window."""
    return sum((leg.answered.charges.get((window, key), Decimal(0))
                for leg in legs if leg.answered is not None), Decimal(0))
