"""ARI events and channel lists turned into what happens to trunk legs.

Only outbound legs cost money: the peer of a ``Dial`` event, or a channel
created by an originate (it starts in state ``Down``, while a call arriving
from the trunk starts ringing). Inherited ``__`` variables reach every
downstream channel, Local halves included, so they cannot single out a leg.
A leg is found by its channel name matching a trunk's ``channel_pattern``.
A leg dialled by the ;2 half of a Local channel pair belongs to the check of
the channel that dialled the pair's ;1 half.
"""

import logging
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Callable

from callguard.clock import Clock
from callguard.metering.charges import AnsweredCall
from callguard.metering.dialstring import dialled_endpoint, dialled_number, masked
from callguard.metering.guard import LiveGuard, leg_tariff
from callguard.metering.legs import RINGING, UP, Leg
from callguard.policy.decision import REASON_INVALID_NUMBER, REASON_UNCLASSIFIED, CallRequest
from callguard.rating import Increments, Tariff
from callguard.store import CallRecord

log = logging.getLogger(__name__)

# ARI event types and channel states (Asterisk 22).
CHANNEL_CREATED = "ChannelCreated"
CHANNEL_STATE_CHANGE = "ChannelStateChange"
CHANNEL_DESTROYED = "ChannelDestroyed"
DIAL = "Dial"
HANDLED_EVENTS = frozenset({CHANNEL_CREATED, CHANNEL_STATE_CHANGE, CHANNEL_DESTROYED, DIAL})
STATE_DOWN = "Down"
STATE_UP = "Up"
DIALSTATUS_ANSWER = "ANSWER"
BRIDGEPEER = "BRIDGEPEER"
# The start of a Local channel's name, whose caller number is the dialled number.
LOCAL_PREFIX = "Local/"
# The dialplan application shown on a channel that Dial() or an originate placed.
OUTGOING_APPS = ("AppDial", "AppDial2")

# Trunk channels created in state Down and not (yet) seen as a Dial peer.
MAX_CANDIDATES = 10_000
# Destroyed channel ids remembered, so that a late duplicate cannot revive one.
MAX_DESTROYED = 50_000
# Local channel pairs remembered with the channel that dialled them.
MAX_LOCAL_PAIRS = 10_000
# The maximum number of Local pairs followed back from a trunk leg's caller.
# Local channels can dial Local channels, and the bound stops a looping chain.
MAX_LOCAL_HOPS = 8
LOCAL_FIRST_HALF = ";1"
LOCAL_SECOND_HALF = ";2"


def read_timestamp(text: str) -> datetime | None:
    """Parse ARI's ``2026-12-04T15:16:46.162+0000`` into UTC, or return None when invalid."""
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z").astimezone(timezone.utc)
    except ValueError:
        pass
    try:
        instant = datetime.fromisoformat(text)
    except ValueError:
        return None
    return instant.astimezone(timezone.utc) if instant.tzinfo is not None else None


def parse_timestamp(text: str | None, fallback: datetime) -> datetime:
    """Parse ARI's ``2026-12-04T15:16:46.162+0000``; use ``fallback`` when absent or bad."""
    if not text:
        return fallback
    instant = read_timestamp(text)
    if instant is None:
        log.warning("invalid ARI timestamp %r; using the local clock", text[:40])
        return fallback
    return instant


