"""FastAGI check throughput and latency: callguard against a bare asyncio server.

Four servers run, each in its own process: the callguard daemon on its
default event loop (uvloop when it is installed), callguard's FastAGI server
with a fixed answer ("fixed") on the same loop, and the bare server twice,
once on asyncio's own loop ("bare") and once on uvloop ("bare-uv"). This
process plays Asterisk over real loopback sockets, on asyncio's own loop.
Closed-loop runs at 1, 10 and 100 concurrent sessions give decisions per second
and p50/p99 latency side by side, and an open-loop run offers 500 checks/s at a
fixed rate, so its p99 includes any queueing delay. Each server's CPU per check
is shown whole and split into its main thread and its other threads, such as
the daemon's store thread.

callguard / bare is the ratio the target is set on. callguard / bare-uv and
fixed / bare-uv compare servers on the same loop, so they show what deciding
and callguard's protocol layer cost apart from the loop's own speed.

The daemon runs with log_level = info and the default log_calls = denied, so
the allowed checks of the load log no line each; --log-calls all gives each
check its line.

Run: .venv/bin/python benchmarks/bench_fastagi.py [--seconds 5] [--only closed,open]
     [--log-calls all]
"""

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from agi_load import closed_loop, open_loop  # noqa: E402
from callguard.eventloop import ASYNCIO, AUTO, UVLOOP, resolve  # noqa: E402

CONFIG = """\
[general]
database = sqlite:///{directory}/callguard.db
fastagi_listen = 127.0.0.1:{port}
control_socket = {directory}/callguard.sock
log_level = info
log_calls = {log_calls}

[ari]
enabled = no

[trunk gamma]
bar = premium, special-084, special-087, directory
daily_limit = 1000000.00
weekly_limit = 1000000.00
max_call_seconds = 7200
rates = {rates}
"""

BARE_SERVER = """
import asyncio, sys
sys.path.insert(0, {here!r})
from bare_fastagi import start_bare_server
async def main():
    server = await start_bare_server("127.0.0.1", {port})
    await server.serve_forever()
{run}
"""

# callguard's own FastAGI server with a handler that sets the bare server's
# variables without deciding. The gap to the bare server is the cost of
# callguard's protocol layer, and the gap to the daemon is the decision's cost.
FIXED_SERVER = """
import asyncio, sys
sys.path.insert(0, {here!r})
from bare_fastagi import DECISION
from callguard.agi.server import FastAGIServer

async def set_fixed_variables(channel):
    await channel.set_variables(DECISION)

async def main():
    server = FastAGIServer({{"check": set_fixed_variables}}, "127.0.0.1", {port})
    await server.start()
    await asyncio.Event().wait()
{run}
"""

# The last line of a server script: run main() on asyncio's own loop or on uvloop.
RUN_ON = {
    ASYNCIO: "asyncio.run(main())",
    UVLOOP: "import uvloop\nuvloop.run(main())",
}

