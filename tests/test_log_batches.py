"""The daemon's log handler: the event loop's INFO lines are written in batches, in order."""

import asyncio
import logging
import socket
import threading

import pytest

from callguard.cli import common
from callguard.cli.common import BatchingStreamHandler
from callguard.daemon.systemd import Notifier


class CountingStream:
    """A text stream that keeps each write() separately."""

    def __init__(self):
        self.writes: list[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)

    def flush(self) -> None:
        pass

    @property
    def lines(self) -> list[str]:
        return "".join(self.writes).splitlines()


# Short, so that the tests of the interval wait little.
INTERVAL = 0.02


def attach(interval: float):
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, interval)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("callguard.test.batches")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    return logger, handler, stream


@pytest.fixture
def logged():
    """A handler with interval 0, which writes when the loop step ends."""
    logger, handler, stream = attach(0)
    yield logger, handler, stream
    logger.removeHandler(handler)
    logger.propagate = True


@pytest.fixture
def batched():
    logger, handler, stream = attach(INTERVAL)
    yield logger, handler, stream
    logger.removeHandler(handler)
    logger.propagate = True


async def written(stream: CountingStream) -> None:
    """Wait, in real time, until ``stream`` has a write."""
    deadline = asyncio.get_running_loop().time() + 2.0
    while not stream.writes and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(INTERVAL / 4)


async def test_interval_lines_written_once(batched):
    logger, _, stream = batched
    logger.info("first step")
    await asyncio.sleep(0)
    logger.info("second step")
    await asyncio.sleep(0)
    assert stream.writes == []

    await written(stream)

    assert stream.lines == ["INFO first step", "INFO second step"]
    assert len(stream.writes) == 1


async def test_interval_warning_writes_pending(batched):
    logger, _, stream = batched
    logger.info("first")
    await asyncio.sleep(0)
    logger.error("second")

    assert stream.lines == ["INFO first", "ERROR second"]
    await asyncio.sleep(INTERVAL * 2)
    assert stream.lines == ["INFO first", "ERROR second"]


@pytest.mark.parametrize("state, message", [
    ("ready", b"READY=1"),
    ("reloading", b"RELOADING=1"),
    ("stopping", b"STOPPING=1"),
])
async def test_notify_writes_waiting_lines(tmp_path, state, message):
    # The daemon's handler is on the root logger, where the notifier looks.
    stream = CountingStream()
    handler = BatchingStreamHandler(stream, interval=60)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger = logging.getLogger("callguard.test.batches.notify")
    logger.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    try:
        logger.info("before the state change")
        waiting = list(stream.writes)
        getattr(Notifier({"NOTIFY_SOCKET": str(path)}), state)()
        sent = receiver.recv(4096)
    finally:
        logging.getLogger().removeHandler(handler)
        receiver.close()

    assert waiting == []
    assert stream.lines == ["INFO before the state change"]
    assert sent.startswith(message)


async def test_step_lines_written_once(logged):
    logger, _, stream = logged
    for number in range(3):
        logger.info("call %d", number)
    assert stream.writes == []

    await asyncio.sleep(0)

    assert stream.lines == ["INFO call 0", "INFO call 1", "INFO call 2"]
    assert len(stream.writes) == 1


async def test_warning_after_pending_lines(logged):
    logger, _, stream = logged
    logger.info("first")
    logger.warning("second")

    assert stream.lines == ["INFO first", "WARNING second"]
    await asyncio.sleep(0)
    assert stream.lines == ["INFO first", "WARNING second"]


async def test_message_built_when_logged(logged):
    logger, _, stream = logged
    numbers = ["01632960001"]
    logger.info("dialled %s", numbers)
    numbers.append("09011234567")

    await asyncio.sleep(0)

    assert stream.lines == ["INFO dialled ['01632960001']"]


async def test_other_thread_written_in_order(logged):
    logger, _, stream = logged
    logger.info("from the loop")
    thread = threading.Thread(target=logger.info, args=("from a thread",))
    thread.start()
    thread.join()

    assert stream.lines == ["INFO from the loop", "INFO from a thread"]


async def test_flush_writes_pending_lines(logged):
    logger, handler, stream = logged
    logger.info("pending")
    handler.flush()

    assert stream.lines == ["INFO pending"]
    await asyncio.sleep(0)
    assert stream.lines == ["INFO pending"]


async def test_pending_lines_bounded(logged, monkeypatch):
    logger, _, stream = logged
    monkeypatch.setattr(common, "MAX_PENDING_RECORDS", 2)
    for number in range(3):
        logger.info("call %d", number)

    assert stream.lines == ["INFO call 0", "INFO call 1", "INFO call 2"]


def test_no_loop_written_at_once(logged):
    logger, _, stream = logged
    logger.info("before the loop")
    assert stream.lines == ["INFO before the loop"]


def test_next_loop_writes_leftovers(logged):
    logger, _, stream = logged

    loop = asyncio.new_event_loop()

    async def log_and_stop():
        logger.info("left by a loop")
        # The loop stops before the step that would write the line.
        loop.stop()

    loop.create_task(log_and_stop())
    loop.run_forever()
    loop.close()
    assert stream.lines == []

    async def log_again():
        logger.info("next loop")
        await asyncio.sleep(0)

    asyncio.run(log_again())
    assert stream.lines == ["INFO left by a loop", "INFO next loop"]

