"""Channels, bridges and the formats of the Asterisk ARI emulator.

Names, ids, timestamps and snapshots copy ARI traffic recorded from Asterisk
22.10.1 in tests/fixtures/asterisk/ (see the README there).
"""

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

# ChannelHangupRequest for DELETE /ari/channels/{id} carries this internal soft
# hang-up flag (AST_SOFTHANGUP_EXPLICIT), not a Q.850 cause, as captured.
SOFTHANGUP_EXPLICIT = 32

CAUSE_UNKNOWN = 0
CAUSE_NORMAL_CLEARING = 16
CAUSE_USER_BUSY = 17
CAUSE_NO_USER_RESPONSE = 18
CAUSE_NO_ANSWER = 19
CAUSE_CALL_REJECTED = 21
CAUSE_NORMAL_CIRCUIT_CONGESTION = 34
CAUSE_SWITCH_CONGESTION = 42

# Q.850 cause texts from the causes[] table in Asterisk's main/channel.c;
# ast_cause2str() returns "Unknown" for any other number.
CAUSE_TEXTS = {
    1: "Unallocated (unassigned) number",
    2: "No route to specified transmit network",
    3: "No route to destination",
    5: "Misdialed trunk prefix",
    6: "Channel unacceptable",
    7: "Call awarded and being delivered in an established channel",
    8: "Pre-empted",
    14: "Number ported elsewhere",
    16: "Normal Clearing",
    17: "User busy",
    18: "No user responding",
    19: "User alerting, no answer",
    20: "Subscriber absent",
    21: "Call Rejected",
    22: "Number changed",
    23: "Redirected to new destination",
    26: "Answered elsewhere",
    27: "Destination out of order",
    28: "Invalid number format",
    29: "Facility rejected",
    30: "Response to STATus ENQuiry",
    31: "Normal, unspecified",
    34: "Circuit/channel congestion",
    38: "Network out of order",
    41: "Temporary failure",
    42: "Switching equipment congestion",
    43: "Access information discarded",
    44: "Requested channel not available",
    50: "Facility not subscribed",
    52: "Outgoing call barred",
    54: "Incoming call barred",
    57: "Bearer capability not authorized",
    58: "Bearer capability not available",
    65: "Bearer capability not implemented",
    66: "Channel not implemented",
    69: "Facility not implemented",
    81: "Invalid call reference value",
    88: "Incompatible destination",
    95: "Invalid message unspecified",
    96: "Mandatory information element is missing",
    97: "Message type nonexist.",
    98: "Wrong message",
    99: "Info. element nonexist or not implemented",
    100: "Invalid information element contents",
    101: "Message not compatible with call state",
    102: "Recover on timer expiry",
    103: "Mandatory IE length error",
    111: "Protocol error, unspecified",
    127: "Interworking, unspecified",
}
UNKNOWN_CAUSE_TEXT = "Unknown"

# The ``reason`` values of DELETE /ari/channels/{id} and their Q.850 causes, as
# convert_reason_to_hangup_code() in res/ari/resource_channels.c maps them.
HANGUP_REASONS = {
    "normal": 16,
    "busy": 17,
    "congestion": 34,
    "no_answer": 19,
    "timeout": 18,
    "rejected": 21,
    "unallocated": 1,
    "normal_unspecified": 31,
    "number_incomplete": 28,
    "codec_mismatch": 58,
    "interworking": 127,
    "failure": 38,
    "answered_elsewhere": 26,
}


def cause_text(cause: int) -> str:
    return CAUSE_TEXTS.get(cause, UNKNOWN_CAUSE_TEXT)


def format_timestamp(instant: datetime) -> str:
    """Format like Asterisk's ast_json_timeval(): ``2026-12-04T15:16:46.162+0000``."""
    if instant.tzinfo is None:
        raise ValueError(
            f"timestamp {instant.isoformat()} has no time zone; "
            "the emulator clock must return aware datetimes"
        )

    milliseconds = instant.microsecond // 1000
    return f"{instant:%Y-%m-%dT%H:%M:%S}.{milliseconds:03d}{instant:%z}"


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
        # Set(__X=v) and Set(_X=v) mark X for inheritance; the channel variable
        # itself, and so the channelvars snapshot field, is X.
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
            # Sorted as strings, so 1796397427.10 comes before 1796397427.9, as captured.
            "channels": sorted(self.channel_ids),
            "creationtime": format_timestamp(self.creationtime),
            "video_mode": "none",
        }


class ChannelFactory:
    """Allocates uniqueids and channel names the way Asterisk numbers them.

    Uniqueids are ``<epoch seconds>.<sequence>`` with one sequence for every
    channel. PJSIP names end in ``-%08x`` from chan_pjsip's counter, and each
    Local pair shares one ``-%08x`` from the Local channel counter.
    """

    def __init__(self, now: Callable[[], datetime]):
        self._now = now
        self._uniqueid_sequence = itertools.count()
        self._tech_sequences: dict[str, itertools.count] = {}

    def now(self) -> datetime:
        instant = self._now()
        if instant.tzinfo is None:
            raise ValueError(
                f"the emulator clock returned {instant.isoformat()} without a time "
                "zone; pass a clock that returns aware datetimes"
            )
        return instant

    def next_uniqueid(self) -> str:
        return f"{int(self.now().timestamp())}.{next(self._uniqueid_sequence)}"

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
