"""Velocity limits per trunk, counted over sliding windows of allowed calls.

- ``max_calls_per_minute``: calls on the trunk in any sliding 60 s;
- ``max_destinations_per_hour``: distinct international destinations per
  caller in any sliding hour;
- ``max_repeat_calls``: calls to one number within ``repeat_window``
  (callback and Wangiri patterns).

Only allowed calls are counted, and only while the trunk sets the limit. Counts
live in memory: a restart starts them again from zero.
"""

import logging
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from callguard.config import TrunkConfig
from callguard.policy.decision import REASON_DESTINATIONS, REASON_RATE, REASON_REPEAT

log = logging.getLogger(__name__)

RATE_WINDOW = timedelta(seconds=60)
DESTINATIONS_WINDOW = timedelta(hours=1)
# How often keys that went quiet are dropped; between sweeps each key is still
# pruned whenever a call touches it.
SWEEP_INTERVAL = timedelta(minutes=5)

# (trunk, (key type, key)): the caller whose destinations are counted.
CallerKey = tuple[str, tuple[str, str]]


@dataclass(frozen=True)
class VelocityCall:
    """The parts of one call that the velocity limits count.

    ``caller`` is the identity that ``max_destinations_per_hour`` counts per: the
    calling number, or the endpoint when there is none, as (key type, key).
    """

    trunk: str
    destination: str
    caller: tuple[str, str]
    international: bool


@dataclass(frozen=True)
class Breach:
    """A velocity limit that a call would exceed: its reason code and why."""

    reason: str
    detail: str


class VelocityTracker:
    """Timestamps of recent allowed calls per trunk, per caller and per number.

    ``check`` and ``record`` do not await, so a caller that runs both in one
    step of the event loop cannot let parallel decisions exceed a limit.
    """

    def __init__(self) -> None:
        self._calls: dict[str, deque[datetime]] = {}
        # Per (trunk, caller): destination -> last call, oldest first.
        self._destinations: dict[CallerKey, OrderedDict[str, datetime]] = {}
        self._repeats: dict[tuple[str, str], deque[datetime]] = {}
        self._next_sweep: datetime | None = None

    @staticmethod
    def has_limits(trunk: TrunkConfig) -> bool:
        """Check whether ``trunk`` sets any velocity limit; only then are its calls counted."""
        return (trunk.max_calls_per_minute is not None
                or trunk.max_destinations_per_hour is not None
                or trunk.max_repeat_calls is not None)

    def check(
        self, trunk: TrunkConfig, call: VelocityCall, now: datetime
    ) -> Breach | None:
        """Return the first limit that ``call`` would exceed at ``now``, or None."""
        limit = trunk.max_calls_per_minute
        if limit is not None:
            calls = _pruned(self._calls.get(trunk.name), now - RATE_WINDOW)
            if calls >= limit:
                return Breach(
                    REASON_RATE,
                    f"{calls} calls on the trunk in the last 60s, the limit is "
                    f"{limit} per minute",
                )

        limit = trunk.max_destinations_per_hour
        if limit is not None and call.international:
            seen = self._destinations.get((trunk.name, call.caller))
            if seen is not None:
                _prune_destinations(seen, now - DESTINATIONS_WINDOW)
            count = 0 if seen is None else len(seen)
            new = seen is None or call.destination not in seen
            if new and count >= limit:
                key_type, key = call.caller
                return Breach(
                    REASON_DESTINATIONS,
                    f"{key_type} {key or '(none)'} called {count} international "
                    f"destinations in the last hour, the limit is {limit}",
                )

        limit = trunk.max_repeat_calls
        if limit is not None:
            window = timedelta(seconds=trunk.repeat_window)
            repeats = _pruned(self._repeats.get((trunk.name, call.destination)),
                              now - window)
            if repeats >= limit:
                return Breach(
                    REASON_REPEAT,
                    f"{repeats} calls to {call.destination} in the last "
                    f"{_duration(trunk.repeat_window)}, the limit is {limit}",
                )
        return None

    def record(self, trunk: TrunkConfig, call: VelocityCall, now: datetime) -> None:
        """Count ``call``, allowed at ``now``, under each limit the trunk sets."""
        if trunk.max_calls_per_minute is not None:
            self._calls.setdefault(trunk.name, deque()).append(now)

        if trunk.max_destinations_per_hour is not None and call.international:
            key = (trunk.name, call.caller)
            seen = self._destinations.setdefault(key, OrderedDict())
            seen[call.destination] = now
            seen.move_to_end(call.destination)

        if trunk.max_repeat_calls is not None:
            key = (trunk.name, call.destination)
            self._repeats.setdefault(key, deque()).append(now)

    def sweep(self, trunks: Mapping[str, TrunkConfig], now: datetime) -> None:
        """Drop expired timestamps and quiet keys, at most once per ``SWEEP_INTERVAL``.

        Keys of trunks that are gone from ``trunks`` or no longer set the limit
        are dropped too.
        """
        if self._next_sweep is not None and now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_INTERVAL

        for name, calls in list(self._calls.items()):
            trunk = trunks.get(name)
            if trunk is None or trunk.max_calls_per_minute is None:
                del self._calls[name]
            elif _pruned(calls, now - RATE_WINDOW) == 0:
                del self._calls[name]

        for key, seen in list(self._destinations.items()):
            trunk = trunks.get(key[0])
            if trunk is None or trunk.max_destinations_per_hour is None:
                del self._destinations[key]
                continue
            _prune_destinations(seen, now - DESTINATIONS_WINDOW)
            if not seen:
                del self._destinations[key]

        for key, times in list(self._repeats.items()):
            trunk = trunks.get(key[0])
            if trunk is None or trunk.max_repeat_calls is None:
                del self._repeats[key]
            elif _pruned(times, now - timedelta(seconds=trunk.repeat_window)) == 0:
                del self._repeats[key]

        log.debug("velocity counts after sweep: %d trunks, %d callers, %d numbers",
                  len(self._calls), len(self._destinations), len(self._repeats))

    def sizes(self) -> tuple[int, int, int]:
        """Return how many trunks, callers and numbers have counts held."""
        return len(self._calls), len(self._destinations), len(self._repeats)


def _pruned(times: deque[datetime] | None, cutoff: datetime) -> int:
    """Drop the timestamps at or before ``cutoff`` and return how many are left."""
    if times is None:
        return 0
    while times and times[0] <= cutoff:
        times.popleft()
    return len(times)


def _prune_destinations(seen: OrderedDict[str, datetime], cutoff: datetime) -> None:
    while seen:
        destination, last = next(iter(seen.items()))
        if last > cutoff:
            return
        del seen[destination]


def _duration(seconds: int) -> str:
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"
