"""Live calls on the trunks: metering, the limit timer per trunk, and hang-ups.

The ARI event tracker reports what happens to trunk legs (dialled, answered,
ended); this module keeps their spend in the ledger, sets one timer per trunk
for the moment its budget runs out or a call reaches ``max_call_seconds``, and
hangs calls up through ARI when it fires.
"""

import asyncio
import fnmatch
import logging
from collections import deque
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Awaitable, Callable, Iterable

from callguard.clock import Clock, TimerHandle
from callguard.config import Config
from callguard.metering.alerts import AlertRaiser
from callguard.metering.charges import AnsweredCall
from callguard.metering.decisions import DecisionBook
from callguard.metering.legs import ENDED, RINGING, UP, Leg
from callguard.metering.meter import (
    REASON_DAILY,
    REASON_MAX_DURATION,
    SEARCH_HORIZON,
    TrunkMeter,
)
from callguard.metering.records import call_record, hangup_record
from callguard.money import format_amount, format_rate
from callguard.policy.decision import (
    ALLOW,
    REASON_BARRED_HOURS,
    REASON_BLOCKED,
    REASON_EMERGENCY,
    REASON_OPTED_OUT,
    CallRequest,
)
from callguard.policy.engine import PolicyEngine
from callguard.numbers.categories import EMERGENCY
from callguard.rating import Increments, Tariff
from callguard.repeats import RepeatLimiter, suppressed_note
from callguard.policy.ledger import Ledger
from callguard.policy.reservations import Reservations
from callguard.store import StoreError
from callguard.windows import DAY, WEEK, window_keys
from callguard.worker import StoreWorker

log = logging.getLogger(__name__)

# The price of an emergency call: nothing.
EMERGENCY_TARIFF = Tariff("", "emergency call, free of charge", Decimal(0), Decimal(0),
                          Increments(60, 60))


def leg_tariff(category: str, tariff: Tariff | None) -> Tariff | None:
    """Return the tariff to meter a leg of ``category`` at, which is ``tariff``
    unless the leg is an emergency call. Emergency calls get EMERGENCY_TARIFF.

    An emergency call is never hung up, so it must not use up the budget that
    the trunk's other calls are hung up against.
    """
    if category == EMERGENCY:
        return EMERGENCY_TARIFF
    return tariff


def may_hang_up(reason: str) -> bool:
    """Check whether a leg judged with decision ``reason`` may be hung up.

    Emergency calls never are, and an opted-out caller's calls are allowed
    without limits, whether a check or the leg's own judgement found it.
    """
    return reason not in (REASON_EMERGENCY, REASON_OPTED_OUT)


# Q.850 causes sent with DELETE /ari/channels/{id}.
CAUSE_NORMAL_CLEARING = 16
CAUSE_CALL_REJECTED = 21

# Ended legs kept in memory for `callguardctl calls`.
RECENT_LEGS = 500
# Seconds before a hang-up that failed (Asterisk unreachable) is tried again.
HANGUP_RETRY_SECONDS = 2.0
# The maximum wait between two requests to hang up the same call while they fail.
HANGUP_RETRY_MAX_SECONDS = 60.0
# Seconds to wait for the ChannelDestroyed of a call whose hang-up request found
# the channel gone (404), because the event can still be on its way. It carries
# the real end and cause. Without it the call ends at the request.
GONE_EVENT_WAIT_SECONDS = 5.0
# Seconds a call may stay up after Asterisk accepted its hang-up before it is
# requested again. The wait doubles after each request, up to HANGUP_RETRY_MAX_SECONDS.
HANGUP_CONFIRM_SECONDS = 10.0
# Waits before writing call updates again while the store is unreachable: the
# first, doubled after each failure up to the last.
WRITE_RETRY_FIRST_SECONDS = 1.0
WRITE_RETRY_MAX_SECONDS = 30.0
# Waits before the limit search reads again the spend windows that the store
# failed to return. The first wait doubles after each failure, up to the last.
READ_RETRY_FIRST_SECONDS = 1.0
READ_RETRY_MAX_SECONDS = 30.0
# Call updates kept while the store is unreachable; beyond it the oldest are dropped.
MAX_QUEUED_WRITES = 100_000

OUTCOME_REQUESTED = "requested"
OUTCOME_GONE = "gone"
OUTCOME_FAILED = "failed"

# Asks Asterisk to hang up a channel: True when done, False when already gone.
Hangup = Callable[[str, int], Awaitable[bool]]


