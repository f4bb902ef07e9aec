"""FastAGI sessions served from the transport's callbacks, for handlers with answer_now()."""

import asyncio
import gc
import logging
import sys
import time
import weakref

import pytest

from callguard.agi.connection import AGIConnection
from callguard.agi.protocol import (
    AGIChannel,
    AGIError,
    AGIHangup,
    AGILimits,
    AGIProtocolError,
    AGITimeout,
)
from callguard.agi.server import QuickAnswer
from emulator.fastagi import AGICall, encode_environment, run_fastagi_call
from test_fastagi_server import LIMITS, SERVER_LOG, start_server  # noqa: F401

CALL = AGICall(
    extension="01632960123",
    uniqueid="1796397405.7",
    arguments=("01632960123", "gamma"),
    variables={"CALLGUARD_TRUNK": "gamma"},
)

VARIABLES = [("CALLGUARD_RESULT", "ALLOW"), ("CALLGUARD_REASON", "ok"),
             ("CALLGUARD_MAXSECS", "3600")]


class QuickRoute:
    """A route with answer_now(); ``quick=False`` leaves each session to __call__."""

    def __init__(self, *, quick: bool = True, fail: bool = False,
                 error: AGIError | None = None, announce: bool = False,
                 broken: AGIError | None = None):
        self.quick = quick
        self.fail = fail
        self.error = error
        self.announce = announce
        # An error that leaves the channel unusable before anything is sent.
        self.broken = broken
        self.called: list[str] = []
        self.done: list[AGIError | None] = []
        self.channels: list[AGIChannel] = []
        # ("announce", replies read by then) and ("done", error), in order.
        self.events: list[tuple] = []

    def answer_now(self, channel: AGIChannel) -> QuickAnswer | None:
        self.channels.append(channel)
        if self.fail:
            raise RuntimeError("the handler broke")
        if self.error is not None:
            raise self.error
        if not self.quick:
            return None
        if not self.announce:
            return QuickAnswer(list(VARIABLES), self.done.append)
        if self.broken is not None:
            channel._broken = self.broken

        def done(error: AGIError | None) -> None:
            self.done.append(error)
            self.events.append(("done", error))

        return QuickAnswer(list(VARIABLES), done,
                           lambda: self.events.append(("announce", channel.answered)))

    async def __call__(self, channel: AGIChannel) -> None:
        self.called.append(channel.uniqueid)
        trunk = await channel.get_variable("CALLGUARD_TRUNK")
        await channel.set_variable("CALLGUARD_RESULT", "DENY" if trunk else "ALLOW")


async def stalled_peer(host: str, port: int) -> tuple[asyncio.StreamReader,
                                                      asyncio.StreamWriter, bytes]:
    """Open a session, read the first command and never reply to it."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode_environment(CALL.fastagi_environment(host, port)))
    first = await asyncio.wait_for(reader.readline(), 5)
    return reader, writer, first


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        while await reader.read(4096):
            pass
    return time.monotonic() - started


class ReadCounter:
    """Counter of the bytes that the server's connections receive, so that a
    test can wait until the server has read what the peer sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.count = 0
        self._changed = asyncio.Event()
        received = AGIConnection.data_received

        def counted(connection: AGIConnection, data: bytes) -> None:
            self.count += len(data)
            self._changed.set()
            received(connection, data)

        monkeypatch.setattr(AGIConnection, "data_received", counted)

    def reset(self) -> None:
        self.count = 0

    async def wait_for(self, count: int, timeout: float = 5.0) -> None:
        """Wait until ``count`` bytes have been received since the last reset."""
        async with asyncio.timeout(timeout):
            while self.count < count:
                self._changed.clear()
                await self._changed.wait()


async def test_quick_answer_sets_the_variables_without_the_handler(start_server):
    route = QuickRoute()
    server, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, CALL)

    assert result.variables == dict(VARIABLES)
    assert result.commands == [f'SET VARIABLE {name} "{value}"' for name, value in VARIABLES]
    assert result.closed_by_server
    assert route.called == []
    assert route.done == [None]
    assert route.channels[0].arguments == ["01632960123", "gamma"]
    assert route.channels[0].answered == len(VARIABLES)
    assert server.active_sessions == 0


