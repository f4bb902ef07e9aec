"""The decisions audit trail and the calls table, as functions over a connection."""

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Table, bindparam, or_, select, update
from sqlalchemy.engine import Dialect

from callguard.store.hangups import UNIQUEIDS_PER_QUERY
from callguard.store.models import Call, Decision
from callguard.store.records import (
    DECISION_RESULTS,
    STATE_ENDED,
    CallRecord,
    DecisionRecord,
    check_count,
    check_text,
)
from callguard.store.schema import allocate_ids, dialect_insert_for
from callguard.store.spend import Charge, add_spend, check_charges
from callguard.store.types import check_aware
from callguard.worker import yield_gil

log = logging.getLogger(__name__)


# Rows per multi-row INSERT on SQLite: 64 rows of 15 columns stay under the
# 999 variables per statement that SQLite allowed before version 3.32.
SQLITE_ROWS_PER_STATEMENT = 64


def _values(record: DecisionRecord | CallRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in _field_names(type(record))}


@functools.cache
def _field_names(record_type: type) -> tuple[str, ...]:
    return tuple(field.name for field in fields(record_type))


def check_decisions(rows: Sequence[DecisionRecord]) -> None:
    """Raise unless every row is a ``DecisionRecord`` that is not stored yet."""
    for row in rows:
        if not isinstance(row, DecisionRecord):
            raise TypeError(f"{row!r} is not a DecisionRecord")
        if row.id is not None:
            raise ValueError(f"decision {row.id} is already stored")


def add_decisions(conn: Connection, rows: Sequence[DecisionRecord]) -> None:
    """Insert a batch of new decisions with consecutive ids."""
    check_decisions(rows)
    if not rows:
        return

    insert = _decision_insert(conn.dialect)
    add_prepared_decisions(conn, [insert.prepare(row) for row in rows])


def prepare_decision(dialect: Dialect, record: DecisionRecord) -> tuple:
    """Return ``record`` as driver values for ``dialect``, ready for add_prepared_decisions.

    The conversion needs no connection, so the daemon runs it as each
    decision is made and the store thread only executes the INSERT.
    """
    check_decisions([record])
    return _decision_insert(dialect).prepare(record)


# The columns of a decision row as prepare_decision_row() takes it: every
# column of the table but the id, in the table's order.
DECISION_ROW_COLUMNS = tuple(column.name for column in Decision.__table__.columns
                             if column.name != "id")
_RESULT_AT = DECISION_ROW_COLUMNS.index("result")
_MAX_SECONDS_AT = DECISION_ROW_COLUMNS.index("max_seconds")


def prepare_decision_values(dialect: Dialect, values: Mapping[str, Any]) -> tuple:
    """Return a decision given as column ``values`` (all but the id) as driver values,
    as prepare_decision_row() does."""
    return prepare_decision_row(dialect, tuple(values[name] for name in DECISION_ROW_COLUMNS))


def prepare_decision_row(dialect: Dialect, row: Sequence[Any]) -> tuple:
    """Return a decision given as its values in DECISION_ROW_COLUMNS order as driver values.

    The daemon records every decision it makes this way, without building a
    ``DecisionRecord`` first. The texts must already be free of NUL
    characters (``callguard.text.storable``). Raises TypeError or ValueError
    for a value the record would refuse: the result, a naive time, money
    that is not a finite ``Decimal``, a negative rate or a bad count.
    """
    if len(row) != len(DECISION_ROW_COLUMNS):
        raise ValueError(f"a decision row has {len(DECISION_ROW_COLUMNS)} values, "
                         f"not {len(row)}")
    result = row[_RESULT_AT]
    if result not in DECISION_RESULTS:
        raise ValueError(f"result {result!r} is invalid; use one of "
                         f"{', '.join(DECISION_RESULTS)}")
    max_seconds = row[_MAX_SECONDS_AT]
    if max_seconds is not None:
        check_count(max_seconds, "max_seconds")
    return _decision_insert(dialect).prepare_row(row)


