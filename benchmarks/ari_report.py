"""The report of the hang-up benchmark: delays to the DELETEs and overspend per call."""

import asyncio
import math
import statistics
from collections import Counter
from datetime import timedelta
from pathlib import Path

from agi_load import percentile
from ari_budget import delay_figures, overspend_figures
from ari_daemon import STOP_TIMEOUT
from ari_hangups import measure_hangups
from ari_pbx import BLOCK_PRICE

DELAY_TARGET_MS = 100.0


def shown_ms(value: float, unit: str = " ms") -> str:
    """Format a delay in ms. An infinite delay is a DELETE that never arrived."""
    return "never" if math.isinf(value) else f"{value:.1f}{unit}"


def print_hangups(
    directory: Path, trunks: int, calls_per_trunk: int, lead: float, stagger_ms: float
) -> None:
    """Run parts 2 and 3 of the benchmark and print their figures."""
    total = trunks * calls_per_trunk
    print(
        f"\n2. budget exhausted -> DELETE at the ARI emulator: {total} answered "
        f"calls on {trunks} trunks, system clock, limits set to run out {lead:g} s "
        f"ahead, {stagger_ms:g} ms apart"
    )
    (directory / "hangups").mkdir()
    result = asyncio.run(
        measure_hangups(
            directory / "hangups",
            trunks=trunks,
            calls_per_trunk=calls_per_trunk,
            lead=timedelta(seconds=lead),
            stagger=timedelta(milliseconds=stagger_ms),
        )
    )
    delays = delay_figures(result)
    overspend = overspend_figures(result)
    deadlines = sorted(plan.deadline_us for plan in result["plans"].values())
    print(
        f"the first deadline came {result['margin'].total_seconds():.2f} s after the "
        f"reload was applied; the deadlines spread over "
        f"{(deadlines[-1] - deadlines[0]) / 1000:.0f} ms, because they fall on block "
        "starts"
    )
    values = delays["delays_ms"]
    arrived = sum(1 for value in values if not math.isinf(value))

    print(
        f"DELETEs received for {arrived} of {total} calls within "
        f"{result['hangup_s']:.1f} s; p50 {shown_ms(percentile(values, 0.50))}, "
        f"p99 {shown_ms(percentile(values, 0.99))}, max {shown_ms(max(values))} "
        f"(target p99 < {DELAY_TARGET_MS:g} ms)"
    )
    requested = delays["requested_ms"]
    print(
        "callguard's own hang-up times (requested_at in its store) after the "
        f"deadline: p50 {percentile(requested, 0.50):.1f} ms, "
        f"p99 {percentile(requested, 0.99):.1f} ms, min {min(requested):.1f} ms"
    )
    print(
        "per trunk, first and last DELETE after the deadline (ms): "
        + ", ".join(
            f"{shown_ms(min(trunk), '')}..{shown_ms(max(trunk), '')}"
            for trunk in delays["by_trunk"].values()
        )
    )
    daemon_share, emulator_share = result["cpu_shares"]
    print(
        f"during the hang-ups the daemon was busy {daemon_share:.0%} and the emulator "
        f"process {emulator_share:.0%}; hang-up reasons {', '.join(delays['reasons'])}"
    )
    outcomes = ", ".join(
        f"{count} {name}" for name, count in delays["outcomes"].items()
    )
    print(f"hang-up attempts stored by callguard: {outcomes}")
    if delays["repeated"] or delays["other_channels"]:
        print(
            f"{delays['repeated']} DELETEs repeated, {delays['other_channels']} for "
            "channels other than trunk legs"
        )
    if result["ended_by_callers"]:
        print(
            f"{len(result['ended_by_callers'])} calls were still up "
            "after the wait and were ended by their callers"
        )
    stop = result["stop_s"]
    print(
        "daemon stop on SIGTERM: "
        + (f"killed after {STOP_TIMEOUT:g} s" if stop is None else f"{stop:.1f} s")
    )

    print_overspend(overspend)
    print(
        f"\ndaemon VmRSS: {result['rss_idle_kib'] / 1024:.1f} MiB idle, "
        f"{result['rss_live_kib'] / 1024:.1f} MiB with {total} live calls"
    )


def print_overspend(overspend: dict) -> None:
    blocks = overspend["over_blocks"]
    money = overspend["over_money"]
    print(
        f"\n3. overspend per call after the hang-ups ({overspend['ended']} of "
        f"{overspend['calls']} calls ended; 1 block = {BLOCK_PRICE})"
    )
    print(
        f"max {max(blocks)} blocks ({max(money)}), mean "
        f"{statistics.fmean(blocks):.2f} blocks "
        f"({sum(money) / len(money):.4f}) per call (target: at most 1 block per call)"
    )
    spread = ", ".join(
        f"{count} calls {over:+d}" for over, count in sorted(Counter(blocks).items())
    )
    print(f"blocks over the allowance: {spread}")
    trunk_over = overspend["trunk_over"]
    print(
        f"spend over the daily limit per trunk: max {max(trunk_over.values())}, total "
        f"{sum(trunk_over.values())}"
    )
    if overspend["cost_mismatches"]:
        uniqueid, stored, expected = overspend["cost_mismatches"][0]
        print(
            f"{len(overspend['cost_mismatches'])} stored costs differ from the billed "
            f"blocks, e.g. {uniqueid}: stored {stored}, expected {expected}"
        )
    if overspend["answer_mismatches"]:
        print(
            f"{overspend['answer_mismatches']} stored answer times differ from the "
            "ones the daemon reported while the calls were up"
        )
