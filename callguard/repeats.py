"""Rate limiting for log lines that a peer or a faulty handler can repeat endlessly."""

from callguard.clock import Clock, SystemClock

# At most this many log lines of one kind per interval, and the rest are counted.
LOG_BURST = 5
LOG_INTERVAL = 60.0


class RepeatLimiter:
    """Admits at most `burst` log lines of one kind per `interval` seconds."""

    def __init__(
        self,
        burst: int = LOG_BURST,
        interval: float = LOG_INTERVAL,
        clock: Clock | None = None,
    ):
        self._burst = burst
        self._interval = interval
        self._clock = clock or SystemClock()
        self._window_start: float | None = None
        self._admitted = 0
        self._suppressed = 0

    def admit(self) -> int | None:
        """Return None to drop this line, else the count of lines dropped before it."""
        now = self._clock.monotonic()
        if self._window_start is None or now - self._window_start >= self._interval:
            self._window_start = now
            self._admitted = 0

        if self._admitted >= self._burst:
            self._suppressed += 1
            return None

        self._admitted += 1
        suppressed, self._suppressed = self._suppressed, 0
        return suppressed


def suppressed_note(count: int) -> str:
    return f" ({count} similar messages suppressed)" if count else ""
