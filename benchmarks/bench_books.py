"""Per-call cost of the daemon's in-memory books when they are full.

A busy daemon keeps recent decisions (DecisionBook, for linking trunk legs
to their checks) and counts barred attempts per caller (AttemptCounter, for
offender blocking). Both are bounded and drop their oldest entries, so on a
long run every new entry also drops one. This script fills each book to its
bound and then keeps adding, and prints the mean time per addition over
successive chunks. A cost that grows from chunk to chunk means dropping the
oldest entry gets slower as the run goes on.

Run: .venv/bin/python benchmarks/bench_books.py [--chunks 6] [--chunk-size 20000]
"""

import argparse
import logging
import time
from datetime import datetime, timedelta, timezone

from callguard.metering.decisions import DECISION_LIFETIME, MAX_DECISIONS, DecisionBook
from callguard.policy.offenders import MAX_COUNTED_IDENTITIES, AttemptCounter

START = datetime(2026, 12, 6, 9, 0, tzinfo=timezone.utc)


def add_decision(book: DecisionBook, n: int, at: datetime) -> None:
    book.add(f"1796397405.{n}", at, caller="01632960001", dialled=f"01632 9{n % 100_000:05d}",
             trunk="gamma", result="ALLOW", reason="ok", category="geographic",
             e164=f"+4416329{n % 100_000:05d}", tariff=None)


def timed_chunks(add, first: int, chunks: int, size: int) -> list[float]:
    """Call ``add(n)`` for ``chunks`` chunks of ``size`` numbers from ``first``, and
    return each chunk's mean time per call in microseconds."""
    figures = []
    for chunk in range(chunks):
        start = time.perf_counter()
        for n in range(first + chunk * size, first + (chunk + 1) * size):
            add(n)
        figures.append((time.perf_counter() - start) / size * 1e6)
    return figures


def show(title: str, figures: list[float]) -> None:
    print(f"{title}: " + ", ".join(f"{figure:.2f}" for figure in figures) + " us per addition")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=6, help="chunks timed after the fill")
    parser.add_argument("--chunk-size", type=int, default=20_000,
                        help="additions per timed chunk")
    args = parser.parse_args()
    # The flood below makes the counter warn every 10,000 dropped keys.
    logging.disable(logging.WARNING)

    # Full by count: every decision comes within the same second.
    book = DecisionBook()
    for n in range(MAX_DECISIONS):
        add_decision(book, n, START)
    show(f"decision book full at {MAX_DECISIONS:,} entries",
         timed_chunks(lambda n: add_decision(book, n, START), MAX_DECISIONS, args.chunks,
                      args.chunk_size))

    # Full by age: decisions 40 ms apart, so each expiry pass drops the
    # entries older than DECISION_LIFETIME.
    book = DecisionBook()
    step = timedelta(milliseconds=40)
    live = int(DECISION_LIFETIME / step)
    for n in range(live):
        add_decision(book, n, START + n * step)
    show(f"decision book full by age at {live:,} entries",
         timed_chunks(lambda n: add_decision(book, n, START + n * step), live, args.chunks,
                      args.chunk_size))

    # A flood of barred attempts, each from a key not seen before.
    counter = AttemptCounter()
    window = timedelta(minutes=10)
    for n in range(MAX_COUNTED_IDENTITIES):
        counter.add(("caller", f"+4416329{n:07d}"), START, window, 3)
    show(f"attempt counter full at {MAX_COUNTED_IDENTITIES:,} keys",
         timed_chunks(lambda n: counter.add(("caller", f"+4416329{n:07d}"), START, window, 3),
                      MAX_COUNTED_IDENTITIES, args.chunks, args.chunk_size))


if __name__ == "__main__":
    main()
