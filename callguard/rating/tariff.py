"""The tariff of one prefix: block prices, the cost of a call and its inverse.

A call is billed in blocks. Block 0 lasts ``increments.first`` seconds and begins at
answer, so it is also the minimum billed time of an answered call. Every later block
lasts ``increments.later`` seconds. A block is billed whole once it has begun, and a
started second counts as a block start: with ``30/6`` a call of 30.2 s pays for
block 0 and block 1. The connection fee is charged with block 0.

Rounding: each block's price is ``rate * block_seconds / 60`` rounded UP to the
micro-unit (six decimal places) with ``callguard.money.round_up``. A call costs the
fee plus the sum of its rounded block prices, so every cost is a whole number of
micro-units and no price is ever rounded down. The division runs at 50 significant
digits with ROUND_CEILING, so its result is never below the exact price. Micro-units
below 10**44 are exact at 50 digits, so the result never passes the next micro-unit
either, and round_up yields the exact price rounded up. This holds for rates of up
to 40 significant digits, whose product with a block length is exact.

All amounts are ``Decimal``, durations are ``Decimal`` or ``int`` seconds, and floats
are rejected with TypeError.
"""

import functools
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, ROUND_FLOOR, Context, Decimal
from typing import NamedTuple

from callguard.money import MICROS_PER_UNIT, from_micros, round_up, to_micros
from callguard.rating.fields import (
    ZERO,
    check_connection_fee,
    check_rate,
    parse_prefix,
)
from callguard.rating.increments import Increments

SECONDS_PER_MINUTE = 60
DEFAULT_DESCRIPTION = "default rate"
DEFAULT_INCREMENTS = Increments(60, 60)

# Distinct (rate, fee, increments) whose block prices are kept.
BLOCK_PRICE_CACHE_SIZE = 4096

_CEILING = Context(prec=50, rounding=ROUND_CEILING)
_FLOOR = Context(prec=50, rounding=ROUND_FLOOR)


