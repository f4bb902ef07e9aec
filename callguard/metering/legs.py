"""A trunk leg that callguard follows from its Dial (or creation) to its end."""

from dataclasses import dataclass, field
from datetime import datetime

from callguard.metering.charges import AnsweredCall
from callguard.rating import Tariff

RINGING = "ringing"
UP = "up"
ENDED = "ended"


@dataclass
class Leg:
    """One outbound channel on a trunk, as seen in ARI events."""

    id: str                   # the channel's uniqueid
    trunk: str
    channel: str              # e.g. PJSIP/gamma-00000013
    created_at: datetime
    number: str = ""          # the dialled number, as dialled
    e164: str = ""
    category: str = ""
    caller: str = ""          # the calling number, when known
    decision_uniqueid: str = ""   # the channel the AGI check ran on
    guarded: bool = False     # passed the AGI check
    protected: bool = True    # False for opted-out callers and emergency calls
    tariff: Tariff | None = None
    state: str = RINGING
    answered: AnsweredCall | None = None
    ended_at: datetime | None = None
    hangup_requested: str = ""    # the reason callguard asked Asterisk to hang up
    hangup_failures: int = 0      # hang-up requests in a row that failed
    hangup_retry_at: datetime | None = None  # no new request before this, after a failure
    hangups_unconfirmed: int = 0  # accepted hang-ups that left the call up
    hangup_cause: int | None = None
    # Time at which Asterisk last accepted callguard's hang-up request (204 to the DELETE).
    hangup_accepted_at: datetime | None = None
    final_charges: dict = field(default_factory=dict)  # the bill by window, once ended
    # Taken over from the store at start, and not yet found in Asterisk's channel list.
    restored: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def live(self) -> bool:
        return self.state != ENDED