async def test_quick_answer_announced_before_any_reply(start_server):
    route = QuickRoute(announce=True)
    _, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, CALL)

    assert result.variables == dict(VARIABLES)
    assert route.events == [("announce", 0), ("done", None)]


async def test_quick_answer_announced_before_a_hangup_reaches_done(start_server):
    route = QuickRoute(announce=True)
    _, host, port = await start_server({"check": route})

    await run_fastagi_call(host, port, CALL, hangup_before_command=1,
                           reply_511_after_hangup=True)

    assert [event[0] for event in route.events] == ["announce", "done"]
    assert isinstance(route.events[1][1], AGIHangup)


async def test_quick_answer_announced_before_pipelined_replies(start_server):
    # A peer may send its replies with the agi_* block, before any command.
    route = QuickRoute(announce=True)
    server, host, port = await start_server({"check": route})

    reader, writer = await asyncio.open_connection(host, port)
    writer.write(encode_environment(CALL.fastagi_environment(host, port))
                 + b"200 result=1\n" * len(VARIABLES))
    async with asyncio.timeout(3):
        while await reader.read(4096):
            pass
    writer.close()

    assert route.events == [("announce", 0), ("done", None)]
    assert server.active_sessions == 0


async def test_quick_answer_announced_when_nothing_could_be_sent(start_server):
    route = QuickRoute(announce=True, broken=AGIProtocolError("out of step"))
    server, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, CALL)

    assert result.commands == []
    assert result.closed_by_server
    assert route.events[0] == ("announce", 0)
    assert [event[0] for event in route.events] == ["announce", "done"]
    assert isinstance(route.events[1][1], AGIProtocolError)
    assert server.active_sessions == 0


class RaisingAnnounceRoute:
    """A route whose QuickAnswer's announce() raises, on a usable or broken channel."""

    def __init__(self, *, broken: bool = False):
        self.broken = broken
        self.done: list[AGIError | None] = []

    def answer_now(self, channel: AGIChannel) -> QuickAnswer:
        if self.broken:
            channel._broken = AGIProtocolError("out of step")

        def announce() -> None:
            raise RuntimeError("announce broke")

        return QuickAnswer(list(VARIABLES), self.done.append, announce)

    async def __call__(self, channel: AGIChannel) -> None:
        raise AssertionError("the quick answer serves every session")


@pytest.mark.parametrize("broken", [False, True])
async def test_raising_announce_ends_the_session(start_server, caplog, broken):
    route = RaisingAnnounceRoute(broken=broken)
    server, host, port = await start_server({"check": route})

    with caplog.at_level(logging.ERROR):
        result = await run_fastagi_call(host, port, CALL, timeout=3)

    assert result.closed_by_server
    assert server.active_sessions == 0
    assert route.done == []
    assert any("announce broke" in (r.exc_text or "") for r in caplog.records)


async def test_bad_variable_still_announced(start_server):
    route = QuickRoute(announce=True)
    route_answer = route.answer_now

    def answer_with_bad_name(channel: AGIChannel) -> QuickAnswer:
        answer = route_answer(channel)
        return answer._replace(variables=[("BAD NAME", "1")])

    route.answer_now = answer_with_bad_name
    server, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, CALL)

    assert result.commands == []
    assert result.closed_by_server
    assert route.events == [("announce", 0)]
    assert server.active_sessions == 0


async def test_no_quick_answer_runs_the_handler(start_server):
    route = QuickRoute(quick=False)
    _, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, CALL)

    assert route.called == ["1796397405.7"]
    assert result.commands == ["GET VARIABLE CALLGUARD_TRUNK", 'SET VARIABLE CALLGUARD_RESULT "DENY"']
    assert route.done == []


