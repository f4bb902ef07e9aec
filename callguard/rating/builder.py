"""Collection of validated deck rows into the prefix table of a RateDeck.

A deck stores one shared ``RateClass`` per distinct combination of description, rate,
fee and increments, not one Tariff per row. The prefixes of one destination usually
share a description and prices, so a row costs little more than its prefix string
and its dict entry.
"""

from decimal import Decimal
from typing import NamedTuple

from callguard.rating.errors import ErrorList
from callguard.rating.increments import Increments


class RateClass(NamedTuple):
    """The part of a tariff that many prefixes share."""

    description: str
    rate: Decimal
    connection_fee: Decimal
    increments: Increments


class DeckBuilder:
    """Rows of a deck being loaded, with the errors found so far."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.errors = ErrorList(source)
        self._rates: dict[str, RateClass] = {}
        self._classes: dict[RateClass, RateClass] = {}

    def share(self, rate_class: RateClass) -> RateClass:
        """Return the stored rate class equal to ``rate_class``, storing it if new."""
        return self._classes.setdefault(rate_class, rate_class)

    def add(self, line: int, prefix: str, rate_class: RateClass) -> None:
        """Store the row at ``line``, or record an error if its prefix is a duplicate.

        ``prefix`` and every field of ``rate_class`` must already be validated, and
        ``rate_class`` should come from ``share`` so that equal classes are one object.
        """
        if prefix in self._rates:
            self.errors.add(
                line,
                f"prefix {prefix!r} is a duplicate of an earlier row; "
                "keep one row per prefix",
            )
            return

        self._rates[prefix] = rate_class

    def class_count(self) -> int:
        """Return the number of distinct rate classes stored so far."""
        return len(self._classes)

    def finish(self) -> dict[str, RateClass]:
        """Return the prefix table, or raise RateDeckError listing every error found."""
        if not self._rates and not self.errors.count:
            self.errors.add(None, "contains no rates; add rows under the header")

        self.errors.raise_if_any()
        self._classes.clear()
        return self._rates