def add_prepared_decisions(conn: Connection, rows: Sequence[tuple]) -> None:
    """Insert decisions returned by prepare_decision, with consecutive ids."""
    if not rows:
        return

    first_id = allocate_ids(conn, Decision.__tablename__, len(rows))
    _decision_insert(conn.dialect).execute_prepared(conn, rows, first_id)


class _DriverInsert:
    """An INSERT compiled once, with each column's own bind conversion.

    The decisions of a busy minute are thousands of rows. SQLAlchemy's
    executemany spent about 20 us of CPU per row on them while holding the
    GIL that the FastAGI sessions wait for. Converting each value with the
    same processors and passing the rows to the driver costs less.
    """

    def __init__(self, table: Table, dialect: Dialect):
        compiled = table.insert().compile(dialect=dialect)
        self.statement = str(compiled)
        names = list(compiled.positiontup if dialect.positional else compiled.params)
        columns = table.columns
        self._names = names
        self._id_index = names.index("id")
        # Every column but the id, which is allocated when the rows are stored.
        self.value_names = [name for name in names if name != "id"]
        processors = [columns[name].type.dialect_impl(dialect).bind_processor(dialect)
                      for name in self.value_names]
        # The positions in a row of the values that need converting.
        self._processors = [(index, processor) for index, processor in enumerate(processors)
                            if processor is not None]
        self._positional = dialect.positional
        self._rows_per_statement = 1
        if dialect.name == "sqlite" and dialect.positional:
            self._rows_per_statement = SQLITE_ROWS_PER_STATEMENT
        head, _, row = self.statement.partition(" VALUES ")
        self._head, self._row = head + " VALUES ", row

    def prepare(self, record: object) -> tuple:
        """Return the driver's values for ``record``, all columns but the id, in order."""
        return self._convert([getattr(record, name) for name in self.value_names])

    def prepare_row(self, row: Sequence[Any]) -> tuple:
        """Return the driver's values for ``row``, the values of every column but the
        id in the table's order, as prepare() does."""
        return self._convert(list(row))

    def _convert(self, row: list) -> tuple:
        """Apply each column's bind conversion to ``row``, in column order."""
        for index, processor in self._processors:
            value = row[index]
            if value is not None:
                row[index] = processor(value)
        return tuple(row)

    def execute_prepared(self, conn: Connection, rows: Sequence[tuple], first_id: int) -> None:
        """Insert prepared ``rows`` under consecutive ids from ``first_id``, in few statements.

        SQLite gets INSERTs of up to SQLITE_ROWS_PER_STATEMENT rows, because
        its executemany releases and takes back the GIL around every row. On
        SQLite, the GIL is also released for a moment after each INSERT. Other
        drivers get one executemany.
        """
        at = self._id_index
        per_statement = self._rows_per_statement
        if per_statement == 1:
            parameters = [row[:at] + (first_id + n,) + row[at:] for n, row in enumerate(rows)]
            if not self._positional:
                parameters = [dict(zip(self._names, values)) for values in parameters]
            conn.exec_driver_sql(self.statement, parameters)
            return

        for start in range(0, len(rows), per_statement):
            chunk = rows[start:start + per_statement]
            flat: list = []
            for record_id, row in enumerate(chunk, start=first_id + start):
                flat.extend(row[:at])
                flat.append(record_id)
                flat.extend(row[at:])
            values = ", ".join([self._row] * len(chunk))
            conn.exec_driver_sql(self._head + values, tuple(flat))
            yield_gil()


def check_decision_columns(dialect: Dialect) -> None:
    """Raise RuntimeError unless the decisions INSERT of ``dialect`` lists the
    columns in DECISION_ROW_COLUMNS order.

    Store.open() calls it, so such a mismatch stops the daemon at start
    instead of failing every write of the audit trail.
    """
    _decision_insert(dialect)