async def test_answer_now_that_raises_closes_the_session(start_server, caplog):
    caplog.set_level(logging.WARNING, SERVER_LOG)
    route = QuickRoute(fail=True)
    server, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, CALL)

    assert result.commands == []
    assert result.closed_by_server
    assert route.called == []
    failures = [r for r in caplog.records if r.name == SERVER_LOG]
    assert len(failures) == 1
    assert "handler for script 'check' failed" in failures[0].getMessage()
    assert "RuntimeError: the handler broke" in failures[0].exc_text
    assert server.active_sessions == 0


@pytest.mark.parametrize("error, level, text", [
    (AGIHangup("the channel is gone"), logging.INFO,
     "uniqueid 1796397405.7: channel hung up (the channel is gone); closing the session"),
    (AGIProtocolError("out of step"), logging.WARNING,
     "uniqueid 1796397405.7: out of step; closing the session"),
])
async def test_answer_now_agi_error_logged(start_server, caplog, error, level, text):
    # Logged as the same error raised by a handler that runs in a task.
    caplog.set_level(logging.INFO, SERVER_LOG)
    route = QuickRoute(error=error)
    server, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, CALL)

    assert result.commands == []
    assert result.closed_by_server
    assert route.done == []
    (record,) = [r for r in caplog.records if r.name == SERVER_LOG]
    assert record.levelno == level
    assert text in record.getMessage()
    assert record.exc_info is None
    assert server.active_sessions == 0


async def test_hangup_during_a_quick_answer_reaches_done(start_server):
    route = QuickRoute()
    _, host, port = await start_server({"check": route})

    result = await run_fastagi_call(host, port, CALL, hangup_before_command=2,
                                    reply_511_after_hangup=True)

    (error,) = route.done
    assert isinstance(error, AGIHangup)
    assert "511" in str(error)
    assert route.channels[0].hung_up
    assert route.channels[0].answered == 1
    assert result.variables == {"CALLGUARD_RESULT": "ALLOW"}


async def test_quick_answer_reply_timeout(start_server):
    route = QuickRoute()
    server, host, port = await start_server({"check": route})

    reader, writer, first = await stalled_peer(host, port)
    try:
        assert first == b'SET VARIABLE CALLGUARD_RESULT "ALLOW"\n'
        seconds = await closed_within(reader, 3)
    finally:
        writer.close()

    assert LIMITS.reply_timeout - 0.05 < seconds < LIMITS.reply_timeout + 0.5
    (error,) = route.done
    assert isinstance(error, AGITimeout)
    assert str(error) == ("no reply to 'SET VARIABLE CALLGUARD_RESULT \"ALLOW\"' "
                          f"within {LIMITS.reply_timeout} s")
    assert server.active_sessions == 0


async def test_quick_answer_session_timeout(start_server):
    route = QuickRoute()
    _, host, port = await start_server(
        {"check": route}, limits=AGILimits(reply_timeout=5), session_timeout=0.3)

    reader, writer, _ = await stalled_peer(host, port)
    try:
        seconds = await closed_within(reader, 3)
    finally:
        writer.close()

    assert seconds < 0.5
    (error,) = route.done
    assert isinstance(error, AGITimeout)
    assert "before the session's time ran out" in str(error)


async def test_stop_ends_quick_session_after_grace(start_server, caplog):
    caplog.set_level(logging.WARNING, SERVER_LOG)
    route = QuickRoute()
    server, host, port = await start_server({"check": route},
                                            limits=AGILimits(reply_timeout=5))

    reader, writer, _ = await stalled_peer(host, port)
    try:
        assert server.active_sessions == 1
        started = time.monotonic()
        await server.stop(grace=0.2)
        assert 0.15 < time.monotonic() - started < 1
        await closed_within(reader, 2)
    finally:
        writer.close()

    assert server.active_sessions == 0
    messages = [r.getMessage() for r in caplog.records if r.name == SERVER_LOG]
    assert any("cancelling 1 sessions still running after 0.2 s" in m for m in messages)
    assert any("uniqueid 1796397405.7: session cancelled by the server stopping" in m
               for m in messages)
    (error,) = route.done
    assert isinstance(error, AGIError)
    assert str(error) == "the FastAGI server stopped before Asterisk replied"


