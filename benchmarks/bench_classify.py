"""Measure the time that Classifier.classify takes per dialled string.

Run with ``.venv/bin/python benchmarks/bench_classify.py [--iterations N]``. It
prints the mean, median and 99th percentile in microseconds over a mix of
dialled strings, including ones that are rejected.
"""

import argparse
import statistics
import time

from callguard.numbers import (
    Classifier,
    InvalidNumber,
    NumberPlan,
    PrefixTable,
    UnclassifiedNumber,
)

DIALLED_MIX = [
    "01632960000",
    "0118 496 0000",
    "020 7946 0000",
    "07700900123",
    "07624123456",
    "09011234567",
    "08451234567",
    "08712345678",
    "0800 123 4567",
    "03001234567",
    "118118",
    "116123",
    "999",
    "9999",
    "00353851234567",
    "+44 (0) 20 7946 0000",
    "+870773111111",
    "+979123456789",
    "*21*00441514960123",
    "123",
]

NANOSECONDS_PER_MICROSECOND = 1000


def run(iterations: int) -> tuple[list[int], int]:
    """Classify the mix ``iterations`` times.

    Returns the duration of each call in ns and the number of rejected strings.
    """
    classifier = Classifier(
        NumberPlan("GB", outside_line_prefix="9"), PrefixTable.default()
    )
    timings: list[int] = []
    rejected = 0
    clock = time.perf_counter_ns

    for index in range(iterations):
        dialled = DIALLED_MIX[index % len(DIALLED_MIX)]
        start = clock()
        try:
            classifier.classify(dialled)
        except (InvalidNumber, UnclassifiedNumber):
            rejected += 1
        timings.append(clock() - start)

    return timings, rejected


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--iterations",
        type=int,
        default=100_000,
        help="number of classify calls to time (default: 100000)",
    )
    arguments = parser.parse_args()

    run(min(arguments.iterations, 10_000))
    timings, rejected = run(arguments.iterations)
    timings.sort()

    mean = statistics.fmean(timings) / NANOSECONDS_PER_MICROSECOND
    median = timings[len(timings) // 2] / NANOSECONDS_PER_MICROSECOND
    p99 = timings[int(len(timings) * 0.99)] / NANOSECONDS_PER_MICROSECOND
    print(
        f"{len(timings)} classifications of {len(DIALLED_MIX)} dialled strings, "
        f"{rejected} rejected"
    )
    print(f"mean {mean:.1f} us, median {median:.1f} us, p99 {p99:.1f} us")


if __name__ == "__main__":
    main()
