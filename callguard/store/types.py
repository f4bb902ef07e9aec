"""Column types that keep money exact and timestamps in UTC on SQLite and PostgreSQL.

Money is stored as integer micro-units in a BIGINT column, so no float is ever
involved. SQLAlchemy's ``Numeric`` would convert through float on SQLite.
Timestamps are stored as UTC; SQLite has no time zone type, so there the value
is written as naive UTC text and read back with UTC attached.
"""

from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable

from sqlalchemy import BigInteger, DateTime, Text
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.types import TypeDecorator, TypeEngine

from callguard.money import format_rate, from_micros, to_micros

# Range of a signed 64-bit BIGINT, in micro-units.
MIN_MICROS = -(2**63)
MAX_MICROS = 2**63 - 1
MIN_AMOUNT = from_micros(MIN_MICROS)
MAX_AMOUNT = from_micros(MAX_MICROS)
# The maximum number of amounts whose micro-units a Money column caches. A full
# cache is emptied.
MAX_CACHED_AMOUNTS = 4096

TIMESTAMP_TZ_DDL = "TIMESTAMP WITH TIME ZONE"


def check_money(value: object, field: str = "amount") -> Decimal:
    """Return ``value`` if it is a finite ``Decimal`` that fits a BIGINT of micro-units.

    Raises ``TypeError`` for floats and every other type, ``ValueError`` for
    NaN, infinities and amounts out of range.
    """
    if isinstance(value, float):
        raise TypeError(
            f"{field} {value!r} is a float; money must be a Decimal, "
            f"e.g. Decimal('{value}')"
        )
    if not isinstance(value, Decimal):
        raise TypeError(
            f"{field} {value!r} is a {type(value).__name__}; "
            "money must be a Decimal, e.g. Decimal('0.0036')"
        )
    if not value.is_finite():
        raise ValueError(f"{field} {value!r} is not a finite number")

    # Rounding up (toward +infinity) keeps an amount in this range inside it.
    if not MIN_AMOUNT <= value <= MAX_AMOUNT:
        raise ValueError(
            f"{field} {value} is outside the storable range {MIN_AMOUNT} to {MAX_AMOUNT}"
        )
    return value


def check_aware(value: object, field: str = "timestamp") -> datetime:
    """Return ``value`` converted to UTC if it is a timezone-aware ``datetime``.

    Raises ``TypeError`` for other types and ``ValueError`` for naive datetimes.
    """
    if not isinstance(value, datetime):
        raise TypeError(
            f"{field} {value!r} is a {type(value).__name__}; expected a "
            "timezone-aware datetime"
        )
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(
            f"{field} {value.isoformat()} is naive; give it a time zone, "
            "e.g. datetime.now(timezone.utc)"
        )
    return value.astimezone(timezone.utc)


class Money(TypeDecorator[Decimal]):
    """An amount of money: ``Decimal`` in Python, BIGINT micro-units in the database.

    Amounts finer than a micro-unit are rounded up, as ``callguard.money.to_micros``
    does. Floats are rejected with ``TypeError``.
    """

    impl = BigInteger
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> int | None:
        if value is None:
            return None
        return to_micros(check_money(value))

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """Return the conversion of process_bind_param(), with a cache of micro-units.

        A busy day's decisions repeat a few prices thousands of times, and
        rounding a ``Decimal`` costs more than a dict lookup. Equal amounts
        have the same micro-units whatever their exponent, so 0.01 and 0.0100
        share an entry. Only finite ``Decimal`` values are cached, because the
        float 0.5 equals Decimal('0.5') and must still raise TypeError.
        """
        convert = super().bind_processor(dialect)
        if convert is None:
            return None
        cached: dict[Decimal, int] = {}

        def process(value: Any) -> Any:
            if value.__class__ is Decimal and value.is_finite():
                micros = cached.get(value)
                if micros is None:
                    micros = convert(value)
                    if len(cached) >= MAX_CACHED_AMOUNTS:
                        cached.clear()
                    cached[value] = micros
                return micros
            return convert(value)

        return process

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return from_micros(int(value))


class PerMinuteRate(TypeDecorator[Decimal]):
    """A price per minute: ``Decimal`` in Python, its exact decimal text in the database.

    Carriers quote rates finer than a micro-unit (0.0333333 a minute), and the
    cost of each block is rounded only after the rate is applied, so a rate is
    kept to the digit: TEXT, which neither SQLite nor PostgreSQL converts.
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        check_money(value)
        if value < 0:
            raise ValueError(f"rate {value} is negative")
        return format_rate(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(value)


class _SQLiteTimestampTZ(sqlite.DATETIME):
    """SQLite's text DATETIME storage, declared as TIMESTAMP WITH TIME ZONE.

    The declared name matches ``schema.sql``, so a database created by
    ``create_all`` and one created from that file have the same column types.
    """

    __visit_name__ = "callguard_sqlite_timestamptz"


@compiles(_SQLiteTimestampTZ, "sqlite")
def _compile_sqlite_timestamptz(type_: TypeEngine, compiler: Any, **kw: Any) -> str:
    return TIMESTAMP_TZ_DDL


class UTCDateTime(TypeDecorator[datetime]):
    """A point in time: aware ``datetime`` in Python, stored and returned as UTC.

    Naive datetimes are rejected with ``ValueError`` because their zone is
    unknown.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLiteTimestampTZ())
        return dialect.type_descriptor(DateTime(timezone=True))

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any] | None:
        """Return the conversion of process_bind_param() and the dialect's type,
        with a shorter path for UTC times on SQLite.

        On SQLite the column stores the text of SQLAlchemy's DATETIME,
        YYYY-MM-DD HH:MM:SS.ffffff. For a datetime in ``timezone.utc``, as the
        clock returns, that text is the first 26 characters of its ISO form.
        ``isoformat()`` writes it in less than half the time.
        """
        convert = super().bind_processor(dialect)
        if convert is None or not isinstance(self.impl_instance, _SQLiteTimestampTZ):
            return convert
        utc = timezone.utc

        def process(value: Any) -> Any:
            if value.__class__ is datetime and value.tzinfo is utc:
                return value.isoformat(" ", "microseconds")[:26]
            return convert(value)

        return process

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        utc = check_aware(value)

        if dialect.name == "sqlite":
            return utc.replace(tzinfo=None)
        return utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)
