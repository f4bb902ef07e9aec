"""The daemon: wires config, store, policy and the FastAGI server into one event loop."""

import asyncio
from dataclasses import replace
from datetime import timedelta
import logging
import socket


from callguard.agi.check import CheckHandler
from callguard.agi.server import FastAGIServer
from callguard.agi.variables import SCRIPT_CHECK
from callguard.clock import Clock, SystemClock
from callguard.config import Config, ConfigError, load_config
from callguard.config.addresses import host_port
from callguard.config.advice import config_warnings
from callguard.daemon import status
from callguard.daemon.checking import check_command
from callguard.daemon.control import ControlServer, ControlSocketInUse
from callguard.daemon.live import (
    AriListener,
    AriSettings,
    read_ari_settings,
    restore_decisions,
    restore_live_calls,
)
from callguard.daemon.operator import is_shared_store, operator_commands
from callguard.daemon.exclusive import DatabaseLock
from callguard.daemon.recorder import DecisionRecorder
from callguard.daemon.sharing import LiveSpendShare
from callguard.daemon.state import LoadedTables, build_state
from callguard.daemon.tables import copy_tables_to_store
from callguard.metering.alerts import AlertRaiser
from callguard.metering.guard import LiveGuard
from callguard.notify import AlertDispatcher
from callguard.metering.tracker import EventTracker
from callguard.numbers import PrefixTable
from callguard.numbers.errors import quote
from callguard.policy.blocks import BlockList
from callguard.policy.decision import REASON_DAILY, REASON_WEEKLY
from callguard.windows import DAY, WEEK, window_keys
from callguard.policy.engine import PolicyEngine
from callguard.policy.ledger import Ledger
from callguard.policy.offenders import BLOCKED_BY_CALLGUARD, OffenderGuard
from callguard.policy.reservations import Reservations
from callguard.store import AuditRecord, Store, StoreError
from callguard.store.engine import mask_url
from callguard.store.audit_records import ACTION_RELOAD
from callguard.text import plural
from callguard.worker import StoreWorker

log = logging.getLogger(__name__)

# ARI unreachable this long raises an alert; checked every ARI_WATCH_INTERVAL seconds.
ARI_ALERT_AFTER = timedelta(minutes=5)
ARI_WATCH_INTERVAL = 10.0
# Seconds between reads of the spend totals that other daemons sharing the
# store may have added to. The calls they end reach this daemon sooner, with
# their live spend (see callguard.daemon.sharing), so this read brings in
# what reaches the totals otherwise, such as a reset by callguardctl.
SPEND_REFRESH_SECONDS = 10.0
# Seconds between two INFO lines that count the checks of each trunk.
CHECK_SUMMARY_SECONDS = 60.0
LIMIT_WINDOWS = {REASON_DAILY: DAY, REASON_WEEKLY: WEEK}


