"""Benchmark rate deck import, prefix lookup and resident memory.

Generates synthetic decks of 1,000, 100,000 and 1,000,000 rows in a temporary
directory and prints, for each size, the CSV import time and the time of one lookup
(mean, median and p99 in microseconds). Then it loads the largest deck in a fresh child
process and prints the resident memory (VmRSS from /proc/self/status) before and
after the load, so that the generator's own memory does not count.

The decks are synthetic. Prefixes are real country codes followed by random digits,
2 to 10 digits long and weighted towards 6 to 8. There are about 2,600 descriptions
(country and kind of destination), and the rows of one description share a price
except for one row in five.

Run: .venv/bin/python benchmarks/bench_rate_deck.py [--sizes 1000,100000] [--lookups N]
"""

import argparse
import csv
import gc
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from callguard.rating import RateDeck

DEFAULT_SIZES = (1_000, 100_000, 1_000_000)
DEFAULT_LOOKUPS = 100_000
HEADER = ("prefix", "description", "rate", "connection_fee", "increments")

COUNTRY_CODES = (
    "1 7 20 27 30 31 32 33 34 36 39 40 41 43 44 45 46 47 48 49 51 52 53 54 55 56 57 "
    "58 60 61 62 63 64 65 66 81 82 84 86 90 91 92 93 94 95 98 212 213 216 218 220 "
    "221 233 234 237 243 247 249 251 252 254 255 256 260 263 351 352 353 354 355 356 "
    "357 358 359 370 371 372 373 374 375 380 381 385 386 387 420 421 852 853 855 856 "
    "880 881 882 883 886 960 961 962 963 964 965 966 967 968 970 971 972 973 974 975 "
    "976 977 992 993 994 995 996 998"
).split()
DESTINATION_KINDS = (
    "fixed",
    "mobile",
    "premium rate",
    "shared cost",
    "personal numbering",
    "pager",
    "satellite",
    "special services",
) + tuple(f"mobile operator {n}" for n in range(1, 13))
PREFIX_LENGTH_WEIGHTS = {2: 1, 3: 2, 4: 4, 5: 10, 6: 20, 7: 25, 8: 20, 9: 12, 10: 6}
INCREMENTS = ("60/60", "60/60", "60/60", "1/1", "30/6", "6/6", "60/1")


def write_deck(path: Path, rows: int, generator: random.Random) -> list[str]:
    """Write a deck of ``rows`` unique prefixes to ``path`` and return the prefixes."""
    lengths = list(PREFIX_LENGTH_WEIGHTS)
    weights = list(PREFIX_LENGTH_WEIGHTS.values())
    classes = {}
    prefixes: set[str] = set()

    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(HEADER)
        while len(prefixes) < rows:
            country = generator.choice(COUNTRY_CODES)
            length = max(generator.choices(lengths, weights)[0], len(country))
            digits = "".join(generator.choices("0123456789", k=length - len(country)))
            prefix = country + digits
            if prefix in prefixes:
                continue
            prefixes.add(prefix)

            kind = generator.choice(DESTINATION_KINDS)
            if (country, kind) not in classes:
                rate = Decimal(generator.randrange(10, 20_000)) / 10_000
                classes[country, kind] = (rate, generator.choice(INCREMENTS))
            rate, increments = classes[country, kind]

            # One row in five carries its own price, as operator ranges often do.
            if generator.random() < 0.2:
                rate += Decimal(generator.randrange(1, 10)) / 1_000
            fee = "0.05" if generator.random() < 0.05 else ""
            writer.writerow(
                (prefix, f"country {country} {kind}", rate, fee, increments)
            )
    return sorted(prefixes)


def sample_numbers(
    prefixes: list[str], count: int, generator: random.Random
) -> list[str]:
    """Return dialled numbers: four in five extend a deck prefix, the rest random."""
    numbers = []
    for _ in range(count):
        if generator.random() < 0.8:
            start = generator.choice(prefixes)
        else:
            start = generator.choice("123456789")
        missing = max(0, generator.randrange(11, 14) - len(start))
        numbers.append(start + "".join(generator.choices("0123456789", k=missing)))
    return numbers


