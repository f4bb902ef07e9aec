"""The book of recent decisions that links trunk legs to their checks."""

from datetime import datetime, timedelta, timezone

from callguard.metering import decisions as decisions_module
from callguard.metering.decisions import DECISION_LIFETIME, DecisionBook

START = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)


def add(book: DecisionBook, n: int, at: datetime) -> None:
    book.add(f"1796397405.{n}", at, caller="01632960001", dialled=f"01632 9{n:05d}",
             trunk="gamma", result="ALLOW", reason="ok", category="geographic",
             e164=f"+4416329{n:05d}", tariff=None)


def kept(book: DecisionBook, count: int) -> list[int]:
    return [n for n in range(count) if book.get(f"1796397405.{n}") is not None]


def small_book(monkeypatch, max_decisions: int, batch: int, filled: int) -> DecisionBook:
    """Return a book bounded at ``max_decisions`` with ``filled`` entries added."""
    monkeypatch.setattr(decisions_module, "MAX_DECISIONS", max_decisions)
    monkeypatch.setattr(decisions_module, "EVICTION_BATCH", batch)
    book = DecisionBook()
    for n in range(filled):
        add(book, n, START)
    return book


def test_full_book_drops_oldest_in_batches(monkeypatch):
    book = small_book(monkeypatch, 64, 4, 67)

    # Up to MAX_DECISIONS + EVICTION_BATCH - 1 entries stay.
    assert len(book) == 67
    assert kept(book, 67) == list(range(67))

    add(book, 67, START)

    # The 68th entry reached the bound: the 4 oldest went at once.
    assert len(book) == 64
    assert kept(book, 68) == list(range(4, 68))

    for n in range(68, 1000):
        add(book, n, START)

    assert 64 <= len(book) < 68
    assert kept(book, 1000) == list(range(1000 - len(book), 1000))


def test_replaced_entry_counts_as_newest(monkeypatch):
    book = small_book(monkeypatch, 8, 1, 8)

    add(book, 0, START)  # the channel checked again
    add(book, 8, START)

    # Nine entries reached the bound: the oldest goes, down to MAX_DECISIONS.
    assert kept(book, 9) == [0, 2, 3, 4, 5, 6, 7, 8]


def test_expired_entries_dropped_in_order():
    book = DecisionBook()
    for n in range(10):
        add(book, n, START + timedelta(minutes=n))

    add(book, 10, START + DECISION_LIFETIME + timedelta(minutes=3))

    # Entries 0 to 2 are older than the lifetime. Entry 3 is exactly that old.
    assert kept(book, 11) == list(range(3, 11))


def test_long_run_keeps_one_lifetime():
    # One decision a second for three hours: each expiry pass drops the
    # entries that have just expired and the book stays one lifetime long.
    book = DecisionBook()
    seconds = int(DECISION_LIFETIME.total_seconds())
    for n in range(3 * seconds):
        add(book, n, START + timedelta(seconds=n))

    newest = 3 * seconds - 1
    assert len(book) == seconds + 1
    assert book.get(f"1796397405.{newest - seconds - 1}") is None
    assert book.get(f"1796397405.{newest - seconds}") is not None  # exactly one lifetime old
