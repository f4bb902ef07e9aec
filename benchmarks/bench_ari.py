"""Live metering over ARI: events per second, hang-up delay, overspend and memory.

1. ARI events handled per second. In this process, whole calls (the caller's
   dialplan and check, Dial, the PJSIP trunk leg, answer, bridge, both
   hang-ups, as recorded from Asterisk 22) go into EventTracker.on_event() of
   an Application started as the daemon starts it, with a SQLite store. Then
   the same calls through the real websocket: the daemon in a child process,
   the ARI emulator and a FastAGI check per call in this one.
2. Delay from the moment a trunk's daily budget runs out to the DELETE
   /ari/channels/{id} of each of its calls reaching the emulator, on the system
   clock, with 100 answered calls on each of 10 trunks.
3. Overspend per call after those hang-ups: billed blocks and cost beyond what
   the budget paid for.
4. Resident memory of a fresh process with 10,000 answered, metered calls.

Rates are 0.60 per minute in 1-second blocks, so one block costs 0.01.

Run: .venv/bin/python benchmarks/bench_ari.py [--only events,websocket,hangups,memory]
"""

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from ari_inprocess import (  # noqa: E402
    UNREACHED_LIMIT,
    log_to_file,
    measure_event_path,
    measure_memory,
)
from ari_report import print_hangups  # noqa: E402
from ari_websocket import measure_websocket  # noqa: E402

PARTS = ("events", "websocket", "hangups", "memory")
TRUNKS = 10
# (live calls per trunk, calls fed, daily limits): one row per limit.
EVENT_RUNS = (
    (1, 300, (UNREACHED_LIMIT,)),
    (10, 300, (UNREACHED_LIMIT,)),
    (100, 150, (UNREACHED_LIMIT, Decimal("2000.00"))),
)
EVENT_TARGET = 20_000
MEMORY_TARGET_MIB = 150.0


def print_events(directory: Path) -> None:
    print(
        f"\n1a. ARI events into EventTracker.on_event(), in-process, {TRUNKS} trunks, "
        "SQLite store"
    )
    print(
        f"{'live/trunk':>10} {'limit':>9} {'calls':>6} {'events':>7} "
        f"{'on_event/s':>11} {'+store/s':>9} {'store ms/call':>14} "
        f"{'store CPU ms/call':>18}"
    )
    for live, calls, limits in EVENT_RUNS:
        run_directory = directory / f"events-{live}"
        run_directory.mkdir()
        runs = asyncio.run(
            measure_event_path(
                run_directory,
                trunks=TRUNKS,
                live_per_trunk=live,
                calls=calls,
                limits=limits,
            )
        )
        for figures in runs:
            limit = figures["limit"]
            shown_limit = "unreached" if limit == UNREACHED_LIMIT else f"{limit}"
            print(
                f"{live:>10} {shown_limit:>9} {calls:>6} {figures['events']:>7} "
                f"{figures['on_event_per_s']:>11.0f} "
                f"{figures['with_store_per_s']:>9.0f} "
                f"{figures['store_ms_per_call']:>14.2f} "
                f"{figures['store_cpu_ms_per_call']:>18.2f}"
            )
    print(
        f"target: {EVENT_TARGET:,} events/s. With 100 calls up, a limit of 2000.00 "
        "is reached about 33 minutes ahead, so every reschedule searches for that "
        "moment."
    )


def print_websocket(directory: Path, calls: int, concurrency: int) -> None:
    print(
        f"\n1b. ARI events through the websocket: callguard daemon process, ARI "
        f"emulator and FastAGI checks in this process, {TRUNKS} trunks"
    )
    for event_filter in (False, True):
        run_directory = directory / f"websocket-{'filtered' if event_filter else 'all'}"
        run_directory.mkdir()
        figures = asyncio.run(
            measure_websocket(
                run_directory, trunks=TRUNKS, calls=calls, concurrency=concurrency,
                event_filter=event_filter,
            )
        )
        print(
            f"{'with' if event_filter else 'without'} ARI's event filter: "
            f"{figures['calls']} calls, {figures['concurrency']} at a time: "
            f"{figures['events']} events in {figures['elapsed_s']:.2f} s, "
            f"{figures['per_s']:.0f} events/s, {figures['calls_per_s']:.0f} calls/s "
            "until the daemon stored every call"
        )
        print(
            f"  daemon CPU {figures['daemon_cpu_us_per_event']:.0f} us per event (its "
            f"checks and store writes included), busy {figures['daemon_cpu_share']:.0%}; "
            f"emulator process busy {figures['emulator_cpu_share']:.0%}"
        )


