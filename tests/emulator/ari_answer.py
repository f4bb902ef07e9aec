"""Answers of emulated calls, ringing, and calls that arrive from the trunk.

An answered dialled call follows ari-events-subscribeall.jsonl and an answered
originate follows ari-events-s3-ari-originate.jsonl in tests/fixtures/asterisk/.
"""

import logging

from .ari_causes import CAUSE_ANSWERED_ELSEWHERE
from .ari_events import Event
from .ari_model import (
    STATE_RING,
    STATE_RINGING,
    STATE_UP,
    TECH_PJSIP,
    Party,
)
from .ari_state import (
    DIALSTATUS_ANSWER,
    DIALSTATUS_CANCEL,
    VAR_BRIDGEPEER,
    VAR_DIALSTATUS,
    VAR_STASISSTATUS,
    CallState,
    EmulatedCall,
    SwitchState,
)

logger = logging.getLogger(__name__)

INBOUND_CONTEXT = "from-trunk"

# What the far end of a Local trunk leg runs in the captures: Answer, then Wait.
FAR_END_WAIT = ("Wait", "3600")


class AnswerFlows(SwitchState):
    """Ringing and answering of every kind of call, and inbound calls."""

    def ring(self, call: EmulatedCall) -> list[Event]:
        state = self.state_for(call)
        if state.answered:
            raise ValueError(f"call on {call.trunk_name} is already answered")

        return [self._set_state(state.trunk, STATE_RINGING)]

    def answer(self, call: EmulatedCall) -> list[Event]:
        """Answer the trunk leg and bridge it to the caller as Dial() does."""
        state = self.state_for(call)
        if state.answered:
            raise ValueError(f"call on {call.trunk_name} is already answered")

        if state.caller is None:
            answered = self._answer_without_caller(state)
            state.answered_at = self.factory.now()
            return answered
        if state.onward is not None:
            raise ValueError(
                f"call on {call.trunk_name} dialled onward, so answer the onward call"
            )

        events = self._answer_dialled(state)
        if state.outer is not None:
            # The ;2 half that dialled is up now, so its ;1 half answers the
            # Local call it belongs to.
            events += self._answer_dialled(state.outer)
        return events

    def _answer_dialled(self, state: CallState) -> list[Event]:
        call = state.call
        caller, leg, peer = state.caller, state.trunk, state.trunk_peer
        # A far end that dialled onward is already up as the onward caller.
        far_end_answers = peer is not None and state.onward is None
        events: list[Event] = []
        if far_end_answers:
            events.append(self._run_app(peer, "Answer", "", 1))
            events.append(self._set_state(peer, STATE_UP))

        events.append(self._set_state(leg, STATE_UP))
        # wait_for_answer() in apps/app_dial.c sends a CANCEL Dial event for
        # every other leg, and dial_exec_full() hangs them up with cause 26
        # (hanguptree()) after it sets DIALSTATUS and before the ANSWER event.
        siblings, state.siblings = state.siblings, []
        events += [
            self.builder.dial(caller=caller, peer=sibling.trunk, dialstatus=DIALSTATUS_CANCEL)
            for sibling in siblings
        ]
        events.append(self._varset(caller, VAR_DIALSTATUS, DIALSTATUS_ANSWER))
        for sibling in siblings:
            sibling.siblings = []
            events += self._end_trunk(sibling, CAUSE_ANSWERED_ELSEWHERE)
            self._forget(sibling)
        events.append(self._varset(caller, "DIALEDPEERNAME", leg.name))
        events.append(self._varset(caller, "DIALEDPEERNUMBER", call.dialstring))

        leg.exten = ""
        events.append(
            self.builder.dial(caller=caller, peer=leg, dialstatus=DIALSTATUS_ANSWER)
        )
        events.append(self._set_state(caller, STATE_UP))

        bridge = self.factory.create_bridge()
        state.bridge = bridge
        events.append(self.builder.bridge_created(bridge))
        events.append(self.builder.channel_dialplan(leg))

        bridge.channel_ids.append(leg.id)
        events.append(self.builder.entered_bridge(bridge, leg))
        bridge.channel_ids.append(caller.id)
        events.append(self.builder.entered_bridge(bridge, caller))

        events.append(self._varset(leg, VAR_BRIDGEPEER, caller.name))
        events.append(self._varset(caller, VAR_BRIDGEPEER, leg.name))
        if far_end_answers:
            events.append(self._run_app(peer, *FAR_END_WAIT, 2))

        state.answered_at = self.factory.now()
        logger.info("%s answered %s", leg.name, caller.name)
        return events

    def _answer_without_caller(self, state: CallState) -> list[Event]:
        leg = state.trunk
        if not state.originated:
            # An inbound call: the dialplan answers it.
            answer = self._run_app(leg, "Answer", "", leg.priority + 1)
            return [answer, self._set_state(leg, STATE_UP)]

        events: list[Event] = []
        if state.trunk_peer is not None:
            events.append(self._set_state(state.trunk_peer, STATE_UP))
        events.append(self._set_state(leg, STATE_UP))
        events.append(
            self.builder.dial(
                peer=leg,
                dialstatus=DIALSTATUS_ANSWER,
                dialstring=state.call.dialstring,
            )
        )

        if state.dialplan_target is not None:
            leg.context, leg.exten, leg.priority = state.dialplan_target
            leg.set_location("", "")
            return events

        if state.stasis_app is None:
            app_name, app_data = state.after_answer
            leg.set_location(app_name, app_data)
            return events

        app_data = ",".join([state.stasis_app, *state.stasis_args])
        leg.set_location("Stasis", app_data)
        events.append(self._varset(leg, VAR_STASISSTATUS, ""))
        leg.stasis_app = state.stasis_app
        leg.stasis_args = list(state.stasis_args)
        events.append(self.builder.stasis_start(leg))
        return events

    def inbound(
        self, *, trunk: str, callerid: str, exten: str
    ) -> tuple[EmulatedCall, list[Event]]:
        """Start a call that arrives from the trunk and waits in the dialplan."""
        leg = self.factory.create(
            TECH_PJSIP, trunk, state=STATE_RING, context=INBOUND_CONTEXT, exten=exten
        )
        leg.caller = Party("", callerid)
        call = EmulatedCall(None, None, leg.id, leg.name, exten, "")
        self._register(CallState(call=call, trunk=leg))

        note = f"inbound call to {exten} from {callerid}"
        events = [self.builder.channel_created(leg)]
        events.append(self._run_app(leg, "NoOp", note, 1))
        return call, events
