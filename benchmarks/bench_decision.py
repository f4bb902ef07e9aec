"""Time one call decision in a tight loop, in one process, over the FastAGI load's numbers.

The engine runs on the configuration of bench_fastagi.py and a temporary
SQLite store. It decides ``--warm`` checks first, so that the day's spend is
read and the caches are warm, then times ``--decisions`` more, each on a
number new to it, and prints the mean in microseconds.

Instruction counts repeat exactly whatever else the machine does. Run it
under ``valgrind --tool=callgrind --callgrind-out-file=/dev/null`` with two
values of ``--decisions`` and divide the difference of the two totals by the
difference of the counts.

Run: .venv/bin/python benchmarks/bench_decision.py [--decisions 50000] [--warm 2000]
"""

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from agi_load import CALLERS, dialled_number  # noqa: E402
from bench_fastagi import CONFIG  # noqa: E402
from callguard.clock import SystemClock  # noqa: E402
from callguard.config import load_config  # noqa: E402
from callguard.daemon.state import build_state  # noqa: E402
from callguard.policy.blocks import BlockList  # noqa: E402
from callguard.policy.decision import CallRequest  # noqa: E402
from callguard.policy.engine import PolicyEngine  # noqa: E402
from callguard.policy.ledger import Ledger  # noqa: E402
from callguard.policy.reservations import Reservations  # noqa: E402
from callguard.store import Store  # noqa: E402
from callguard.worker import StoreWorker  # noqa: E402


def request(seq: int) -> CallRequest:
    return CallRequest(trunk="gamma", dialled=dialled_number(seq),
                       caller=CALLERS[seq % len(CALLERS)], uniqueid=f"1796397405.{seq}",
                       channel=f"PJSIP/1001-{seq:08x}")


async def measure(directory: Path, warm: int, decisions: int) -> float:
    """Return the mean time of a decision in microseconds."""
    path = directory / "callguard.conf"
    path.write_text(CONFIG.format(directory=directory, port=4573, log_calls="denied",
                                  rates=HERE.parent / "etc" / "rates-gamma.csv"))
    config = load_config(path)
    store = Store(config.general.database)
    store.open()
    worker = StoreWorker(store)
    try:
        engine = PolicyEngine(build_state(config).state, Ledger(worker), Reservations(),
                              BlockList(), SystemClock())
        await engine.decide(request(0))  # reads the day's and week's spend
        for seq in range(1, warm):
            engine.decide_now(request(seq))
        timed = [request(seq) for seq in range(warm, warm + decisions)]
        started = time.perf_counter()
        for call in timed:
            engine.decide_now(call)
        return (time.perf_counter() - started) / decisions * 1e6
    finally:
        worker.shutdown()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=50_000,
                        help="decisions timed (default: 50000)")
    parser.add_argument("--warm", type=int, default=2_000,
                        help="decisions made before the timed ones (default: 2000)")
    args = parser.parse_args()
    if args.decisions < 1 or args.warm < 1:
        parser.error("--decisions and --warm must be at least 1")
    with tempfile.TemporaryDirectory() as name:
        mean = asyncio.run(measure(Path(name), args.warm, args.decisions))
    print(f"python {sys.version.split()[0]}; {args.decisions} decisions after {args.warm}: "
          f"mean {mean:.2f} us per decision")


if __name__ == "__main__":
    main()
