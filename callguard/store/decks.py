"""The stored copies of the prefix table and of each trunk's rate deck.

The CSV files are the source of truth. An import replaces a whole table or
deck in one transaction, so readers see either the old rows or the new ones.
"""

import logging
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from itertools import islice

from sqlalchemy import Connection, delete, func, select

from callguard.money import format_rate, to_micros
from callguard.store.models import Import, Prefix, Rate
from callguard.store.records import (
    DATASET_PREFIXES,
    DATASET_RATES,
    ImportRecord,
    check_count,
    check_text,
)
from callguard.store.schema import dialect_insert, lock_transaction
from callguard.store.types import check_money

log = logging.getLogger(__name__)

# A prefix-table prefix: national digits ("09"), "+" and E.164 digits ("+870"),
# or a bare "+" for the catch-all.
_TABLE_PREFIX = re.compile(r"\+?[0-9]*")
# A rate deck prefix: E.164 digits without "+", at most 15 digits (ITU-T E.164),
# or "short:" and 1 to 15 leading digits of home short codes.
_DECK_PREFIX = re.compile(r"(?:short:)?[0-9]{1,15}")
# The prefix filter of list_rates: the start of a deck prefix. A bare "short:"
# selects every short code row.
_DECK_PREFIX_FILTER = re.compile(r"[0-9]{1,15}|short:[0-9]{0,15}")

INSERT_CHUNK_ROWS = 10_000

# Key of the PostgreSQL advisory lock that each import of the prefix table or
# a rate deck takes and keeps until it commits. Two nodes that import at once,
# as when they start together, would otherwise both delete the old rows, both
# insert the new ones and fail on the primary key. The value is the ASCII of
# "cgim" (callguard import).
PG_IMPORT_LOCK = 0x6367696D

RateRow = tuple[str, str, Decimal, Decimal, int, int]
_RATE_COLUMNS = (
    "trunk",
    "prefix",
    "description",
    "rate",
    "connection_fee",
    "first_increment",
    "later_increment",
)


def replace_prefixes(
    conn: Connection, rows: Iterable[tuple[str, str, str]], source: str, now: datetime
) -> int:
    """Replace the prefix table with ``rows`` of (prefix, category, description)."""
    check_text(source, "source")
    records = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=1):
        prefix, category, description = _unpack(row, 3, number, source)
        if (
            not isinstance(prefix, str)
            or not prefix
            or not _TABLE_PREFIX.fullmatch(prefix)
        ):
            raise ValueError(
                f"{source}: row {number}: prefix {prefix!r} is invalid; use digits, "
                "optionally after a leading +, or a bare +"
            )
        if prefix in seen:
            raise ValueError(
                f"{source}: row {number}: prefix {prefix!r} is a duplicate"
            )
        seen.add(prefix)

        try:
            check_text(category, "category")
            check_text(description, "description", empty=True)
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"{source}: row {number} (prefix {prefix}): {exc}"
            ) from None
        records.append(
            {"prefix": prefix, "category": category, "description": description}
        )

    # Waits for another import, so that the DELETE also removes its committed rows.
    lock_transaction(conn, PG_IMPORT_LOCK)
    conn.execute(delete(Prefix))
    if records:
        conn.execute(Prefix.__table__.insert(), records)
    _record_import(conn, DATASET_PREFIXES, "", source, len(records), now)
    return len(records)


def list_prefixes(conn: Connection) -> list[tuple[str, str, str]]:
    """Return the prefix table as (prefix, category, description), ordered by prefix."""
    statement = select(Prefix.prefix, Prefix.category, Prefix.description).order_by(
        Prefix.prefix
    )
    return [tuple(row) for row in conn.execute(statement)]


def replace_rates(
    conn: Connection, trunk: str, rows: Iterable[RateRow], source: str, now: datetime
) -> int:
    """Replace the rate deck of ``trunk`` with ``rows``, streaming them in bulk.

    On PostgreSQL the rows go through COPY, elsewhere through executemany in
    chunks. A bad row raises ``TypeError`` or ``ValueError``, and the caller's
    transaction is rolled back, leaving the old deck in place.
    """
    check_text(trunk, "trunk")
    check_text(source, "source")
    # Waits for another import, so that the DELETE also removes its committed rows.
    lock_transaction(conn, PG_IMPORT_LOCK)
    conn.execute(delete(Rate).where(Rate.trunk == trunk))

    values = _rate_values(trunk, rows, source)
    if conn.dialect.name == "postgresql":
        count = _copy_rates(conn, values)
    else:
        count = _insert_rates(conn, values)

    _record_import(conn, DATASET_RATES, trunk, source, count, now)
    return count


def _rate_values(
    trunk: str, rows: Iterable[RateRow], source: str
) -> Iterator[tuple[str, str, str, str, int, int, int]]:
    seen: set[str] = set()
    micros = _MicrosCache()
    for number, row in enumerate(rows, start=1):
        prefix, description, rate, fee, first, later = _unpack(row, 6, number, source)
        if not isinstance(prefix, str) or not _DECK_PREFIX.fullmatch(prefix):
            raise ValueError(
                f"{source}: row {number}: prefix {prefix!r} is invalid; use 1 to 15 "
                "E.164 digits without +, or short: and 1 to 15 digits of a short code"
            )
        if prefix in seen:
            raise ValueError(
                f"{source}: row {number}: prefix {prefix!r} is a duplicate"
            )
        seen.add(prefix)

        try:
            check_text(description, "description", empty=True)
            rate_text = _rate_text(rate)
            fee_micros = micros.convert(fee, "connection_fee")
            check_count(first, "first_increment", minimum=1)
            check_count(later, "later_increment", minimum=1)
        except (TypeError, ValueError) as exc:
            raise type(exc)(
                f"{source}: row {number} (prefix {prefix}): {exc}"
            ) from None

        yield (trunk, prefix, description, rate_text, fee_micros, first, later)


