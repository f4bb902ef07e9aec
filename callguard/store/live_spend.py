"""Live spend that each node shares with the others, as functions over a connection."""

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from sqlalchemy import Connection, delete, insert, select
from sqlalchemy.exc import IntegrityError

from callguard.store.models import LiveSpend
from callguard.store.records import check_count, check_text
from callguard.store.schema import dialect_insert_for
from callguard.store.types import check_aware, check_money
from callguard.store.windows import check_window_key


class LiveSpendRow(NamedTuple):
    """One node's spend in one window that the spend table does not contain yet."""

    trunk: str
    window: str
    key: str
    live: Decimal  # blocks begun by calls still up, plus ended calls not yet stored
    held: Decimal  # first blocks of pending checks
    # Calls up on the trunk plus pending checks there. Only the row of the
    # current day carries them, so that each is counted once.
    calls: int = 0


class LiveShares(NamedTuple):
    """The spend and calls of the nodes sharing a store that its stored totals lack."""

    # Live and held spend per (trunk, window, key), zero sums left out.
    spend: dict[tuple[str, str, str], Decimal]
    calls: dict[str, int]  # calls up plus pending checks per trunk, zero counts left out


def check_live_spend(node: str, rows: Sequence[LiveSpendRow], at: datetime) -> None:
    """Raise ``TypeError`` or ``ValueError`` unless the rows can be stored for ``node``."""
    check_text(node, "node")
    check_aware(at, "at")
    seen = set()
    for row in rows:
        check_text(row.trunk, "trunk")
        check_window_key(row.window, row.key)
        check_money(row.live, f"live spend of {row.trunk} {row.window} {row.key}")
        check_money(row.held, f"held spend of {row.trunk} {row.window} {row.key}")
        check_count(row.calls, f"calls of {row.trunk} {row.window} {row.key}")
        slot = (row.trunk, row.window, row.key)
        if slot in seen:
            raise ValueError(f"live spend of {row.trunk} {row.window} {row.key} is given "
                             "twice; give one row per trunk and window")
        seen.add(slot)


def replace_live_spend(conn: Connection, node: str, rows: Sequence[LiveSpendRow],
                       at: datetime) -> set[datetime]:
    """Replace every row of ``node`` with ``rows``, each updated at ``at``.

    Returns the update times of the rows replaced, those that a daemon
    sharing ``node``'s name inserted since the DELETE included.
    """
    replaced = conn.execute(delete(LiveSpend).where(LiveSpend.node == node)
                            .returning(LiveSpend.updated_at))
    updated = {updated_at for (updated_at,) in replaced}
    if not rows:
        return updated

    values = [
        {"node": node, "trunk": row.trunk, "window": row.window, "window_key": row.key,
         "live": row.live, "held": row.held, "calls": row.calls, "updated_at": at}
        for row in rows
    ]
    try:
        with conn.begin_nested():
            conn.execute(insert(LiveSpend), values)
    except IntegrityError:
        # A daemon that wrongly shares this node's name inserted the same rows
        # after the DELETE. Their update times tell the caller, and taking the
        # rows over keeps both daemons writing.
        conflicting = conn.execute(select(LiveSpend.updated_at).where(LiveSpend.node == node))
        updated |= {updated_at for (updated_at,) in conflicting}
        upsert = dialect_insert_for(conn.dialect.name, LiveSpend)
        upsert = upsert.on_conflict_do_update(
            index_elements=["node", "trunk", "window", "window_key"],
            set_={"live": upsert.excluded.live, "held": upsert.excluded.held,
                  "calls": upsert.excluded.calls, "updated_at": upsert.excluded.updated_at},
        )
        conn.execute(upsert, values)
    return updated


def delete_live_spend_before(conn: Connection, before: datetime) -> int:
    """Delete the rows of every node last updated before ``before``, and return
    how many were deleted."""
    check_aware(before, "before")
    deleted = conn.execute(delete(LiveSpend).where(LiveSpend.updated_at < before))
    return deleted.rowcount


def others_live_spend(conn: Connection, node: str | None, since: datetime) -> LiveShares:
    """Return the live and held spend of every node but ``node``, summed per
    (trunk, window, key), and their calls, summed per trunk, from the rows
    updated at or after ``since``.

    With ``node`` None, every node's rows count. A NULL count, as a release
    before schema version 4 writes, counts as no calls.
    """
    if node is not None:
        check_text(node, "node")
    check_aware(since, "since")
    statement = select(LiveSpend.trunk, LiveSpend.window, LiveSpend.window_key,
                       LiveSpend.live, LiveSpend.held, LiveSpend.calls
                       ).where(LiveSpend.updated_at >= since)
    if node is not None:
        statement = statement.where(LiveSpend.node != node)
    spend: dict[tuple[str, str, str], Decimal] = {}
    calls: dict[str, int] = {}
    for trunk, window, key, live, held, count in conn.execute(statement):
        if live or held:
            slot = (trunk, window, key)
            spend[slot] = spend.get(slot, Decimal(0)) + live + held
        if count:
            calls[trunk] = calls.get(trunk, 0) + count
    return LiveShares(spend, calls)
