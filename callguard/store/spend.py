"""Spend per trunk per window, as functions over a connection."""

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from sqlalchemy import Connection, and_, or_, select

from callguard.money import from_micros
from callguard.store.models import Spend
from callguard.store.records import check_text
from callguard.store.schema import dialect_insert
from callguard.store.types import check_aware, check_money
from callguard.store.windows import check_window_key


def add_spend(
    conn: Connection, trunk: str, window: str, key: str, amount: Decimal, at: datetime
) -> Decimal:
    """Add ``amount`` to one window in a single upsert; returns the new total."""
    check_text(trunk, "trunk")
    check_window_key(window, key)
    check_money(amount)
    check_aware(at, "at")

    insert = dialect_insert(conn.dialect, Spend).values(
        trunk=trunk, window=window, window_key=key, amount=amount, updated_at=at
    )
    upsert = insert.on_conflict_do_update(
        index_elements=["trunk", "window", "window_key"],
        set_={
            "amount": Spend.amount + insert.excluded.amount,
            "updated_at": insert.excluded.updated_at,
        },
    )
    return conn.execute(upsert.returning(Spend.amount)).scalar_one()


def spend_for(
    conn: Connection, trunk: str, keys: Mapping[str, str]
) -> dict[str, Decimal]:
    """Return the spend of ``trunk`` in each window of ``keys`` (window -> key), 0 if none."""
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
    found = {window: amount for window, amount in conn.execute(statement)}
    return {window: found.get(window, from_micros(0)) for window in keys}
