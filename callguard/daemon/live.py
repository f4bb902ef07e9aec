"""The daemon's ARI side: the events listener, reconciliation and the live guard."""

import asyncio
import hashlib
import logging
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta

from callguard.ari import AriClient, AriError
from callguard.ari.endpoint import build_endpoint
from callguard.ari.errors import AriHTTPError
from callguard.ari.events import APPLICATION_REPLACED
from callguard.ari.rest import MAX_CONNECTIONS
from callguard.config import Config, ConfigError
from callguard.config.errors import ConfigProblem
from callguard.config.loader import ARI_SECTION
from callguard.config.model import AriConfig
from callguard.daemon.dialplan_globals import compare_dialplan
from callguard.daemon.recorder import NONE
from callguard.metering.decisions import DECISION_LIFETIME
from callguard.metering.guard import LiveGuard
from callguard.metering.tracker import (
    HANDLED_EVENTS,
    EventTracker,
    channel_name,
    leg_from_record,
    read_timestamp,
)
from callguard.store import DecisionRecord, StoreError
from callguard.text import plural
from callguard.windows import window_keys

log = logging.getLogger(__name__)

# Attempts to set the event filter while Asterisk has not registered the application.
FILTER_ATTEMPTS = 3
FILTER_RETRY_SECONDS = 0.2
# Asterisk's message when the application is not (yet) registered.
MESSAGE_NO_APPLICATION = "Application not found"

# DELETE requests sent to Asterisk at once, one per connection. The rest wait
# their turn here, where no request timeout runs yet.
MAX_HANGUPS_IN_FLIGHT = MAX_CONNECTIONS

# The maximum number of decisions read back from the store at start, newest
# first. Reading and rating one took 50 to 80 us on a 2-core virtual machine
# when every decision was for another number, so the read adds up to about a
# second to a start. The newest 10,000 cover the whole DECISION_LIFETIME up to
# an average of 2.7 checks a second, and the last 100 s at 100 a second.
# NOTE: at 500 checks a second they reach back only 20 s. That is enough for a
# restart but not for a long ring before a Dial().
MAX_RESTORED_DECISIONS = 10_000

# A password that passes the ARI client's checks, to check the other settings alone.
PLACEHOLDER_PASSWORD = "placeholder"


@dataclass(frozen=True)
class AriSettings:
    """The ``[ari]`` section with the password read from its ``password_file``.

    Equal settings open the same connection. repr() leaves out the password,
    so the object is safe to log.
    """

    ari: AriConfig
    password: str | None = field(repr=False)
    # SHA-256 of the ca_file contents, so that a CA bundle replaced under the
    # same name is a change too.
    ca_digest: str = ""

    def changed_keys(self, other: "AriSettings") -> list[str]:
        """Return the names of the ``[ari]`` keys, and ``password``, that differ.

        ``ca_file`` is among them when the file's contents changed.
        """
        changed = [item.name for item in fields(AriConfig) if item.compare
                   and getattr(self.ari, item.name) != getattr(other.ari, item.name)]
        if self.ca_digest != other.ca_digest and "ca_file" not in changed:
            changed.append("ca_file")
        if self.password != other.password:
            changed.append("password")
        return changed


def read_ari_settings(config: Config) -> AriSettings | None:
    """Return the ``[ari]`` settings of ``config`` with the password read from its file.

    Returns None when ARI is disabled. Raises ``ConfigError`` when
    ``password_file`` cannot be read, is not UTF-8 or is empty, or when the ARI client
    rejects the settings (a control character in the password, a ``ca_file``
    that is not a PEM bundle or is set with an ``http://`` URL).
    """
    ari = config.ari
    if not ari.enabled:
        return None

    try:
        password = ari.password()
    except OSError as exc:
        message = (f"cannot read {ari.password_file} ({exc.strerror}); check that it "
                   "exists and that the callguard user can read it")
        raise _ari_error(config, "password_file", message) from None
    except UnicodeDecodeError as exc:
        message = (f"{ari.password_file} is not UTF-8 text ({exc.reason} at byte "
                   f"{exc.start}); write the password as UTF-8")
        raise _ari_error(config, "password_file", message) from None
    if password is None:
        return AriSettings(ari, password)
    if not password:
        # An empty password starts no listener, so a reload would stop metering.
        message = f"{ari.password_file} is empty; write the ARI password on its first line"
        raise _ari_error(config, "password_file", message)

    # The client's own checks, so that a reload never stops a working
    # connection for settings that cannot start a new one. The loader has
    # checked url, username and app, so a problem with a placeholder password
    # lies in ca_file, and one that only the real password shows lies in the
    # password. The messages name the setting, never the password's text.
    ca_file = str(ari.ca_file) if ari.ca_file else None
    digest = ""
    try:
        build_endpoint(ari.url, ari.username, PLACEHOLDER_PASSWORD, ari.app, ca_file)
        if ari.ca_file:
            digest = hashlib.sha256(ari.ca_file.read_bytes()).hexdigest()
    except (ValueError, OSError) as exc:
        raise _ari_error(config, "ca_file", str(exc)) from None
    try:
        build_endpoint(ari.url, ari.username, password, ari.app, ca_file)
    except ValueError as exc:
        raise _ari_error(config, "password_file", str(exc)) from None
    return AriSettings(ari, password, digest)


