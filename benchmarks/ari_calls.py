"""Outbound calls as the ARI events that Asterisk sends, for callguard in-process.

The events come from the ARI emulator's call flows in tests/emulator, which copy
traffic recorded from Asterisk 22.10.1: the caller's dialplan with the check,
Dial(), the PJSIP trunk leg, the answer with its bridge, and both hang-ups.
Each event goes through JSON, as it does on the websocket, so callguard gets
freshly decoded objects. The check runs as the FastAGI check runs it, without
the socket: PolicyEngine.decide() and then LiveGuard.note_decision().
"""

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from ari_pbx import (  # noqa: E402
    APP,
    CALLER_ID,
    CHANNELVARS,
    caller_endpoint,
    dialled_number,
)
from emulator.ari_causes import CAUSE_NORMAL_CLEARING  # noqa: E402
from emulator.ari_events import Event, EventBuilder  # noqa: E402
from emulator.ari_hub import encode_json  # noqa: E402
from emulator.ari_model import ChannelFactory  # noqa: E402
from emulator.ari_state import EmulatedCall  # noqa: E402
from emulator.ari_switch import Switch  # noqa: E402

from callguard.daemon.app import Application  # noqa: E402
from callguard.policy.decision import ALLOW, CallRequest  # noqa: E402

SIDE_CALLER = "caller"


def decode(events: list[Event]) -> list[dict]:
    """Return ``events`` encoded as on the wire and parsed, as callguard gets them."""
    return [json.loads(encode_json(event.for_application(APP))) for event in events]


class CallSource:
    """Places, answers and ends emulated calls on the system clock, checked by ``app``.

    With ``keep_calls`` False, the emulator forgets each call once it is
    answered, so that a run with thousands of live calls measures callguard's
    memory and not the emulator's. Such calls cannot be hung up, and each must
    be answered before the next is dialled.
    """

    def __init__(self, app: Application, *, keep_calls: bool = True):
        self.app = app
        self.keep_calls = keep_calls
        self._factory = ChannelFactory(lambda: datetime.now(timezone.utc))
        self._builder = EventBuilder(CHANNELVARS, self._factory.now)
        self._switch = Switch(self._factory, self._builder)
        self._placed = 0

    async def dial(self, trunk: str) -> tuple[EmulatedCall, list[dict]]:
        """Run the caller's dialplan, the check and Dial() on ``trunk``.

        Raises RuntimeError when the check denies the call, because every
        benchmark call must be allowed for its figures to mean anything.
        """
        index = self._placed
        self._placed += 1
        number = dialled_number(index)
        if not self.keep_calls:
            # Channel names and ids stay unique: the factory numbers them.
            self._switch = Switch(self._factory, self._builder)

        call, events = self._switch.dial_out(
            number,
            trunk=trunk,
            caller_endpoint=caller_endpoint(index),
            callerid=CALLER_ID,
            tech="PJSIP",
            dialstring=f"{number}@{trunk}",
            variables={},
        )
        request = CallRequest(
            trunk=trunk,
            dialled=number,
            caller=CALLER_ID,
            uniqueid=call.caller_id,
            channel=call.caller_name,
        )
        decision = await self.app.engine.decide(request)
        self.app.guard.note_decision(request, decision)
        if decision.result != ALLOW:
            raise RuntimeError(
                f"the check denied {number} on {trunk} ({decision.reason}), but every "
                "benchmark call must be allowed: update the config in ari_pbx.py"
            )
        return call, decode(events)

    def answer(self, call: EmulatedCall) -> list[dict]:
        return decode(self._switch.answer(call))

    def hang_up(self, call: EmulatedCall) -> list[dict]:
        """End ``call`` from the caller's side with cause 16, normal clearing."""
        if not self.keep_calls:
            raise RuntimeError(
                "this CallSource forgets its calls, so it cannot end them"
            )
        return decode(self._switch.hangup(call, SIDE_CALLER, CAUSE_NORMAL_CLEARING))
