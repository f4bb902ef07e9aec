"""The ``Store``: callguard's database on SQLite or PostgreSQL, through SQLAlchemy Core.

The daemon calls it from one worker thread. Each method runs in its own
transaction on a pooled connection, so several threads may also call it at once.
"""

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from callguard.store import blocks, calls, decks, hangups, live_spend, spend
from callguard.store.engine import (
    WRITE_OPTION,
    StoreError,
    build_engine,
    check_sqlite_exists,
    parse_url,
    translated_errors,
)
from callguard.store.models import SCHEMA_VERSION, Call, Hangup
from callguard.store.audit_methods import AuditMethods
from callguard.store.outbox_methods import OutboxMethods
from callguard.store.records import (
    BlockRecord,
    CallRecord,
    DecisionRecord,
    HangupRecord,
    ImportRecord,
)
from callguard.store.schema import ensure_schema, lock_id_counters
from callguard.urls import mask_url, url_secrets

log = logging.getLogger(__name__)

RateRow = decks.RateRow
# The id counters that a batch of call updates may allocate from.
CALL_UPDATE_COUNTERS = (Call.__tablename__, Hangup.__tablename__)


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


class Store(OutboxMethods, AuditMethods):
    """Callguard's database: rates, decisions, calls, spend, blocks, hang-ups, alerts.

    A failed database operation raises ``StoreError``. An invalid argument
    raises ``TypeError`` or ``ValueError`` and leaves the database unchanged.
    ``clock`` returns the current time recorded with each import.
    With ``create_schema`` False, ``open`` creates neither a SQLite file nor
    the schema: a command that only reads the store then reports a mistyped
    database instead of leaving an empty one behind.
    """

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        clock: Callable[[], datetime] = _utc_now,
        create_schema: bool = True,
    ) -> None:
        parsed = parse_url(url)
        self._parsed_url = parsed
        self._create_schema = create_schema
        self.url_for_logs: str = mask_url(parsed.render_as_string(hide_password=False))
        self._secrets = url_secrets(parsed)
        self._engine = build_engine(parsed, echo=echo, set_wal=create_schema)
        self._clock = clock
        self._is_open = False

    def __enter__(self) -> "Store":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def open(self) -> None:
        """Connect, create the schema in an empty database or upgrade an older one,
        and check its version.

        Without ``create_schema`` it only reads, and raises ``StoreError`` for a
        SQLite file that does not exist, a database without callguard's tables
        and one of an older schema version.
        """
        if not self._create_schema:
            check_sqlite_exists(self._parsed_url)
        calls.check_decision_columns(self._engine.dialect)
        self._is_open = True
        try:
            # Without create_schema the open only reads, so on SQLite it does
            # not wait for a writer that holds the write lock.
            with self._transaction("opening the database",
                                   write=self._create_schema) as conn:
                created = ensure_schema(conn, create=self._create_schema,
                                        database=f"database {self.url_for_logs}")
        except BaseException:
            self._is_open = False
            raise

        action = "created" if created else "checked"
        log.info(
            "opened database %s (schema version %d %s)",
            self.url_for_logs,
            SCHEMA_VERSION,
            action,
        )

    def close(self) -> None:
        """Close every pooled connection; ``open`` may be called again later."""
        self._is_open = False
        self._engine.dispose()
        log.info("closed database %s", self.url_for_logs)

    @contextmanager
    def _transaction(
        self, operation: str, *, write: bool = True
    ) -> Iterator[Connection]:
        if not self._is_open:
            raise StoreError(
                f"{operation} failed: the store is not open; call open() first"
            )

        with translated_errors(operation, self.url_for_logs, self._secrets):
            with self._engine.connect() as conn:
                if write:
                    conn.execution_options(**{WRITE_OPTION: True})
                with conn.begin():
                    yield conn

    # Prefix table and rate decks.

    def replace_prefixes(
        self, rows: Iterable[tuple[str, str, str]], source: str
    ) -> int:
        """Replace the prefix table with (prefix, category, description) rows.

        Returns the number of rows stored. ``source`` names where they came from.
        """
        with self._transaction("replacing the prefix table") as conn:
            count = decks.replace_prefixes(conn, rows, source, self._clock())
        log.info("stored %d prefixes from %s", count, source)
        return count

    def list_prefixes(self) -> list[tuple[str, str, str]]:
        """Return the prefix table as (prefix, category, description), ordered by prefix."""
        with self._transaction("listing prefixes", write=False) as conn:
            return decks.list_prefixes(conn)

    def replace_rates(self, trunk: str, rows: Iterable[RateRow], source: str) -> int:
        """Replace the rate deck of ``trunk`` in one transaction; returns the row count.

        Each row is (prefix, description, rate per minute, connection_fee,
        first_increment, later_increment), increments in seconds.
        """
        started = time.monotonic()
        with self._transaction(f"replacing the rate deck of trunk {trunk}") as conn:
            count = decks.replace_rates(conn, trunk, rows, source, self._clock())
        log.info(
            "stored %d rates for trunk %s from %s in %.2f s",
            count,
            trunk,
            source,
            time.monotonic() - started,
        )
        return count

    def list_rates(
        self, trunk: str, prefix: str | None = None, limit: int | None = None
    ) -> list[RateRow]:
        """Return the deck of ``trunk`` ordered by prefix.

        With ``prefix``, only rows whose prefix starts with it; with ``limit``,
        at most that many rows.
        """
        with self._transaction(f"listing rates of trunk {trunk}", write=False) as conn:
            return decks.list_rates(conn, trunk, prefix, limit)

    def rate_trunks(self) -> dict[str, int]:
        """Return the number of rate deck rows of each trunk that has a deck."""
        with self._transaction("counting rates", write=False) as conn:
            return decks.rate_trunks(conn)

    def list_imports(self) -> list[ImportRecord]:
        """Return the source, size and time of the last import of each dataset."""
        with self._transaction("listing imports", write=False) as conn:
            return decks.list_imports(conn)

    # Decisions.

    def add_decisions(self, rows: Sequence[DecisionRecord]) -> None:
        """Append a batch of decisions to the audit trail in one transaction."""
        calls.check_decisions(rows)
        if not rows:
            return
        with self._transaction(f"storing {len(rows)} decisions") as conn:
            calls.add_decisions(conn, rows)

    def prepare_decision(self, record: DecisionRecord) -> tuple:
        """Return ``record`` converted for this store's driver, for add_prepared_decisions.

        It touches no connection, so any thread may call it. Raises TypeError or
        ValueError for a record that cannot be stored.
        """
        return calls.prepare_decision(self._engine.dialect, record)

    def prepare_decision_values(self, values: Mapping[str, Any]) -> tuple:
        """Return a decision's column ``values`` converted as prepare_decision() does."""
        return calls.prepare_decision_values(self._engine.dialect, values)

    def prepare_decision_row(self, row: Sequence[Any]) -> tuple:
        """Return a decision's values in ``calls.DECISION_ROW_COLUMNS`` order converted
        as prepare_decision() does."""
        return calls.prepare_decision_row(self._engine.dialect, row)

    def add_prepared_decisions(self, rows: Sequence[tuple]) -> None:
        """Append decisions returned by prepare_decision in one transaction."""
        if not rows:
            return
        with self._transaction(f"storing {len(rows)} decisions") as conn:
            calls.add_prepared_decisions(conn, rows)

    def recent_decisions(
        self, limit: int = 50, trunk: str | None = None
    ) -> list[DecisionRecord]:
        """Return the latest decisions, newest first, optionally of one trunk only."""
        with self._transaction("reading decisions", write=False) as conn:
            return calls.recent_decisions(conn, limit, trunk)

    def node_decisions_since(
        self, node: str, since: datetime, limit: int
    ) -> list[DecisionRecord]:
        """Return the decisions of ``node`` made at or after ``since``, newest first.

        At most ``limit`` are returned.
        """
        with self._transaction(f"reading the decisions of node {node}", write=False) as conn:
            return calls.node_decisions_since(conn, node, since, limit)

    # Spend windows.

    def get_spend(self, trunk: str, window: str, key: str) -> Decimal:
        """Return the amount spent on ``trunk`` in one window, 0 when nothing is recorded."""
        return self.spend_for(trunk, {window: key})[window]

    def add_spend(
        self, trunk: str, window: str, key: str, amount: Decimal, at: datetime
    ) -> Decimal:
        """Add ``amount`` to the spend of one window atomically; returns the new total.

        A negative amount corrects an earlier addition.
        """
        with self._transaction(f"adding spend to trunk {trunk}") as conn:
            return spend.add_spend(conn, trunk, window, key, amount, at)

    def spend_for(self, trunk: str, keys: Mapping[str, str]) -> dict[str, Decimal]:
        """Return the spend of ``trunk`` in each window of ``keys`` (window -> key)."""
        with self._transaction(f"reading spend of trunk {trunk}", write=False) as conn:
            return spend.spend_for(conn, trunk, keys)

    # Live spend that nodes sharing the store show each other.

    def replace_live_spend(
        self, node: str, rows: Sequence[live_spend.LiveSpendRow], at: datetime
    ) -> set[datetime]:
        """Replace the live spend rows of ``node`` with ``rows``, updated at ``at``.

        An empty ``rows`` deletes them, as when the node's calls have ended.
        Returns the update times of the rows replaced, in UTC.
        """
        live_spend.check_live_spend(node, rows, at)
        with self._transaction(f"storing the live spend of node {node}") as conn:
            return live_spend.replace_live_spend(conn, node, rows, at)

    def delete_live_spend_before(self, before: datetime) -> int:
        """Delete the live spend rows of every node last updated before ``before``.

        Returns how many rows were deleted.
        """
        with self._transaction("deleting the live spend of stopped nodes") as conn:
            return live_spend.delete_live_spend_before(conn, before)

    def others_live_spend(self, node: str | None, since: datetime) -> live_spend.LiveShares:
        """Return the live and held spend of the nodes other than ``node`` per
        (trunk, window, key), and their calls per trunk, from their rows updated
        at or after ``since``. With ``node`` None, every node's rows count."""
        with self._transaction("reading the live spend of other nodes",
                               write=False) as conn:
            return live_spend.others_live_spend(conn, node, since)

    # Calls.

    def save_call(self, call: CallRecord) -> None:
        """Insert or update a call by the uniqueid of its trunk leg.

        An update keeps the stored ``id`` and ``created_at``. An ended call is
        never moved back to ringing or up: such an update is logged and skipped.
        End a charged call with ``finish_call`` instead, because ``finish_call``
        does not charge a call that is already stored as ended.
        """
        if not isinstance(call, CallRecord):
            raise TypeError(f"{call!r} is not a CallRecord")
        with self._transaction(f"saving call {call.uniqueid}") as conn:
            calls.save_call(conn, call)

    def finish_call(
        self,
        call: CallRecord,
        charges: Mapping[tuple[str, str], Decimal],
        at: datetime,
    ) -> bool:
        """Store an ended call and add its charges to its trunk's spend atomically.

        ``charges`` maps (window, key), e.g. ("day", "2024-06-14"), to what the
        call cost in that window, and zero amounts are skipped. Returns False
        and changes nothing when the call has already ended in the store, so a
        call finished twice is charged once.
        """
        calls.check_finish(call, charges, at)
        with self._transaction(f"finishing call {call.uniqueid}") as conn:
            finished = calls.finish_call(conn, call, charges, at)

        if not finished:
            log.info(
                "call %s on trunk %s had already ended; not charging it again",
                call.uniqueid,
                call.trunk,
            )
        return finished

    def live_calls(self) -> list[CallRecord]:
        """Return the calls that have not ended, oldest first."""
        with self._transaction("reading live calls", write=False) as conn:
            return calls.live_calls(conn)

    def ended_calls(self, uniqueids: Sequence[str]) -> set[str]:
        """Return those of the trunk legs ``uniqueids`` whose calls are stored as ended."""
        with self._transaction("reading ended calls", write=False) as conn:
            return calls.ended_calls(conn, uniqueids)

    def recent_calls(self, limit: int = 50) -> list[CallRecord]:
        """Return the latest calls, newest first."""
        with self._transaction("reading calls", write=False) as conn:
            return calls.recent_calls(conn, limit)

    # Blocks.

    def add_block(
        self,
        key_type: str,
        key: str,
        reason: str,
        created_at: datetime,
        expires_at: datetime | None,
        created_by: str,
    ) -> int:
        """Store a block on ``key``; ``expires_at`` None makes it permanent. Returns its id."""
        with self._transaction(f"adding a block on {key_type} {key}") as conn:
            block_id = blocks.add_block(
                conn, key_type, key, reason, created_at, expires_at, created_by
            )
        log.info("blocked %s %s (block %d): %s", key_type, key, block_id, reason)
        return block_id

    def lift_block(self, key_type: str, key: str, at: datetime, reason: str) -> int:
        """Lift every block on ``key`` that is neither lifted nor expired at ``at``.

        Returns the number of blocks lifted.
        """
        with self._transaction(f"lifting blocks on {key_type} {key}") as conn:
            lifted = blocks.lift_block(conn, key_type, key, at, reason)
        log.info("lifted %d blocks on %s %s: %s", lifted, key_type, key, reason)
        return lifted

    def active_blocks(self, now: datetime) -> list[BlockRecord]:
        """Return the blocks not lifted by ``now`` and not expired at ``now``, oldest first."""
        with self._transaction("reading blocks", write=False) as conn:
            return blocks.active_blocks(conn, now)

    # Hang-ups.

    def write_calls(self, operations: Sequence[tuple[str, tuple]]) -> None:
        """Apply call updates in order, in one transaction.

        Each operation is ("save", (call,)), ("finish", (call, charges, at)) or
        ("hangup", (record,)), as save_call, finish_call and add_hangup take
        them. A hundred hang-ups at a limit then cost one commit, not three
        hundred.
        """
        checked = []
        for kind, args in operations:
            if kind == "save":
                if not isinstance(args[0], CallRecord):
                    raise TypeError(f"{args[0]!r} is not a CallRecord")
            elif kind == "finish":
                call, charges, at = args
                args = (call, calls.check_finish(call, charges, at), at)
            elif kind == "hangup":
                hangups.check_hangup(*args)
            else:
                raise ValueError(f"unknown call update {kind!r}")
            checked.append((kind, args))

        with self._transaction(f"storing {len(operations)} call updates") as conn:
            _apply_call_updates(conn, checked)

    def add_hangup(self, record: HangupRecord) -> int:
        """Store a hang-up that callguard requested; returns its id."""
        hangups.check_hangup(record)
        with self._transaction(f"storing the hangup of call {record.uniqueid}") as conn:
            hangup_id = hangups.add_hangup(conn, record)
        return hangup_id

    def recent_hangups(
        self, limit: int = 50, trunk: str | None = None
    ) -> list[HangupRecord]:
        """Return the latest hang-ups, newest first, optionally of one trunk only."""
        with self._transaction("reading hangups", write=False) as conn:
            return hangups.recent_hangups(conn, limit, trunk)

    def accepted_hangups(self, uniqueids: Sequence[str]) -> dict[str, datetime]:
        """Return when Asterisk last accepted a hang-up of each of these trunk legs."""
        with self._transaction("reading accepted hangups", write=False) as conn:
            return hangups.accepted_hangups(conn, uniqueids)


