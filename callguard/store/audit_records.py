"""Records of the ``audit`` table: operator changes and config reloads."""

from dataclasses import dataclass
from datetime import datetime

from callguard.store.records import check_text
from callguard.store.types import check_aware

ACTION_BLOCK = "block"
ACTION_UNBLOCK = "unblock"
ACTION_RESET = "reset"
ACTION_RELOAD = "reload"
AUDIT_ACTIONS = (ACTION_BLOCK, ACTION_UNBLOCK, ACTION_RESET, ACTION_RELOAD)


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditRecord:
    """One operator change (block, unblock, spend reset) or config reload, and why.

    ``subject`` names what changed, e.g. ``caller +441632960010`` or
    ``trunk gamma day 2024-06-14``. ``detail`` is the outcome in words.
    """

    id: int | None = None  # assigned by the store
    at: datetime
    action: str  # one of AUDIT_ACTIONS
    actor: str  # the operator's login name, or "callguard" for the daemon
    subject: str
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        check_aware(self.at, "at")
        if self.action not in AUDIT_ACTIONS:
            raise ValueError(
                f"action {self.action!r} is invalid; use one of {', '.join(AUDIT_ACTIONS)}"
            )
        check_text(self.actor, "actor")
        for field in ("subject", "reason", "detail"):
            check_text(getattr(self, field), field, empty=True)
