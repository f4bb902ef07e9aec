"""Clocks: the system clock for the daemon, a manual one for tests and benchmarks.

Everything that reads the time or waits for a moment takes a clock, so window
rollovers, long calls and clock changes are driven by advancing a manual clock,
never by sleeping.
"""

import asyncio
import heapq
import itertools
import time
from datetime import datetime, timedelta, timezone
from typing import Callable, Protocol


class TimerHandle(Protocol):
    def cancel(self) -> None: ...


class Clock(Protocol):
    def now(self) -> datetime:
        """Return the current time as an aware UTC datetime."""

    def monotonic(self) -> float:
        """Return seconds on a clock that never goes back."""

    def call_at(self, when: datetime, callback: Callable[[], None]) -> TimerHandle:
        """Run ``callback`` in the event loop at ``when`` (at once if it is past)."""


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(timezone.utc)

    def monotonic(self) -> float:
        return time.monotonic()

    def call_at(self, when: datetime, callback: Callable[[], None]) -> TimerHandle:
        delay = (when - self.now()).total_seconds()
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)


class _ManualTimer:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A clock that moves only when told to, running the timers it passes in order."""

    def __init__(self, start: datetime):
        if start.tzinfo is None:
            raise ValueError("ManualClock needs an aware datetime")
        self._now = start.astimezone(timezone.utc)
        self._monotonic = 1000.0
        self._timers: list[tuple[datetime, int, _ManualTimer, Callable[[], None]]] = []
        self._sequence = itertools.count()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._monotonic

    def call_at(self, when: datetime, callback: Callable[[], None]) -> TimerHandle:
        handle = _ManualTimer()
        heapq.heappush(self._timers, (when, next(self._sequence), handle, callback))
        return handle

    def advance(self, seconds: float) -> None:
        """Move the clock forward, stopping at each due timer to run it at its own time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        target = self._now + timedelta(seconds=seconds)
        while self._timers and self._timers[0][0] <= target:
            when, _, handle, callback = heapq.heappop(self._timers)
            if handle.cancelled:
                continue
            self._move_to(max(when, self._now))
            callback()
        self._move_to(target)

    def set(self, instant: datetime) -> None:
        self.advance((instant - self._now).total_seconds())

    def next_timer(self) -> datetime | None:
        """Return when the next pending timer is due, if any."""
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        return self._timers[0][0] if self._timers else None

    def _move_to(self, instant: datetime) -> None:
        self._monotonic += (instant - self._now).total_seconds()
        self._now = instant
