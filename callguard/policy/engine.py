"""The decision on one outbound call, in the order a sysadmin can predict.

1. an emergency number: allow, whatever else is true;
2. an invalid or unclassified number: deny;
3. a blocked caller: deny;
4. an unknown trunk: deny;
5. an opted-out calling number: allow, skipping barring and limits;
6. barring (the trunk's, then the number's override): deny ``barred:<category>``;
7. no rate: deny ``unrated`` unless the trunk sets ``default_rate``;
8. outside the trunk's business hours, ``bar_out_of_hours``: deny
   ``barred-hours:<category>``;
9. the velocity limits, counted over allowed calls only: deny ``limit:rate``,
   ``limit:destinations`` or ``limit:repeat``;
10. the concurrent-call cap, pending reservations and the calls that the
    other nodes sharing the store last reported included: deny
    ``limit:concurrent``;
11. the daily, then the weekly budget must cover the connection fee and the
    first block, which are reserved in the same step: deny ``limit:daily`` or
    ``limit:weekly``;
12. otherwise allow, for at most ``max_seconds``, and count the call towards
    the velocity limits in the same step as the reservation.
"""

import functools
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Callable, Mapping, NamedTuple

from callguard.clock import Clock
from callguard.config import Config, TrunkConfig
from callguard.numbers import (
    INTERNATIONAL_CATEGORIES,
    Classified,
    Classifier,
    InvalidNumber,
    UnclassifiedNumber,
)
from callguard.policy import budget
from callguard.policy.barring import is_barred
from callguard.policy.blocks import (
    KEY_ACCOUNTCODE,
    KEY_CALLER,
    KEY_ENDPOINT,
    KEY_SOURCE,
    BlockList,
    endpoint_of,
)
from callguard.policy.decision import (
    ALLOW,
    DENY,
    REASON_BARRED,
    REASON_BARRED_HOURS,
    REASON_BLOCKED,
    REASON_CONCURRENT,
    REASON_DAILY,
    REASON_EMERGENCY,
    REASON_INVALID_NUMBER,
    REASON_OK,
    REASON_OPTED_OUT,
    REASON_UNCLASSIFIED,
    REASON_UNKNOWN_TRUNK,
    REASON_UNRATED,
    REASON_WEEKLY,
    NOTHING_RESERVED,
    CallRequest,
    Decision,
)
from callguard.policy.hours import is_barred_out_of_hours
from callguard.policy.ledger import ZERO, Ledger
from callguard.policy.reservations import Reservations
from callguard.policy.velocity import VelocityCall, VelocityTracker
from callguard.rating import RateDeck, Tariff
from callguard.text import plural
from callguard.windows import DAY, WEEK, window_keys


# Distinct dialled strings and calling numbers whose normal form is kept, per
# config: callers repeat all day, and parsing a number is a third of a
# decision. Each entry is five objects that every full garbage collection
# walks, so the cache keeps the busiest numbers only.
NUMBER_CACHE_SIZE = 1024


@dataclass
class PolicyState:
    """What a decision reads besides the request; replaced whole on a config reload."""

    config: Config
    classifier: Classifier
    decks: Mapping[str, RateDeck]
    default_tariffs: Mapping[str, Tariff]

    def __post_init__(self) -> None:
        # Both are pure functions of the string for a given config, and a
        # reload builds a new state, so the caches never outlive their config.
        self.classify = functools.lru_cache(NUMBER_CACHE_SIZE)(self.classifier.classify)
        self.normalise_caller = functools.lru_cache(NUMBER_CACHE_SIZE)(
            self.classifier.plan.normalise_caller
        )
        self.source_offenders = any(trunk.offenders.key_type == KEY_SOURCE
                                    for trunk in self.config.trunks.values())


def no_live_calls(trunk: str) -> int:
    return 0


