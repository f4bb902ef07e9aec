"""The daemon: wires config, store, policy and the FastAGI server into one event loop."""

import asyncio
import logging
import socket

from callguard.agi.check import CheckHandler
from callguard.agi.server import FastAGIServer
from callguard.agi.variables import SCRIPT_CHECK
from callguard.clock import Clock, SystemClock
from callguard.config import Config, ConfigError, load_config
from callguard.daemon import status
from callguard.daemon.control import ControlServer
from callguard.daemon.live import AriListener, restore_live_calls
from callguard.daemon.recorder import DecisionRecorder
from callguard.daemon.state import LoadedTables, build_state
from callguard.daemon.tables import copy_tables_to_store
from callguard.metering.guard import LiveGuard
from callguard.metering.tracker import EventTracker
from callguard.policy.blocks import BlockList
from callguard.policy.engine import PolicyEngine
from callguard.policy.ledger import Ledger
from callguard.policy.reservations import Reservations
from callguard.store import Store, StoreError
from callguard.worker import StoreWorker

log = logging.getLogger(__name__)


class Application:
    def __init__(self, config: Config, clock: Clock | None = None):
        self.config = config
        self.clock = clock or SystemClock()
        self.store = Store(config.general.database)
        self.worker = StoreWorker(self.store)
        self.ledger = Ledger(self.worker)
        self.reservations = Reservations()
        self.blocks = BlockList()
        self.recorder = DecisionRecorder(self.worker, self.clock, socket.gethostname())
        self.engine: PolicyEngine | None = None
        self.guard: LiveGuard | None = None
        self.tracker: EventTracker | None = None
        self.ari: AriListener | None = None
        self.fastagi: FastAGIServer | None = None
        self.control: ControlServer | None = None

    async def start(self) -> None:
        general = self.config.general
        await self.worker.call(self.store.open)
        log.info("store open at %s", self.store.url_for_logs)

        tables = await asyncio.to_thread(build_state, self.config)
        await copy_tables_to_store(self.worker, self.config, tables)
        await self._load_blocks()

        self.engine = PolicyEngine(tables.state, self.ledger, self.reservations, self.blocks,
                                   self.clock)
        self.guard = LiveGuard(self.engine, self.ledger, self.reservations, self.clock,
                               self.worker)
        self.guard.configure(self.config)
        self.engine.live_calls = self.guard.live_count
        self.engine.catch_up = self.guard.catch_up
        await restore_live_calls(self.guard)
        self.tracker = EventTracker(self.guard, self.clock)
        if self.config.ari.enabled:
            self.ari = AriListener(self.config, self.guard, self.tracker)
            self.ari.start()
        else:
            log.warning("ARI is disabled: live calls are not metered or hung up; only the "
                        "dialplan's S() limit ends them")
        self.recorder.start()

        handler = CheckHandler(lambda: self.engine, _Sinks(self.recorder, self.guard))
        self.fastagi = FastAGIServer(
            {SCRIPT_CHECK: handler},
            general.fastagi_host,
            general.fastagi_port,
            allowed_clients=general.allowed_clients,
        )
        await self.fastagi.start()
        log.info("FastAGI listening on %s", ", ".join(f"{h}:{p}" for h, p in self.fastagi.sockets))

        self.control = ControlServer(general.control_socket, {
            "status": lambda request: self.status(),
            "calls": lambda request: status.calls(self.guard, bool(request.get("live"))),
        })
        await self.control.start()

    @property
    def ari_connected(self) -> bool | None:
        """True or False when ARI is enabled, None when it is not."""
        return None if self.ari is None else self.ari.connected

    def status(self) -> dict:
        return status.status(self.guard, self.config.general.currency, self.ari_connected)

    async def reload(self) -> bool:
        """Load the config file again; on any error keep the running config and return False."""
        path = self.config.path
        try:
            config = load_config(path)
            tables: LoadedTables = await asyncio.to_thread(build_state, config)
        except (ConfigError, ValueError, OSError) as exc:
            log.error("reload of %s failed, keeping the running config:\n%s", path, exc)
            return False

        if config.general.database != self.config.general.database:
            log.warning("database changed in %s; restart callguard to use it", path)
        if (config.general.fastagi_host, config.general.fastagi_port) != (
            self.config.general.fastagi_host, self.config.general.fastagi_port
        ):
            log.warning("fastagi_listen changed in %s; restart callguard to use it", path)

        try:
            await copy_tables_to_store(self.worker, config, tables)
        except StoreError as exc:
            # The tables in memory are what decisions use; the store's copy
            # catches up on the next reload or restart.
            log.error("reload of %s: failed to copy the prefix table and rate decks "
                      "to the store (%s); using the new config anyway", path, exc)
        self.config = config
        assert self.engine is not None and self.fastagi is not None
        self.engine.state = tables.state
        self.guard.configure(config)
        self.fastagi.set_allowed_clients(config.general.allowed_clients)
        log.info("reloaded %s: %d trunks", path, len(config.trunks))
        return True

    async def stop(self) -> None:
        if self.control is not None:
            await self.control.stop()
        if self.fastagi is not None:
            await self.fastagi.stop()
        if self.ari is not None:
            await self.ari.stop()
        if self.guard is not None:
            self.guard.close()
            await self.guard.drain()
        await self.recorder.stop()
        await self.worker.call(self.store.close)
        self.worker.shutdown()
        log.info("stopped")

    async def _load_blocks(self) -> None:
        now = self.clock.now()
        active = await self.worker.call(self.store.active_blocks, now)
        self.blocks.replace({(b.key_type, b.key): b.expires_at for b in active})


class _Sinks:
    """Hands each decision to the audit recorder and to the live guard."""

    def __init__(self, recorder: DecisionRecorder, guard: LiveGuard):
        self._recorder = recorder
        self._guard = guard

    def record(self, request, decision) -> None:
        self._recorder.record(request, decision)
        self._guard.note_decision(request, decision)