class LiveGuard:
    def __init__(self, engine: PolicyEngine, ledger: Ledger, reservations: Reservations,
                 clock: Clock, worker: StoreWorker):
        self.engine = engine
        self.ledger = ledger
        self.reservations = reservations
        self.clock = clock
        self.worker = worker
        self.decisions = DecisionBook()
        self.meters: dict[str, TrunkMeter] = {}
        self.legs: dict[str, Leg] = {}
        self.recent: deque[Leg] = deque(maxlen=RECENT_LEGS)
        self.hangup: Hangup | None = None
        self.alerts: AlertRaiser | None = None
        self._timers: dict[str, TimerHandle] = {}
        self._dirty: set[str] = set()
        # (trunk, window, key) of spend windows being read for the limit search.
        self._loading_windows: set[tuple[str, str, str]] = set()
        # Trunk -> the last wait before reading its spend windows again, while
        # the reads fail.
        self._read_retry: dict[str, float] = {}
        # Trunks whose spend windows a retry timer will read again.
        self._read_retry_pending: set[str] = set()
        # Retries of failed hang-ups and store writes, cancelled by close().
        self._retry_timers: set[TimerHandle] = set()
        # Legs that stop_following ended while their channels were still up.
        self._unfollowed: set[str] = set()
        # Checked channels that ended while a trunk leg of their check still
        # rang, so that the leg's end releases the hold instead of keeping it
        # for another Dial().
        self._checked_gone: set[str] = set()
        # Meters of trunks removed from the config while legs on them were live.
        self._retired: dict[str, TrunkMeter] = {}
        self._writes: deque[tuple[str, tuple]] = deque()
        self._writer: asyncio.Future | None = None
        # While the store is unreachable, the wait before the next write, else None.
        self._write_retry: float | None = None
        self._write_errors = RepeatLimiter()
        self._hangup_errors = RepeatLimiter()
        self.dropped_writes = 0
        self._tasks: set[asyncio.Task] = set()

    # Configuration and queries.

    def configure(self, config: Config) -> None:
        """Build a meter per trunk; live legs stay with their trunk across reloads."""
        meters = {}
        for name, trunk in config.trunks.items():
            meter = TrunkMeter(trunk, self.ledger, self.reservations.held)
            old = self.meters.get(name) or self._retired.pop(name, None)
            if old is not None:
                meter.legs = old.legs
                if old.config.timezone != trunk.timezone:
                    self._move_to_timezone(meter)
            meters[name] = meter
        for name, old in self.meters.items():
            if name not in meters and old.legs:
                # Kept until its last leg ends, so the leg's events still find it.
                self._retired[name] = old
                log.warning("%s: removed from the config with %d live calls; they are no "
                            "longer limited or hung up, and are charged when they end",
                            name, old.live_count())
        self.meters = meters
        for name in self.meters:
            self.reschedule(name)

    def _move_to_timezone(self, meter: TrunkMeter) -> None:
        """Charge the answered live legs of ``meter`` again in its new time zone.

        The blocks they have begun move to the day and week windows of that
        zone, as a restart would place them, and the reschedule that follows
        a reload charges them there.
        """
        legs = meter.answered_legs()
        for leg in legs:
            earlier = leg.answered
            self.ledger.remove_live(meter.name, earlier.charges)
            leg.answered = AnsweredCall(earlier.tariff, meter.config.timezone,
                                        earlier.answered_at)
        if legs:
            log.info("%s: timezone changed to %s, so the blocks of %d live calls are "
                     "charged again in its day and week windows", meter.name,
                     meter.config.timezone, len(legs))

    def trunk_for_channel(self, channel_name: str) -> str | None:
        for name, meter in self.meters.items():
            pattern = meter.config.channel_pattern
            if pattern and fnmatch.fnmatchcase(channel_name, pattern):
                return name
        return None

    def live_count(self, trunk: str) -> int:
        meter = self.meters.get(trunk)
        return 0 if meter is None else meter.live_count()

    def unconfirmed_legs(self, trunk: str) -> list[Leg]:
        """Return the live legs of ``trunk`` taken over from the store that this
        Asterisk has not yet listed as its own.

        On a shared store such a leg may be another PBX's call, which that
        PBX's callguard counts already.
        """
        meter = self.meters.get(trunk)
        if meter is None:
            return []
        return [leg for leg in meter.legs.values() if leg.live and leg.restored]

    def note_decision(self, request: CallRequest, decision) -> None:
        self.decisions.record(request, decision, decision.decided_at or self.clock.now())
        meter = self.meters.get(decision.trunk)
        if decision.reserved and meter is not None and meter.has_answered_legs():
            # The hold leaves less budget to the live calls, so their limit
            # can come before the moment the trunk's timer is set for.
            self.reschedule_soon(decision.trunk)

    def catch_up(self, trunk: str) -> None:
        meter = self.meters.get(trunk)
        if meter is not None and meter.legs:
            meter.catch_up(self.clock.now())

    # What the event tracker reports.

    def dialled(self, leg_id: str, channel: str, trunk: str, decision_uniqueid: str,
                number: str | None, at: datetime) -> Leg | None:
        """Start following a trunk leg placed by Dial()."""
        if leg_id in self.legs:
            # Adopted from GET /ari/channels while this Dial waited behind the
            # reconciliation: link it to its check now.
            self._relink(self.legs[leg_id], decision_uniqueid, number)
            return None
        if trunk not in self.meters:
            return None
        leg = Leg(id=leg_id, trunk=trunk, channel=channel, created_at=at,
                  number=number or "", decision_uniqueid=decision_uniqueid)
        linked = self.decisions.get(decision_uniqueid) if decision_uniqueid else None

        if linked is not None and not self._same_destination(number, linked[1]):
            # The caller was checked for another number: a call forward or a
            # transfer reached the trunk. The leg is judged on its own number.
            request, decision = linked
            leg.caller = request.caller
            self._judge_unguarded(leg, f"its caller was checked for "
                                       f"{decision.e164 or request.dialled}",
                                  caller=request.caller)
        elif linked is not None:
            request, decision = linked
            self._link(leg, request, decision)
        else:
            self._judge_unguarded(leg, "no callguard check ran for its caller")

        self.legs[leg_id] = leg
        self.meters[trunk].legs[leg_id] = leg
        if decision_uniqueid:
            self.reservations.mark_dialled(decision_uniqueid)
        if leg.hangup_requested:
            self._spawn(self._hang_up(leg, leg.hangup_requested, CAUSE_CALL_REJECTED))
        self.reschedule_soon(trunk)
        return leg

    def _relink(self, leg: Leg, decision_uniqueid: str, number: str | None) -> None:
        linked = self.decisions.get(decision_uniqueid) if decision_uniqueid else None
        if leg.guarded or linked is None or not self._same_destination(number, linked[1]):
            return
        request, decision = linked
        leg.decision_uniqueid = decision_uniqueid
        self._link(leg, request, decision)
        self.reservations.mark_dialled(decision_uniqueid)

        earlier = leg.answered
        if earlier is not None and leg.tariff is not None:
            # Charged so far at a guessed tariff: charge again at the checked one.
            self.ledger.remove_live(leg.trunk, earlier.charges)
            leg.answered = AnsweredCall(leg.tariff, earlier.tz, earlier.answered_at)
            if not self._other_leg_of(leg):
                self.reservations.release(decision_uniqueid)
        log.info("%s %s: linked %s to the check of %s", leg.trunk, leg.id, leg.channel,
                 decision_uniqueid)
        if leg.hangup_requested and leg.live:
            self._spawn(self._hang_up(leg, leg.hangup_requested, CAUSE_CALL_REJECTED))
        self.reschedule_soon(leg.trunk)

    def answered(self, leg_id: str, at: datetime) -> None:
        leg = self.legs.get(leg_id)
        if leg is None or leg.state != RINGING:
            return  # unknown, or a duplicate or late event
        leg.state = UP
        leg.tariff = leg_tariff(leg.category, leg.tariff)
        if leg.tariff is None:
            leg.tariff = self._fallback_tariff(leg.trunk)
            leg.notes.append("metered at the trunk's highest rate: destination unknown")
        meter = self._meter_of(leg.trunk)
        leg.answered = AnsweredCall(leg.tariff, meter.config.timezone, at)

        if leg.decision_uniqueid and not self._other_leg_of(leg):
            # The reserved first block becomes the call's first charged block.
            self.reservations.release(leg.decision_uniqueid)
            self._checked_gone.discard(leg.decision_uniqueid)
        meter.catch_up(max(at, self.clock.now()))
        log.info("%s %s: answered, %s to %s at %s/min", leg.trunk, leg.id, leg.channel,
                 leg.e164 or leg.number or "an unknown number", format_rate(leg.tariff.rate))
        self._persist(leg)
        self.reschedule_soon(leg.trunk)

    def ended(self, leg_id: str, at: datetime, cause: int | None) -> None:
        leg = self.legs.get(leg_id)
        if leg is None or leg.state == ENDED:
            return
        self._finish(leg, at, cause)

    def stop_following(self, at: datetime, reason: str, *, shared_store: bool = False) -> None:
        """End every leg followed, charged up to ``at``, when ARI events stop for good.

        Without an ARI connection no event can end a leg, so it would be
        charged for ever, and the store would keep it up for the next start.
        On a ``shared_store``, a leg taken over from the store and never seen
        in this Asterisk may be another PBX's call, which its own callguard
        charges when it ends, so it is only dropped from memory.
        """
        if shared_store:
            foreign = [leg for leg in self.legs.values() if leg.restored]
            if foreign:
                log.warning("%s: leaving %s taken over from the store to the callguard "
                            "of their PBX, because this Asterisk was not asked whether it "
                            "has them", reason, _calls(len(foreign)))
            for leg in foreign:
                self.release_foreign(leg)
        legs = list(self.legs.values())
        if legs:
            log.warning("%s: no longer following %s; each is charged up to %s and stored "
                        "as ended", reason, _calls(len(legs)), at.isoformat())
        for leg in legs:
            self._unfollowed.add(leg.id)
            self._finish(leg, at, None)

    def was_unfollowed(self, leg_id: str) -> bool:
        """Check whether stop_following ended ``leg_id`` while its channel was up."""
        return leg_id in self._unfollowed

    def skip_stored_ended(self, uniqueids: Iterable[str]) -> None:
        """Treat the channels ``uniqueids``, which are stored as ended, as
        stop_following does, so that the channel list does not meter them again.

        A restart forgets which legs stop_following ended, and the store
        keeps a call's first end.
        """
        self._unfollowed.update(uniqueids)

    def forget_unfollowed(self, present: Iterable[str]) -> None:
        """Forget the legs ended by stop_following whose channels are gone from Asterisk."""
        self._unfollowed.intersection_update(present)

    def channel_gone(self, uniqueid: str) -> None:
        """Release the reservation of a checked channel that ended without a live trunk leg.

        While a leg of its check still rings, as when the channel dialled a
        Local pair whose ;2 half hangs up the leg after the channel is gone,
        the leg's end releases it.
        """
        reservation = self.reservations.get(uniqueid)
        if reservation is not None and reservation.dialled:
            if self._live_legs_of(uniqueid):
                self._checked_gone.add(uniqueid)
                return
            self.reservations.release(uniqueid)
            log.info("%s %s: the checked call ended after its last trunk leg; released "
                     "its reservation", reservation.trunk, uniqueid)
            return
        if reservation is not None and reservation.legs_ended:
            self._release_undialled(uniqueid, "the checked call ended after its last trunk "
                                              "leg ended unanswered")
            return
        self._release_undialled(uniqueid, "the checked call ended before Dial")

    def dial_unseen(self, uniqueid: str) -> None:
        """Release the reservation of a checked channel whose Dial() callguard did not see."""
        self._release_undialled(uniqueid, "the checked call dialled while callguard could "
                                          "not see events, and its legs are metered "
                                          "without the check")

    def _release_undialled(self, uniqueid: str, why: str) -> None:
        """Release the reservation of ``uniqueid`` unless a trunk leg holds it."""
        reservation = self.reservations.get(uniqueid)
        if reservation is not None and not reservation.dialled:
            self.reservations.release(uniqueid)
            log.info("%s %s: %s; released its reservation", reservation.trunk, uniqueid,
                     why)

    def adopt(self, leg: Leg) -> None:
        """Follow a leg found in the store or in GET /ari/channels."""
        if leg.id in self.legs or leg.trunk not in self.meters:
            return
        self.legs[leg.id] = leg
        self.meters[leg.trunk].legs[leg.id] = leg
        if leg.answered is not None:
            self.meters[leg.trunk].catch_up(self.clock.now())
        self.reschedule_soon(leg.trunk)

    def judge_restored(self, leg: Leg) -> None:
        """Hang up a leg taken over from the store if its destination is barred.

        The store does not keep a hang-up that failed or was not yet sent
        when callguard stopped. So a leg found up after a restart is judged
        again as at its Dial: by its check's decision, or on its own number
        when no check covers it.
        """
        if not leg.live or not leg.protected or leg.hangup_requested:
            return
        reason = self._restored_denial(leg)
        if not reason:
            return
        leg.hangup_requested = reason
        log.warning("%s %s: %s to %s, taken over from the store, is %s; hanging up",
                    leg.trunk, leg.id, leg.channel, leg.e164 or leg.number or "?", reason)
        cause = CAUSE_NORMAL_CLEARING if leg.state == UP else CAUSE_CALL_REJECTED
        self._spawn(self._hang_up(leg, reason, cause))

    def _restored_denial(self, leg: Leg) -> str:
        """Return the reason to hang up a restored leg, or "" when it may go on.

        Reasons that depend on the moment, such as business hours or a block
        imposed later, are left out, because the leg was judged at its Dial.
        Blocks are skipped in the judgement itself, because a blocked caller
        comes before barring there and would hide a barred destination.
        """
        linked = self.decisions.get(leg.decision_uniqueid) if leg.decision_uniqueid else None
        if leg.guarded and linked is not None and linked[1].trunk == leg.trunk:
            decision = linked[1]
        elif leg.guarded and linked is None:
            return ""  # no decision read back from the store shows a DENY
        elif leg.number:
            request = CallRequest(trunk=leg.trunk, dialled=self.read_destination(leg.number),
                                  caller=leg.caller)
            decision = self.engine.judge(request, blocks=False)
        else:
            return ""
        if decision.result == ALLOW or not may_hang_up(decision.reason):
            return ""
        if decision.reason.startswith(REASON_BARRED_HOURS) or decision.reason == REASON_BLOCKED:
            return ""
        return decision.reason

    def release_foreign(self, leg: Leg) -> None:
        """Stop following a leg taken over from the store that another PBX's callguard
        follows, without ending it in the store.

        That callguard charges the call when it ends. Ending it here would
        store a shorter call, and the store would then ignore the real end.
        """
        self.legs.pop(leg.id, None)
        self._meter_of(leg.trunk).legs.pop(leg.id, None)
        if leg.answered is not None:
            self.ledger.remove_live(leg.trunk, leg.answered.charges)
        self.reschedule_soon(leg.trunk)

    # The timer per trunk.

    def reschedule_soon(self, trunk: str) -> None:
        """Set the trunk's timer again once the events already received are handled.

        A burst of events (a reconnect, a busy hour) then costs one search of
        the limit moment per trunk instead of one per event.
        """
        if trunk in self._dirty:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.reschedule(trunk)
            return
        self._dirty.add(trunk)
        loop.call_soon(self._reschedule_dirty)

    def _reschedule_dirty(self) -> None:
        dirty, self._dirty = self._dirty, set()
        for trunk in dirty:
            self.reschedule(trunk)

    def reschedule(self, trunk: str) -> None:
        timer = self._timers.pop(trunk, None)
        if timer is not None:
            timer.cancel()
        meter = self.meters.get(trunk)
        if meter is None:
            return
        now = self.clock.now()
        meter.catch_up(now)
        # Holds expire only when expire() runs. A hold past its expiry would
        # otherwise still take its money from the budget of the live calls.
        self.reservations.expire(now)
        pending = self._pending_hangups(meter)
        meter.unloaded.clear()
        deadline = meter.next_deadline(now, skip=pending)
        at = None if deadline is None else deadline.at

        if self.alerts is not None:
            legs = list(meter.legs.values()) + [leg for leg in self.recent
                                                if leg.trunk == trunk]
            self.alerts.check_spend(meter.config, now, legs)
        if self.alerts is not None and not pending:
            # While calls are being hung up, every one that ends sets the timer
            # again; the next warning is looked for once they have all ended.
            warning_at = meter.next_threshold(
                now, lambda window, key: self.alerts.pending_threshold(meter.config, window,
                                                                       key))
            if warning_at is not None and (at is None or warning_at < at):
                at = warning_at
        answered = meter.has_answered_legs()
        if meter.unloaded and answered:
            # Only spend that is running needs the stored totals now; a check
            # reads its own windows when it decides.
            self._load_windows(trunk, meter.unloaded)
        if answered and (at is None or at > now + SEARCH_HORIZON):
            # The searches look SEARCH_HORIZON ahead, so a budget that lasts
            # longer is searched for again then.
            at = now + SEARCH_HORIZON
        if at is None:
            return
        self._timers[trunk] = self.clock.call_at(at, lambda: self._fire(trunk))

    def _load_windows(self, trunk: str, windows: set[tuple[str, str]]) -> None:
        """Read spend windows the last search lacked, then search again with them."""
        missing = {(window, key) for window, key in windows
                  if (trunk, window, key) not in self._loading_windows}
        if not missing:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # no event loop to read with, as in a synchronous reschedule()
        self._loading_windows.update((trunk, window, key) for window, key in missing)
        self._spawn(self._load_and_reschedule(trunk, missing))

    async def _load_and_reschedule(self, trunk: str, windows: set[tuple[str, str]]) -> None:
        try:
            for window, key in sorted(windows):
                await self.ledger.load(trunk, {window: key})
        except StoreError as exc:
            window_names = ", ".join(f"{window} {key}" for window, key in sorted(windows))
            if trunk in self._read_retry_pending:
                # Every search while the store is down reads again, so one
                # retry timer per trunk is enough, not one per failed search.
                log.error("%s: failed to read spend windows %s from the store, so the "
                          "limit search counts there only the calls that this daemon "
                          "ended; a retry is already scheduled: %s", trunk, window_names, exc)
                return
            previous = self._read_retry.get(trunk)
            delay = (READ_RETRY_FIRST_SECONDS if previous is None
                     else min(previous * 2, READ_RETRY_MAX_SECONDS))
            self._read_retry[trunk] = delay
            log.error("%s: failed to read spend windows %s from the store, so the limit "
                      "search counts there only the calls that this daemon ended; trying "
                      "again in %g s: %s", trunk, window_names, delay, exc)
            # The search that runs then reads the windows it still lacks.
            self._read_retry_pending.add(trunk)
            self._retry_at(self.clock.now() + timedelta(seconds=delay),
                           lambda: self._read_again(trunk))
            return
        finally:
            self._loading_windows.difference_update(
                (trunk, window, key) for window, key in windows)
        self._read_retry.pop(trunk, None)
        self.reschedule_soon(trunk)

    def _read_again(self, trunk: str) -> None:
        self._read_retry_pending.discard(trunk)
        self.reschedule(trunk)

    def _fire(self, trunk: str) -> None:
        self._timers.pop(trunk, None)
        self._spawn(self._enforce(trunk))

    async def _enforce(self, trunk: str) -> None:
        meter = self.meters.get(trunk)
        if meter is None:
            return
        now = self.clock.now()
        meter.catch_up(now)
        self.reservations.expire(now)
        deadline = meter.next_deadline(now, skip=self._pending_hangups(meter))
        if deadline is None or deadline.at > now:
            self.reschedule(trunk)
            return

        if deadline.reason == REASON_MAX_DURATION:
            targets = [self.legs[leg_id] for leg_id in deadline.legs if leg_id in self.legs]
        else:
            waiting = self._pending_hangups(meter)
            targets = [leg for leg in meter.legs.values()
                       if leg.live and leg.protected and leg.id not in waiting]
            log.warning("%s: %s reached at %s; hanging up %s", trunk,
                        deadline.reason, now.isoformat(), _calls(len(targets)))

        for leg in targets:
            leg.hangup_requested = deadline.reason
        # The DELETEs go out before the alert is written, which takes time.
        hangups = asyncio.gather(*(
            self._hang_up(leg, deadline.reason,
                          CAUSE_NORMAL_CLEARING if leg.state == UP else CAUSE_CALL_REJECTED)
            for leg in targets
        ))
        await asyncio.sleep(0)  # lets the hang-up tasks send their requests
        if deadline.reason != REASON_MAX_DURATION and self.alerts is not None:
            numbers = ", ".join(leg.e164 or leg.number or "?" for leg in targets)
            self.alerts.limit_reached(
                meter.config, DAY if deadline.reason == REASON_DAILY else WEEK, now,
                f"hung up {_calls(len(targets))} ({numbers})",
                list(meter.legs.values()) + list(self.recent),
            )
        await hangups
        self.reschedule(trunk)

    async def _hang_up(self, leg: Leg, reason: str, cause: int) -> None:
        if not leg.protected:
            # The one place that sends a DELETE skips emergency calls and
            # opted-out callers, whatever requested it, such as a hang-up
            # requested before the leg was linked to the check that showed it.
            log.warning("%s %s: not hanging up %s to %s for %s: an emergency call or "
                        "an opted-out caller's call is never hung up", leg.trunk, leg.id,
                        leg.channel, leg.e164 or leg.number or "?", reason)
            leg.hangup_requested = ""
            return
        leg.hangup_requested = reason
        now = self.clock.now()
        meter = self.meters.get(leg.trunk)
        keys = window_keys(now, meter.config.timezone) if meter else {}
        daily = self.ledger.spent(leg.trunk, "day", keys["day"]) if keys else None
        weekly = self.ledger.spent(leg.trunk, "week", keys["week"]) if keys else None
        cost = leg.answered.total if leg.answered else Decimal(0)

        retry_in = min(HANGUP_RETRY_SECONDS * 2 ** leg.hangup_failures,
                       HANGUP_RETRY_MAX_SECONDS)
        if self.hangup is None:
            outcome = OUTCOME_FAILED
            failure = "ARI is not configured"
        else:
            try:
                gone = not await self.hangup(leg.id, cause)
                outcome = OUTCOME_GONE if gone else OUTCOME_REQUESTED
            except Exception as exc:
                outcome = OUTCOME_FAILED
                failure = str(exc)

        if outcome == OUTCOME_FAILED:
            leg.hangup_failures += 1
            leg.hangup_retry_at = now + timedelta(seconds=retry_in)
            suppressed = self._hangup_errors.admit()
            if suppressed is not None:
                log.error("%s %s: hang-up of %s to %s (%s) failed, trying again in %g s: "
                          "%s; call cost %s%s", leg.trunk, leg.id, leg.channel,
                          leg.e164 or leg.number or "?", reason, retry_in, failure,
                          format_amount(cost), suppressed_note(suppressed))
        else:
            leg.hangup_failures = 0
            leg.hangup_retry_at = None
            if outcome == OUTCOME_REQUESTED:
                # A repeat that Asterisk accepts shows the channel still up, so
                # the call cannot have ended at an earlier acceptance.
                leg.hangup_accepted_at = now
            log.warning("%s %s: hang-up of %s to %s for %s %s; call cost %s, spend today "
                        "%s, this week %s", leg.trunk, leg.id, leg.channel,
                        leg.e164 or leg.number or "?", reason, outcome, format_amount(cost),
                        _shown_spend(daily), _shown_spend(weekly))
        self._write(("hangup", (hangup_record(leg, reason, now, daily, weekly, cost,
                                               outcome),)))

        if (outcome != OUTCOME_FAILED and not leg.guarded and self.alerts is not None
                and meter is not None and not reason.startswith("limit:")):
            self.alerts.unguarded_hangup(meter.config, leg, reason)

        if outcome == OUTCOME_GONE and leg.live:
            # The call ended by the last request that Asterisk accepted, or
            # else by this one. Reconciliation reads the same moment when the
            # events are lost.
            gone_at = leg.hangup_accepted_at or now
            leg.hangup_accepted_at = gone_at
            self._retry_at(now + timedelta(seconds=GONE_EVENT_WAIT_SECONDS),
                           lambda: self._end_gone(leg, gone_at))
        elif outcome == OUTCOME_REQUESTED and leg.live:
            wait = min(HANGUP_CONFIRM_SECONDS * 2 ** leg.hangups_unconfirmed,
                       HANGUP_RETRY_MAX_SECONDS)
            self._retry_at(now + timedelta(seconds=wait),
                           lambda: self._confirm_hang_up(leg, reason, cause, wait))
        elif outcome == OUTCOME_FAILED and leg.live:
            leg.hangup_requested = ""
            retry_at = leg.hangup_retry_at
            if reason.startswith("limit:"):
                # The trunk's timer finds the limit again and hangs up every call past it.
                self._retry_at(retry_at, lambda: self.reschedule(leg.trunk))
            else:
                # A barred or unchecked call: no timer would come back to it.
                self._retry_at(retry_at, lambda: self._hang_up_again(leg, reason, cause))

    def _end_gone(self, leg: Leg, gone_at: datetime) -> None:
        """End a call whose hang-up request found its channel gone, if no
        ChannelDestroyed ended it meanwhile."""
        if not leg.live:
            return
        log.warning("%s %s: %s was gone when hung up, and no end event came within "
                    "%g s; charging it up to %s", leg.trunk, leg.id, leg.channel,
                    GONE_EVENT_WAIT_SECONDS, gone_at.isoformat())
        self._finish(leg, gone_at, None)

    def _confirm_hang_up(self, leg: Leg, reason: str, cause: int, waited: float) -> None:
        """Request the hang-up again if the call is still up ``waited`` seconds after
        Asterisk accepted it, as with a channel whose driver does not end it."""
        if not leg.live or leg.hangup_requested != reason:
            return
        leg.hangups_unconfirmed += 1
        log.warning("%s %s: %s to %s is still up %g s after Asterisk accepted its hang-up "
                    "for %s; requesting it again", leg.trunk, leg.id, leg.channel,
                    leg.e164 or leg.number or "?", waited, reason)
        self._spawn(self._hang_up(leg, reason, cause))

    def _hang_up_again(self, leg: Leg, reason: str, cause: int) -> None:
        if leg.live and not leg.hangup_requested:
            self._spawn(self._hang_up(leg, reason, cause))

    # Helpers.

    def _link(self, leg: Leg, request: CallRequest, decision) -> None:
        leg.guarded = True
        leg.caller = request.caller
        leg.number = leg.number or request.dialled
        leg.e164 = decision.e164
        leg.category = decision.category
        leg.protected = may_hang_up(decision.reason)
        if not leg.protected:
            # A leg judged alone before this link may have a hang-up requested.
            leg.hangup_requested = ""

        # A check sets an emergency call's variables before it reads the trunk
        # from CALLGUARD_TRUNK, so that decision can name no trunk. It
        # reserves nothing, so the leg's trunk is taken as the checked one.
        emergency_anywhere = decision.reason == REASON_EMERGENCY and not decision.trunk
        if decision.trunk != leg.trunk and not emergency_anywhere:
            log.warning("%s %s: checked for trunk %s but dialled on %s (%s); %s pays",
                        leg.trunk, leg.id, decision.trunk or "-", leg.trunk, leg.channel,
                        leg.trunk)
            self._judge_unguarded(leg, f"checked for trunk {decision.trunk or '-'}",
                                  number=request.dialled, caller=request.caller)
            leg.guarded = True
            return

        leg.tariff = leg_tariff(leg.category, decision.tariff)
        if decision.result != ALLOW and leg.protected:
            leg.hangup_requested = decision.reason
            log.warning("%s %s: dialled although the check returned DENY %s; hanging up",
                        leg.trunk, leg.id, decision.reason)

    def _judge_unguarded(self, leg: Leg, why: str, number: str | None = None,
                         caller: str = "") -> None:
        """Rate and judge a leg from its own dialled number, as a check would."""
        number = number or leg.number
        state = self.engine.state
        if not number:
            log.warning("%s %s: outbound leg %s (%s) has no dialled number callguard can "
                        "read; metering it at the trunk's highest rate", leg.trunk, leg.id,
                        leg.channel, why)
            leg.tariff = self._fallback_tariff(leg.trunk)
            return

        request = CallRequest(trunk=leg.trunk, dialled=self.read_destination(number),
                              caller=caller)
        decision = self.engine.judge(request)
        leg.e164 = decision.e164
        leg.category = decision.category
        leg.tariff = leg_tariff(leg.category,
                                decision.tariff or state.default_tariffs.get(leg.trunk))
        leg.protected = may_hang_up(decision.reason)
        if decision.result == ALLOW or not leg.protected:
            log.warning("%s %s: outbound leg %s to %s skipped the check (%s); metering it",
                        leg.trunk, leg.id, leg.channel, decision.e164 or number, why)
        else:
            leg.hangup_requested = decision.reason
            log.warning("%s %s: outbound leg %s to %s skipped the check (%s) and is %s; "
                        "hanging up", leg.trunk, leg.id, leg.channel, decision.e164 or number,
                        why, decision.reason)

    def read_destination(self, number: str) -> str:
        """Return a leg's dialled number in a form the check reads as the carrier does.

        A leg never carries the outside-line prefix, and a number in E.164 form
        without ``+`` (``441632960123``) comes back with it.
        """
        return self.engine.state.classifier.plan.read_destination(number)

    def _same_destination(self, number: str | None, decision) -> bool:
        """Return False when the dialstring names a number other than the checked one."""
        if not number:
            return True
        leg_key = self._destination_key(self.read_destination(number))
        if leg_key is None:
            return False
        # Short codes and emergency numbers have no E.164 form, so they compare
        # by their national digits. Their empty E.164 forms would match each other.
        # The checked string is read as the phone dialled it, outside-line
        # prefix included.
        decision_key = decision.e164 or self._destination_key(decision.dialled)
        return leg_key == decision_key

    def _destination_key(self, number: str) -> str | None:
        """Return the E.164 form of ``number``, its national digits when it has
        none, or None when it cannot be read."""
        try:
            classified = self.engine.state.classify(number)
        except ValueError:
            return None
        return classified.number.e164 or classified.number.national or None

    def _fallback_tariff(self, trunk: str):
        state = self.engine.state
        default = state.default_tariffs.get(trunk)
        deck = state.decks.get(trunk)
        if deck is None:
            return default
        highest = max(deck.tariffs(), key=lambda t: (t.rate, t.connection_fee), default=None)
        if default is None or (highest is not None and highest.rate > default.rate):
            return highest
        return default

    def _meter_of(self, trunk: str) -> TrunkMeter:
        """Return the meter of ``trunk``, also when a reload removed the trunk."""
        meter = self.meters.get(trunk)
        return meter if meter is not None else self._retired[trunk]

    def _live_legs_of(self, decision_uniqueid: str, excluding: Leg | None = None) -> bool:
        """Check whether a live leg other than ``excluding`` belongs to the check of
        ``decision_uniqueid``, on any trunk, as with Dial(PJSIP/n@gamma&PJSIP/n@delta)."""
        return any(other is not excluding and other.live
                   and other.decision_uniqueid == decision_uniqueid
                   for other in self.legs.values())

    def _last_leg_unanswered(self, decision_uniqueid: str) -> None:
        """Keep the check's hold for another Dial() after its last leg ended unanswered.

        Dial() returns to the dialplan then, and a dialplan that fails over
        dials a second trunk from the same channel without a new check. The
        hold lasts until that leg is answered or ends, the checked channel
        ends, or reservation_seconds pass. A checked channel already gone
        dials nothing more, so its hold is released at once.
        """
        if decision_uniqueid in self._checked_gone:
            self._checked_gone.discard(decision_uniqueid)
            self.reservations.release(decision_uniqueid)
            return
        lifetime = self.engine.state.config.general.reservation_seconds
        self.reservations.redial(decision_uniqueid, self.clock.now(), lifetime)

    def _other_leg_of(self, leg: Leg) -> bool:
        return any(other is not leg and other.live and other.state == UP
                   and other.decision_uniqueid == leg.decision_uniqueid
                   for other in self._meter_of(leg.trunk).legs.values())

    def _pending_hangups(self, meter: TrunkMeter) -> set[str]:
        """Return the legs that a limit must not hang up now: requested, or waiting to retry."""
        now = self.clock.now()
        return {leg.id for leg in meter.legs.values()
                if leg.hangup_requested
                or leg.hangup_retry_at is not None and leg.hangup_retry_at > now}

    def _finish(self, leg: Leg, at: datetime, cause: int | None) -> None:
        leg.state = ENDED
        leg.ended_at = at
        leg.hangup_cause = cause
        final: dict = {}
        if leg.answered is not None:
            final = leg.answered.final_charges(at)
            leg.final_charges = final
            self.ledger.remove_live(leg.trunk, leg.answered.charges)
            self.ledger.commit(leg.trunk, final)
        if leg.decision_uniqueid and not self._live_legs_of(leg.decision_uniqueid, leg):
            # The check's last leg: a hold is left only after an unanswered end.
            if leg.answered is None:
                self._last_leg_unanswered(leg.decision_uniqueid)
            self._checked_gone.discard(leg.decision_uniqueid)

        meter = self._meter_of(leg.trunk)
        meter.legs.pop(leg.id, None)
        if not meter.legs and self._retired.get(leg.trunk) is meter:
            del self._retired[leg.trunk]
        self.legs.pop(leg.id, None)
        self.recent.append(leg)

        cost = _cost_of(final)
        log.info("%s %s: ended %s to %s, cause %s, cost %s", leg.trunk, leg.id, leg.channel,
                 leg.e164 or leg.number or "?", cause, format_amount(cost))
        self._write(("finish", (call_record(leg, cost), final, at)))
        self.reschedule_soon(leg.trunk)

    def _persist(self, leg: Leg) -> None:
        self._write(("save", (call_record(leg, Decimal(0)),)))

    def _write(self, operation: tuple[str, tuple]) -> None:
        """Queue a call update; updates queued while a batch is written go in the next."""
        self._writes.append(operation)
        self._trim_writes()
        if self._write_retry is not None:
            return  # the retry timer writes the queue
        self._start_writer()

    def _trim_writes(self) -> None:
        """Drop the oldest call updates beyond MAX_QUEUED_WRITES, saying so."""
        while len(self._writes) > MAX_QUEUED_WRITES:
            kind, args = self._writes.popleft()
            self.dropped_writes += 1
            suppressed = self._write_errors.admit()
            if suppressed is not None:
                log.error("%d call updates are waiting for the store, so the oldest (%s of "
                          "%s) is dropped; %d dropped so far%s", MAX_QUEUED_WRITES, kind,
                          getattr(args[0], "uniqueid", "?"), self.dropped_writes,
                          suppressed_note(suppressed))

    def _start_writer(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.ensure_future(self._flush_writes())
            self._tasks.add(self._writer)
            self._writer.add_done_callback(self._tasks.discard)

    async def _flush_writes(self) -> None:
        """Write the queued call updates in order.

        While the store is unreachable, the failed update and every later one
        stay queued, in order, and are written again after a wait that doubles
        up to WRITE_RETRY_MAX_SECONDS. A call whose end was never stored would
        otherwise be found up after a restart and charged up to that moment.
        """
        store = self.worker.store
        while self._writes:
            batch, self._writes = list(self._writes), deque()
            try:
                await self.worker.call(store.write_calls, batch)
                self._note_written(batch)
                self._writes_recovered()
                continue
            except Exception as exc:
                if _transient(exc):
                    self._keep_for_retry(batch, exc)
                    return
                log.error("failed to store %d call updates together (%s); storing them "
                          "one by one", len(batch), exc)
            for index, (kind, args) in enumerate(batch):
                try:
                    await self.worker.call(store.write_calls, [(kind, args)])
                    self._note_written([(kind, args)])
                except Exception as exc:
                    if _transient(exc):
                        self._keep_for_retry(batch[index:], exc)
                        return
                    # The database rejected this update itself: storing it again
                    # cannot succeed, and it must not hold up the others.
                    log.error("failed to store a call update (%s of %s), dropping it: %s",
                              kind, getattr(args[0], "uniqueid", "?"), exc)
            self._writes_recovered()

    def _keep_for_retry(self, updates: list[tuple[str, tuple]], exc: Exception) -> None:
        """Put ``updates`` back before the queue, in order, and write them again later."""
        self._writes.extendleft(reversed(updates))
        self._trim_writes()
        self._retry_writes_later(exc)

    def _retry_writes_later(self, exc: Exception) -> None:
        delay = (WRITE_RETRY_FIRST_SECONDS if self._write_retry is None
                 else min(self._write_retry * 2, WRITE_RETRY_MAX_SECONDS))
        self._write_retry = delay
        suppressed = self._write_errors.admit()
        if suppressed is not None:
            log.error("failed to store call updates, keeping %d queued and trying again in "
                      "%g s: %s%s", len(self._writes), delay, exc,
                      suppressed_note(suppressed))
        self._retry_at(self.clock.now() + timedelta(seconds=delay), self._start_writer)

    def _writes_recovered(self) -> None:
        if self._write_retry is not None:
            log.info("storing call updates works again")
            self._write_retry = None

    def _note_written(self, operations: list[tuple[str, tuple]]) -> None:
        """Tell the ledger which finished calls' costs the store now contains."""
        for kind, args in operations:
            if kind == "finish":
                record, charges, _ = args
                self.ledger.written(record.trunk, charges)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait for the hang-ups and store writes already started."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def flush_writes(self) -> None:
        """Try once more to store the call updates still queued, as the daemon stops."""
        await self.drain()
        if self._writes:
            await self._flush_writes()
        if self._writes:
            log.error("stopping with %d call updates not stored; calls they end will be "
                      "found up at the next start and charged up to it", len(self._writes))

    def _retry_at(self, at: datetime, callback: Callable[[], None]) -> None:
        """Run ``callback`` at ``at`` unless the guard is closed first."""
        def run() -> None:
            self._retry_timers.discard(handle)
            callback()
        handle = self.clock.call_at(at, run)
        self._retry_timers.add(handle)

    def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for timer in self._retry_timers:
            timer.cancel()
        self._retry_timers.clear()
        self._read_retry_pending.clear()


def _transient(exc: Exception) -> bool:
    """Check whether ``exc`` is a store failure that writing again later may get past."""
    return isinstance(exc, StoreError) and exc.transient


def _cost_of(charges: dict) -> Decimal:
    """Return a call's cost from its charges: each block counts once per day window."""
    return sum((amount for (window, _), amount in charges.items() if window == "day"),
               Decimal(0))


def _calls(count: int) -> str:
    return "1 live call" if count == 1 else f"{count} live calls"


def _shown_spend(amount: Decimal | None) -> str:
    """Show a window's spend in a log line; None means not read from the store yet."""
    return "not read yet" if amount is None else format_amount(amount)
