"""Channels, bridges and the formats of the Asterisk ARI emulator.

Names, ids, timestamps and snapshots copy ARI traffic recorded from Asterisk
22.10.1 in tests/fixtures/asterisk/ (see the README there).
"""

import functools
import itertools
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

logger = logging.getLogger(__name__)

ASTERISK_ID = "02:fc:00:00:00:01"
ASTERISK_VERSION = "22.10.1"
LANGUAGE = "en"

STATE_DOWN = "Down"
STATE_RING = "Ring"
STATE_RINGING = "Ringing"
STATE_UP = "Up"

TECH_PJSIP = "PJSIP"
TECH_LOCAL = "Local"

# Default location of a channel that Asterisk allocates for an outgoing call.
DEFAULT_CONTEXT = "default"
DEFAULT_EXTEN = "s"


def format_timestamp(instant: datetime) -> str:
    """Format like Asterisk's ast_json_timeval(): ``2026-12-04T15:16:46.162+0000``."""
    if instant.tzinfo is None:
        raise ValueError(
            f"timestamp {instant.isoformat()} has no time zone. "
            "The emulator clock must return aware datetimes"
        )
    # Equal datetimes in different zones format differently, so the zone is
    # part of the key. The text shows milliseconds, and the events of one
    # request are built within a millisecond or two, so most find their text
    # in the cache.
    millisecond = instant.replace(microsecond=instant.microsecond // 1000 * 1000)
    return _format_in_zone(millisecond, instant.tzinfo)


@functools.lru_cache(maxsize=4096)
def _format_in_zone(instant: datetime, zone: object) -> str:
    global _last_second
    second = (instant.replace(microsecond=0), zone)
    if _last_second[0] != second:
        _last_second = (second, f"{instant:%Y-%m-%dT%H:%M:%S}", f"{instant:%z}")
    return f"{_last_second[1]}.{instant.microsecond // 1000:03d}{_last_second[2]}"


# The second that _format_in_zone formatted last, and the text of its date,
# time and offset.
_last_second: tuple = (None, "", "")


@dataclass
class Party:
    name: str = ""
    number: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "number": self.number}


@dataclass
class Channel:
    """One emulated Asterisk channel and the fields of its ARI snapshot."""

    id: str
    name: str
    state: str
    context: str
    exten: str
    creationtime: datetime
    priority: int = 1
    app_name: str = ""
    app_data: str = ""
    caller: Party = field(default_factory=Party)
    connected: Party = field(default_factory=Party)
    accountcode: str = ""
    variables: dict[str, str] = field(default_factory=dict)

    # The other half of a Local channel pair.
    local_peer: "Channel | None" = None

    # Stasis applications that receive this channel's events without
    # subscribeAll, as after POST /ari/channels with ``app``.
    subscribed_apps: set[str] = field(default_factory=set)
    stasis_app: str | None = None
    stasis_args: list[str] = field(default_factory=list)

    @property
    def tech(self) -> str:
        return self.name.partition("/")[0]

    def set_location(
        self, app_name: str, app_data: str, priority: int | None = None
    ) -> None:
        self.app_name = app_name
        self.app_data = app_data
        if priority is not None:
            self.priority = priority

    def set_variable(self, name: str, value: str) -> None:
        # Set(__X=v) and Set(_X=v) mark X for inheritance, but the variable
        # itself, and so its channelvars snapshot field, is X.
        self.variables[name.lstrip("_")] = value

    def snapshot(self, channelvars: Iterable[str]) -> dict:
        """Return the channel as ast_channel_snapshot_to_json() lays it out."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state,
            "protocol_id": "",
            "caller": self.caller.to_json(),
            "connected": self.connected.to_json(),
            "accountcode": self.accountcode,
            "dialplan": {
                "context": self.context,
                "exten": self.exten,
                "priority": self.priority,
                "app_name": self.app_name,
                "app_data": self.app_data,
            },
            "creationtime": format_timestamp(self.creationtime),
            "language": LANGUAGE,
            "channelvars": {name: self.variables.get(name, "") for name in channelvars},
        }


@dataclass
class Bridge:
    """A basic mixing bridge, as app_dial creates for an answered call."""

    id: str
    creationtime: datetime
    channel_ids: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "technology": "simple_bridge",
            "bridge_type": "mixing",
            "bridge_class": "basic",
            "creator": "",
            "name": "",
            # Sorted as strings, as captured: 1796397427.10 before 1796397427.9.
            "channels": sorted(self.channel_ids),
            "creationtime": format_timestamp(self.creationtime),
            "video_mode": "none",
        }


class ChannelFactory:
    """Source of uniqueids and channel names, numbered as Asterisk numbers them.

    Uniqueids are ``<epoch seconds>.<sequence>`` with one sequence for every
    channel, after ``<systemname>-`` when ``system_name`` is set, as Asterisk
    builds them. PJSIP names end in ``-%08x`` from chan_pjsip's counter, and each
    Local pair shares one ``-%08x`` from the Local channel counter.
    """

    def __init__(self, now: Callable[[], datetime]):
        self._now = now
        self.system_name = ""
        self._uniqueid_sequence = itertools.count()
        self._tech_sequences: dict[str, itertools.count] = {}

    def restart(self) -> None:
        """Number uniqueids and channel names from zero, as a new Asterisk process does."""
        self._uniqueid_sequence = itertools.count()
        self._tech_sequences.clear()

    def now(self) -> datetime:
        instant = self._now()
        if instant.tzinfo is None:
            raise ValueError(
                f"the emulator clock returned {instant.isoformat()} without a time "
                "zone. Pass a clock that returns aware datetimes"
            )
        return instant

    def next_uniqueid(self) -> str:
        uniqueid = f"{int(self.now().timestamp())}.{next(self._uniqueid_sequence)}"
        return f"{self.system_name}-{uniqueid}" if self.system_name else uniqueid

    def _next_suffix(self, tech: str) -> str:
        sequence = self._tech_sequences.setdefault(tech, itertools.count())
        return f"{next(sequence):08x}"

    def create(
        self,
        tech: str,
        device: str,
        *,
        state: str,
        context: str = DEFAULT_CONTEXT,
        exten: str = DEFAULT_EXTEN,
        channel_id: str | None = None,
    ) -> Channel:
        """Create a channel named ``<tech>/<device>-<suffix>``."""
        name = f"{tech}/{device}-{self._next_suffix(tech)}"
        return Channel(
            id=channel_id or self.next_uniqueid(),
            name=name,
            state=state,
            context=context,
            exten=exten,
            creationtime=self.now(),
        )

    def create_local_pair(
        self,
        exten: str,
        context: str,
        *,
        channel_id: str | None = None,
        other_channel_id: str | None = None,
    ) -> tuple[Channel, Channel]:
        """Create ``Local/exten@context-<suffix>;1`` (Down) and ``;2`` (Ring)."""
        base = f"{TECH_LOCAL}/{exten}@{context}-{self._next_suffix(TECH_LOCAL)}"
        created = self.now()
        first = Channel(
            id=channel_id or self.next_uniqueid(),
            name=f"{base};1",
            state=STATE_DOWN,
            context=context,
            exten=exten,
            creationtime=created,
        )
        second = Channel(
            id=other_channel_id or self.next_uniqueid(),
            name=f"{base};2",
            state=STATE_RING,
            context=context,
            exten=exten,
            creationtime=created,
        )
        first.local_peer = second
        second.local_peer = first
        return first, second

    def create_bridge(self) -> Bridge:
        return Bridge(id=str(uuid.uuid4()), creationtime=self.now())
