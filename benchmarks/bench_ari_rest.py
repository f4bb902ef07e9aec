"""CPU and wall time of one ARI DELETE: callguard's REST client against plain httpx.

A limit can end a hundred calls on a trunk at once, one DELETE each, so the
cost of a request bounds how soon the last call is hung up. Both clients send
DELETE /ari/channels/{id}?reason_code=16 to the ARI emulator in this same
process, 16 at a time over kept-alive connections. The channels do not exist,
so the emulator returns 404 at once. The CPU time includes the emulator's
side, which is the same for both.

Run: .venv/bin/python benchmarks/bench_ari_rest.py [--requests 2000]
"""

import argparse
import asyncio
import base64
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from emulator.ari import AriEmulator  # noqa: E402

from callguard.ari import AriClient  # noqa: E402

USERNAME = "callguard"
PASSWORD = "callguard-test"
IN_FLIGHT = 16


async def timed(name: str, requests: int, send) -> None:
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(index: int) -> None:
        async with slots:
            await send(f"gone-{name}-{index}")

    await asyncio.gather(*(one(index) for index in range(IN_FLIGHT)))  # warm-up
    wall = time.perf_counter()
    cpu = time.process_time()
    await asyncio.gather(*(one(index) for index in range(requests)))
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    print(f"{name:<10} {requests:>8} {wall / requests * 1e6:>12.0f} "
          f"{cpu / requests * 1e6:>12.0f}")


async def measure(requests: int) -> None:
    async with AriEmulator(username=USERNAME, password=PASSWORD) as ari:
        client = AriClient(ari.url, USERNAME, PASSWORD, retries=0)
        token = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
        plain = httpx.AsyncClient(
            base_url=ari.url + "ari/",
            headers={"Authorization": f"Basic {token}"},
            limits=httpx.Limits(max_connections=IN_FLIGHT,
                                max_keepalive_connections=IN_FLIGHT),
            trust_env=False,
        )

        async def callguard_delete(channel_id: str) -> None:
            await client.hangup(channel_id, reason_code=16)

        async def httpx_delete(channel_id: str) -> None:
            reply = await plain.delete(f"channels/{channel_id}",
                                       params={"reason_code": "16"})
            if reply.status_code != 404:
                raise RuntimeError(
                    f"DELETE of {channel_id} returned {reply.status_code}, expected 404"
                )

        print(f"{'client':<10} {'requests':>8} {'wall us/req':>12} {'CPU us/req':>12}")
        try:
            for _ in range(2):
                await timed("callguard", requests, callguard_delete)
                await timed("httpx", requests, httpx_delete)
        finally:
            await client.close()
            await plain.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000,
                        help="number of DELETE requests per client in each round")
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}; {IN_FLIGHT} requests in flight; client "
          "and emulator in one process")
    asyncio.run(measure(args.requests))


if __name__ == "__main__":
    main()