class Application:
    def __init__(self, config: Config, clock: Clock | None = None, *,
                 database_override: bool = False):
        """Build the daemon.

        ``database_override`` is True when ``--database`` replaced the config
        file's database, which then stays in effect across reloads.
        """
        self.config = config
        self.clock = clock or SystemClock()
        # The database in use until the daemon stops: a reload does not switch.
        self.database = config.general.database
        self._database_override = self.database if database_override else None
        # The FastAGI address and the control socket that start() opens, in use
        # until the daemon stops. A reload does not move them either.
        self.fastagi_listen = (config.general.fastagi_host, config.general.fastagi_port)
        self.control_socket = config.general.control_socket
        # The loop that callguard run starts the daemon on.
        self.event_loop = config.general.event_loop
        self.store = Store(self.database)
        self.database_lock = DatabaseLock(self.database)
        self.worker = StoreWorker(self.store)
        self.ledger = Ledger(self.worker)
        self.reservations = Reservations(self.clock)
        self.blocks = BlockList()
        # Tasks started by control requests, kept until they end.
        self._background: set[asyncio.Task] = set()
        # The name stored with each decision, by which a restart reads its own back.
        self.node = config.general.node_name or socket.gethostname()
        self.recorder = DecisionRecorder(self.worker, self.clock, self.node)
        self.engine: PolicyEngine | None = None
        self.guard: LiveGuard | None = None
        self.tracker: EventTracker | None = None
        self.ari: AriListener | None = None
        # The [ari] settings in effect, None while ARI is disabled. A listener
        # runs only when they include a password.
        self._ari_settings: AriSettings | None = None
        self.fastagi: FastAGIServer | None = None
        self.control: ControlServer | None = None
        self.dispatcher = AlertDispatcher(config, self.worker, self.clock)
        self.alerts = AlertRaiser(self.dispatcher.submit, config, self.ledger)
        self.offenders = OffenderGuard(self.blocks, self.worker, self.clock, self.alerts)
        self._watch: asyncio.Task | None = None
        self._refresh: asyncio.Task | None = None
        self._summary: asyncio.Task | None = None
        self.check_handler: CheckHandler | None = None
        self.check_summary_interval = CHECK_SUMMARY_SECONDS
        # Runs only on a shared store: one SQLite database serves one daemon.
        self.live_share = LiveSpendShare(self)
        self.ari_alert_after = ARI_ALERT_AFTER
        self.ari_watch_interval = ARI_WATCH_INTERVAL

    async def start(self) -> None:
        general = self.config.general
        self.database_lock.acquire()
        await self.worker.call(self.store.open)
        log.info("store open at %s", self.store.url_for_logs)

        tables = await asyncio.to_thread(build_state, self.config)
        _log_config_warnings(self.config, tables.prefixes)
        await self._copy_tables(self.config, tables, "start")
        await self._load_blocks()

        self.engine = PolicyEngine(tables.state, self.ledger, self.reservations, self.blocks,
                                   self.clock)
        self.guard = LiveGuard(self.engine, self.ledger, self.reservations, self.clock,
                               self.worker)
        self.guard.alerts = self.alerts
        await self.dispatcher.start()
        self.guard.configure(self.config)
        self.engine.live_calls = self.guard.live_count
        self.engine.catch_up = self.guard.catch_up
        await restore_live_calls(self.guard)
        await restore_decisions(self.guard, self.node)
        self.tracker = EventTracker(self.guard, self.clock)
        self._start_ari(_ari_settings_at_start(self.config))
        if self.ari is None:
            self.guard.stop_following(self.clock.now(), "ARI is not connected",
                                      shared_store=self._shared_store)
        self.recorder.start()

        handler = self.check_handler = CheckHandler(lambda: self.engine, _Sinks(self))
        self.fastagi = FastAGIServer(
            {SCRIPT_CHECK: handler},
            *self.fastagi_listen,
            allowed_clients=general.allowed_clients,
        )
        await self.fastagi.start()
        log.info("FastAGI listening on %s",
                 ", ".join(host_port(host, port) for host, port in self.fastagi.sockets))

        self.control = ControlServer(self.control_socket, {
            "status": lambda request: self.status(),
            "calls": lambda request: status.calls(self.guard, bool(request.get("live"))),
            "check": lambda request: check_command(self, request),
            **operator_commands(self),
        })
        try:
            await self.control.start()
        except ControlSocketInUse:
            self.control = None
            raise
        except OSError as exc:
            # Running on is safer than refusing to start, which would stop every
            # check of an outbound call.
            log.error("no control socket at %s: %s. Blocks, unblocks and spend resets "
                      "from callguardctl reach this daemon only through the store, "
                      "within about %g s. callguardctl status, calls and check cannot "
                      "reach it until it is restarted with a usable control_socket in "
                      "[general].", self.control_socket, exc, SPEND_REFRESH_SECONDS)
            self.control = None
        self._watch = asyncio.create_task(self._watch_ari(), name="ari-watch")
        self._refresh = asyncio.create_task(self._refresh_spend_forever(),
                                            name="spend-refresh")
        self._summary = asyncio.create_task(self._summarise_checks_forever(),
                                            name="check-summary")
        if self._shared_store:
            self.live_share.start()

    async def alerts_settle(self, timeout: float = 5.0) -> None:
        """Wait until the alerts raised so far are in the outbox and attempted."""
        await self.guard.drain()
        await self.offenders.drain()
        await self.dispatcher.settle(timeout)

    async def refresh_spend(self) -> None:
        """Read each trunk's current day and week totals from the store again.

        Other daemons that share the store add the calls they end there; the
        limit timers of trunks whose totals changed are set again.
        """
        now = self.clock.now()
        windows = [(name, window, key) for name, trunk in self.config.trunks.items()
                   for window, key in window_keys(now, trunk.timezone).items()]
        try:
            changed = await self.ledger.refresh(windows)
        except StoreError as exc:
            log.error("failed to read the spend totals again from the store: %s; "
                      "trying again in %s s", exc, SPEND_REFRESH_SECONDS)
            return
        for trunk in changed:
            log.info("%s: spend totals changed in the store, as by another node", trunk)
            self.guard.reschedule_soon(trunk)

    def reload_spend(self, trunk: str) -> None:
        """Read a trunk's current day and week totals from the store in the background,
        then set its limit timer again."""
        task = asyncio.get_running_loop().create_task(self._reload_spend(trunk))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reload_spend(self, trunk: str) -> None:
        config = self.config.trunks.get(trunk)
        if config is None:
            return
        try:
            await self.ledger.load(trunk, window_keys(self.clock.now(), config.timezone))
        except StoreError as exc:
            log.error("%s: failed to read the spend totals from the store: %s; the next "
                      "decision reads them", trunk, exc)
            return
        self.guard.reschedule_soon(trunk)

    async def _refresh_spend_forever(self) -> None:
        while True:
            await asyncio.sleep(SPEND_REFRESH_SECONDS)
            await self.refresh_spend()
            await self.refresh_blocks()

    async def _summarise_checks_forever(self) -> None:
        interval = self.check_summary_interval
        period = "in the last minute" if interval == 60 else f"in the last {interval:g} s"
        while True:
            await asyncio.sleep(interval)
            self.check_handler.summarise(period)

    async def _watch_ari(self) -> None:
        """Alert once per outage when ARI stays unreachable past ARI_ALERT_AFTER."""
        alerted_for = None
        while True:
            await asyncio.sleep(self.ari_watch_interval)
            since = self.tracker.blind_since if self.ari is not None else None
            if since is None or self.ari.connected:
                continue
            if since != alerted_for and (self.clock.now() - since) >= self.ari_alert_after:
                ari = self._ari_settings.ari
                log.error("ARI unreachable since %s; live calls are not metered. Check "
                          "that Asterisk runs, that its http.conf serves %s, and that its "
                          "ari.conf has the user %s with the password in %s",
                          since.isoformat(), ari.url, ari.username, ari.password_file)
                self.alerts.ari_unreachable(since, self.clock.now())
                alerted_for = since

    @property
    def _shared_store(self) -> bool:
        """True for a PostgreSQL store, which the daemons of several PBXs may share."""
        return is_shared_store(self.database)

    @property
    def ari_connected(self) -> bool | None:
        """True or False when ARI is enabled, None when it is not."""
        return None if self.ari is None else self.ari.connected

    async def status(self) -> dict:
        """Return the reply to ``callguardctl status``, with each trunk's spend
        today and this week and its live calls.

        Windows that nothing has read from the store yet, such as the week of
        a trunk without a weekly limit after a restart or a new week, are read
        first, so that their earlier spend shows.
        """
        now = self.clock.now()
        for name, trunk in self.config.trunks.items():
            try:
                await self.ledger.load(name, window_keys(now, trunk.timezone))
            except StoreError as exc:
                log.error("%s: failed to read the spend totals from the store for "
                          "status, so it shows only what this daemon counted: %s",
                          name, exc)
        return status.status(self.guard, self.config.general.currency, self.ari_connected)

    def _start_ari(self, settings: AriSettings | None) -> None:
        """Start an ARI listener with ``settings``, or log why live calls go unmetered."""
        self._ari_settings = settings
        if settings is None:
            log.warning("ARI is disabled: live calls are not metered or hung up; only the "
                        "dialplan's S() limit ends them")
        elif not settings.password and settings.ari.password_file is None:
            log.error("ARI is enabled but [ari] password_file is not set: live calls are "
                      "not metered or hung up until it is set and callguard reloads its "
                      "config or restarts")
        elif not settings.password:
            # At start, _ari_settings_at_start has logged why the file was rejected.
            log.error("ARI is enabled but no password was read from [ari] password_file, "
                      "so live calls are not metered or hung up until the file is fixed "
                      "and callguard reloads its config or restarts")
        else:
            self.ari = AriListener(settings, self.guard, self.tracker,
                                   shared_store=self._shared_store)
            self.ari.start()

    async def _apply_ari_settings(self, settings: AriSettings | None) -> None:
        """Reconnect to ARI when the reloaded ``[ari]`` settings differ from the running ones.

        The tracker keeps its legs, and the new connection reconciles them
        with GET /ari/channels as after any reconnect.
        """
        running = self._ari_settings
        if settings == running:
            return

        stopped = self.ari is not None
        if self.ari is not None:
            await self.ari.stop()
            self.ari = None
            # Events from now until the next reconcile are not seen.
            self.tracker.on_disconnect()
        self.guard.hangup = None
        self._start_ari(settings)
        if self.ari is None:
            self.guard.stop_following(self.clock.now(), "ARI is no longer connected",
                                      shared_store=self._shared_store)

        if running is None or settings is None:
            changed = ["enabled"]
        else:
            changed = settings.changed_keys(running)
        if self.ari is None:
            if stopped:
                log.info("ARI connection stopped with the new [ari] settings (changed: %s)",
                         ", ".join(changed))
            return
        # The loader rejects credentials in url, so it can be logged as it is.
        log.info("ARI connection %s with the new [ari] settings (changed: %s): %s as user "
                 "%s, application %s", "restarted" if stopped else "started",
                 ", ".join(changed), settings.ari.url, settings.ari.username,
                 settings.ari.app)

    async def reload(self) -> bool:
        """Load the config file again; on any error keep the running config and return False."""
        path = self.config.path
        try:
            config = load_config(path)
            ari_settings = read_ari_settings(config)
            tables: LoadedTables = await asyncio.to_thread(build_state, config)
        except (ConfigError, ValueError, OSError) as exc:
            log.error("reload of %s failed, keeping the running config:\n%s", path, exc)
            await self._record_reload(f"failed, kept the running config: {exc}")
            return False
        except Exception as exc:
            # A file that breaks the loader in a way it did not foresee must not
            # end reloading: keep the running config and say why.
            log.exception("reload of %s failed unexpectedly, keeping the running config",
                          path)
            # The text is not one of the loader's messages, which mask URLs
            # themselves, so a URL in it is masked here.
            await self._record_reload(f"failed, kept the running config: {mask_url(repr(exc))}")
            return False

        config = self._keep_listeners(self._keep_database(config))

        await self._copy_tables(config, tables, "reload")
        self.config = config
        assert self.engine is not None and self.fastagi is not None
        self.engine.state = tables.state
        self.dispatcher.reconfigure(config)
        self.alerts.reconfigure(config)
        self.guard.configure(config)
        self.fastagi.set_allowed_clients(config.general.allowed_clients)
        await self._apply_ari_settings(ari_settings)
        if self.ari is not None and self.ari.connected:
            # A new connection compares them itself.
            self.ari.check_dialplan()
        log.info("reloaded %s: %s", path, plural(len(config.trunks), "trunk"))
        _log_config_warnings(config, tables.prefixes)
        await self._record_reload(f"loaded, {plural(len(config.trunks), 'trunk')}")
        return True

    async def _copy_tables(self, config: Config, tables: LoadedTables, occasion: str) -> None:
        """Store the prefix table and rate decks of ``config``, logging a failure.

        Decisions use the tables in memory, and only ``prefixes list`` and
        ``rates list`` read the store's copy. So a failure, such as a lock
        timeout while another node imports a large deck, neither stops a
        start nor fails a reload, and the next start or reload stores the
        tables again.
        """
        try:
            await copy_tables_to_store(self.worker, config, tables)
        except StoreError as exc:
            log.error("%s of %s: failed to copy the prefix table and rate decks to the "
                      "store (%s); deciding from the files loaded", occasion, config.path, exc)

    def _keep_database(self, config: Config) -> Config:
        """Return the reloaded ``config`` with the database in use, warning if it differs.

        The database given with ``--database`` stays in effect over the file's.
        """
        configured = self._database_override or config.general.database
        if configured != self.database and mask_url(configured) == mask_url(self.database):
            log.warning("database password changed in %s, but callguard keeps using the "
                        "old one until it restarts", config.path)
        elif configured != self.database:
            log.warning("database changed in %s to %s, but callguard keeps using %s "
                        "until it restarts", config.path, mask_url(configured),
                        mask_url(self.database))
        return replace(config, general=replace(config.general, database=self.database))

    def _keep_listeners(self, config: Config) -> Config:
        """Return the reloaded ``config`` with the FastAGI address and control socket
        in use, warning about each that the file sets otherwise, and about a
        changed node_name or event_loop, which also take effect only at a restart.

        The comparison is with what the daemon runs on, not with the previous
        file, so a file changed back to the running value warns no more.
        """
        general = config.general
        configured = (general.fastagi_host, general.fastagi_port)
        if configured != self.fastagi_listen:
            log.warning("fastagi_listen changed in %s to %s, but callguard keeps listening "
                        "on %s; restart callguard to use it", config.path,
                        host_port(*configured), host_port(*self.fastagi_listen))
        if general.control_socket != self.control_socket:
            log.warning("control_socket changed in %s to %s, but callguard keeps %s; "
                        "restart callguard to use it", config.path, general.control_socket,
                        self.control_socket)
        configured_node = general.node_name or socket.gethostname()
        if configured_node != self.node:
            log.warning("node_name changed in %s to %r, but callguard keeps storing its "
                        "rows as node %r; restart callguard to use it", config.path,
                        configured_node, self.node)
        if general.event_loop != self.event_loop:
            log.warning("event_loop in %s now means %s, but callguard keeps running on "
                        "%s; restart callguard to use it", config.path, general.event_loop,
                        self.event_loop)
        host, port = self.fastagi_listen
        return replace(config, general=replace(general, fastagi_host=host, fastagi_port=port,
                                               control_socket=self.control_socket,
                                               event_loop=self.event_loop))

    async def _record_reload(self, outcome: str) -> None:
        record = AuditRecord(at=self.clock.now(), action=ACTION_RELOAD,
                             actor=BLOCKED_BY_CALLGUARD, subject=str(self.config.path),
                             reason="SIGHUP", detail=outcome)
        try:
            await self.worker.call(self.store.add_audit, record)
        except StoreError as exc:
            log.error("could not record the reload in the audit trail: %s", exc)

    async def stop(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        if self._watch is not None:
            self._watch.cancel()
        await self.live_share.stop()
        # Stop accepting checks first; running sessions finish while the
        # control socket goes away.
        sessions = None
        if self.fastagi is not None:
            sessions = asyncio.ensure_future(self.fastagi.stop())
            await asyncio.sleep(0)
        if self.control is not None:
            await self.control.stop()
        if sessions is not None:
            await sessions
        if self._summary is not None:
            self._summary.cancel()
            self.check_handler.summarise("since the last count")
        if self.ari is not None:
            await self.ari.stop()
        if self.guard is not None:
            self.guard.close()
            await self.guard.flush_writes()
        await self.offenders.drain()
        await self.recorder.stop()
        await self.dispatcher.stop()
        await self.worker.call(self.store.close)
        self.worker.shutdown()
        self.database_lock.release()
        log.info("stopped")

    async def _load_blocks(self) -> None:
        now = self.clock.now()
        active = await self.worker.call(self.store.active_blocks, now)
        self.blocks.replace((b.key_type, b.key, b.expires_at) for b in active)

    async def refresh_blocks(self) -> None:
        """Read the active blocks from the store again.

        Other daemons sharing the store, and callguardctl run without the
        control socket, add and lift blocks there.
        """
        try:
            active = await self.worker.call(self.store.active_blocks, self.clock.now())
        except StoreError as exc:
            log.error("failed to read the blocks again from the store: %s; "
                      "trying again in %s s", exc, SPEND_REFRESH_SECONDS)
            return
        self.blocks.sync((b.key_type, b.key, b.expires_at) for b in active)


def _ari_settings_at_start(config: Config) -> AriSettings | None:
    """Read the ``[ari]`` settings, logging a password file that cannot be read.

    Such a file leaves the settings without a password, so no listener starts.
    """
    try:
        return read_ari_settings(config)
    except ConfigError as exc:
        log.error("%s", exc)
        return AriSettings(config.ari, None)


def _log_config_warnings(config: Config, prefixes: PrefixTable) -> None:
    for warning in config_warnings(config, prefixes):
        log.warning("%s: %s", config.path, warning)


class _Sinks:
    """Hands each decision to the audit recorder, the live guard, the offender
    counts and the alerts.

    Each of them runs even when one before it fails, and the failure is
    logged: a missing audit row must not also unlink the call's trunk legs or
    leave a barred attempt uncounted.
    """

    def __init__(self, app: Application):
        self._app = app
        self._parts = (("audit trail", self._audit), ("live guard", self._guard),
                       ("offender counts", self._offenders), ("alerts", self._alerts))

    def record(self, request, decision) -> None:
        for name, part in self._parts:
            try:
                part(request, decision)
            except Exception:
                log.exception("%s: failed to pass the decision %s %s to the %s",
                              quote(request.uniqueid or "-"), decision.result,
                              decision.reason, name)

    def _audit(self, request, decision) -> None:
        self._app.recorder.record(request, decision)

    def _guard(self, request, decision) -> None:
        self._app.guard.note_decision(request, decision)

    def _offenders(self, request, decision) -> None:
        app = self._app
        app.offenders.note(request, decision, app.engine.state)

    def _alerts(self, request, decision) -> None:
        app = self._app
        window = LIMIT_WINDOWS.get(decision.reason)
        trunk = app.config.trunks.get(request.trunk)
        if window is not None and trunk is not None:
            number = decision.e164 or request.dialled
            app.alerts.limit_reached(
                trunk, window, app.clock.now(), f"refused a call to {number}",
                list(app.guard.meters[trunk.name].legs.values()) + list(app.guard.recent),
            )
