"""Rate decks: the tariffs of one trunk, looked up by longest matching prefix.

A deck prices E.164 numbers by rows such as ``44`` and the home country's short
codes by rows such as ``short:118``. The two kinds never match each other's
numbers, because a short code like 118118 and the Reading number +44 118 496 0123
would otherwise share the digits 44118.
"""

import logging
import os
import time
from collections.abc import Iterable, Iterator
from decimal import Decimal

from callguard.rating.builder import DeckBuilder, RateClass
from callguard.rating.csv_deck import read_csv
from callguard.rating.fields import SHORT_CODE_MARK, is_short_code_prefix, parse_prefix
from callguard.rating.increments import Increments
from callguard.rating.tariff import Tariff, tariff_from_checked_fields

logger = logging.getLogger(__name__)

ROWS_SOURCE = "<rows>"


class RateDeck:
    """The tariffs of one trunk, keyed by E.164 prefix or ``short:`` prefix.

    A lookup probes one dict once per distinct prefix length of its kind in the
    deck, longest first, so the number of probes does not depend on the number of
    rows. A deck is immutable once built and safe to share between threads and tasks.
    """

    __slots__ = ("source", "_rates", "_lengths", "_short_lengths")

    def __init__(self, rates: dict[str, RateClass], source: str) -> None:
        """Wrap a validated prefix table. Build one with from_csv or from_rows."""
        self.source = source
        self._rates = rates
        e164_lengths = set()
        # Lengths of whole ``short:`` keys, so a probe slices the lookup key as is.
        short_lengths = set()
        for prefix in rates:
            if is_short_code_prefix(prefix):
                short_lengths.add(len(prefix))
            else:
                e164_lengths.add(len(prefix))
        self._lengths = sorted(e164_lengths, reverse=True)
        self._short_lengths = sorted(short_lengths, reverse=True)

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

    def lookup(
        self, key: str, home_country_code: int | None = None
    ) -> Tariff | None:
        """Return the tariff of the longest prefix of ``key``, or None if none match.

        ``key`` is an E.164 number without the leading ``+`` (``447700900123``), or
        ``short:`` and a home short code as dialled (``short:118118``), the forms
        of ``Number.rating_key``. E.164 numbers match only E.164 rows and short
        codes only ``short:`` rows. A short code that no ``short:`` row matches
        gets the tariff of the longest E.164 row that is a prefix of
        ``home_country_code`` (the ``44`` row), never a longer row such as
        ``44118``. Without ``home_country_code`` it gets None.
        """
        if isinstance(key, str) and key.startswith(SHORT_CODE_MARK):
            return self._lookup_short_code(key, home_country_code)

        if not (isinstance(key, str) and key.isascii() and key.isdigit()):
            raise ValueError(
                f"number {key!r} is invalid; pass the E.164 digits without +, "
                f"like 447700900123, or {SHORT_CODE_MARK} and a short code, "
                f"like {SHORT_CODE_MARK}118118"
            )
        return self._longest_match(key, self._lengths)

    def _lookup_short_code(
        self, key: str, home_country_code: int | None
    ) -> Tariff | None:
        digits = key[len(SHORT_CODE_MARK) :]
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError(
                f"short code {key!r} is invalid; pass {SHORT_CODE_MARK} and the "
                f"digits as dialled, like {SHORT_CODE_MARK}118118"
            )

        tariff = self._longest_match(key, self._short_lengths)
        if tariff is not None or home_country_code is None:
            return tariff

        if type(home_country_code) is not int or home_country_code < 1:
            raise ValueError(
                f"home_country_code {home_country_code!r} is invalid; pass the "
                "country code as an int, like 44"
            )
        return self._longest_match(str(home_country_code), self._lengths)

    def _longest_match(self, key: str, lengths: list[int]) -> Tariff | None:
        """Return the tariff of the row ``key[:length]`` for the first of ``lengths``
        (longest first) that has one, or None."""
        rates = self._rates
        for length in lengths:
            if length > len(key):
                continue

            prefix = key[:length]
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
