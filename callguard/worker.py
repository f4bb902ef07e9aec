"""One thread that runs every blocking store call, so the event loop never waits on the database."""

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")


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
