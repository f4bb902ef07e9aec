"""Garbage-collector pauses in the daemon under FastAGI load.

The daemon runs in its own process with a gc callback that notes every
collection: its generation, how long it paused the process, and how many
unreachable objects it freed. This process offers checks at a fixed rate over
loopback sockets, as bench_fastagi.py does, and prints the collections that
fell inside the measured run. Unreachable objects are reference cycles that
only the collector frees; each one makes the collections come sooner.

With --preload, 100 sessions run checks as fast as they can for that many
seconds first. Their reservations, which never meet a Dial() here, stay
pending for reservation_seconds (120 s), and their decisions stay in the
book that links trunk legs. The measured run then meets the collections of a
daemon holding a few hundred thousand of them.

Run: .venv/bin/python benchmarks/bench_gc.py [--seconds 10] [--rate 500] [--preload 0]
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from agi_load import closed_loop, open_loop  # noqa: E402
from bench_fastagi import CONFIG, free_port, start_server  # noqa: E402

# A script that runs the daemon's own entry point with a gc callback. When the
# daemon exits it writes one JSON line per collection: generation, pause in
# seconds, objects freed, and the CLOCK_MONOTONIC time the collection ended,
# a clock that this process reads too.
DAEMON = """
import atexit, gc, json, runpy, sys, time
collections = []
started = [0.0]

def note(phase, info):
    now = time.monotonic()
    if phase == "start":
        started[0] = now
    else:
        collections.append((info["generation"], now - started[0], info["collected"], now))

def write():
    with open({output!r}, "w") as output:
        for row in collections:
            output.write(json.dumps(row) + "\\n")

gc.callbacks.append(note)
atexit.register(write)
sys.argv = ["callguard", "--config", {config!r}, "run"]
runpy.run_module("callguard.cli.daemon", run_name="__main__", alter_sys=True)
"""


def start_daemon(directory: Path, started: list[subprocess.Popen]) -> tuple[int, Path]:
    """Start the daemon under the gc callback; return its port and the file it writes."""
    port = free_port()
    config = directory / "callguard.conf"
    config.write_text(CONFIG.format(directory=directory, port=port, log_calls="denied",
                                    rates=HERE.parent / "etc" / "rates-gamma.csv"))
    output = directory / "collections.jsonl"
    command = [sys.executable, "-c", DAEMON.format(output=str(output), config=str(config))]
    start_server(command, port, directory / "callguard.log", started)
    return port, output


def report(rows: list[list], begin: float, end: float, checks: int) -> None:
    window = [row for row in rows if begin <= row[3] <= end]
    print(f"{checks} checks in {end - begin:.1f} s; {len(window)} collections")
    print(f"{'generation':>10} {'count':>6} {'per 1,000 checks':>17} {'mean ms':>8} "
          f"{'max ms':>8} {'freed':>7}")
    for generation in (0, 1, 2):
        pauses = [row[1] * 1000 for row in window if row[0] == generation]
        freed = sum(row[2] for row in window if row[0] == generation)
        if not pauses:
            print(f"{generation:>10} {0:>6} {0:>17.2f} {'-':>8} {'-':>8} {0:>7}")
            continue
        print(f"{generation:>10} {len(pauses):>6} {len(pauses) / checks * 1000:>17.2f} "
              f"{sum(pauses) / len(pauses):>8.3f} {max(pauses):>8.3f} {freed:>7}")
    freed = sum(row[2] for row in window)
    print(f"unreachable objects freed per 1,000 checks: {freed / checks * 1000:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the run")
    parser.add_argument("--rate", type=float, default=500.0, help="checks offered per second")
    parser.add_argument("--preload", type=float, default=0.0,
                        help="seconds of checks at 100 sessions before the run (default: 0)")
    args = parser.parse_args()

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; open loop at "
          f"{args.rate:.0f} checks/s for {args.seconds:.0f} s")
    started: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        try:
            port, output = start_daemon(directory, started)
            # The warm-up fills the number caches, as on a PBX that has run a while.
            asyncio.run(closed_loop(port, 10, 3.0))
            if args.preload > 0:
                loaded = asyncio.run(closed_loop(port, 100, args.preload))
                print(f"preload: {loaded['sessions']} checks in {args.preload:.0f} s")
            begin = time.monotonic()
            figures = asyncio.run(open_loop(port, args.rate, args.seconds))
            end = time.monotonic()
        finally:
            for process in started:
                process.terminate()
                process.wait(timeout=30)
        rows = [json.loads(line) for line in output.read_text().splitlines()]
    print(f"p50 {figures['p50_ms']:.2f} ms, p99 {figures['p99_ms']:.2f} ms")
    report(rows, begin, end, figures["sessions"])


if __name__ == "__main__":
    main()
