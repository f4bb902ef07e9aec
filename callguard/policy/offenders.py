"""Offender blocking, like fail2ban for logins: repeated barred attempts block a caller.

Each trunk's ``offender_key`` names who is counted: the calling endpoint, the
calling number, the account code or the source address. ``ban_after`` barred
attempts (``barred:*`` or ``invalid-number``) within ``ban_window`` block that
key from every outbound call. The block enters the running ``BlockList`` at
once, so the next check is denied ``blocked:offender``, and is then stored and
alerted. A repeat offender's ban grows by ``ban_time_factor`` for each earlier
automatic block of the same key within ``ban_max_time``, up to ``ban_max_time``.
"""

import asyncio
import ipaddress
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from callguard.clock import Clock
from callguard.config.durations import format_duration
from callguard.config.offenders import (
    KEY_ACCOUNTCODE,
    KEY_CALLER,
    KEY_ENDPOINT,
    KEY_SOURCE,
    OffenderSettings,
)
from callguard.numbers.errors import quote
from callguard.policy.blocks import LOCAL_TECHNOLOGY, BlockList, endpoint_of
from callguard.policy.decision import (
    REASON_BARRED,
    REASON_BARRED_HOURS,
    REASON_INVALID_NUMBER,
    CallRequest,
    Decision,
)
from callguard.repeats import RepeatLimiter, suppressed_note
from callguard.store import StoreError
from callguard.text import plural
from callguard.worker import StoreWorker

if TYPE_CHECKING:
    from callguard.metering.alerts import AlertRaiser
    from callguard.policy.engine import PolicyState

log = logging.getLogger(__name__)

# created_by of the blocks that callguard imposes by itself.
BLOCKED_BY_CALLGUARD = "callguard"
# Keys whose last attempt is older than their window are dropped this often.
SWEEP_INTERVAL = timedelta(minutes=1)

# Hints, per offender key type, for a call that lacks the key its trunk counts.
KEYLESS_HINTS = {
    KEY_ENDPOINT: ("run the check on the phone's own channel (TECH/ENDPOINT-SEQUENCE), "
                   "or choose another offender_key"),
    KEY_CALLER: ("present the trunk's CLI as the check's third argument, or set "
                 "offender_key = endpoint"),
    KEY_ACCOUNTCODE: "set the channel's accountcode, or choose another offender_key",
    KEY_SOURCE: ("pass the caller's address as the check's fourth argument, or set "
                 "CALLGUARD_SOURCE before the check as the sample extensions.conf shows"),
}


def is_offence(decision: Decision) -> bool:
    """Check whether ``decision`` counts as a barred attempt."""
    reason = decision.reason
    # Calls barred out of hours count too: night-time fraud is what they stop.
    return (reason.startswith(REASON_BARRED) or reason.startswith(REASON_BARRED_HOURS)
            or reason == REASON_INVALID_NUMBER)


def normalise_source(text: str) -> str:
    """Return the IP address in a source such as ``192.0.2.10:5060`` or ``[2001:db8::1]:5060``.

    PJSIP's ``remote_addr`` carries the port, which changes between
    registrations, so blocks and counts use the address alone. Text that is no
    address is returned stripped, unchanged otherwise.
    """
    text = text.strip()
    if not text:
        return text
    candidates = [text]
    if text.startswith("["):
        address, _, port = text[1:].partition("]")
        if not port or (port.startswith(":") and port[1:].isdigit()):
            candidates.append(address)
    elif text.count(":") == 1:
        address, _, port = text.partition(":")
        if port.isdigit():
            candidates.append(address)

    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        # A dual-stack socket reports an IPv4 peer as ::ffff:192.0.2.10.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return str(address)
    return text


def offender_identity(key_type: str, request: CallRequest, caller_e164: str) -> str:
    """Return the key of ``request`` for ``key_type``, "" when the call has none."""
    if key_type == KEY_ENDPOINT:
        return endpoint_of(request.channel)
    if key_type == KEY_CALLER:
        return caller_e164
    if key_type == KEY_ACCOUNTCODE:
        return request.accountcode
    if key_type == KEY_SOURCE:
        return request.source
    raise ValueError(f"offender key type {key_type!r} is unknown")