class PolicyEngine:
    def __init__(
        self,
        state: PolicyState,
        ledger: Ledger,
        reservations: Reservations,
        blocks: BlockList,
        clock: Clock,
        live_calls: Callable[[str], int] = no_live_calls,
        catch_up: Callable[[str], None] | None = None,
        velocity: VelocityTracker | None = None,
    ):
        self.state = state
        self.ledger = ledger
        self.reservations = reservations
        self.blocks = blocks
        self.clock = clock
        self.live_calls = live_calls
        # Charges the blocks live calls have begun, so spend is current.
        self.catch_up = catch_up
        # Outlives config reloads, so a reload does not reset the counts.
        self.velocity = velocity if velocity is not None else VelocityTracker()

    async def decide(self, request: CallRequest, *, reserve: bool = True) -> Decision:
        """Decide ``request``; with ``reserve=False`` nothing is held (a dry run)."""
        while True:
            screened = self._screen_for_limits(request)
            if isinstance(screened, Decision):
                return screened
            if all(self.ledger.loaded(screened.trunk.name, window, key)
                   for window, key in screened.keys.items()):
                return self._check_limits(*screened, reserve=reserve)
            await self.ledger.load(screened.trunk.name, screened.keys)
            # A reload may have replaced the config during the store read, and
            # the clock may have reached another window: screen again, so that
            # the limits checked are those of the running config.

    def decide_now(self, request: CallRequest) -> Decision | None:
        """Decide ``request`` as decide() does, or return None if that must wait.

        Deciding waits only for a store read: the spend of a day or week that
        this daemon has not read yet. Every other decision is made here,
        without the cost of a coroutine and a timeout.
        """
        screened = self._screen_for_limits(request)
        if isinstance(screened, Decision):
            return screened
        for window, key in screened.keys.items():
            if not self.ledger.loaded(screened.trunk.name, window, key):
                return None
        return self._check_limits(*screened, reserve=True)

    def _screen_for_limits(self, request: CallRequest) -> "Decision | _Screened":
        """Return _screen()'s final Decision, or what the limits are checked on."""
        screened = self._screen(request)
        if isinstance(screened, Decision):
            return screened
        base, trunk, tariff, now = screened
        return _Screened(base, trunk, tariff, now, window_keys(now, trunk.timezone))

    def judge(self, request: CallRequest, *, blocks: bool = True) -> Decision:
        """Decide ``request`` on everything but the spend limits and the call cap.

        Used for trunk legs that skipped the check: their spend is metered and
        limited while they run, so only barring and rating decide at once.
        With ``blocks`` False, blocked callers are judged like any other.
        """
        screened = self._screen(request, blocks=blocks)
        if isinstance(screened, Decision):
            return screened
        base, trunk, tariff, _ = screened
        return base.allow(REASON_OK, tariff, None)

    def tariff_for(self, trunk: str, dialled: str) -> Tariff | None:
        """Return the tariff that a check of ``dialled`` on ``trunk`` would rate it at now.

        Returns None where a check's decision carries no tariff: for an
        emergency number, an invalid or unclassified number, an unknown trunk,
        or a number with no rate and no ``default_rate``.
        """
        state = self.state
        if state.classifier.plan.emergency(dialled) is not None:
            return None
        config = state.config.trunks.get(trunk)
        if config is None:
            return None
        try:
            classified = state.classify(dialled)
        except (InvalidNumber, UnclassifiedNumber):
            return None
        if classified.emergency:
            return None
        return self._tariff(config, classified)

    def emergency_decision(self, request: CallRequest) -> Decision | None:
        """Return the decision on ``request`` if it dials an emergency number, else None.

        That decision depends on the dialled string alone, so a check can give
        it before it reads the trunk or the source address from Asterisk.
        """
        screened = self._screen_number(request)
        if isinstance(screened, Decision) and screened.reason == REASON_EMERGENCY:
            return screened
        return None

    def _screen_number(self, request: CallRequest) -> "Decision | Classified":
        """Classify the dialled number; an emergency number or a bad one is a final Decision."""
        state = self.state
        # classify() looks for emergency numbers before it reads the rest of
        # the number plan, so their forms are computed once per new number.
        try:
            classified = state.classify(request.dialled)
        except InvalidNumber as exc:
            return Decision(DENY, REASON_INVALID_NUMBER, request.trunk, request.dialled,
                            detail=str(exc))
        except UnclassifiedNumber as exc:
            return Decision(DENY, REASON_UNCLASSIFIED, request.trunk, request.dialled,
                            detail=str(exc))
        except Exception:
            # Emergency numbers are allowed even when the rest of classifying fails.
            classifier = state.classifier
            emergency_number = classifier.plan.emergency(request.dialled)
            if emergency_number is None:
                raise
            return self._emergency(
                request, classifier.classify_emergency(request.dialled, emergency_number))
        if classified.emergency:
            return self._emergency(request, classified)
        return classified

    def _screen(self, request: CallRequest, *, blocks: bool = True
                ) -> "Decision | tuple[_DecisionBase, TrunkConfig, Tariff, datetime]":
        """Apply every step up to the limits, and return the final Decision, or
        what the limits need and the time of the decision.

        With ``blocks`` False the step that denies blocked callers is skipped.
        """
        state = self.state
        classified = self._screen_number(request)
        if isinstance(classified, Decision):
            return classified

        caller_e164 = state.normalise_caller(request.caller) or ""
        now = self.clock.now()
        base = _DecisionBase(request, classified, caller_e164, now)

        blocked = None
        if blocks and self.blocks:
            blocked = self.blocks.blocked(_identities(request, caller_e164), now)
        if blocked is not None:
            return base.deny(REASON_BLOCKED, f"{blocked[0]} {blocked[1]} is blocked")

        trunk = state.config.trunks.get(request.trunk)
        if trunk is None:
            return base.deny(REASON_UNKNOWN_TRUNK, f"no [trunk {request.trunk}] in the config")

        tariff = self._tariff(trunk, classified)
        if trunk.opted_out(caller_e164):
            cap = min(trunk.max_call_seconds or budget.MAX_SECONDS_CEILING,
                      budget.MAX_SECONDS_CEILING)
            return base.allow(REASON_OPTED_OUT, tariff, cap,
                              "the calling number is opted out of protection")

        overrides = state.config.overrides_for(trunk.name, caller_e164)
        if is_barred(classified.category, classified.number, trunk, overrides):
            return base.deny(REASON_BARRED + classified.category, tariff=tariff)

        if tariff is None:
            return base.deny(REASON_UNRATED, f"no rate for {classified.number.rating_key}")

        if is_barred_out_of_hours(classified.category, trunk, now):
            return base.deny(REASON_BARRED_HOURS + classified.category,
                             "outside the trunk's business_hours", tariff=tariff)
        return base, trunk, tariff, now

    def _check_limits(self, base: "_DecisionBase", trunk: TrunkConfig, tariff: Tariff,
                      now: datetime, keys: dict[str, str], *, reserve: bool) -> Decision:
        # Nothing here awaits, so the headroom checked is the headroom
        # reserved: parallel decisions cannot share it.
        if self.catch_up is not None:
            self.catch_up(trunk.name)
        self.reservations.expire(now)
        if reserve and base.request.uniqueid:
            # A channel checked again (a dialplan loop, a retry) replaces its own hold.
            self.reservations.release(base.request.uniqueid)

        self.velocity.sweep(self.state.config.trunks, now)
        # A trunk without velocity limits counts nothing, so no call is built for it.
        velocity_call = _velocity_call(base) if self.velocity.has_limits(trunk) else None
        if velocity_call is not None:
            breach = self.velocity.check(trunk, velocity_call, now)
            if breach is not None:
                return base.deny(breach.reason, breach.detail, tariff=tariff)

        if trunk.max_concurrent_calls is not None:
            elsewhere = self.ledger.others_calls(trunk.name)
            busy = (self.live_calls(trunk.name) + self.reservations.pending_count(trunk.name)
                    + elsewhere)
            if busy >= trunk.max_concurrent_calls:
                detail = f"{plural(busy, 'call')} of {trunk.max_concurrent_calls} in progress"
                if elsewhere:
                    detail += f", {elsewhere} of them on other nodes"
                return base.deny(REASON_CONCURRENT, detail, tariff=tariff)

        ledger = self.ledger
        reservations = self.reservations

        def remaining(window: str, key: str) -> Decimal | None:
            limit = trunk.daily_limit if window == DAY else trunk.weekly_limit
            if limit is None:
                return None
            spent = ledger.spent(trunk.name, window, key) or ZERO
            return limit - spent - reservations.held(trunk.name, window, key)

        free = {DAY: remaining(DAY, keys[DAY]), WEEK: remaining(WEEK, keys[WEEK])}
        first = tariff.first_block_cost()
        for window, reason in ((DAY, REASON_DAILY), (WEEK, REASON_WEEKLY)):
            if free[window] is not None and free[window] < first:
                return base.deny(reason, f"{free[window]} left, the first block costs {first}",
                                 tariff=tariff, remaining=free)

        def remaining_or_known(window: str, key: str) -> Decimal | None:
            return free[window] if key == keys[window] else remaining(window, key)

        max_seconds = budget.max_call_seconds(
            tariff, now, trunk.timezone, remaining_or_known, trunk.max_call_seconds
        )
        if max_seconds <= 0:
            return base.deny(REASON_DAILY, "the budget buys no time", tariff=tariff,
                             remaining=free)

        reserved = NOTHING_RESERVED
        if reserve:
            self.reservations.add(trunk.name, base.request.uniqueid, first, keys, now,
                                  self.state.config.general.reservation_seconds)
            reserved = first
            if velocity_call is not None:
                self.velocity.record(trunk, velocity_call, now)
        return base.allow(REASON_OK, tariff, max_seconds, remaining=free, reserved=reserved)

    def _tariff(self, trunk: TrunkConfig, classified: Classified) -> Tariff | None:
        deck = self.state.decks.get(trunk.name)
        tariff = None
        if deck is not None:
            home_country_code = self.state.classifier.plan.country_code
            tariff = deck.lookup(classified.number.rating_key, home_country_code)
        if tariff is None:
            tariff = self.state.default_tariffs.get(trunk.name)
        return tariff

    def _emergency(self, request: CallRequest, classified: Classified) -> Decision:
        return Decision(
            ALLOW,
            REASON_EMERGENCY,
            request.trunk,
            request.dialled,
            category="emergency",
            e164=classified.number.e164,
            number=classified.number,
            matched_prefix=classified.prefix,
        )