def _rate_text(rate: object) -> str:
    """Return a rate per minute as the exact decimal text the store keeps."""
    check_money(rate, "rate")
    if rate < 0:
        raise ValueError(f"rate {rate} is negative")
    return format_rate(rate)


class _MicrosCache:
    """Converts non-negative amounts to micro-units, remembering recent results.

    A deck repeats a few rates over many rows, and the checks and rounding
    dominate the import time of a large deck.
    """

    MAX_ENTRIES = 10_000

    def __init__(self) -> None:
        self._micros: dict[Decimal, int] = {}

    def convert(self, amount: object, name: str) -> int:
        # Check the type before the lookup: 0.5 == Decimal("0.5") and both hash alike.
        if isinstance(amount, Decimal) and amount.is_finite():
            cached = self._micros.get(amount)
            if cached is not None:
                return cached

        check_money(amount, name)
        if amount < 0:
            raise ValueError(f"{name} {amount} is negative")

        value = to_micros(amount)
        if len(self._micros) < self.MAX_ENTRIES:
            self._micros[amount] = value
        return value


def _copy_rates(conn: Connection, values: Iterable[tuple]) -> int:
    columns = ", ".join(_RATE_COLUMNS)
    statement = f"COPY {Rate.__tablename__} ({columns}) FROM STDIN"
    count = 0
    with conn.connection.driver_connection.cursor() as cursor:
        with cursor.copy(statement) as copy:
            for row in values:
                copy.write_row(row)
                count += 1
    return count


def _insert_rates(conn: Connection, values: Iterable[tuple]) -> int:
    columns = ", ".join(_RATE_COLUMNS)
    placeholders = ", ".join("?" for _ in _RATE_COLUMNS)
    statement = f"INSERT INTO {Rate.__tablename__} ({columns}) VALUES ({placeholders})"

    count = 0
    iterator = iter(values)
    while chunk := list(islice(iterator, INSERT_CHUNK_ROWS)):
        conn.exec_driver_sql(statement, chunk)
        count += len(chunk)
    return count


def list_rates(
    conn: Connection, trunk: str, prefix: str | None, limit: int | None
) -> list[RateRow]:
    """Return the deck of ``trunk`` ordered by prefix, optionally only prefixes
    that start with ``prefix`` and at most ``limit`` rows."""
    check_text(trunk, "trunk")
    statement = (
        select(
            Rate.prefix,
            Rate.description,
            Rate.rate,
            Rate.connection_fee,
            Rate.first_increment,
            Rate.later_increment,
        )
        .where(Rate.trunk == trunk)
        .order_by(Rate.prefix)
    )
    if prefix is not None:
        if not isinstance(prefix, str) or not _DECK_PREFIX_FILTER.fullmatch(prefix):
            raise ValueError(
                f"prefix {prefix!r} is invalid; use 1 to 15 digits without +, or "
                "short: and up to 15 digits"
            )
        # Digits and "short:" contain no LIKE wildcard, so the pattern needs no
        # escaping.
        statement = statement.where(Rate.prefix.startswith(prefix))
    if limit is not None:
        statement = statement.limit(check_count(limit, "limit", minimum=1))
    return [tuple(row) for row in conn.execute(statement)]


def rate_trunks(conn: Connection) -> dict[str, int]:
    """Return the number of rate deck rows of each trunk that has any."""
    statement = (
        select(Rate.trunk, func.count()).group_by(Rate.trunk).order_by(Rate.trunk)
    )
    return {trunk: count for trunk, count in conn.execute(statement)}


def list_imports(conn: Connection) -> list[ImportRecord]:
    """Return the last import of the prefix table and of each rate deck."""
    statement = select(Import).order_by(Import.dataset, Import.trunk)
    return [
        ImportRecord(
            dataset=row.dataset,
            trunk=row.trunk,
            source=row.source,
            row_count=row.row_count,
            imported_at=row.imported_at,
        )
        for row in conn.execute(statement)
    ]


def _record_import(
    conn: Connection, dataset: str, trunk: str, source: str, count: int, now: datetime
) -> None:
    values = {
        "dataset": dataset,
        "trunk": trunk,
        "source": source,
        "row_count": count,
        "imported_at": now,
    }
    insert = dialect_insert(conn.dialect, Import).values(values)
    upsert = insert.on_conflict_do_update(
        index_elements=["dataset", "trunk"],
        set_={
            "source": insert.excluded.source,
            "row_count": insert.excluded.row_count,
            "imported_at": insert.excluded.imported_at,
        },
    )
    conn.execute(upsert)


def _unpack(row: object, size: int, number: int, source: str) -> tuple:
    if not isinstance(row, tuple | list) or len(row) != size:
        raise ValueError(f"{source}: row {number}: expected {size} fields, got {row!r}")
    return tuple(row)
