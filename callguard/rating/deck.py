"""Rate decks: the tariffs of one trunk, looked up by longest matching prefix."""

import logging
import os
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal

from callguard.rating.builder import DeckBuilder, RateClass
from callguard.rating.csv_deck import read_csv
from callguard.rating.fields import parse_prefix
from callguard.rating.increments import Increments
from callguard.rating.tariff import Tariff, tariff_from_checked_fields

logger = logging.getLogger(__name__)

ROWS_SOURCE = "<rows>"


class RateDeck:
    """The tariffs of one trunk, keyed by E.164 prefix.

    A lookup probes one dict once per distinct prefix length in the deck, longest
    first, so the number of probes does not depend on the number of rows. A deck is
    immutable once built and safe to share between threads and tasks.
    """

    __slots__ = ("source", "_rates", "_lengths")

    def __init__(self, rates: dict[str, RateClass], source: str) -> None:
        """Wrap a validated prefix table. Build one with from_csv or from_rows."""
        self.source = source
        self._rates = rates
        self._lengths = sorted({len(prefix) for prefix in rates}, reverse=True)

    @classmethod
    def from_csv(cls, path: str | os.PathLike) -> "RateDeck":
        """Load a deck from a CSV file.

        Raises RateDeckError listing every invalid row, each with file and line, and
        OSError if the file cannot be read.
        """
        started = time.perf_counter()
        builder = read_csv(path)
        class_count = builder.class_count()
        deck = cls(builder.finish(), builder.source)

        logger.info(
            "loaded rate deck %s: %d prefixes, %d distinct rates, in %.3f s",
            deck.source,
            len(deck),
            class_count,
            time.perf_counter() - started,
        )
        return deck

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[tuple[str, str, Decimal, Decimal, Increments]],
        source: str = ROWS_SOURCE,
    ) -> "RateDeck":
        """Build a deck from tuples of prefix, description, rate, fee and increments.

        Raises RateDeckError naming ``source`` and the 1-based row number of every
        invalid row.
        """
        builder = DeckBuilder(source)
        validated: set[RateClass] = set()

        for number, row in enumerate(rows, start=1):
            parsed = _check_row(row, number, builder, validated)
            if parsed is not None:
                prefix, rate_class = parsed
                builder.add(number, prefix, builder.share(rate_class))

        return cls(builder.finish(), source)

    def lookup(self, digits: str) -> Tariff | None:
        """Return the tariff of the longest prefix of ``digits``, or None if none match.

        ``digits`` is an E.164 number without the leading ``+``.
        """
        if not (isinstance(digits, str) and digits.isascii() and digits.isdigit()):
            raise ValueError(
                f"number {digits!r} is invalid; pass the E.164 digits without +, "
                "like 447700900123"
            )

        rates = self._rates
        for length in self._lengths:
            if length > len(digits):
                continue

            prefix = digits[:length]
            rate_class = rates.get(prefix)
            if rate_class is not None:
                return tariff_from_checked_fields(prefix, *rate_class)
        return None

    def tariffs(self) -> Iterator[Tariff]:
        """Yield every tariff of the deck in the order of its rows."""
        for prefix, rate_class in self._rates.items():
            yield tariff_from_checked_fields(prefix, *rate_class)

    def __len__(self) -> int:
        return len(self._rates)

    def __repr__(self) -> str:
        return f"RateDeck(source={self.source!r}, prefixes={len(self)})"


def _check_row(
    row: object, number: int, builder: DeckBuilder, validated: set[RateClass]
) -> tuple[str, RateClass] | None:
    """Return the prefix and rate class of a row, or None after recording its error."""
    try:
        prefix, description, rate, connection_fee, increments = row
    except (TypeError, ValueError):
        builder.errors.add(
            number,
            f"row {row!r} is invalid; pass a tuple of prefix, description, rate, "
            "connection_fee and increments",
        )
        return None

    # Only rows of exact types may reuse an earlier validation, because
    # Decimal('0.5') == 0.5 would otherwise let a float pass as a validated Decimal.
    exact_types = (
        type(description) is str
        and type(rate) is Decimal
        and type(connection_fee) is Decimal
        and type(increments) is Increments
    )
    rate_class = RateClass(description, rate, connection_fee, increments)
    try:
        parse_prefix(prefix)
        if not exact_types or rate_class not in validated:
            Tariff("", *rate_class)
            validated.add(rate_class)
    except (TypeError, ValueError) as exc:
        builder.errors.add(number, str(exc))
        return None
    return prefix, rate_class
