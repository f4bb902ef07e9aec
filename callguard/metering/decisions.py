"""Recent check decisions, by the uniqueid of the channel the AGI ran on."""

from collections import OrderedDict
from datetime import datetime, timedelta

from callguard.policy.decision import CallRequest, Decision

# Decisions kept for linking trunk legs: long enough for any ring time, and
# bounded so that a flood of checks cannot grow memory without end.
DECISION_LIFETIME = timedelta(hours=1)
MAX_DECISIONS = 200_000


class DecisionBook:
    def __init__(self) -> None:
        self._entries: OrderedDict[str, tuple[datetime, CallRequest, Decision]] = (
            OrderedDict()
        )

    def record(self, request: CallRequest, decision: Decision, at: datetime) -> None:
        if not request.uniqueid:
            return
        self._entries.pop(request.uniqueid, None)
        self._entries[request.uniqueid] = (at, request, decision)
        while len(self._entries) > MAX_DECISIONS:
            self._entries.popitem(last=False)
        while self._entries:
            oldest_at = next(iter(self._entries.values()))[0]
            if at - oldest_at <= DECISION_LIFETIME:
                break
            self._entries.popitem(last=False)

    def get(self, uniqueid: str) -> tuple[CallRequest, Decision] | None:
        entry = self._entries.get(uniqueid)
        return None if entry is None else (entry[1], entry[2])

    def __len__(self) -> int:
        return len(self._entries)