# Keys whose barred attempts are counted at once. Each costs about 1 KB, and
# keys such as caller IDs can be made up by the callers, so the number is
# bounded: past it, the key counted longest ago is dropped.
MAX_COUNTED_IDENTITIES = 100_000
# Dropped keys between two warnings about them.
EVICTION_LOG_EVERY = 10_000


class AttemptCounter:
    """Barred attempts per (key type, key), keeping only those inside the window."""

    def __init__(self) -> None:
        # In the order the keys were first counted. An OrderedDict finds its
        # oldest key at once. A dict skips the slots of the keys dropped
        # before it, so each new key of a flood was slower than the last.
        self._attempts: OrderedDict[tuple[str, str], deque[datetime]] = OrderedDict()
        self._windows: dict[tuple[str, str], timedelta] = {}
        self._swept_at: datetime | None = None
        # Keys dropped to stay within MAX_COUNTED_IDENTITIES.
        self.evicted = 0

    def add(self, identity: tuple[str, str], now: datetime, window: timedelta,
            limit: int) -> int:
        """Count one attempt at ``now``; returns the attempts inside ``window``."""
        self._sweep(now)

        attempts = self._attempts.get(identity)
        if attempts is None and len(self._attempts) >= MAX_COUNTED_IDENTITIES:
            # A flood of distinct keys: the one counted longest ago goes.
            oldest = next(iter(self._attempts))
            self.clear(oldest)
            self.evicted += 1
            if self.evicted == 1 or self.evicted % EVICTION_LOG_EVERY == 0:
                log.warning("barred attempts come from more than %d keys; dropped the "
                            "count of the oldest (%d dropped so far)",
                            MAX_COUNTED_IDENTITIES, self.evicted)
        if attempts is None or attempts.maxlen != limit:
            attempts = deque(attempts or (), maxlen=limit)
            self._attempts[identity] = attempts
        self._windows[identity] = window

        attempts.append(now)
        while attempts and attempts[0] <= now - window:
            attempts.popleft()
        return len(attempts)

    def clear(self, identity: tuple[str, str]) -> None:
        self._attempts.pop(identity, None)
        self._windows.pop(identity, None)

    def _sweep(self, now: datetime) -> None:
        if self._swept_at is not None and now - self._swept_at < SWEEP_INTERVAL:
            return

        self._swept_at = now
        quiet = [
            identity
            for identity, attempts in self._attempts.items()
            if not attempts or attempts[-1] <= now - self._windows[identity]
        ]
        for identity in quiet:
            self.clear(identity)

    def __len__(self) -> int:
        return len(self._attempts)


@dataclass(frozen=True)
class Ban:
    """A block that the counter has decided, before its length is known."""

    key_type: str
    key: str
    trunk: str
    at: datetime
    attempts: int
    settings: OffenderSettings
    last_reason: str
    last_number: str

    @property
    def reason(self) -> str:
        window = format_duration(self.settings.ban_window)
        return (f"{plural(self.attempts, 'barred attempt')} within {window} on trunk "
                f"{self.trunk}, the last {self.last_reason} to {self.last_number}")