# The ratios printed after each closed-loop run, (server, baseline), where
# both ran.
RATIOS = (("callguard", "bare"), ("callguard", "bare-uv"), ("fixed", "bare"),
          ("fixed", "bare-uv"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def start_server(command: list[str], port: int, log: Path,
                 started: list[subprocess.Popen]) -> subprocess.Popen:
    """Run ``command``, add it to ``started`` and wait until it listens on ``port``.

    Its stderr goes to ``log``, whose end is shown if it never listens.
    """
    with open(log, "w") as stderr:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
    started.append(process)
    try:
        wait_for_port(port)
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; the end of its log:\n{log.read_text()[-2000:]}") from None
    return process


def start_callguard(directory: Path, started: list[subprocess.Popen],
                    log_calls: str) -> tuple[int, int]:
    """Start the daemon with CONFIG; return its pid and port."""
    port = free_port()
    config = directory / "callguard.conf"
    config.write_text(CONFIG.format(directory=directory, port=port, log_calls=log_calls,
                                    rates=HERE.parent / "etc" / "rates-gamma.csv"))
    command = [sys.executable, "-m", "callguard.cli.daemon", "--config", str(config), "run"]
    return start_server(command, port, directory / "callguard.log", started).pid, port


def start_script(script: str, name: str, loop: str, directory: Path,
                 started: list[subprocess.Popen]) -> tuple[int, int]:
    """Start a server from ``script`` (BARE_SERVER or FIXED_SERVER) on ``loop``
    (ASYNCIO or UVLOOP); return its pid and port."""
    port = free_port()
    command = [sys.executable, "-c",
               script.format(here=str(HERE), port=port, run=RUN_ON[loop])]
    return start_server(command, port, directory / f"{name}.log", started).pid, port


def cpu_seconds(stat: Path) -> float:
    """Return the user plus system CPU time in a /proc ``stat`` file."""
    fields = stat.read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(pid: int) -> tuple[float, float]:
    """Return the CPU time of process ``pid``'s main thread and of its other threads.

    Only threads alive at the time count. The servers start theirs before
    the measured runs and keep them: the daemon's store thread, for one.
    """
    tasks = Path(f"/proc/{pid}/task")
    main = cpu_seconds(tasks / str(pid) / "stat")
    others = 0.0
    for task in tasks.iterdir():
        if task.name == str(pid):
            continue
        try:
            others += cpu_seconds(task / "stat")
        except FileNotFoundError:
            pass  # the thread ended after the directory was listed
    return main, others


async def run(server: tuple[int, int], load) -> dict:
    """Run ``load`` against ``server`` (pid, port) and add the server's CPU per check,
    split into its main thread and its other threads."""
    pid, port = server
    main_before, others_before = thread_cpu_seconds(pid)
    client_before = time.process_time()
    figures = await load(port)
    main_after, others_after = thread_cpu_seconds(pid)
    sessions = figures["sessions"]
    figures["main_us"] = (main_after - main_before) / sessions * 1e6
    figures["threads_us"] = (others_after - others_before) / sessions * 1e6
    figures["cpu_us"] = figures["main_us"] + figures["threads_us"]
    figures["client_us"] = (time.process_time() - client_before) / sessions * 1e6
    return figures


# The share of the bare server's throughput that callguard is asked to reach.
TARGET_RATIO = 0.65


def ceiling(callguard: dict, bare: dict) -> str:
    """Say what the CPU figures allow: callguard serves on one thread.

    At ``cpu_us`` of CPU per check one thread manages 1e6 / cpu_us checks a
    second, and the client and the server also share os.cpu_count() cores.
    """
    cpus = os.cpu_count() or 1
    one_thread = 1e6 / callguard["cpu_us"]
    all_cores = cpus * 1e6 / (callguard["cpu_us"] + callguard["client_us"])
    target = TARGET_RATIO * bare["per_second"]
    needed = min(1e6 / target, cpus * 1e6 / target - callguard["client_us"])
    return (f"CPU ceiling: one thread {one_thread:.0f}/s, {cpus} cores shared with the "
            f"client {all_cores:.0f}/s; {TARGET_RATIO:.0%} of bare needs at most "
            f"{needed:.0f} us of server CPU per check")


def row(name: str, figures: dict) -> str:
    return (f"{name:<10} {figures['sessions']:>7} {figures['per_second']:>9.0f} "
            f"{figures['p50_ms']:>8.2f} {figures['p99_ms']:>8.2f} {figures['cpu_us']:>12.0f} "
            f"{figures['main_us']:>9.0f} {figures['threads_us']:>10.0f} "
            f"{figures['client_us']:>12.0f}")


async def measure(servers: dict[str, tuple[int, int]], seconds: float,
                  loads: set[str]) -> None:
    header = (f"{'server':<10} {'checks':>7} {'per s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'server CPU us':>12} {'main us':>9} {'threads us':>10} {'client CPU us':>12}")
    for concurrency in (1, 10, 100) if "closed" in loads else ():
        print(f"\nclosed loop, {concurrency} concurrent sessions, {seconds:.0f} s each")
        print(header)
        results = {}
        for name, (pid, port) in servers.items():
            await closed_loop(port, concurrency, 1.0)  # warm-up
            results[name] = await run(
                (pid, port), lambda p: closed_loop(p, concurrency, seconds)
            )
            print(row(name, results[name]))
        for name, baseline in RATIOS:
            if baseline not in results:
                continue
            ratio = results[name]["per_second"] / results[baseline]["per_second"]
            cost = results[name]["cpu_us"] / results[baseline]["cpu_us"]
            print(f"{name} / {baseline}: throughput {ratio:.0%}, server CPU per check "
                  f"{cost:.1f}x")
        print(ceiling(results["callguard"], results["bare"]))

    if "open" not in loads:
        return
    print(f"\nopen loop, 500 checks/s offered for {seconds:.0f} s "
          "(latency from the scheduled start)")
    print(header)
    for name, (pid, port) in servers.items():
        await closed_loop(port, 10, 1.0)  # warm-up
        figures = await run((pid, port), lambda p: open_loop(p, 500, seconds))
        print(row(name, figures))
        if figures["refused"]:
            print(f"{name}: {figures['refused']} sessions refused (connection closed "
                  "or reset), left out of the latencies")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each run")
    parser.add_argument("--only", default="closed,open",
                        help="comma-separated loads to run: closed, open")
    parser.add_argument("--log-calls", choices=("denied", "all"), default="denied",
                        help="the daemon's [general] log_calls (default: denied)")
    args = parser.parse_args()
    loads = set(args.only.split(","))
    if not loads <= {"closed", "open"}:
        parser.error(f"--only {args.only!r}: give closed, open or both")

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; client and each "
          f"server in separate processes; the daemon's log_calls = {args.log_calls}")
    loop = resolve(AUTO)
    print(f"callguard and fixed run on {loop}, bare on asyncio's own loop, bare-uv on "
          "uvloop; fixed is callguard's FastAGI server setting the bare server's "
          "variables without deciding")
    started: list[subprocess.Popen] = []
    with tempfile.TemporaryDirectory() as name:
        directory = Path(name)
        try:
            servers = {
                "callguard": start_callguard(directory, started, args.log_calls),
                "fixed": start_script(FIXED_SERVER, "fixed", loop, directory, started),
                "bare": start_script(BARE_SERVER, "bare", ASYNCIO, directory, started),
            }
            if loop == UVLOOP:
                servers["bare-uv"] = start_script(BARE_SERVER, "bare-uv", UVLOOP,
                                                  directory, started)
            else:
                print("uvloop is not installed: no bare-uv server")
            asyncio.run(measure(servers, args.seconds, loads))
        finally:
            for process in started:
                process.terminate()
                process.wait(timeout=30)


if __name__ == "__main__":
    main()