def _ari_error(config: Config, key: str, message: str) -> ConfigError:
    """Return the ConfigError for ``key`` of ``[ari]``, at its line in the file."""
    line = config.ari.lines.get(key, 0)
    return ConfigError([ConfigProblem(str(config.path), line, ARI_SECTION, key, message)])


class AriListener:
    """Connects the ARI client to the tracker, and reconciles on every (re)connect."""

    def __init__(self, settings: AriSettings, guard: LiveGuard, tracker: EventTracker, *,
                 shared_store: bool = False):
        ari = settings.ari
        self.client = AriClient(
            ari.url, ari.username, settings.password or "", ari.app,
            ca_file=str(ari.ca_file) if ari.ca_file else None,
            ping_timeout=ari.ping_timeout,
        )
        self.guard = guard
        self.tracker = tracker
        self._task: asyncio.Task | None = None
        self._hangups_in_flight = asyncio.Semaphore(MAX_HANGUPS_IN_FLIGHT)
        self._hangups_unsent = 0
        self._reconciled = False
        # Set by stop(): the connection ends on purpose, not as a failure.
        self._stopping = False
        self._dialplan_check: asyncio.Task | None = None
        # A PostgreSQL store, which the daemons of several PBXs may share.
        self._shared_store = shared_store
        guard.hangup = self._hang_up

    @property
    def connected(self) -> bool:
        """True once a connection is up and reconciled, until it drops.

        The websocket opens before GET /ari/channels and the event filter
        have been done; until then the live calls are not known yet.
        """
        return self._reconciled and self.client.connected

    def start(self) -> None:
        self._task = asyncio.create_task(
            self.client.run(self._on_event, self._on_connect, self._on_disconnect),
            name="ari-events",
        )

    async def stop(self) -> None:
        self._stopping = True
        if self._dialplan_check is not None:
            self._dialplan_check.cancel()
            # The check logs its own errors, so only its cancellation is left.
            await asyncio.gather(self._dialplan_check, return_exceptions=True)
        await self.client.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _hang_up(self, channel_id: str, cause: int) -> bool:
        # A limit can end hundreds of calls at once. Capping the requests in
        # flight keeps the connection pool from timing out the ones that wait.
        self._hangups_unsent += 1
        try:
            async with self._hangups_in_flight:
                return await self.client.hangup(channel_id, reason_code=cause)
        finally:
            self._hangups_unsent -= 1

    async def _on_event(self, event: dict) -> None:
        if self._hangups_unsent:
            # Each hang-up brings a handful of events, often already buffered.
            # Yielding before each one lets the replies and the next DELETEs
            # through first, so the last call of a hundred is not hung up late.
            await asyncio.sleep(0)
        self.tracker.on_event(event)

    async def _on_connect(self) -> None:
        # Events are buffered until this returns, in a bounded buffer. With the
        # filter set first, Asterisk sends only the types the tracker reads
        # while the channel list is fetched, so a busy PBX does not fill the
        # buffer. The events that arrive after the filter still come after
        # the list in the buffer, and the tracker applies them in order.
        await self._set_event_filter()
        channels = await self.client.get_channels()
        await self._skip_stored_ended(channels)
        system_name = await self._read_system_name() if self._shared_store else None
        started_at = await self._read_startup_time()
        self.tracker.reconcile(channels, system_name or "", started_at)
        self._reconciled = True
        log.info("ARI connected; %d channels up, %d trunk legs followed", len(channels),
                 len(self.guard.legs))
        if system_name == "":
            # Without one, Asterisk builds uniqueids from the time and a counter
            # alone, so two PBXs can give their channels the same uniqueid. Calls
            # are stored by the uniqueid of their trunk leg, so two such calls
            # would share one record, and the second to end would not be charged.
            log.warning("Asterisk has no systemname, so its channel uniqueids can equal "
                        "those of another PBX whose callguard shares this PostgreSQL "
                        "store, and a call of one could then go uncharged; where several "
                        "PBXs share the store, set a different systemname in the "
                        "[options] of each one's asterisk.conf")
        self.check_dialplan()

    async def _skip_stored_ended(self, channels: list) -> None:
        """Keep trunk channels that are stored as ended from being metered again.

        Such a channel was charged and stored as ended when ARI went off,
        and a restart since has forgotten it.
        """
        not_followed = [channel["id"] for channel in channels
                        if isinstance(channel, dict) and isinstance(channel.get("id"), str)
                        and channel["id"] not in self.guard.legs
                        and self.guard.trunk_for_channel(channel_name(channel))]
        if not not_followed:
            return
        store = self.guard.worker.store
        try:
            ended = await self.guard.worker.call(store.ended_calls, not_followed)
        except StoreError as exc:
            log.error("failed to read from the store which of %s is stored as ended: %s; "
                      "those still up are metered again from their creation",
                      plural(len(not_followed), "trunk channel"), exc)
            return
        self.guard.skip_stored_ended(ended)

    async def _read_system_name(self) -> str | None:
        """Return Asterisk's systemname ("" when it has none), or None when it cannot be read.

        On a shared store, live calls taken over from the store count as this
        PBX's own only when their uniqueids begin with it.
        """
        try:
            return await self.client.get_system_name()
        except AriError as exc:
            log.warning("could not read Asterisk's systemname over ARI (%s), so live "
                        "calls taken over from the store that this Asterisk does not "
                        "have are ended here, even those of other PBXs", exc)
            return None

    async def _read_startup_time(self) -> datetime | None:
        """Return when the running Asterisk process started, or None when it cannot be read.

        Calls missing from the channel list that began before that moment
        ended with the earlier process, so they are charged up to it.
        """
        try:
            text = await self.client.get_startup_time()
        except AriError as exc:
            log.warning("could not read Asterisk's startup time over ARI (%s), so calls "
                        "that a restart of Asterisk ended are charged up to now", exc)
            return None
        started_at = read_timestamp(text)
        if started_at is None:
            log.warning("invalid Asterisk startup time %r, so calls that a restart of "
                        "Asterisk ended are charged up to now", text[:40])
        return started_at

    def check_dialplan(self) -> None:
        """Compare the dialplan's emergency numbers and outside-line prefix with callguard's.

        Runs in its own task, so that events are not held up by the
        requests. A check still running is replaced. Once stop() has begun,
        nothing is started, so that no check outlives the client.
        """
        if self._stopping:
            return
        if self._dialplan_check is not None:
            self._dialplan_check.cancel()
        self._dialplan_check = asyncio.create_task(self._check_dialplan(),
                                                   name="ari-dialplan-check")

    async def _check_dialplan(self) -> None:
        try:
            await compare_dialplan(self.client.get_global_variable,
                                   self.guard.engine.state.classifier)
        except AriError as exc:
            log.info("could not read the dialplan's globals over ARI (%s), so its "
                     "emergency numbers are not compared with callguard's", exc)
        except Exception:
            log.exception("comparing the dialplan's emergency numbers with callguard's "
                          "failed")

    async def _set_event_filter(self) -> None:
        """Ask Asterisk to send only the event types the tracker reads.

        subscribeAll brings every event of the PBX, and about four in five of
        a call's are of types the tracker ignores. Asterisk registers the
        application just after the websocket handshake, so a filter set at
        once can find no application yet: that case is tried again.
        """
        for attempt in range(1, FILTER_ATTEMPTS + 1):
            try:
                await self.client.set_event_filter(HANDLED_EVENTS | {APPLICATION_REPLACED})
                return
            except AriHTTPError as exc:
                if exc.message != MESSAGE_NO_APPLICATION or attempt == FILTER_ATTEMPTS:
                    failure: AriError = exc
                    break
            except AriError as exc:
                failure = exc
                break
            await asyncio.sleep(FILTER_RETRY_SECONDS)
        log.warning("ARI event filter not set (%s); receiving every event", failure)

    async def _on_disconnect(self) -> None:
        self._reconciled = False
        self.tracker.on_disconnect()
        if not self._stopping:
            log.warning("ARI events lost; calls are not metered until the connection is "
                        "back")


