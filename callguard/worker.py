"""One thread that runs every blocking store call, so the event loop never waits on the database."""

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


def yield_gil() -> None:
    """Release the GIL for a moment, so that a thread waiting for it can take it.

    Without such pauses, a long stretch of Python in the store thread keeps
    the GIL until the switch interval (5 ms by default) forces a switch. Every
    FastAGI session that needs the event loop then waits as long. Call it
    after every few tens of microseconds of such work, such as converting a
    batch of decisions. When no thread waits, it costs one system call.
    """
    time.sleep(0)


class StoreWorker:
    """Run store calls one at a time on a dedicated thread, in submission order."""

    def __init__(self, store: Any):
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="callguard-store")

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(fn, *args, **kwargs)
        )

    def shutdown(self) -> None:
        self._executor.shutdown(wait=True)