@functools.cache
def _decision_insert(dialect: Dialect) -> _DriverInsert:
    insert = _DriverInsert(Decision.__table__, dialect)
    if tuple(insert.value_names) != DECISION_ROW_COLUMNS:
        # prepare_row() takes its values in the table's order.
        raise RuntimeError(f"the {dialect.name} INSERT lists the decision columns as "
                           f"{insert.value_names}, not {DECISION_ROW_COLUMNS}")
    return insert


def recent_decisions(
    conn: Connection, limit: int, trunk: str | None
) -> list[DecisionRecord]:
    """Return the latest decisions, newest first, optionally of one trunk only."""
    check_count(limit, "limit", minimum=1)
    statement = select(Decision.__table__)
    if trunk is not None:
        statement = statement.where(Decision.trunk == check_text(trunk, "trunk"))
    statement = statement.order_by(Decision.decided_at.desc(), Decision.id.desc())

    rows = conn.execute(statement.limit(limit))
    return [DecisionRecord(**row._mapping) for row in rows]


def node_decisions_since(
    conn: Connection, node: str, since: datetime, limit: int
) -> list[DecisionRecord]:
    """Return the decisions of ``node`` made at or after ``since``, newest first.

    No index contains ``node``, so the rows that other nodes sharing the
    store wrote since ``since`` are read too, and skipped.
    """
    check_text(node, "node", empty=True)
    check_aware(since, "since")
    check_count(limit, "limit", minimum=1)
    statement = (
        select(Decision.__table__)
        .where(Decision.node == node, Decision.decided_at >= since)
        .order_by(Decision.decided_at.desc(), Decision.id.desc())
        .limit(limit)
    )
    return [DecisionRecord(**row._mapping) for row in conn.execute(statement)]


def save_call(conn: Connection, call: CallRecord) -> None:
    """Insert a call, or update the stored call with the same trunk-leg uniqueid.

    An update keeps the stored ``id`` and ``created_at``. An ended call is
    never moved back to ringing or up: such an update is logged and skipped.
    """
    save_calls(conn, [call])


def save_calls(conn: Connection, records: Sequence[CallRecord]) -> None:
    """Save each call as ``save_call`` does, in order, with one id allocation."""
    for call in records:
        if not isinstance(call, CallRecord):
            raise TypeError(f"{call!r} is not a CallRecord")
    if not records:
        return

    first_id = allocate_ids(conn, Call.__tablename__, len(records))
    statement = _upsert_statement(conn.dialect.name)
    for offset, call in enumerate(records):
        values = _values(call) | {"id": first_id + offset}
        # An id goes unused when the row exists; ids only need to be unique.
        if conn.execute(statement, values).first() is None:
            log.warning(
                "call %s on trunk %s has ended; ignoring the update to state %s",
                call.uniqueid,
                call.trunk,
                call.state,
            )


def check_finish(
    call: CallRecord, charges: Mapping[tuple[str, str], Decimal], at: datetime
) -> list[Charge]:
    """Raise unless ``call`` has ended and ``charges`` and ``at`` are valid.

    Returns the non-zero charges as (window, key, amount).
    """
    if not isinstance(call, CallRecord):
        raise TypeError(f"{call!r} is not a CallRecord")
    if call.state != STATE_ENDED:
        raise ValueError(
            f"call {call.uniqueid} is in state {call.state}, but only an ended call "
            "can be finished; store a live call with save_call"
        )
    check_aware(at, "at")
    return check_charges(charges)


def finish_call(
    conn: Connection,
    call: CallRecord,
    charges: Mapping[tuple[str, str], Decimal],
    at: datetime,
) -> bool:
    """Store an ended call and add ``charges`` to the spend of its trunk.

    Returns False and writes nothing when the stored call with the same
    trunk-leg uniqueid has already ended. The caller's transaction makes the
    call and its charges one write: both are stored, or neither is.
    """
    checked = check_finish(call, charges, at)
    if not end_call(conn, call):
        return False

    for window, key, amount in checked:
        add_spend(conn, call.trunk, window, key, amount, at)
    return True


