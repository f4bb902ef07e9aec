"""Plain records that the store takes and returns instead of ORM objects.

They are frozen, so a record read on the store's worker thread can be handed
to any other thread. Money is ``Decimal`` and times are timezone-aware UTC.
"""

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from callguard.store.types import check_aware, check_money

RESULT_ALLOW = "ALLOW"
RESULT_DENY = "DENY"
DECISION_RESULTS = (RESULT_ALLOW, RESULT_DENY)

STATE_RINGING = "ringing"
STATE_UP = "up"
STATE_ENDED = "ended"
CALL_STATES = (STATE_RINGING, STATE_UP, STATE_ENDED)

WINDOW_DAY = "day"
WINDOW_WEEK = "week"
WINDOWS = (WINDOW_DAY, WINDOW_WEEK)

DATASET_PREFIXES = "prefixes"
DATASET_RATES = "rates"

# Outcomes of a hang-up request sent to Asterisk over ARI.
OUTCOME_REQUESTED = "requested"  # Asterisk accepted the DELETE of the channel
OUTCOME_GONE = "gone"  # Asterisk answered 404: the channel had already hung up
OUTCOME_FAILED = "failed"  # any other error; the call may still be up
HANGUP_OUTCOMES = (OUTCOME_REQUESTED, OUTCOME_GONE, OUTCOME_FAILED)

ZERO = Decimal("0")


def check_text(value: object, field: str, *, empty: bool = False) -> str:
    """Return ``value`` if it is a string, and not empty unless ``empty`` is set."""
    if not isinstance(value, str):
        raise TypeError(f"{field} {value!r} is a {type(value).__name__}; expected str")
    if not empty and not value:
        raise ValueError(f"{field} is empty; give a non-empty string")
    if "\x00" in value:
        # PostgreSQL cannot store NUL in text, and a batch that fails there fails whole.
        raise ValueError(f"{field} {value!r} contains a NUL character, which PostgreSQL "
                         "text cannot store; remove or escape it")
    return value


def check_count(value: object, field: str, *, minimum: int = 0) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{field} {value!r} is a {type(value).__name__}; expected int")
    if value < minimum:
        raise ValueError(f"{field} {value} is below the minimum {minimum}")
    return value


def _check_optional(value: object, check, field: str) -> None:
    if value is not None:
        check(value, field)