def _apply_call_updates(
    conn: Connection, operations: Sequence[tuple[str, tuple]]
) -> None:
    """Apply checked call updates in order, each run of one kind as a batch.

    A finish carries its charges as ``check_finish`` returns them. They are
    summed per window and added once at the end, and the transaction makes the
    sums and the ended rows one write.

    The id counters of calls and hang-ups are locked first, because nodes
    that share the store write the kinds in different orders.
    """
    lock_id_counters(conn, CALL_UPDATE_COUNTERS)
    totals: dict[tuple[str, str, str], Decimal] = {}
    latest: dict[tuple[str, str, str], datetime] = {}
    for kind, run in itertools.groupby(operations, key=lambda operation: operation[0]):
        arguments = [args for _, args in run]
        if kind == "save":
            calls.save_calls(conn, [args[0] for args in arguments])
        elif kind == "hangup":
            hangups.add_hangups(conn, [args[0] for args in arguments])
        else:
            for call, checked_charges, at in arguments:
                if not calls.end_call(conn, call):
                    log.info(
                        "call %s on trunk %s had already ended; not charging it again",
                        call.uniqueid,
                        call.trunk,
                    )
                    continue
                for window, key, amount in checked_charges:
                    slot = (call.trunk, window, key)
                    totals[slot] = totals.get(slot, Decimal(0)) + amount
                    latest[slot] = max(latest.get(slot, at), at)

    for slot, amount in totals.items():
        spend.add_spend(conn, *slot, amount, latest[slot])