def time_lookups(deck: RateDeck, numbers: list[str]) -> tuple[float, ...]:
    """Return mean, median and p99 microseconds per lookup, and the match fraction."""
    clock = time.perf_counter_ns
    samples = []
    matched = 0
    for number in numbers:
        started = clock()
        tariff = deck.lookup(number)
        samples.append(clock() - started)
        matched += tariff is not None

    samples.sort()
    mean = statistics.fmean(samples) / 1000
    median = samples[len(samples) // 2] / 1000
    p99 = samples[int(len(samples) * 0.99)] / 1000
    return mean, median, p99, matched / len(numbers)


def timer_overhead_us() -> float:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(100_000):
        started = clock()
        samples.append(clock() - started)
    return statistics.fmean(samples) / 1000


def read_cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "an unknown CPU"


def read_vmrss_kib() -> int:
    """Return this process's resident set size in KiB from /proc/self/status."""
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("VmRSS not found in /proc/self/status")


def measure_memory(path: str) -> None:
    """Load the deck at ``path`` and print its RSS figures as JSON (child process)."""
    gc.collect()
    before = read_vmrss_kib()
    deck = RateDeck.from_csv(path)
    gc.collect()
    after = read_vmrss_kib()
    print(json.dumps({"rows": len(deck), "before_kib": before, "after_kib": after}))


def run(sizes: list[int], lookups: int, seed: int) -> None:
    generator = random.Random(seed)
    print(f"python {sys.version.split()[0]} on {read_cpu_model()}")
    print(f"seed {seed}, {lookups:,} lookups per deck")
    print(f"timer overhead per sample: {timer_overhead_us():.3f} us (included below)")
    print()
    print(
        f"{'rows':>10} {'file MiB':>9} {'import s':>9} {'lookup mean us':>15} "
        f"{'median us':>10} {'p99 us':>7} {'matched':>8}"
    )

    with tempfile.TemporaryDirectory(prefix="bench-rate-deck-") as directory:
        paths = {}
        for size in sizes:
            path = Path(directory) / f"deck-{size}.csv"
            prefixes = write_deck(path, size, generator)
            numbers = sample_numbers(prefixes, lookups, generator)
            paths[size] = path

            started = time.perf_counter()
            deck = RateDeck.from_csv(path)
            import_seconds = time.perf_counter() - started

            mean, median, p99, matched = time_lookups(deck, numbers)
            megabytes = path.stat().st_size / 2**20
            print(
                f"{size:>10,} {megabytes:>9.1f} {import_seconds:>9.2f} "
                f"{mean:>15.2f} {median:>10.2f} {p99:>7.2f} {matched:>8.0%}"
            )
            del deck, prefixes, numbers
            gc.collect()

        largest = max(sizes)
        child = subprocess.run(
            [sys.executable, __file__, "--measure-memory", str(paths[largest])],
            check=True,
            capture_output=True,
            text=True,
        )
        figures = json.loads(child.stdout)

    grown = figures["after_kib"] - figures["before_kib"]
    print()
    print(f"resident memory, fresh process loading the {figures['rows']:,}-row deck:")
    print(
        f"  VmRSS before {figures['before_kib'] / 1024:.1f} MiB, "
        f"after {figures['after_kib'] / 1024:.1f} MiB, "
        f"growth {grown / 1024:.1f} MiB ({grown * 1024 / figures['rows']:.0f} bytes "
        "per row)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        default=",".join(str(size) for size in DEFAULT_SIZES),
        help="comma-separated deck sizes in rows (default: %(default)s)",
    )
    parser.add_argument(
        "--lookups",
        type=int,
        default=DEFAULT_LOOKUPS,
        help="timed lookups per deck (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed")
    parser.add_argument("--measure-memory", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure_memory:
        measure_memory(args.measure_memory)
        return
    sizes = [int(size) for size in args.sizes.split(",")]
    run(sizes, args.lookups, args.seed)


if __name__ == "__main__":
    main()