async def test_stop_waits_for_a_quick_session_that_finishes(start_server):
    route = QuickRoute()
    server, host, port = await start_server({"check": route},
                                            limits=AGILimits(reply_timeout=5))

    reader, writer, first = await stalled_peer(host, port)
    stop = asyncio.create_task(server.stop(grace=5))
    await asyncio.sleep(0.1)
    assert not stop.done()

    # The peer now replies to every command, and the session ends by itself.
    writer.write(b"200 result=1\n")
    for _ in VARIABLES[1:]:
        await asyncio.wait_for(reader.readline(), 2)
        writer.write(b"200 result=1\n")
    await asyncio.wait_for(stop, 2)
    writer.close()

    assert route.done == [None]
    assert server.active_sessions == 0


async def test_stop_ends_unstarted_task_session(start_server, caplog, monkeypatch):
    caplog.set_level(logging.WARNING, SERVER_LOG)
    read = ReadCounter(monkeypatch)
    # The block's last byte reaches the server one event loop turn later in
    # each round. In one round the session's task is created just before
    # stop() cancels it, so that the task never runs a line of its own.
    for steps in range(15):
        caplog.clear()
        server, host, port = await start_server({"check": QuickRoute(quick=False)})
        reader, writer = await asyncio.open_connection(host, port)
        block = encode_environment(CALL.fastagi_environment(host, port))
        read.reset()
        writer.write(block[:-1])
        await read.wait_for(len(block) - 1)

        stop = asyncio.create_task(server.stop(grace=0))
        for _ in range(steps):
            await asyncio.sleep(0)
        writer.write(block[-1:])
        await stop

        assert server.active_sessions == 0, f"{steps} steps"
        try:
            await closed_within(reader, 2)
        except ConnectionResetError:
            pass  # the server aborted the session
        finally:
            writer.close()
        cancelled = [r for r in caplog.records
                     if "session cancelled by the server stopping" in r.getMessage()]
        assert len(cancelled) == 1, f"{steps} steps"


class WeakRoute:
    """A route that keeps only weak references to each session's transport."""

    def __init__(self, quick: bool):
        self.quick = quick
        self.transports: list[weakref.ref] = []

    def answer_now(self, channel: AGIChannel) -> QuickAnswer | None:
        self.transports.append(weakref.ref(channel._connection.transport))
        if not self.quick:
            return None
        return QuickAnswer(list(VARIABLES), lambda error: None)

    async def __call__(self, channel: AGIChannel) -> None:
        await channel.set_variables(VARIABLES)


@pytest.mark.parametrize("quick", [True, False])
async def test_closed_transport_freed_without_collector(start_server, quick):
    # Reference counting alone frees a finished session's transport, so a busy
    # server leaves no garbage for the cyclic collector to walk.
    route = WeakRoute(quick)
    server, host, port = await start_server({"check": route})
    gc.collect()
    gc.disable()
    try:
        result = await run_fastagi_call(host, port, CALL)
        for _ in range(20):
            if server.active_sessions == 0 and route.transports[0]() is None:
                break
            await asyncio.sleep(0)
        freed = route.transports[0]() is None
    finally:
        gc.enable()

    assert result.variables == dict(VARIABLES)
    assert server.active_sessions == 0
    assert freed


@pytest.mark.parametrize("quick", [True, False])
async def test_session_keeps_its_loop(start_server, monkeypatch, quick):
    # In Python 3.11 every asyncio.get_running_loop() makes a getpid() system
    # call, and a check session used to make eight. The connection keeps the
    # loop it runs on instead.
    route = QuickRoute(quick=quick)
    server, host, port = await start_server({"check": route})
    looked_up = []
    get_running_loop = asyncio.get_running_loop

    def counting() -> asyncio.AbstractEventLoop:
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("callguard."):
            looked_up.append(caller)
        return get_running_loop()

    monkeypatch.setattr(asyncio, "get_running_loop", counting)
    result = await run_fastagi_call(host, port, CALL)

    assert result.closed_by_server
    assert route.done == ([None] if quick else [])
    assert looked_up == []
