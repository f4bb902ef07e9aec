"""Spend per trunk per window, as functions over a connection."""

import functools
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, or_, select

from callguard.money import from_micros
from callguard.store.models import Spend
from callguard.store.records import check_text
from callguard.store.schema import dialect_insert_for
from callguard.store.types import check_aware, check_money
from callguard.store.windows import check_window_key

Charge = tuple[str, str, Decimal]  # (window, key, amount)


def add_spend(
    conn: Connection, trunk: str, window: str, key: str, amount: Decimal, at: datetime
) -> Decimal:
    """Add ``amount`` to one window in a single upsert; returns the new total."""
    check_text(trunk, "trunk")
    check_window_key(window, key)
    check_money(amount)
    check_aware(at, "at")

    values = {
        "trunk": trunk,
        "window": window,
        "window_key": key,
        "amount": amount,
        "updated_at": at,
    }
    return conn.execute(_upsert_statement(conn.dialect.name), values).scalar_one()


@functools.cache
def _upsert_statement(dialect_name: str) -> Any:
    insert = dialect_insert_for(dialect_name, Spend)
    return insert.on_conflict_do_update(
        index_elements=["trunk", "window", "window_key"],
        set_={
            "amount": Spend.amount + insert.excluded.amount,
            "updated_at": insert.excluded.updated_at,
        },
    ).returning(Spend.amount)


def spend_for(
    conn: Connection, trunk: str, keys: Mapping[str, str], *, lock: bool = False
) -> dict[str, Decimal]:
    """Return the spend of ``trunk`` in each window of ``keys`` (window -> key), 0 if none.

    With ``lock``, the rows read stay locked until the transaction ends, so
    that a write based on them cannot lose a concurrent change. SQLAlchemy
    leaves FOR UPDATE out on SQLite, whose writers run one at a time.
    """
    check_text(trunk, "trunk")
    for window, key in keys.items():
        check_window_key(window, key)
    if not keys:
        return {}

    matches = [
        and_(Spend.window == window, Spend.window_key == key)
        for window, key in keys.items()
    ]
    statement = select(Spend.window, Spend.amount).where(
        Spend.trunk == trunk, or_(*matches)
    )
    if lock:
        statement = statement.with_for_update()
    found = {window: amount for window, amount in conn.execute(statement)}
    return {window: found.get(window, from_micros(0)) for window in keys}


def check_charges(charges: object) -> list[Charge]:
    """Return the non-zero amounts of a (window, key) -> amount mapping as ``Charge``s.

    Raises ``TypeError`` or ``ValueError`` for a malformed pair, an invalid
    window key, an amount that is not a storable ``Decimal``, or a negative one.
    """
    if not isinstance(charges, Mapping):
        raise TypeError(
            f"charges {charges!r} is a {type(charges).__name__}; expected a mapping "
            "of (window, key) to Decimal, e.g. {('day', '2024-06-14'): Decimal('0.5')}"
        )

    checked = []
    for pair, amount in charges.items():
        if not isinstance(pair, tuple) or len(pair) != 2:
            raise ValueError(
                f"charge key {pair!r} is invalid; use a (window, key) pair such as "
                "('day', '2024-06-14')"
            )
        window, key = pair
        check_window_key(window, key)
        check_money(amount, f"charge for {window} {key}")
        if amount < 0:
            raise ValueError(
                f"charge for {window} {key} is {amount}, which is negative; a "
                "finished call only adds spend, so correct a total with add_spend"
            )

        if amount != 0:
            checked.append((window, key, amount))
    return checked
