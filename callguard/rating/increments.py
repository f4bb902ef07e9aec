"""Billing increments: the length of the first block and of each later block."""

import re
from dataclasses import dataclass

INCREMENTS_PATTERN = re.compile(r"([0-9]+)/([0-9]+)")
INCREMENTS_EXAMPLE = "60/60"


@dataclass(frozen=True, slots=True)
class Increments:
    """Billing increments in whole seconds, written ``first/later`` as in ``30/6``.

    The first block is also the minimum billed time of an answered call. Each later
    block is billed whole once it has begun.
    """

    first: int
    later: int

    def __post_init__(self) -> None:
        for name in ("first", "later"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(
                    f"Increments.{name} {value!r} is invalid; "
                    "pass a whole number of seconds of at least 1"
                )

    @classmethod
    def parse(cls, text: str) -> "Increments":
        """Parse increments written ``first/later`` in seconds, such as ``30/6``.

        Raises ValueError naming the bad text and showing the expected form.
        """
        match = INCREMENTS_PATTERN.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"increments {text!r} is invalid; write it like {INCREMENTS_EXAMPLE}"
            )

        first, later = int(match[1]), int(match[2])
        if first < 1 or later < 1:
            raise ValueError(
                f"increments {text!r} is invalid because a block lasts at least "
                f"1 second; write it like {INCREMENTS_EXAMPLE}"
            )
        return cls(first, later)

    def __str__(self) -> str:
        return f"{self.first}/{self.later}"
