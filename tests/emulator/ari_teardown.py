"""The ends of emulated calls: hang-ups by a party, by ARI and unanswered calls.

The event order follows two captures of an answered call ended by
DELETE /ari/channels/{id}: on the trunk leg (ari-events-subscribeall.jsonl)
and on the caller leg with reason_code=21 (ari-events-s2-delete-caller-leg.jsonl).
The channel that hangs up first leaves the bridge and is destroyed with its
cause, then the other side follows with cause 16, Normal Clearing.
"""

import logging

from .ari_causes import (
    CAUSE_NO_ROUTE_DESTINATION,
    CAUSE_NORMAL_CIRCUIT_CONGESTION,
    CAUSE_NORMAL_CLEARING,
    CAUSE_SUBSCRIBER_ABSENT,
    CAUSE_USER_BUSY,
    SOFTHANGUP_EXPLICIT,
)
from .ari_events import Event
from .ari_model import Channel
from .ari_state import (
    DIALSTATUS_ANSWER,
    DIALSTATUS_BUSY,
    DIALSTATUS_CANCEL,
    DIALSTATUS_CHANUNAVAIL,
    DIALSTATUS_CONGESTION,
    DIALSTATUS_NOANSWER,
    STASISSTATUS_SUCCESS,
    VAR_BRIDGEPEER,
    VAR_DIALSTATUS,
    VAR_STASISSTATUS,
    CallState,
    EmulatedCall,
    SwitchState,
)

logger = logging.getLogger(__name__)

SIDE_CALLER = "caller"
SIDE_TRUNK = "trunk"

FAILED_DIALSTATUSES = (
    DIALSTATUS_NOANSWER,
    DIALSTATUS_BUSY,
    DIALSTATUS_CONGESTION,
    DIALSTATUS_CHANUNAVAIL,
    DIALSTATUS_CANCEL,
)


def dialstatus_for_cause(cause: int) -> str:
    """Return the DIALSTATUS that Dial reports when the dialled leg hangs up first.

    NOTE: this copy of ast_hangup_cause_to_dial_status() in Asterisk's
    main/dial.c is not checked against the 22.10.1 source.
    """
    if cause == CAUSE_USER_BUSY:
        return DIALSTATUS_BUSY

    if cause == CAUSE_NORMAL_CIRCUIT_CONGESTION:
        return DIALSTATUS_CONGESTION

    if cause in (CAUSE_NO_ROUTE_DESTINATION, CAUSE_SUBSCRIBER_ABSENT):
        return DIALSTATUS_CHANUNAVAIL

    return DIALSTATUS_NOANSWER


