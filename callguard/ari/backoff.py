"""Reconnect delays: capped exponential backoff with jitter."""

import random

# Each delay is drawn from [(1 - JITTER) * d, d], so that several clients
# restarted together do not reconnect in step.
JITTER = 0.2


class Backoff:
    """Delays of initial * 2**n seconds, capped at `maximum`, with jitter below."""

    def __init__(
        self, initial: float, maximum: float, *, rng: random.Random | None = None
    ):
        if not 0 < initial <= maximum:
            raise ValueError(
                f"invalid backoff: initial={initial!r} and maximum={maximum!r} must "
                "satisfy 0 < initial <= maximum"
            )

        self.initial = initial
        self.maximum = maximum
        self._rng = rng or random.Random()
        self._ceiling = initial

    def next_delay(self) -> float:
        """Return the next delay in seconds and double the ceiling up to the cap."""
        ceiling = self._ceiling
        self._ceiling = min(self.maximum, ceiling * 2)
        return self._rng.uniform((1 - JITTER) * ceiling, ceiling)

    def reset(self) -> None:
        """Start again from the initial delay, after a connection that lasted."""
        self._ceiling = self.initial
