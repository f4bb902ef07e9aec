"""A lean FastAGI load generator playing Asterisk: closed-loop and open-loop runs.

It sends the agi_* block that Asterisk 22 sends, answers GET VARIABLE with a
value and every other command with ``200 result=1``, and times each session
from connect to the server's close.
"""

import asyncio
import statistics
import time

ENVIRONMENT = (
    "agi_network: yes\n"
    "agi_network_script: check\n"
    "agi_request: agi://127.0.0.1:{port}/check\n"
    "agi_channel: PJSIP/1001-{seq:08x}\n"
    "agi_language: en\n"
    "agi_type: PJSIP\n"
    "agi_uniqueid: 1796397405.{seq}\n"
    "agi_version: 22.10.1\n"
    "agi_callerid: {caller}\n"
    "agi_calleridname: unknown\n"
    "agi_callingpres: 0\n"
    "agi_callingani2: 0\n"
    "agi_callington: 0\n"
    "agi_callingtns: 0\n"
    "agi_dnid: unknown\n"
    "agi_rdnis: unknown\n"
    "agi_context: outbound\n"
    "agi_extension: {number}\n"
    "agi_priority: 3\n"
    "agi_enhanced: 0.0\n"
    "agi_accountcode: \n"
    "agi_threadid: 139655639484096\n"
    "agi_arg_1: {number}\n"
    "agi_arg_2: gamma\n"
    "\n"
)

# Destinations spread over many ranges, so that each check parses a number
# it has not seen before, as on a busy PBX; the calling numbers repeat.
NUMBER_FORMS = ("01632 9{:05d}", "020 79{:06d}", "07700 9{:05d}", "+353 85 1{:06d}",
                "0118 49{:05d}", "0044 161 49{:05d}")
CALLERS = tuple(f"016329600{n:02d}" for n in range(50))


def dialled_number(seq: int) -> str:
    form = NUMBER_FORMS[seq % len(NUMBER_FORMS)]
    return form.format((seq * 7919) % 100_000)


async def one_session(port: int, seq: int) -> float:
    """Run one check session and return its latency in seconds."""
    started = time.perf_counter()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    number = dialled_number(seq)
    caller = CALLERS[seq % len(CALLERS)]
    writer.write(
        ENVIRONMENT.format(port=port, seq=seq, number=number, caller=caller).encode()
    )
    while True:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"GET VARIABLE"):
            writer.write(b"200 result=1 (gamma)\n")
        else:
            writer.write(b"200 result=1\n")
    writer.close()
    return time.perf_counter() - started


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def closed_loop(port: int, concurrency: int, duration: float) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + duration
    counter = iter(range(10**9))

    async def worker() -> None:
        while time.perf_counter() < deadline:
            latencies.append(await one_session(port, next(counter)))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return summary(latencies, elapsed)


async def open_loop(port: int, rate: float, duration: float) -> dict:
    """Start sessions at a fixed rate whatever the server does; latency counts from the
    scheduled start, so queueing delay is included."""
    latencies: list[float] = []
    tasks = []
    interval = 1.0 / rate
    started = time.perf_counter()
    count = int(rate * duration)

    refused = 0

    async def timed(scheduled: float, seq: int) -> None:
        nonlocal refused
        try:
            await one_session(port, seq)
        except ConnectionError:
            # A server past its session cap closes new connections at once;
            # Asterisk would then apply the dialplan's fail policy.
            refused += 1
            return
        latencies.append(time.perf_counter() - scheduled)

    for seq in range(count):
        scheduled = started + seq * interval
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(scheduled, seq)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - started
    return summary(latencies, elapsed) | {"refused": refused}


def summary(latencies: list[float], elapsed: float) -> dict:
    return {
        "sessions": len(latencies),
        "per_second": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
    }