async def restore_live_calls(guard: LiveGuard) -> int:
    """Adopt the calls that the store lists as up, with their original answer times.

    A call whose hang-up Asterisk accepted before the restart gets that time
    back, so that if it is gone once ARI connects, it is charged up to its
    hang-up and not up to that moment.
    """
    store = guard.worker.store
    records = await guard.worker.call(store.live_calls)
    accepted: dict = {}
    if records:
        try:
            accepted = await guard.worker.call(store.accepted_hangups,
                                               [record.uniqueid for record in records])
        except StoreError as exc:
            log.error("failed to read the hang-ups of the live calls in the store: %s; a "
                      "call that callguard hung up before this start and that is gone is "
                      "charged up to the moment ARI shows it gone", exc)
    restored = 0
    for record in records:
        leg = leg_from_record(record, guard)
        if leg is None:
            log.warning("%s %s: live call in the store cannot be restored (trunk unknown or "
                        "no tariff)", record.trunk, record.uniqueid)
            continue
        accepted_at = accepted.get(record.uniqueid)
        if accepted_at is not None and accepted_at >= record.answered_at:
            leg.hangup_accepted_at = accepted_at
        guard.adopt(leg)
        restored += 1
    if restored:
        log.info("restored %d live calls from the store", restored)
    return restored