class EventTracker:
    def __init__(self, guard: LiveGuard, clock: Clock):
        self.guard = guard
        self.clock = clock
        self.blind_since: datetime | None = clock.now()
        self._candidates: OrderedDict[str, tuple[str, str, datetime]] = OrderedDict()
        # Channels already destroyed: late or repeated events for them are ignored.
        self._destroyed: OrderedDict[str, None] = OrderedDict()
        # Local pair (its name without ";1" or ";2") -> (id, name) of the channel
        # whose Dial placed the pair's ;1 half.
        self._local_dialled_by: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def on_event(self, event: dict) -> None:
        kind = event.get("type")
        if kind not in HANDLED_EVENTS:
            return
        at = parse_timestamp(event.get("timestamp"), self.clock.now())
        if kind == DIAL:
            peer = event.get("peer")
            if isinstance(peer, dict) and peer.get("id") not in self._destroyed:
                self._on_dial(event, at)
            return
        channel = event.get("channel")
        if not isinstance(channel, dict) or "id" not in channel:
            return
        if channel["id"] in self._destroyed:
            return
        if kind == CHANNEL_CREATED:
            self._on_created(channel, at)
        elif kind == CHANNEL_STATE_CHANGE and channel.get("state") == STATE_UP:
            self._on_up(channel, at)
        elif kind == CHANNEL_DESTROYED:
            self._candidates.pop(channel["id"], None)
            pair = local_pair(channel_name(channel), LOCAL_FIRST_HALF)
            if pair is not None:
                self._local_dialled_by.pop(pair, None)
            self._destroyed[channel["id"]] = None
            while len(self._destroyed) > MAX_DESTROYED:
                self._destroyed.popitem(last=False)
            cause = event.get("cause")
            self.guard.ended(channel["id"], at, cause if isinstance(cause, int) else None)
            self.guard.channel_gone(channel["id"])

    def on_disconnect(self) -> None:
        if self.blind_since is None:
            self.blind_since = self.clock.now()

    def _on_created(self, channel: dict, at: datetime) -> None:
        trunk = self.guard.trunk_for_channel(channel.get("name", ""))
        if trunk is None or channel.get("state") != STATE_DOWN:
            return  # not a trunk channel, or a call arriving from the trunk
        self._candidates[channel["id"]] = (trunk, channel["name"], at)
        while len(self._candidates) > MAX_CANDIDATES:
            self._candidates.popitem(last=False)

    def _on_dial(self, event: dict, at: datetime) -> None:
        peer = event.get("peer")
        if not isinstance(peer, dict) or "id" not in peer:
            return
        status = event.get("dialstatus", "")
        if status == DIALSTATUS_ANSWER:
            self.guard.answered(peer["id"], at)
            return
        if status:
            return

        caller = event.get("caller") if isinstance(event.get("caller"), dict) else {}
        self._note_local_pair(peer, caller)
        trunk = self.guard.trunk_for_channel(peer.get("name", ""))
        if trunk is None:
            return
        self._candidates.pop(peer["id"], None)
        dialstring = event.get("dialstring", "")
        number = dialled_number(dialstring, peer.get("name", "").partition("/")[0])
        caller_id = self._checked_channel(caller.get("id", ""), channel_name(caller),
                                          self._local_dialled_by.get)
        if number is None:
            # A check's decision names the destination, an emergency number
            # included, so the extension is read only when no check ran for
            # the caller.
            # NOTE: an unchecked caller's extension can be an internal one that
            # is also an emergency number, such as a phone 112 forwarding a
            # call. That leg is then metered as an emergency call: free and
            # never hung up.
            if not caller_id or self.guard.decisions.get(caller_id) is None:
                number = self._emergency_exten(peer, caller)
            log.warning("%s %s: no number found in dialstring %r%s", trunk, peer["id"],
                        masked(dialstring), "" if number is None else
                        f"; the caller dialled the emergency number {number}")
        self.guard.dialled(peer["id"], peer["name"], trunk, caller_id, number, at)

    def _note_local_pair(self, peer: dict, caller: dict) -> None:
        """Remember which channel dialled ``peer`` when it is the ;1 half of a Local pair."""
        pair = local_pair(channel_name(peer), LOCAL_FIRST_HALF)
        caller_id = caller.get("id")
        if pair is None or not isinstance(caller_id, str) or not caller_id:
            return
        self._local_dialled_by[pair] = (caller_id, channel_name(caller))
        self._local_dialled_by.move_to_end(pair)
        while len(self._local_dialled_by) > MAX_LOCAL_PAIRS:
            self._local_dialled_by.popitem(last=False)

    def _checked_channel(self, caller_id: str, caller_name: str,
                         dialled_by: Callable[[str], tuple[str, str] | None]) -> str:
        """Return the channel whose check covers a Dial by ``caller_id``.

        That is the caller itself when a check ran on it. For the ;2 half of a
        Local pair it is the channel that dialled the pair's ;1 half, followed
        back through further Local pairs, as ``dialled_by(pair)`` names them.
        When no check is found, it is ``caller_id``.
        """
        channel_id, name = caller_id, caller_name
        for _ in range(MAX_LOCAL_HOPS):
            if not channel_id or self.guard.decisions.get(channel_id) is not None:
                break
            pair = local_pair(name, LOCAL_SECOND_HALF)
            upstream = None if pair is None else dialled_by(pair)
            if upstream is None:
                break
            channel_id, name = upstream
        if channel_id and self.guard.decisions.get(channel_id) is not None:
            return channel_id
        return caller_id

    def _on_up(self, channel: dict, at: datetime) -> None:
        if channel["id"] in self.guard.legs:
            self.guard.answered(channel["id"], at)
            return
        candidate = self._candidates.pop(channel["id"], None)
        if candidate is None:
            return
        trunk, name, created_at = candidate
        # Up without a Dial: a channel the PBX originated on the trunk.
        self._follow_unlinked(channel, trunk, created_at, "originated without a check")
        self.guard.answered(channel["id"], at)

    def _follow_unlinked(self, channel: dict, trunk: str, created_at: datetime,
                         why: str, number: str | None = None) -> Leg | None:
        if number is None:
            number = self._number_from_snapshot(channel, trunk)
        return self.guard.dialled(channel["id"], channel.get("name", ""), trunk, "", number,
                                  created_at)

    def _emergency_exten(self, *channels: dict) -> str | None:
        """Return the first extension of ``channels`` that is an emergency number, or None.

        Dial() gives the leg its caller's extension. When the dialstring shows
        no number, that extension still shows an emergency call, which is never
        hung up. Other extensions may be internal ones, so they are not read
        as the destination.
        """
        plan = self.guard.engine.state.classifier.plan
        for channel in channels:
            exten = snapshot_text(channel, "dialplan", "exten")
            if exten and plan.emergency(exten) is not None:
                return exten
        return None

    def _number_from_snapshot(self, channel: dict, trunk: str) -> str | None:
        """Return the first plausible destination shown on a channel snapshot."""
        # The leg's exten is the caller's (empty after answer). A Local leg shows
        # the dialled number as its caller number, but on other legs the caller
        # and connected numbers are the calling phone's, which must never be
        # taken for the destination.
        candidates = [snapshot_text(channel, "dialplan", "exten")]
        if channel.get("name", "").startswith(LOCAL_PREFIX):
            candidates += [
                snapshot_text(channel, "caller", "number"),
                snapshot_text(channel, "connected", "number"),
            ]
        for text in candidates:
            if not text:
                continue
            request = CallRequest(trunk=trunk, dialled=self.guard.read_destination(text))
            decision = self.guard.engine.judge(request)
            if decision.reason not in (REASON_INVALID_NUMBER, REASON_UNCLASSIFIED):
                return text
        return None

    def reconcile(self, channels: list[dict], system_name: str = "",
                  started_at: datetime | None = None) -> None:
        """Match the legs callguard follows with the channels Asterisk has now.

        ``system_name`` is Asterisk's systemname, which begins the uniqueids
        of its channels. A leg taken over from the store that is missing here
        and does not begin with it is a call of another PBX sharing the store,
        so it is left to that PBX's callguard. ``started_at`` is the start of
        the running Asterisk process, when known: a missing leg created before
        it ended with the earlier process, by that moment at the latest.
        """
        now = self.clock.now()
        blind_since = self.blind_since or now
        present = {c["id"]: c for c in channels if isinstance(c, dict) and "id" in c}
        self._forget_gone_pairs(present)

        for leg in list(self.guard.legs.values()):
            channel = present.get(leg.id)
            if channel is not None:
                if leg.restored:
                    # Found up after a restart: a hang-up lost with it is sent again.
                    leg.restored = False
                    self.guard.judge_restored(leg)
            elif leg.restored and not own_uniqueid(leg.id, system_name):
                log.info("%s %s: %s, taken over from the store, is not a channel of this "
                         "Asterisk (systemname %s); leaving it to the callguard of its PBX",
                         leg.trunk, leg.id, leg.channel, system_name)
                self.guard.release_foreign(leg)
                continue
            restarted = started_at is not None and leg.created_at < started_at
            if channel is None and leg.hangup_accepted_at is not None and not (
                    restarted and started_at < leg.hangup_accepted_at):
                # Asterisk accepted the hang-up then, and the limit timer sends
                # it before a block that the budget cannot pay begins.
                log.warning("%s %s: %s ended while callguard could not see events; "
                            "charging it up to its hang-up at %s", leg.trunk, leg.id,
                            leg.channel, leg.hangup_accepted_at.isoformat())
                self.guard.ended(leg.id, leg.hangup_accepted_at, None)
            elif channel is None and restarted and started_at < now:
                # The channel cannot outlive its Asterisk process, so charging
                # up to the new process's start never under-counts.
                log.warning("%s %s: %s ended when Asterisk restarted; charging it up to "
                            "the restart at %s", leg.trunk, leg.id, leg.channel,
                            started_at.isoformat())
                self.guard.ended(leg.id, started_at, None)
            elif channel is None:
                # The end time is unknown: charging up to now never under-counts.
                log.warning("%s %s: %s ended while callguard could not see events; "
                            "charging it up to now", leg.trunk, leg.id, leg.channel)
                self.guard.ended(leg.id, now, None)
            elif leg.state == RINGING and channel.get("state") == STATE_UP:
                self.guard.answered(leg.id, blind_since)

        # A bridged caller shows its trunk leg's name in BRIDGEPEER when ari.conf
        # lists it in channelvars: the way back to the caller's check decision.
        callers_by_peer = {}
        for channel in present.values():
            peer = snapshot_text(channel, "channelvars", BRIDGEPEER)
            if peer:
                callers_by_peer[peer] = channel["id"]

        unplaced = 0
        for channel_id, channel in present.items():
            if channel_id in self.guard.legs:
                continue
            if self.guard.was_unfollowed(channel_id):
                # Charged and stored as ended when ARI went off: following it again
                # would count it twice in memory, and the store keeps its first end.
                log.info("%s: still up, but charged and stored as ended when ARI went "
                         "off; not metered again", channel_id)
                continue
            trunk = self.guard.trunk_for_channel(channel.get("name", ""))
            if trunk is None:
                continue
            app = snapshot_text(channel, "dialplan", "app_name")
            if app not in OUTGOING_APPS:
                unplaced += 1
                continue
            created_at = parse_timestamp(channel.get("creationtime"), now)
            log.warning("%s %s: adopting %s, which started while callguard could not see "
                        "events", trunk, channel_id, channel.get("name"))
            caller_id = (callers_by_peer.get(channel.get("name", ""), "")
                         or self._checked_caller_in_dial(channel, present))
            # The caller's Dial() argument is the only place a channel list shows
            # the number of an answered PJSIP leg.
            number = _number_dialled_by(present.get(caller_id), channel.get("name", ""))

            def dialled_by(pair: str) -> tuple[str, str] | None:
                # A phone bridged to a Local pair's ;1 half shows it in BRIDGEPEER.
                upstream = callers_by_peer.get(pair + LOCAL_FIRST_HALF)
                if upstream is None:
                    return self._local_dialled_by.get(pair)
                return upstream, channel_name(present.get(upstream))

            caller_id = self._checked_channel(caller_id, channel_name(present.get(caller_id)),
                                              dialled_by)
            if caller_id and self.guard.decisions.get(caller_id) is not None:
                leg = self.guard.dialled(channel_id, channel["name"], trunk, caller_id, number,
                                         created_at)
            else:
                leg = self._follow_unlinked(channel, trunk, created_at, "started while blind",
                                            number)
            if leg is not None and channel.get("state") == STATE_UP:
                # The answer time is unknown: the creation time never under-counts.
                self.guard.answered(channel_id, created_at)

        for uniqueid in list(self.guard.reservations.undialled()):
            if uniqueid not in present:
                self.guard.channel_gone(uniqueid)
            elif snapshot_text(present[uniqueid], "dialplan", "app_name") == DIAL:
                # Its Dial() ran while callguard could not see events, and no
                # leg adopted above was linked to its check. The legs are
                # metered on their own, so the hold would count a second time
                # until it expired.
                # NOTE: a Dial event buffered during this reconciliation still
                # links its leg afterwards, but that call rings without a hold.
                self.guard.dial_unseen(uniqueid)
        self.guard.forget_unfollowed(present)

        if unplaced:
            # NOTE: a channel list shows no direction. An originate shows AppDial2
            # while it rings, but once answered it runs its own application, so
            # one that began and was answered while events were lost looks like
            # a call from the trunk and is not metered.
            log.info("%d trunk channels that no Dial placed are not metered: calls from "
                     "the trunk, or originates answered while callguard could not see "
                     "events", unplaced)
        self.blind_since = None

    def _forget_gone_pairs(self, present: dict[str, dict]) -> None:
        """Forget the Local pairs whose ;1 half is not in the channel list.

        Their ChannelDestroyed was lost. A restarted Asterisk numbers Local
        pairs from zero again, so a new pair can reuse the name of a gone one,
        which must not link its trunk legs to the gone pair's caller.
        """
        names = {channel_name(channel) for channel in present.values()}
        stale_pairs = [pair for pair in self._local_dialled_by
                       if pair + LOCAL_FIRST_HALF not in names]
        for pair in stale_pairs:
            del self._local_dialled_by[pair]

    def _checked_caller_in_dial(self, leg: dict, present: dict[str, dict]) -> str:
        """Return the checked channel whose Dial() placed a leg that is not bridged yet, or "".

        A ringing leg shows no caller in BRIDGEPEER. Dial() gives it the
        caller's extension, and copies the caller's caller ID to the leg's
        connected line, while the leg's own caller ID is the extension
        (dial_exec_full() in Asterisk's apps/app_dial.c). The caller is the one
        channel in Dial() that shows both. A second such channel, checked or
        not, makes the caller unknown, so that no leg is linked to another
        phone's check.
        """
        by_name = {channel_name(channel): channel for channel in present.values()}
        caller_id = self._dialling_channel(leg, present, by_name, MAX_LOCAL_HOPS)
        if caller_id is None or self.guard.decisions.get(caller_id) is None:
            return ""
        return caller_id

    def _dialling_channel(self, leg: dict, present: dict[str, dict],
                          by_name: dict[str, dict], hops: int) -> str | None:
        """Return the channel whose Dial() placed ``leg``, past Local pairs, or
        None when no single channel shows the leg's extension and caller ID.

        A ;2 half of a Local pair that shows them is replaced by the channel
        that dialled the pair, found in turn from the pair's ;1 half. That ;1
        half can show a different extension from the trunk leg, such as one
        with the outside-line prefix that the Local pair drops. A ;2 half that
        ran the check itself is returned in place of that channel, because its
        check covers the leg.
        """
        exten = snapshot_text(leg, "dialplan", "exten")
        if not exten or hops == 0:
            return None
        calling = snapshot_text(leg, "connected", "number")
        own_pair = local_pair(channel_name(leg), LOCAL_FIRST_HALF)
        found = set()
        # The channel that dialled a Local pair -> the pair's ;2 half, when a
        # check ran on that half. The channel itself shows the same extension
        # and caller ID, so it is found both directly and through the pair.
        checked_halves: dict[str, str] = {}
        for channel_id, channel in present.items():
            if (channel_id == leg.get("id")
                    or snapshot_text(channel, "dialplan", "app_name") != DIAL
                    or snapshot_text(channel, "dialplan", "exten") != exten
                    or snapshot_text(channel, "caller", "number") != calling):
                continue
            pair = local_pair(channel_name(channel), LOCAL_SECOND_HALF)
            if pair is None:
                found.add(channel_id)
                continue
            if pair == own_pair:
                continue
            first_half = by_name.get(pair + LOCAL_FIRST_HALF)
            upstream = (None if first_half is None
                        else self._dialling_channel(first_half, present, by_name, hops - 1))
            checked = self.guard.decisions.get(channel_id) is not None
            if upstream is None and not checked:
                return None
            if upstream is None:
                found.add(channel_id)
                continue
            found.add(upstream)
            if checked:
                checked_halves[upstream] = channel_id
        if len(found) != 1:
            return None
        caller = found.pop()
        return checked_halves.get(caller, caller)