class CallTeardown(SwitchState):
    """Hang-up flows, on top of the channels and calls of SwitchState."""

    def delete_channel(self, channel_id: str, cause: int) -> list[Event]:
        """End the call of ``channel_id`` as DELETE /ari/channels/{id} does.

        Raises KeyError for a channel that does not exist.
        """
        channel = self.channels[channel_id]
        state = self.state_for_channel(channel_id)
        request = self.builder.hangup_request(channel, SOFTHANGUP_EXPLICIT, soft=True)
        logger.info(
            "DELETE of channel %s (%s) ends its call, cause %d",
            channel.id,
            channel.name,
            cause,
        )
        return self._end_call(state, channel, request, cause)

    def hangup(self, call: EmulatedCall, side: str, cause: int) -> list[Event]:
        """End ``call`` because the party on ``side`` hung up with ``cause``."""
        state = self.state_for(call)
        if side == SIDE_CALLER:
            if state.caller is None:
                raise ValueError(
                    f"call on {call.trunk_name} has no caller leg, "
                    f"so hang it up with side={SIDE_TRUNK!r}"
                )
            channel = state.caller
        elif side == SIDE_TRUNK:
            channel = state.trunk
        else:
            raise ValueError(
                f"invalid side {side!r}. Use {SIDE_CALLER!r} or {SIDE_TRUNK!r}"
            )

        request = self.builder.hangup_request(channel, cause)
        return self._end_call(state, channel, request, cause)

    def fail(
        self,
        call: EmulatedCall,
        dialstatus: str,
        cause: int,
        *,
        caller_continues: bool = False,
    ) -> list[Event]:
        """End an unanswered call: the trunk leg gives up with ``cause``.

        With ``caller_continues`` the caller stays up after its Dial() returns,
        as a dialplan that fails over to another trunk keeps it, and
        ``dial_again`` can dial from it.
        """
        state = self.state_for(call)
        if state.answered:
            raise ValueError(
                f"call on {call.trunk_name} was answered, so end it with hangup()"
            )

        if dialstatus not in FAILED_DIALSTATUSES:
            raise ValueError(
                f"invalid dialstatus {dialstatus!r} for an unanswered call. "
                f"Use one of {', '.join(FAILED_DIALSTATUSES)}"
            )

        if state.onward is not None:
            raise ValueError(
                f"call on {call.trunk_name} dialled onward, so end the onward call"
            )
        if state.siblings:
            # Dial() goes on waiting for the other legs (wait_for_answer() in
            # apps/app_dial.c): only this leg ends.
            return self._end_sibling(state, dialstatus, cause)
        if caller_continues:
            if state.caller is None or state.outer is not None:
                raise ValueError(
                    f"call on {call.trunk_name} has no phone that dialled it, so its "
                    "caller cannot continue"
                )
            self.waiting_callers[state.caller.id] = state
        return self._end_unanswered(
            state, None, dialstatus, cause, caller_continues=caller_continues
        ) + self._end_outer(state, cause)

    def _end_sibling(self, state: CallState, dialstatus: str, cause: int) -> list[Event]:
        """End one leg of a Dial() that rings several: its Dial event with
        ``dialstatus``, then its end. The caller and the other legs stay."""
        for sibling in state.siblings:
            sibling.siblings.remove(state)
        state.siblings = []
        events = [
            self.builder.dial(caller=state.caller, peer=state.trunk, dialstatus=dialstatus),
            *self._end_trunk(state, cause),
        ]
        self._forget(state)
        return events

    def _end_call(
        self, state: CallState, channel: Channel, request: Event, cause: int
    ) -> list[Event]:
        if state.siblings:
            raise ValueError(
                f"call on {state.call.trunk_name} rings with other legs, so fail or "
                "answer one of them first"
            )
        if state.caller is None:
            return [request, *self._end_without_caller(state, cause)]
        if state.transferred_to is not None:
            return self._end_transferred(state, channel, request, cause)
        if state.onward is not None:
            raise ValueError(
                f"call on {state.call.trunk_name} dialled onward, so end the onward call"
            )

        side = SIDE_CALLER if channel is state.caller else SIDE_TRUNK
        if state.answered:
            return self._end_answered(state, side, request, cause) + self._end_outer(
                state, cause
            )

        if side == SIDE_CALLER:
            dialstatus = DIALSTATUS_CANCEL
        else:
            dialstatus = dialstatus_for_cause(cause)
        return [
            request,
            *self._end_unanswered(state, side, dialstatus, cause),
            *self._end_outer(state, cause),
        ]

    def _end_outer(self, state: CallState, cause: int) -> list[Event]:
        """End the Local call whose ;2 half dialled ``state``, once that half is gone.

        The ;1 half hangs up with the cause of its ;2 half, then the Local
        call ends as one whose trunk side hung up.
        """
        outer = state.outer
        if outer is None:
            return []
        outer.onward = None
        outer.trunk_peer = None
        request = self.builder.hangup_request(outer.trunk, cause)
        if outer.answered:
            return self._end_answered(outer, SIDE_TRUNK, request, cause)
        dialstatus = dialstatus_for_cause(cause)
        return [request, *self._end_unanswered(outer, SIDE_TRUNK, dialstatus, cause)]

    def _end_answered(
        self, state: CallState, side: str, request: Event, cause: int
    ) -> list[Event]:
        assert state.caller is not None and state.bridge is not None
        bridge = state.bridge
        if side == SIDE_CALLER:
            first, second = state.caller, state.trunk
        else:
            first, second = state.trunk, state.caller
        other_side = SIDE_TRUNK if side == SIDE_CALLER else SIDE_CALLER

        events = [request, self._varset(first, VAR_BRIDGEPEER, "")]
        if side == SIDE_TRUNK:
            events += self._device_not_in_use(state)
        events.append(self._varset(second, VAR_BRIDGEPEER, ""))

        bridge.channel_ids.remove(first.id)
        events.append(self.builder.left_bridge(bridge, first))
        events += self._end_side(state, side, cause)

        bridge.channel_ids.remove(second.id)
        events.append(self.builder.left_bridge(bridge, second))
        events += self._end_side(state, other_side, CAUSE_NORMAL_CLEARING)

        events.append(self.builder.bridge_destroyed(bridge))
        if side == SIDE_CALLER:
            events += self._device_not_in_use(state)

        self._forget(state)
        return events

    def _end_side(self, state: CallState, side: str, cause: int) -> list[Event]:
        if side == SIDE_TRUNK:
            return self._end_trunk(state, cause)

        assert state.caller is not None
        caller = state.caller
        answered_seconds, answered_ms = self._elapsed(state.answered_at)
        dialed_seconds, dialed_ms = self._elapsed(state.dialed_at)
        events = [
            self._varset(caller, "ANSWEREDTIME", answered_seconds),
            self._varset(caller, "ANSWEREDTIME_MS", answered_ms),
            self._varset(caller, "DIALEDTIME", dialed_seconds),
            self._varset(caller, "DIALEDTIME_MS", dialed_ms),
            self._varset(caller, VAR_DIALSTATUS, DIALSTATUS_ANSWER),
            # The Dial application ends, which requests the caller's hang-up.
            self.builder.hangup_request(caller, CAUSE_NORMAL_CLEARING, soft=True),
            self._destroy(caller, cause),
        ]
        return events

    def _end_unanswered(
        self,
        state: CallState,
        side: str | None,
        dialstatus: str,
        cause: int,
        *,
        caller_continues: bool = False,
    ) -> list[Event]:
        """End a call before answer. ``side`` is None when the trunk gave up.

        The caller is destroyed too, unless ``caller_continues``: then its
        Dial() returns with DIALSTATUS set and it stays in the dialplan.
        """
        if state.caller is None:
            return self._end_without_caller(state, cause, dialstatus)

        caller = state.caller
        dial_end = self.builder.dial(
            caller=caller, peer=state.trunk, dialstatus=dialstatus
        )
        events = [dial_end, *self._end_trunk(state, cause)]

        dialed_seconds, dialed_ms = self._elapsed(state.dialed_at)
        events += [
            self._varset(caller, "DIALEDTIME", dialed_seconds),
            self._varset(caller, "DIALEDTIME_MS", dialed_ms),
            self._varset(caller, VAR_DIALSTATUS, dialstatus),
        ]
        if not caller_continues:
            events.append(self._destroy(caller, cause))
        events += self._device_not_in_use(state)
        logger.debug(
            "unanswered call on %s ended by %s: %s, cause %d",
            state.trunk.name,
            side or SIDE_TRUNK,
            dialstatus,
            cause,
        )

        self._forget(state)
        return events

    def _end_without_caller(
        self, state: CallState, cause: int, dialstatus: str | None = None
    ) -> list[Event]:
        """End an inbound or originated call, which has only the trunk leg."""
        trunk = state.trunk
        events: list[Event] = []
        if trunk.stasis_app is not None:
            events.append(self.builder.stasis_end(trunk))
            events.append(self._varset(trunk, VAR_STASISSTATUS, STASISSTATUS_SUCCESS))
            trunk.stasis_app = None

        if state.originated and not state.answered:
            status = dialstatus or dialstatus_for_cause(cause)
            dial_end = self.builder.dial(
                peer=trunk, dialstatus=status, dialstring=state.call.dialstring
            )
            events.append(dial_end)

        events += self._end_trunk(state, cause)
        self._forget(state)
        return events