async def restore_decisions(guard: LiveGuard, node: str) -> int:
    """Put the decisions that ``node`` stored in the last DECISION_LIFETIME back in
    the guard's book, so that trunk legs dialled after a restart link to their checks.

    The first blocks that allowed calls reserved within the last
    reservation_seconds are held again, unless a live call restored from the
    store already charges them. Otherwise calls checked just before the
    restart, still ringing or not yet dialled, would leave their first blocks
    free for other calls. Reconciliation with Asterisk's channel list
    releases the holds of channels that are gone.

    Only ``node``'s own decisions are read, because the uniqueids of two
    Asterisk servers can be equal. A store that fails is logged, and the
    book stays empty. Returns the number of decisions restored.
    """
    store = guard.worker.store
    now = guard.clock.now()
    since = now - DECISION_LIFETIME
    try:
        records = await guard.worker.call(store.node_decisions_since, node, since,
                                          MAX_RESTORED_DECISIONS)
    except (StoreError, ValueError) as exc:
        # ValueError: a row that DecisionRecord rejects, such as one written by hand.
        log.error("failed to read the recent decisions of node %s from the store: %s; "
                  "trunk legs dialled for checks made before this start are judged on "
                  "their own number, without the calling number, and the first blocks "
                  "they reserved are free for other calls", node, exc)
        return 0

    lifetime = guard.engine.state.config.general.reservation_seconds
    reserved_since = now - timedelta(seconds=lifetime)
    charged = {leg.decision_uniqueid for leg in guard.legs.values() if leg.decision_uniqueid}
    restored = 0
    reservations_restored = 0
    # Oldest first, as the book takes them, so that a channel checked twice
    # keeps the later decision and its reservation.
    for record in reversed(records):
        if record.uniqueid == NONE or record.trunk == NONE:
            continue
        _restore_decision(guard, record)
        restored += 1
        if (record.decided_at > reserved_since and record.uniqueid not in charged
                and _restore_reservation(guard, record, lifetime)):
            reservations_restored += 1
    log.info("restored %s of node %s made since %s from the store, and %s",
             plural(restored, "decision"), node, since.isoformat(),
             plural(reservations_restored, "reservation"))
    return restored


def _restore_decision(guard: LiveGuard, record: DecisionRecord) -> None:
    # The row keeps the rate per minute but not the connection fee or the
    # increments, so the tariff comes from the current rate deck and prefix
    # table: a deck changed since the check rates the leg at its new tariff.
    tariff = guard.engine.tariff_for(record.trunk, record.dialled)
    guard.decisions.add(
        record.uniqueid, record.decided_at, caller=record.caller, dialled=record.dialled,
        trunk=record.trunk, result=record.result, reason=record.reason,
        category=record.category or "", e164=record.e164 or "", tariff=tariff,
    )


def _restore_reservation(guard: LiveGuard, record: DecisionRecord, lifetime: int) -> bool:
    """Hold the first block that ``record`` reserved again, and return whether it did.

    The hold counts in the windows of the check's time and expires
    ``lifetime`` seconds after the check. A later decision for the same
    channel replaces it, as in Reservations.add.

    NOTE: the store does not keep a hold's lifetime, so the current
    reservation_seconds sets it. After an increase, a hold that had already
    expired before the restart comes back until the new expiry.
    """
    reservations = guard.reservations
    # A later check of the channel replaced an earlier check's hold. A DENY or
    # an opted-out call reserved nothing, and after a DENY the dialplan hangs
    # up. A trunk removed from the config has nothing to hold.
    reservations.release(record.uniqueid)
    trunk = guard.engine.state.config.trunks.get(record.trunk)
    if not record.reserved or trunk is None:
        return False
    reservations.add(record.trunk, record.uniqueid, record.reserved,
                     window_keys(record.decided_at, trunk.timezone), record.decided_at,
                     lifetime)
    return True


__all__ = ["AriError", "AriListener", "AriSettings", "read_ari_settings",
           "restore_decisions", "restore_live_calls"]