def _identities(request: CallRequest, caller_e164: str) -> list[tuple[str, str]]:
    return [
        (KEY_ENDPOINT, endpoint_of(request.channel)),
        (KEY_CALLER, caller_e164),
        (KEY_ACCOUNTCODE, request.accountcode),
        (KEY_SOURCE, request.source),
    ]


def _velocity_call(base: "_DecisionBase") -> VelocityCall:
    caller = (KEY_CALLER, base.caller_e164)
    if not base.caller_e164:
        caller = (KEY_ENDPOINT, endpoint_of(base.request.channel))
    return VelocityCall(
        trunk=base.request.trunk,
        # A short code has no E.164 form; its national form names it alone.
        destination=base.classified.number.e164 or base.classified.number.national,
        caller=caller,
        international=base.classified.category in INTERNATIONAL_CATEGORIES,
    )


class _Screened(NamedTuple):
    """A request that passed every step before the limits, and the windows it falls in."""

    base: "_DecisionBase"
    trunk: TrunkConfig
    tariff: Tariff
    now: datetime
    keys: dict[str, str]


class _DecisionBase:
    """The parts of a decision known once the number is classified."""

    def __init__(self, request: CallRequest, classified: Classified, caller_e164: str,
                 now: datetime):
        self.request = request
        self.classified = classified
        self.caller_e164 = caller_e164
        self.now = now

    def _make(self, result: str, reason: str, detail: str, tariff: Tariff | None,
              max_seconds: int | None, remaining: dict, reserved: Decimal) -> Decision:
        # Every check builds a decision, so it is one call with each field
        # named, without keyword dictionaries merged on the way.
        classified = self.classified
        number = classified.number
        request = self.request
        return Decision(
            result,
            reason,
            request.trunk,
            request.dialled,
            category=classified.category,
            e164=number.e164,
            number=number,
            matched_prefix=classified.prefix,
            caller_e164=self.caller_e164,
            tariff=tariff,
            max_seconds=max_seconds,
            reserved=reserved,
            remaining=remaining,
            detail=detail,
            decided_at=self.now,
        )

    def deny(self, reason: str, detail: str = "", *, tariff: Tariff | None = None,
             remaining: dict | None = None) -> Decision:
        return self._make(DENY, reason, detail, tariff, None, remaining or {}, NOTHING_RESERVED)

    def allow(self, reason: str, tariff: Tariff | None, max_seconds: int | None,
              detail: str = "", *, remaining: dict | None = None,
              reserved: Decimal = NOTHING_RESERVED) -> Decision:
        return self._make(ALLOW, reason, detail, tariff, max_seconds, remaining or {}, reserved)