class OffenderGuard:
    """Counts every decision's barred attempts and blocks the offenders."""

    def __init__(self, blocks: BlockList, worker: StoreWorker, clock: Clock,
                 alerts: "AlertRaiser | None" = None):
        self.blocks = blocks
        self.worker = worker
        self.clock = clock
        self.alerts = alerts
        self.counter = AttemptCounter()
        self._tasks: set[asyncio.Task] = set()
        self._keyless = RepeatLimiter(clock=clock)

    def note(self, request: CallRequest, decision: Decision, state: "PolicyState") -> None:
        """Count ``decision`` if it is a barred attempt, and block at ``ban_after``.

        The block enters the ``BlockList`` before this returns, so a check that
        follows is denied; storing and alerting it run in the background.
        """
        if not is_offence(decision):
            return
        trunk = state.config.trunks.get(request.trunk)
        if trunk is None:
            return

        settings = trunk.offenders
        caller_e164 = decision.caller_e164 or state.normalise_caller(request.caller) or ""
        key = offender_identity(settings.key_type, request, caller_e164)
        if not key:
            self._warn_keyless(trunk.name, settings.key_type, request)
            return
        if key in settings.ban_ignore:
            return

        now = self.clock.now()
        identity = (settings.key_type, key)
        if self.blocks.blocked([identity], now) is not None:
            return
        window = timedelta(seconds=settings.ban_window)
        attempts = self.counter.add(identity, now, window, settings.ban_after)
        if attempts < settings.ban_after:
            return

        self.counter.clear(identity)
        # Held at the shortest ban until the store returns how many came before.
        self.blocks.add(settings.key_type, key, now + timedelta(seconds=settings.ban_time),
                        now)
        ban = Ban(settings.key_type, key, trunk.name, now, attempts, settings,
                  decision.reason, decision.e164 or request.dialled)
        task = asyncio.get_running_loop().create_task(self._impose(ban))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _warn_keyless(self, trunk: str, key_type: str, request: CallRequest) -> None:
        # Silent, this would leave a trunk without offender blocking.
        suppressed = self._keyless.admit()
        if suppressed is None:
            return
        log.warning("%s %s: barred attempt not counted toward a block: %s; %s%s", trunk,
                    request.uniqueid or "-", _missing_key(key_type, request),
                    KEYLESS_HINTS[key_type], suppressed_note(suppressed))

    def forget(self, key_type: str, key: str) -> None:
        """Drop the attempts counted for a key, e.g. after an operator lifts its block."""
        self.counter.clear((key_type, key))

    async def drain(self) -> None:
        """Wait until the blocks decided so far are stored and alerted."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _impose(self, ban: Ban) -> None:
        settings = ban.settings
        store = self.worker.store
        since = ban.at - timedelta(seconds=settings.ban_max_time)
        try:
            earlier = await self.worker.call(store.count_blocks, ban.key_type, ban.key,
                                             since, BLOCKED_BY_CALLGUARD)
        except StoreError as exc:
            log.error("could not count earlier blocks of %s %s (%s); banning it for "
                      "ban_time", ban.key_type, ban.key, exc)
            earlier = 0

        seconds = settings.ban_seconds(earlier)
        expires_at = ban.at + timedelta(seconds=seconds)
        self.blocks.add(ban.key_type, ban.key, expires_at)
        log.warning("blocked %s %s for %s until %s (earlier bans: %d): %s", ban.key_type,
                    ban.key, format_duration(seconds), expires_at.isoformat(timespec="seconds"),
                    earlier,
                    ban.reason)

        try:
            # A block that another node or callguardctl stored since the last
            # read of the store is renewed, so the key keeps one block.
            change = await self.worker.call(store.block_automatically, ban.key_type,
                                            ban.key, ban.reason, ban.at, expires_at,
                                            BLOCKED_BY_CALLGUARD)
        except StoreError as exc:
            self.blocks.keep_unstored(ban.key_type, ban.key)
            log.error("could not store the block on %s %s (%s); it holds until %s but "
                      "not across a restart", ban.key_type, ban.key, exc,
                      expires_at.isoformat(timespec="seconds"))
            return

        if change.previous is not None:
            previous = change.previous
            self.blocks.add(ban.key_type, ban.key, change.block.expires_at)
            log.warning("renewed block %d on %s %s, first set by %s at %s: %s",
                        previous.id, ban.key_type, ban.key, previous.created_by,
                        previous.created_at.isoformat(timespec="seconds"),
                        previous.creation_reason)
        if self.alerts is not None:
            self.alerts.block_imposed(change.block.id, ban.key_type, ban.key, ban.trunk,
                                      ban.reason, ban.at, expires_at, earlier,
                                      renewal=None if change.previous is None else change)


def _missing_key(key_type: str, request: CallRequest) -> str:
    """Return why ``request`` has no key of ``key_type``, for the keyless warning."""
    if key_type == KEY_ENDPOINT and request.channel.lower().startswith(LOCAL_TECHNOLOGY + "/"):
        # Many phones can reach one Local extension, so its name is no one's key.
        return (f"the check ran on Local channel {quote(request.channel)}, which names "
                "no phone, so it is not counted for offender_key = endpoint")
    if key_type != KEY_CALLER:
        return f"the call has no {key_type}, the trunk's offender_key"
    # A caller key is the caller's number in E.164, so an internal extension
    # such as 1001, or a withheld caller ID, cannot be one.
    if request.caller.strip():
        return (f"caller ID {quote(request.caller)} is not a full number, so it is not "
                "counted for offender_key = caller")
    return "the call has no caller ID, so it is not counted for offender_key = caller"