@dataclass(frozen=True, slots=True)
class Tariff:
    """The price of calls to numbers that begin with ``prefix``.

    ``rate`` is per minute and ``connection_fee`` is charged once per answered call,
    both in the trunk's currency. The fallback tariff of a trunk has the prefix "".
    """

    prefix: str
    description: str
    rate: Decimal
    connection_fee: Decimal
    increments: Increments
    # The block prices of the fields above, looked up on first use (_prices()).
    _block_prices: "BlockPrices | None" = field(default=None, init=False, repr=False,
                                                compare=False)

    def __post_init__(self) -> None:
        if self.prefix != "":
            parse_prefix(self.prefix)

        if not isinstance(self.description, str):
            raise TypeError(
                f"description {self.description!r} is invalid; pass a string"
            )

        check_rate(self.rate)
        check_connection_fee(self.connection_fee)

        if not isinstance(self.increments, Increments):
            raise TypeError(
                f"increments {self.increments!r} is invalid; pass an Increments, "
                "like Increments.parse('60/60')"
            )

    @classmethod
    def default(
        cls,
        rate: Decimal,
        connection_fee: Decimal = ZERO,
        increments: Increments = DEFAULT_INCREMENTS,
    ) -> "Tariff":
        """Build a trunk's fallback tariff for numbers that no deck prefix matches."""
        return cls("", DEFAULT_DESCRIPTION, rate, connection_fee, increments)

    def block_seconds(self, index: int) -> int:
        """Return the length in seconds of block ``index`` (0-based)."""
        _check_count("index", index)
        if index == 0:
            return self.increments.first
        return self.increments.later

    def block_start(self, index: int) -> int:
        """Return the second, counted from answer, at which block ``index`` begins.

        Block 0 begins at 0, block 1 at ``first``, block 2 at ``first + later``.
        ``block_start(n)`` is also the billed length of a call of ``n`` blocks.
        """
        _check_count("index", index)
        if index == 0:
            return 0
        return self.increments.first + (index - 1) * self.increments.later

    def block_cost(self, index: int) -> Decimal:
        """Return the price of block ``index`` without the connection fee."""
        seconds = self.block_seconds(index)
        price = _CEILING.divide(
            _CEILING.multiply(self.rate, seconds), SECONDS_PER_MINUTE
        )
        return round_up(price)

    def blocks_begun(self, elapsed: Decimal | int) -> int:
        """Return how many blocks have begun after ``elapsed`` seconds since answer.

        Block 0 begins at answer, so 0 s returns 1. With ``30/6``, 29.9 s returns 1
        and 30 s returns 2.
        """
        seconds = _whole_seconds("elapsed", elapsed, _FLOOR)
        first, later = self.increments.first, self.increments.later
        if seconds < first:
            return 1
        return 2 + (seconds - first) // later

    def blocks_billed(self, seconds: Decimal | int) -> int:
        """Return how many blocks a call that lasted ``seconds`` after answer pays.

        A call of 0 s pays none. Any longer call pays block 0 and every block that
        began before the call ended.
        """
        whole = _whole_seconds("seconds", seconds, _CEILING)
        first, later = self.increments.first, self.increments.later
        if whole == 0:
            return 0
        if whole <= first:
            return 1
        return 1 + -(-(whole - first) // later)

    def cost_of_blocks(self, count: int) -> Decimal:
        """Return the connection fee plus the price of blocks 0 to ``count - 1``.

        A count of 0 returns 0 because a call that was never answered costs nothing.
        """
        _check_count("count", count)
        if count == 0:
            return from_micros(0)

        micros = self._first_block_micros() + (count - 1) * self._later_block_micros()
        return from_micros(micros)

    def cost(self, seconds: Decimal | int) -> Decimal:
        """Return the billed cost of a call that lasted ``seconds`` after answer."""
        return self.cost_of_blocks(self.blocks_billed(seconds))

    def first_block_cost(self) -> Decimal:
        """Return the fee plus block 0: the amount a new call must reserve."""
        return self._prices().first_cost

    def later_block_cost(self) -> Decimal:
        """Return the price of each block after block 0: block_cost(1), from the cache."""
        return self._prices().later_cost

    def seconds_for_budget(self, budget: Decimal | int) -> int | None:
        """Return the maximum call length in seconds that ``budget`` pays for.

        The fee and block 0 come out of the budget first, so a budget below them
        returns 0. The result is always a whole number of blocks. None means
        unlimited, which happens when the rate is zero and the budget covers the fee.
        """
        count = self.blocks_for_budget(budget)
        if count is None:
            return None
        return self.block_start(count)

    def blocks_for_budget(self, budget: Decimal | int, already: int = 0) -> int | None:
        """Return how many more blocks ``budget`` pays for after ``already`` blocks.

        When ``already`` is 0, nothing has been paid yet, so the fee and block 0 come
        out of the budget first. When ``already`` is 1 or more, the fee and the first
        ``already`` blocks are paid, and every further block costs the later-block
        price. A block is bought only when its whole price fits in what is left of
        the budget, and a negative budget buys nothing. None means unlimited, which
        happens when the rate is zero and the budget covers what is still unpaid.
        """
        _check_count("already", already)
        budget_micros = _budget_micros(budget)
        later_micros = self._later_block_micros()

        if already == 0:
            first_micros = self._first_block_micros()
            if budget_micros < first_micros:
                return 0
            budget_micros -= first_micros
            bought = 1
        else:
            bought = 0

        if budget_micros < 0:
            return 0
        if later_micros == 0:
            return None
        return bought + budget_micros // later_micros

    def _first_block_micros(self) -> int:
        return self._prices().first_micros

    def _later_block_micros(self) -> int:
        return self._prices().later_micros

    def _prices(self) -> "BlockPrices":
        prices = self._block_prices
        if prices is None:
            prices = _block_prices(self.rate, self.connection_fee, self.increments)
            # A decision reads them three times, so they are kept on the object.
            object.__setattr__(self, "_block_prices", prices)
        return prices


class BlockPrices(NamedTuple):
    """The fee plus block 0, and one later block, in micro-units and as amounts."""

    first_micros: int
    later_micros: int
    first_cost: Decimal
    later_cost: Decimal


@functools.lru_cache(maxsize=BLOCK_PRICE_CACHE_SIZE)
def _block_prices(rate: Decimal, connection_fee: Decimal,
                  increments: Increments) -> BlockPrices:
    """Return the block prices of a rate, a connection fee and increments.

    Every decision and every live call needs these, and a deck has far fewer
    distinct rates than prefixes, so the Decimal arithmetic runs once per rate.
    """
    tariff = Tariff("", "", rate, connection_fee, increments)
    first = to_micros(connection_fee) + to_micros(tariff.block_cost(0))
    later = to_micros(tariff.block_cost(1))
    return BlockPrices(first, later, from_micros(first), from_micros(later))


def tariff_from_checked_fields(
    prefix: str,
    description: str,
    rate: Decimal,
    connection_fee: Decimal,
    increments: Increments,
) -> Tariff:
    """Build a Tariff from fields that were validated before, skipping the checks.

    A deck validates each row once at load time, so its lookups skip the checks.
    That cuts the time to build a Tariff from about 2 us to 0.7 us (timeit, Python
    3.11 on an Intel Xeon).
    """
    tariff = object.__new__(Tariff)
    # The class is frozen, so its fields are set the way dataclass __init__ sets them.
    set_field = object.__setattr__
    set_field(tariff, "prefix", prefix)
    set_field(tariff, "description", description)
    set_field(tariff, "rate", rate)
    set_field(tariff, "connection_fee", connection_fee)
    set_field(tariff, "increments", increments)
    set_field(tariff, "_block_prices", None)
    return tariff


def _check_count(name: str, value: object) -> None:
    if type(value) is not int:
        raise TypeError(f"{name} {value!r} is invalid; pass an int of at least 0")
    if value < 0:
        raise ValueError(f"{name} {value!r} is invalid; pass an int of at least 0")


def _whole_seconds(name: str, value: object, context: Context) -> int:
    """Convert a duration to whole seconds, rounding with ``context``."""
    is_decimal = isinstance(value, Decimal) and value.is_finite()
    if type(value) is not int and not is_decimal:
        raise TypeError(
            f"{name} {value!r} is invalid; pass the seconds as a Decimal or an int"
        )

    if value < 0:
        raise ValueError(f"{name} {value!r} is invalid; a duration cannot be negative")

    if is_decimal:
        return int(value.to_integral_value(context=context))
    return value


def _budget_micros(budget: object) -> int:
    """Convert a budget to whole micro-units, rounding down what cannot be spent."""
    if type(budget) is int:
        return budget * MICROS_PER_UNIT

    if not isinstance(budget, Decimal) or not budget.is_finite():
        raise TypeError(
            f"budget {budget!r} is invalid; pass a finite Decimal, "
            "like Decimal('10.00')"
        )
    micros = _FLOOR.multiply(budget, MICROS_PER_UNIT)
    return int(micros.to_integral_value(context=_FLOOR))