def print_memory(calls: int, trunks: int) -> None:
    print(
        f"\n4. resident memory of a fresh process: {calls:,} answered calls on "
        f"{trunks} trunks, in-process, SQLite store"
    )
    child = subprocess.run(
        [sys.executable, __file__, "--measure-memory", str(calls), str(trunks)],
        check=True,
        capture_output=True,
        text=True,
    )
    figures = json.loads(child.stdout)
    grown = figures["after_kib"] - figures["before_kib"]
    print(
        f"VmRSS {figures['at_start_kib'] / 1024:.1f} MiB at start (with the "
        "emulator's modules), "
        f"{figures['before_kib'] / 1024:.1f} MiB with callguard running, "
        f"{figures['after_kib'] / 1024:.1f} MiB with {figures['calls']:,} live calls "
        f"(target < {MEMORY_TARGET_MIB:g} MiB)"
    )
    print(
        f"growth {grown / 1024:.1f} MiB, "
        f"{grown * 1024 / figures['calls']:.0f} bytes per live call; "
        f"{figures['timed_trunks']} of {figures['trunks']} trunks have a deadline; "
        f"built in {figures['build_s']:.1f} s"
    )


def memory_child(calls: int, trunks: int) -> None:
    """Measure memory in this fresh process and print the figures as JSON."""
    with tempfile.TemporaryDirectory(prefix="bench-ari-memory-") as directory:
        log_to_file(Path(directory))
        figures = asyncio.run(
            measure_memory(Path(directory), trunks=trunks, calls=calls)
        )
    print(json.dumps(figures))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"comma-separated parts to run, of {', '.join(PARTS)}",
    )
    parser.add_argument(
        "--websocket-calls",
        type=int,
        default=1000,
        help="calls placed through the websocket in part 1b",
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="call flows at a time in part 1b"
    )
    parser.add_argument(
        "--calls-per-trunk",
        type=int,
        default=100,
        help=f"answered calls on each of the {TRUNKS} trunks in part 2",
    )
    parser.add_argument(
        "--lead",
        type=float,
        default=3.0,
        help="seconds from the reload to the first deadline in part 2",
    )
    parser.add_argument(
        "--stagger-ms",
        type=float,
        default=200.0,
        help="milliseconds between the targets of successive trunks",
    )
    parser.add_argument(
        "--memory-calls", type=int, default=10_000, help="live calls in part 4"
    )
    parser.add_argument(
        "--memory-trunks",
        type=int,
        default=100,
        help="trunks that the live calls of part 4 spread over",
    )
    parser.add_argument(
        "--measure-memory",
        nargs=2,
        type=int,
        metavar=("CALLS", "TRUNKS"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()

    if args.measure_memory:
        memory_child(*args.measure_memory)
        return

    parts = [part.strip() for part in args.only.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(
            f"unknown part {', '.join(unknown)} in --only; use {', '.join(PARTS)}"
        )

    print(
        f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; callguard logs at "
        "info to a file"
    )
    with tempfile.TemporaryDirectory(prefix="bench-ari-") as directory:
        directory = Path(directory)
        log_to_file(directory)
        logging.getLogger("emulator").setLevel(logging.WARNING)
        runs = {
            "events": lambda: print_events(directory),
            "websocket": lambda: print_websocket(
                directory, args.websocket_calls, args.concurrency
            ),
            "hangups": lambda: print_hangups(
                directory, TRUNKS, args.calls_per_trunk, args.lead, args.stagger_ms
            ),
            "memory": lambda: print_memory(args.memory_calls, args.memory_trunks),
        }
        for part in PARTS:
            if part in parts:
                started = time.perf_counter()
                runs[part]()
                print(f"({part}: {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