def end_call(conn: Connection, call: CallRecord) -> bool:
    """Store ``call`` as ended unless the stored row has ended already.

    Returns whether the row was written, so that the caller charges the call
    once. Checking that ``call`` is ended is the caller's part.
    """
    values = _values(call)
    del values["id"]

    # A concurrent finish of the same call matches no row once this one commits:
    # PostgreSQL makes it wait for the row lock and then re-checks the state,
    # and SQLite runs write transactions one at a time.
    changes = {name: values[name] for name in _CHANGED_COLUMNS}
    if conn.execute(_END_STATEMENT, changes | {"match": call.uniqueid}).rowcount == 1:
        return True

    # Not stored yet (or ended): insert it, unless another writer did first.
    call_id = allocate_ids(conn, Call.__tablename__, 1)
    statement = _insert_new_statement(conn.dialect.name)
    return conn.execute(statement, values | {"id": call_id}).first() is not None


_CALLS = Call.__table__
# Columns that a later save or finish may change: all but the id, the key and
# the creation time.
_CHANGED_COLUMNS = tuple(
    column.name
    for column in _CALLS.columns
    if column.name not in ("id", "uniqueid", "created_at")
)
_END_STATEMENT = update(_CALLS).where(
    _CALLS.c.uniqueid == bindparam("match"), _CALLS.c.state != STATE_ENDED
)


@functools.cache
def _upsert_statement(dialect_name: str) -> Any:
    insert = dialect_insert_for(dialect_name, Call)
    excluded = insert.excluded
    # RETURNING, because SQLAlchemy 2.1 reports no rowcount for an INSERT on
    # psycopg unless asked to preserve it; no row means the update was skipped.
    return insert.on_conflict_do_update(
        index_elements=["uniqueid"],
        set_={name: excluded[name] for name in _CHANGED_COLUMNS},
        where=or_(_CALLS.c.state != STATE_ENDED, excluded.state == STATE_ENDED),
    ).returning(_CALLS.c.id)


@functools.cache
def _insert_new_statement(dialect_name: str) -> Any:
    insert = dialect_insert_for(dialect_name, Call)
    return insert.on_conflict_do_nothing(index_elements=["uniqueid"]).returning(
        _CALLS.c.id
    )


def live_calls(conn: Connection) -> list[CallRecord]:
    """Return the calls that have not ended, oldest first."""
    statement = (
        select(Call.__table__)
        .where(Call.state != STATE_ENDED)
        .order_by(Call.created_at, Call.id)
    )
    return [CallRecord(**row._mapping) for row in conn.execute(statement)]


def ended_calls(conn: Connection, uniqueids: Sequence[str]) -> set[str]:
    """Return those of the trunk legs ``uniqueids`` whose calls are stored as ended."""
    ended: set[str] = set()
    for start in range(0, len(uniqueids), UNIQUEIDS_PER_QUERY):
        chunk = [check_text(uniqueid, "uniqueid")
                 for uniqueid in uniqueids[start:start + UNIQUEIDS_PER_QUERY]]
        statement = select(Call.uniqueid).where(Call.state == STATE_ENDED,
                                                Call.uniqueid.in_(chunk))
        ended.update(uniqueid for (uniqueid,) in conn.execute(statement))
    return ended


def recent_calls(conn: Connection, limit: int) -> list[CallRecord]:
    """Return the latest calls, newest first."""
    check_count(limit, "limit", minimum=1)
    statement = (
        select(Call.__table__)
        .order_by(Call.created_at.desc(), Call.id.desc())
        .limit(limit)
    )
    return [CallRecord(**row._mapping) for row in conn.execute(statement)]
