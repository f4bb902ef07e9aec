"""A PBX for tests: the ARI and FastAGI emulators, and callguard on a manual clock."""

import asyncio
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import httpx

from callguard.clock import ManualClock
from callguard.config import load_config
from callguard.daemon.app import Application
from callguard.store import Store
from emulator.ari import DEFAULT_PASSWORD, DEFAULT_USERNAME, AriEmulator
from emulator.fastagi import AGICall, run_fastagi_call
from support import free_port, write_config

PASSWORD = "callguard-test"


def stored_calls(pbx: "Pbx") -> dict:
    """Return the calls in the Pbx's store by uniqueid, the 50 most recent."""
    with Store(pbx.config.general.database) as store:
        store.open()
        return {call.uniqueid: call for call in store.recent_calls(50)}


def stored_hangups(pbx: "Pbx") -> list:
    """Return the 50 most recent hang-ups in the Pbx's store."""
    with Store(pbx.config.general.database) as store:
        store.open()
        return store.recent_hangups(50)


async def eventually(condition, timeout: float = 5.0, what: str = "condition") -> None:
    """Wait, in real time, until ``condition()`` is true: events cross real sockets."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def answered_call(pbx: "Pbx", number: str, endpoint: str = "1001"):
    """Dial ``number`` on ``pbx``, expect ALLOW, answer the call and wait for its leg to be up."""
    call, result = await pbx.call(number, endpoint=endpoint)
    assert result["CALLGUARD_RESULT"] == "ALLOW", result
    await pbx.ari.answer(call)
    await eventually(lambda: call.trunk_id in pbx.legs()
                     and pbx.legs()[call.trunk_id].state == "up", what="answered leg")
    return call


async def originate_local(pbx: "Pbx", exten: str, context: str):
    """Originate Local/<exten>@<context> through POST /ari/channels, as an AMI or
    ARI client may, and return its call: no phone dialled it and no check ran."""
    async with httpx.AsyncClient(base_url=pbx.ari.url, trust_env=False, timeout=5.0,
                                 auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD)) as client:
        reply = await client.post("ari/channels", params={
            "endpoint": f"Local/{exten}@{context}", "extension": "s",
            "context": "default"})
    assert reply.status_code == 200, reply.text
    return pbx.ari.call_for(reply.json()["id"])


class Pbx:
    """An emulated Asterisk with callguard attached, sharing one manual clock."""

    def __init__(self, directory: Path, start: datetime, *, trunks: str, rates: str,
                 general: str = "", ari_enabled: bool = True, database: str | None = None):
        self.directory = directory
        self.ari_enabled = ari_enabled
        self.clock = ManualClock(start)
        self.ari = AriEmulator(now=self.clock.now,
                               channelvars=("CALLGUARD_TRUNK", "BRIDGEPEER"))
        # Chosen once the emulator has its port, which could otherwise be this one.
        self.port: int | None = None
        self.trunks = trunks
        self.rates = rates
        self.general = general
        self.database = database
        self.app: Application | None = None
        # Attributes set on each Application before it starts, e.g. alert timings.
        self.app_settings: dict = {}
        self.results: dict[str, dict[str, str]] = {}
        self._sequence = 0

    async def start(self) -> None:
        await self.ari.start()
        if self.port is None:
            self.port = free_port()
        (self.directory / "ari.secret").write_text(PASSWORD + "\n")
        (self.directory / "ari.secret").chmod(0o600)
        self.path = write_config(
            self.directory, port=self.port, trunks=self.trunks, rates=self.rates,
            general=self.general, database=self.database,
            ari=(f"enabled = {'yes' if self.ari_enabled else 'no'}\n"
                 f"url = {self.ari.url}\nusername = callguard\n"
                 "password_file = ari.secret\nping_timeout = 2s\n"),
        )
        await self.start_callguard()

    async def start_callguard(self) -> None:
        self.config = load_config(self.path)
        self.app = Application(self.config, clock=self.clock)
        for name, value in self.app_settings.items():
            setattr(self.app, name, value)
        await self.app.start()
        if self.config.ari.enabled:
            await eventually(lambda: self.app.ari.connected, what="ARI connection")

    async def stop(self) -> None:
        if self.app is not None:
            await self.app.stop()
        await self.ari.stop()

    async def crash(self) -> None:
        """Leave callguard as kill -9 would: nothing flushed, no call finished."""
        app = self.app
        await app.live_share.stop()
        await app.ari.stop()
        await app.fastagi.stop(grace=0)
        if app.control is not None and app.control._server is not None:
            # A killed process's listening socket closes; its file stays behind.
            app.control._server.close()
        app.guard.close()
        app.worker.shutdown()
        # The kernel drops a killed process's flock on the SQLite lock file.
        app.database_lock.release()
        self.app = None

    async def call(self, number: str, *, endpoint: str = "1001",
                   callerid: str = "01632960010", checked_trunk: str = "gamma",
                   dial_trunk: str = "gamma"):
        """Dial ``number`` through the dialplan snippet: check, then Dial() on ALLOW."""
        check = self.checker(number, endpoint=endpoint, callerid=callerid,
                             trunk=checked_trunk)
        call = await self.ari.dial_out(number, trunk=dial_trunk, caller_endpoint=endpoint,
                                       callerid=callerid, dialstring=f"{number}@{dial_trunk}",
                                       check=check)
        return call, self.results[call.caller_id]

    def checker(self, number: str, *, endpoint: str = "1001",
                callerid: str = "01632960010", trunk: str = "gamma"):
        """Return the ``check`` for ARI's dial_out(): the FastAGI check of ``number``
        on a new channel of ``endpoint``. It stores the variables set in
        ``results`` by uniqueid and returns whether the result is ALLOW."""
        self._sequence += 1
        agi_channel = f"PJSIP/{endpoint}-{self._sequence:08x}"

        async def check(caller_id: str) -> bool:
            outcome = await run_fastagi_call(
                "127.0.0.1", self.port,
                AGICall(extension=number, uniqueid=caller_id, channel=agi_channel,
                        callerid=callerid, arguments=(number, trunk)),
            )
            self.results[caller_id] = outcome.variables
            return outcome.variables.get("CALLGUARD_RESULT") == "ALLOW"

        return check

    def spend(self, window: str, key: str, trunk: str = "gamma") -> Decimal:
        with Store(self.config.general.database) as store:
            store.open()
            return store.get_spend(trunk, window, key)

    def add_spend(self, window: str, key: str, amount: str, at: datetime,
                  trunk: str = "gamma") -> None:
        with Store(self.config.general.database) as store:
            store.open()
            store.add_spend(trunk, window, key, Decimal(amount), at)

    async def restart_with_spend(self, spent, at: datetime) -> None:
        """Stop callguard, store ``spent`` (window, key, amount) rows as calls that
        ended before, and start it again."""
        await self.app.stop()
        for window, key, amount in spent:
            self.add_spend(window, key, amount, at)
        await self.start_callguard()

    def legs(self) -> dict:
        return self.app.guard.legs

    async def settle(self) -> None:
        """Wait until callguard has finished the work that the clock and the events
        so far started: a round of live spend sharing, limit searches, spend
        reads, call writes and hang-ups.

        Moving the clock again before then would let that work see a later time.
        """
        await self.app.live_share.settle()
        guard = self.app.guard
        while True:
            await guard.drain()
            await asyncio.sleep(0)  # runs the searches that reschedule_soon() queued
            if not guard._tasks and not guard._dirty:
                return