def _check_choice(value: object, field: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(
            f"{field} {value!r} is invalid; use one of {', '.join(choices)}"
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class DecisionRecord:
    """One result of the FastAGI check, as stored in the ``decisions`` audit trail."""

    id: int | None = None  # assigned by the store
    decided_at: datetime
    trunk: str
    uniqueid: str  # Asterisk uniqueid of the caller's channel
    channel: str
    caller: str
    dialled: str  # the extension as dialled
    e164: str | None = None  # None when the number could not be normalised
    category: str | None = None
    result: str  # RESULT_ALLOW or RESULT_DENY
    reason: str
    max_seconds: int | None = None  # the call's time limit, None for no limit
    rate: Decimal | None = None  # per minute
    reserved: Decimal = ZERO
    node: str = ""  # name of the callguard instance that decided

    def __post_init__(self) -> None:
        check_aware(self.decided_at, "decided_at")
        check_text(self.trunk, "trunk")
        check_text(self.uniqueid, "uniqueid")
        for field in ("channel", "caller", "dialled", "reason", "node"):
            check_text(getattr(self, field), field, empty=True)

        _check_optional(self.e164, check_text, "e164")
        _check_optional(self.category, check_text, "category")
        _check_choice(self.result, "result", DECISION_RESULTS)
        _check_optional(self.max_seconds, check_count, "max_seconds")
        _check_optional(self.rate, check_money, "rate")
        check_money(self.reserved, "reserved")


@dataclass(frozen=True, kw_only=True, slots=True)
class CallRecord:
    """A call on a guarded trunk, keyed by the uniqueid of its trunk leg."""

    id: int | None = None  # assigned by the store
    uniqueid: str  # trunk leg
    decision_uniqueid: str | None = None  # caller's channel, checked by FastAGI
    trunk: str
    channel: str  # trunk leg channel name, e.g. PJSIP/gamma-00000013
    caller: str
    dialled: str
    e164: str | None = None
    category: str | None = None
    # Tariff snapshot taken when the call was rated: all five set, or none.
    tariff_prefix: str | None = None
    rate: Decimal | None = None  # per minute
    connection_fee: Decimal | None = None
    first_increment: int | None = None  # seconds
    later_increment: int | None = None  # seconds
    created_at: datetime
    answered_at: datetime | None = None
    ended_at: datetime | None = None
    state: str = STATE_RINGING
    cost: Decimal = ZERO
    hangup_cause: int | None = None  # Q.850 cause code
    hangup_reason: str | None = None
    guarded: bool  # True when the call passed the FastAGI check

    def __post_init__(self) -> None:
        check_text(self.uniqueid, "uniqueid")
        check_text(self.trunk, "trunk")
        for field in ("channel", "caller", "dialled"):
            check_text(getattr(self, field), field, empty=True)
        for field in ("decision_uniqueid", "e164", "category", "hangup_reason"):
            _check_optional(getattr(self, field), check_text, field)

        self._check_tariff()
        check_aware(self.created_at, "created_at")
        _check_optional(self.answered_at, check_aware, "answered_at")
        _check_optional(self.ended_at, check_aware, "ended_at")

        _check_choice(self.state, "state", CALL_STATES)
        if self.state == STATE_UP and self.answered_at is None:
            raise ValueError(f"call {self.uniqueid} is up but has no answered_at")
        if self.state == STATE_ENDED and self.ended_at is None:
            raise ValueError(f"call {self.uniqueid} has ended but has no ended_at")

        check_money(self.cost, "cost")
        _check_optional(self.hangup_cause, check_count, "hangup_cause")
        if not isinstance(self.guarded, bool):
            raise TypeError(f"guarded {self.guarded!r} is not a bool")

    def _check_tariff(self) -> None:
        tariff = {
            "tariff_prefix": self.tariff_prefix,
            "rate": self.rate,
            "connection_fee": self.connection_fee,
            "first_increment": self.first_increment,
            "later_increment": self.later_increment,
        }
        missing = [name for name, value in tariff.items() if value is None]
        if missing and len(missing) < len(tariff):
            raise ValueError(
                f"call {self.uniqueid} has a partial tariff snapshot; "
                f"set {', '.join(missing)} too, or none of the tariff fields"
            )
        if missing:
            return

        check_text(self.tariff_prefix, "tariff_prefix", empty=True)
        check_money(self.rate, "rate")
        check_money(self.connection_fee, "connection_fee")
        check_count(self.first_increment, "first_increment", minimum=1)
        check_count(self.later_increment, "later_increment", minimum=1)


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockRecord:
    """A block on a key (a caller, a number, ...), permanent when ``expires_at`` is None.

    ``reason`` and ``expires_at`` are those of the last renewal, if any.
    ``created_at`` and ``created_by`` stay those of the first block, and
    ``first_reason`` keeps its reason once the block is renewed.
    """

    id: int
    key_type: str
    key: str
    reason: str
    created_at: datetime
    expires_at: datetime | None
    created_by: str
    lifted_at: datetime | None = None
    lifted_reason: str | None = None
    renewed_at: datetime | None = None
    renewed_by: str | None = None
    first_reason: str | None = None

    @property
    def creation_reason(self) -> str:
        """The reason given when the block was created, before any renewal."""
        return self.reason if self.first_reason is None else self.first_reason

    def active_at(self, now: datetime) -> bool:
        """Return True when the block is neither lifted nor expired at ``now``."""
        if self.lifted_at is not None and self.lifted_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True, kw_only=True, slots=True)
class BlockChange:
    """Outcome of blocking a key, which adds a block or renews the key's active one."""

    block: BlockRecord  # the block as stored after the change
    previous: BlockRecord | None = None  # the renewed block before it, None when new

    @property
    def extended(self) -> bool:
        """Return True when a renewed block now expires later than before."""
        return self.previous is not None and self.block.expires_at != self.previous.expires_at


@dataclass(frozen=True, kw_only=True, slots=True)
class ImportRecord:
    """The last import of the prefix table or of a trunk's rate deck."""

    dataset: str  # DATASET_PREFIXES or DATASET_RATES
    trunk: str  # "" for the prefix table
    source: str  # where the rows came from, usually the CSV path
    row_count: int
    imported_at: datetime


@dataclass(frozen=True, kw_only=True, slots=True)
class HangupRecord:
    """A hang-up that callguard requested on a trunk leg, and why."""

    id: int | None = None  # assigned by the store
    requested_at: datetime
    trunk: str
    uniqueid: str  # trunk leg
    channel: str  # trunk leg channel name, e.g. PJSIP/gamma-00000013
    number: str  # the dialled number or its E.164 form, "" when unknown
    reason: str  # e.g. limit:daily, limit:weekly, limit:duration, barred:premium
    daily_spend: Decimal | None  # today's spend on the trunk, None if no limit known
    weekly_spend: Decimal | None  # the same for the ISO week
    call_cost: Decimal  # what the call had cost until then
    outcome: str  # OUTCOME_REQUESTED, OUTCOME_GONE or OUTCOME_FAILED

    def __post_init__(self) -> None:
        check_aware(self.requested_at, "requested_at")
        for field in ("trunk", "uniqueid", "channel", "reason"):
            check_text(getattr(self, field), field)
        check_text(self.number, "number", empty=True)

        _check_optional(self.daily_spend, check_money, "daily_spend")
        _check_optional(self.weekly_spend, check_money, "weekly_spend")
        check_money(self.call_cost, "call_cost")
        _check_choice(self.outcome, "outcome", HANGUP_OUTCOMES)