def snapshot_text(snapshot: object, part: str, key: str) -> str:
    """Return ``snapshot[part][key]`` of an ARI channel snapshot, or "" when it is
    missing or not a string, as in a malformed event."""
    inner = snapshot.get(part) if isinstance(snapshot, dict) else None
    value = inner.get(key) if isinstance(inner, dict) else None
    return value if isinstance(value, str) else ""


def channel_name(snapshot: object) -> str:
    """Return the name of an ARI channel snapshot, or "" when it has none."""
    name = snapshot.get("name") if isinstance(snapshot, dict) else None
    return name if isinstance(name, str) else ""


def local_pair(name: str, half: str) -> str | None:
    """Return the name of the Local pair ``Local/<exten>@<context>-<seq>`` when
    ``name`` is its ``half`` (";1" or ";2"), else None."""
    if name.startswith(LOCAL_PREFIX) and name.endswith(half):
        return name[:-len(half)]
    return None


def _number_dialled_by(caller: dict | None, leg_name: str) -> str | None:
    """Return the number that ``caller``'s running Dial() sent to the leg ``leg_name``.

    The caller shows its Dial() argument as ``app_data``, like
    ``PJSIP/999@gamma,60,S(600)``. A Dial to several destinations joins them
    with ``&``, so the one on the leg's technology and endpoint is taken.
    """
    app_data = snapshot_text(caller, "dialplan", "app_data")
    if snapshot_text(caller, "dialplan", "app_name") != DIAL or not app_data:
        return None
    targets = app_data.split(",", 1)[0].split("&")
    leg_technology, _, leg_rest = leg_name.partition("/")
    # PJSIP/gamma-00000001 is a channel of endpoint gamma.
    leg_endpoint = leg_rest.rpartition("-")[0]
    numbers = []
    for target in targets:
        technology, _, resource = target.strip().partition("/")
        if technology.lower() != leg_technology.lower():
            continue
        number = dialled_number(resource, technology)
        if number is not None and (len(targets) == 1 or dialled_endpoint(resource) == leg_endpoint):
            numbers.append(number)
    return numbers[0] if len(numbers) == 1 else None


def own_uniqueid(uniqueid: str, system_name: str) -> bool:
    """Check whether ``uniqueid`` can be a channel of the Asterisk with ``system_name``.

    With a systemname, Asterisk builds uniqueids as ``<systemname>-<time>.<n>``
    (``__ast_channel_alloc_ap`` in main/channel.c). An Asterisk without one
    could have made any uniqueid, as far as callguard can tell, so every
    uniqueid counts as its own.

    NOTE: a call stored before its Asterisk's systemname was set, or an
    originate given its own channelId over ARI, counts as another PBX's call.
    If it ends while callguard is down, it stays up in the store, uncharged.
    """
    return not system_name or uniqueid.startswith(f"{system_name}-")


def leg_from_record(record: CallRecord, guard: LiveGuard) -> Leg | None:
    """Rebuild a live leg from the store after a restart, with its original answer time."""
    meter = guard.meters.get(record.trunk)
    if meter is None or record.state != UP or record.rate is None:
        return None
    stored = Tariff(record.tariff_prefix, "from the store", record.rate,
                    record.connection_fee, Increments(record.first_increment,
                                                      record.later_increment))
    tariff = leg_tariff(record.category or "", stored)
    leg = Leg(id=record.uniqueid, trunk=record.trunk, channel=record.channel,
              created_at=record.created_at, number=record.dialled, e164=record.e164 or "",
              category=record.category or "", caller=record.caller,
              decision_uniqueid=record.decision_uniqueid or "", guarded=record.guarded,
              tariff=tariff, state=UP, restored=True)
    caller = guard.engine.state.normalise_caller(record.caller)
    leg.protected = record.category != "emergency" and not meter.config.opted_out(caller)
    leg.answered = AnsweredCall(tariff, meter.config.timezone, record.answered_at)
    return leg

