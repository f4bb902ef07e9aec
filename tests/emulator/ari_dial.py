"""Outbound calls: a phone dials through the dialplan, and call forwards.

The events follow ari-events-subscribeall.jsonl in tests/fixtures/asterisk/:
the caller runs Set(), the AGI check and Dial(), then the dialled leg appears.
A forward follows do_forward() in Asterisk's apps/app_dial.c.
"""

import logging
from typing import NamedTuple

from .ari_causes import CAUSE_NORMAL_CLEARING
from .ari_events import Event
from .ari_model import (
    DEFAULT_CONTEXT,
    STATE_DOWN,
    STATE_RING,
    TECH_LOCAL,
    TECH_PJSIP,
    Channel,
    Party,
)
from .ari_state import (
    APP_DIAL,
    DIALSTATUS_CANCEL,
    OUTGOING_LINE,
    VAR_DIALSTATUS,
    CallState,
    EmulatedCall,
    SwitchState,
)

logger = logging.getLogger(__name__)

OUTBOUND_CONTEXT = "outbound"
CHECK_AGI_URL = "agi://127.0.0.1:4573/check"
RESULT_VARIABLE = "CALLGUARD_RESULT"
RESULT_ALLOW = "ALLOW"
AGISTATUS_SUCCESS = "SUCCESS"

# Set empty by Dial() on the calling channel before it creates the dialled leg.
DIAL_VARIABLES = (
    VAR_DIALSTATUS,
    "DIALEDPEERNUMBER",
    "DIALEDPEERNAME",
    "ANSWEREDTIME",
    "ANSWEREDTIME_MS",
    "DIALEDTIME",
    "DIALEDTIME_MS",
    "RINGTIME",
    "RINGTIME_MS",
    "PROGRESSTIME",
    "PROGRESSTIME_MS",
)

TECHS = (TECH_PJSIP, TECH_LOCAL)


class WithheldDial(NamedTuple):
    """The channels of a Dial() that ``withhold_leg`` keeps out of the channel list."""

    channels: list[Channel]
    caller: Channel
    # The caller's (app_name, app_data, priority) at its Dial().
    dial_location: tuple[str, str, int]


def default_dialstring(tech: str, trunk: str, number: str) -> str:
    """Return ``<trunk>/<number>`` for PJSIP or ``<number>@<trunk>`` for Local."""
    if tech == TECH_LOCAL:
        return f"{number}@{trunk}"
    return f"{trunk}/{number}"


def _inherited_name(name: str) -> str | None:
    """Return the name that a child channel gets for ``name``, or None.

    ``__X`` reaches every later channel under the same name, while ``_X``
    reaches only the next one, as ``X``.
    """
    if name.startswith("__"):
        return name
    if name.startswith("_"):
        return name[1:]
    return None


class DialFlows(SwitchState):
    """Outbound calls up to the Dial event, and forwards of their dialled leg."""

    def dial_out(
        self,
        number: str,
        *,
        trunk: str,
        caller_endpoint: str,
        callerid: str,
        tech: str,
        dialstring: str | None,
        variables: dict[str, str],
    ) -> tuple[EmulatedCall, list[Event]]:
        """Run a phone's outbound call through the dialplan up to the Dial."""
        if tech not in TECHS:
            raise ValueError(f"invalid tech {tech!r}. Use one of {', '.join(TECHS)}")
        if not number:
            raise ValueError("number must not be empty")

        caller = self.factory.create(
            TECH_PJSIP,
            caller_endpoint,
            state=STATE_RING,
            context=OUTBOUND_CONTEXT,
            exten=number,
        )
        caller.caller = Party("", callerid)
        self._add_channel(caller)
        events = [self.builder.channel_created(caller)]

        priority = 1
        note = f"CallGuard {OUTBOUND_CONTEXT} {number} on {caller.name}"
        events.append(self._run_app(caller, "NoOp", note, priority))

        for name, value in variables.items():
            priority += 1
            events.append(self._run_app(caller, "Set", f"{name}={value}", priority))
            events.append(self._varset(caller, name, value))

        priority += 1
        events.append(self._run_app(caller, "AGI", CHECK_AGI_URL, priority))
        events.append(self._varset(caller, RESULT_VARIABLE, RESULT_ALLOW))
        events.append(self._varset(caller, "AGISTATUS", AGISTATUS_SUCCESS))

        priority += 1
        summary = f"AGISTATUS={AGISTATUS_SUCCESS} {RESULT_VARIABLE}={RESULT_ALLOW}"
        events.append(self._run_app(caller, "NoOp", summary, priority))

        if dialstring is None:
            dialstring = default_dialstring(tech, trunk, number)

        priority += 1
        events.append(self._run_app(caller, "Dial", f"{tech}/{dialstring},,", priority))
        events += [self._varset(caller, name, "") for name in DIAL_VARIABLES]

        inherited = [
            (child_name, value)
            for name, value in variables.items()
            if (child_name := _inherited_name(name)) is not None
        ]
        state, leg_events = self._dial_leg(
            caller, tech, trunk, number, dialstring, inherited
        )
        events += leg_events
        events.append(
            self.builder.dial(caller=caller, peer=state.trunk, dialstring=dialstring)
        )
        events += self._device_in_use(state)

        logger.info(
            "%s dials %s through %s (dialstring %s)",
            caller.name,
            number,
            state.trunk.name,
            dialstring,
        )
        return state.call, events

    def withhold_leg(self, call: EmulatedCall) -> WithheldDial:
        """Take the channels that ``dial_out`` prepared for Dial() out of the channel
        list, and show the caller at its AGI() check again.

        Asterisk creates them at Dial(), after the check, so GET /ari/channels
        must show neither them nor the caller in Dial() while the check runs.
        ``release_leg`` puts them back and moves the caller on to its Dial().
        """
        state = self.state_for(call)
        caller = state.caller
        withheld = WithheldDial(
            [channel for channel in state.channels() if channel is not caller],
            caller,
            (caller.app_name, caller.app_data, caller.priority),
        )
        for channel in withheld.channels:
            self.channels.pop(channel.id, None)
        # The caller runs AGI(), then a NoOp(), then Dial().
        caller.set_location("AGI", CHECK_AGI_URL, caller.priority - 2)
        return withheld

    def release_leg(self, withheld: WithheldDial) -> None:
        """Undo ``withhold_leg``: list the channels again, with the caller in Dial()."""
        for channel in withheld.channels:
            self.channels[channel.id] = channel
        withheld.caller.set_location(*withheld.dial_location)

    def reject_before_dial(self, call: EmulatedCall, cause: int) -> list[Event]:
        """End a caller whose check answered DENY: ``Hangup(cause)`` in place of Dial().

        The trunk leg that ``dial_out`` prepared is dropped, its events unsent;
        the caller's events from the Hangup on are returned.
        """
        state = self.state_for(call)
        for channel in state.channels():
            if channel is not state.caller:
                self.channels.pop(channel.id, None)
        self._forget(state)

        caller = state.caller
        return [
            self._run_app(caller, "Hangup", str(cause), caller.priority),
            self.builder.hangup_request(caller, cause),
            self._destroy(caller, cause),
        ]

    def _dial_leg(
        self,
        caller: Channel,
        tech: str,
        trunk: str,
        number: str,
        dialstring: str,
        inherited: list[tuple[str, str]],
        forwarded: bool = False,
    ) -> tuple[CallState, list[Event]]:
        """Create the dialled leg and the events before its Dial event.

        Dial() gives a leg the caller's extension, but not a leg that follows
        a forward (do_forward() in apps/app_dial.c).
        """
        peer: Channel | None = None
        device = None
        if tech == TECH_LOCAL:
            exten, _, context = dialstring.partition("@")
            leg, peer = self.factory.create_local_pair(exten, context or trunk)
            device = f"{TECH_LOCAL}/{dialstring}"
        else:
            leg = self.factory.create(
                tech, trunk, state=STATE_DOWN, context=DEFAULT_CONTEXT, exten=number
            )

        events = [self.builder.channel_created(leg)]
        if peer is not None:
            events.append(self.builder.channel_created(peer))

        events += self._inherit(leg, dialstring, inherited)
        # Dial() gives the new leg the caller's extension, also as its caller
        # ID because no channel driver here sets one, and copies the caller's
        # caller ID to the leg's connected line (apps/app_dial.c).
        if not forwarded:
            leg.exten = caller.exten
        leg.caller = Party("", caller.exten)
        leg.connected = Party(caller.caller.name, caller.caller.number)
        events.append(self._run_app(leg, APP_DIAL, OUTGOING_LINE, 1))
        events.append(self.builder.channel_caller_id(leg))

        if peer is not None:
            events += self._inherit(peer, dialstring, inherited)
            peer.connected = Party(leg.caller.name, leg.caller.number)
            events.append(self.builder.channel_connected_line(peer))

        call = EmulatedCall(
            caller_id=caller.id,
            caller_name=caller.name,
            trunk_id=leg.id,
            trunk_name=leg.name,
            number=number,
            dialstring=dialstring,
        )
        state = CallState(
            call=call,
            trunk=leg,
            caller=caller,
            trunk_peer=peer,
            dialed_at=self.factory.now(),
            device=device,
            trunk_endpoint=trunk,
            inherited=inherited,
        )
        self._register(state)
        return state, events

    def _inherit(
        self, channel: Channel, dialstring: str, inherited: list[tuple[str, str]]
    ) -> list[Event]:
        events = [self._varset(channel, "DIALEDPEERNUMBER", dialstring)]

        # Asterisk lists a channel's variables newest first, and its snapshot
        # shows inherited values only after their ChannelVarset events.
        for name, value in reversed(inherited):
            events.append(self.builder.channel_varset(channel, name, value))
        for name, value in inherited:
            channel.set_variable(name, value)

        return events

    def dial_onward(
        self, call: EmulatedCall, number: str, *, trunk: str, dialstring: str | None
    ) -> tuple[EmulatedCall, list[Event]]:
        """Run Dial() on the ;2 half of the Local leg of ``call``, toward ``trunk``.

        Dial(Local/<number>@<context>), or an originate of that Local
        channel, leaves the ;2 half in the dialplan at <number>@<context>,
        where it dials the real trunk. The new call's
        caller is that ;2 half, whose Local pair links it to ``call``.
        """
        outer = self.state_for(call)
        local_half = outer.trunk_peer
        if local_half is None or outer.answered or outer.onward is not None:
            raise ValueError(
                f"call on {call.trunk_name} cannot dial onward: only a ringing "
                "Local call that has not dialled onward yet can"
            )
        if not number:
            raise ValueError("number must not be empty")
        if dialstring is None:
            dialstring = default_dialstring(TECH_PJSIP, trunk, number)

        if outer.caller is not None:
            # An originated pair has no caller: its ;2 half keeps the caller ID
            # that the originate gave it.
            local_half.caller = Party(outer.caller.caller.name, outer.caller.caller.number)
        priority = local_half.priority + 1
        events = [self._run_app(local_half, "Dial", f"{TECH_PJSIP}/{dialstring},,", priority)]
        events += [self._varset(local_half, name, "") for name in DIAL_VARIABLES]
        state, leg_events = self._dial_leg(
            local_half, TECH_PJSIP, trunk, number, dialstring, outer.inherited
        )
        events += leg_events
        events.append(
            self.builder.dial(caller=local_half, peer=state.trunk, dialstring=dialstring)
        )
        state.outer = outer
        outer.onward = state
        logger.info(
            "%s dials %s through %s (dialstring %s)",
            local_half.name,
            number,
            state.trunk.name,
            dialstring,
        )
        return state.call, events

    def dial_parallel(
        self, call: EmulatedCall, number: str, *, trunk: str, dialstring: str | None
    ) -> tuple[EmulatedCall, list[Event]]:
        """Add a leg to the Dial() of ``call`` that rings at the same time, as
        Dial(PJSIP/a@gamma&PJSIP/b@delta) does.

        dial_exec_full() in apps/app_dial.c creates and calls each destination
        in turn, with a Dial event for each (dialstring, empty dialstatus).
        NOTE: Asterisk creates every leg before the first Dial event, while
        here the new leg's events follow the first leg's Dial event.
        """
        first = self.state_for(call)
        if first.caller is None or first.answered or first.trunk_peer is not None:
            raise ValueError(
                f"call on {call.trunk_name} cannot ring a second leg: only a ringing "
                "PJSIP call that a phone dialled can"
            )
        if not number:
            raise ValueError("number must not be empty")
        if dialstring is None:
            dialstring = default_dialstring(TECH_PJSIP, trunk, number)

        caller = first.caller
        state, events = self._dial_leg(
            caller, TECH_PJSIP, trunk, number, dialstring, first.inherited
        )
        state.dialed_at = first.dialed_at
        events.append(
            self.builder.dial(caller=caller, peer=state.trunk, dialstring=dialstring)
        )
        group = [first, *first.siblings]
        for member in group:
            member.siblings.append(state)
        state.siblings = group
        logger.info(
            "%s also rings %s through %s (dialstring %s)",
            caller.name,
            number,
            state.trunk.name,
            dialstring,
        )
        return state.call, events

    def dial_again(
        self, call: EmulatedCall, number: str, *, trunk: str, dialstring: str | None
    ) -> tuple[EmulatedCall, list[Event]]:
        """Run the next Dial() of the caller whose Dial() for ``call`` failed.

        A dialplan that fails over runs a second Dial() on the same channel,
        with no new check, after the first returned BUSY, CONGESTION or
        CHANUNAVAIL. That Dial() clears the DIAL_VARIABLES again and creates
        a new leg, as in ``dial_out`` (dial_exec_full() in apps/app_dial.c).
        """
        failed = self.waiting_callers.pop(call.caller_id or "", None)
        if failed is None or failed.call != call:
            raise ValueError(
                f"call on {call.trunk_name} has no caller waiting to dial again. "
                "Pass a call that fail() ended with caller_continues=True"
            )
        if not number:
            raise ValueError("number must not be empty")
        if dialstring is None:
            dialstring = default_dialstring(TECH_PJSIP, trunk, number)

        caller = failed.caller
        assert caller is not None
        priority = caller.priority + 1
        events = [self._run_app(caller, "Dial", f"{TECH_PJSIP}/{dialstring},,", priority)]
        events += [self._varset(caller, name, "") for name in DIAL_VARIABLES]
        state, leg_events = self._dial_leg(
            caller, TECH_PJSIP, trunk, number, dialstring, failed.inherited
        )
        events += leg_events
        events.append(
            self.builder.dial(caller=caller, peer=state.trunk, dialstring=dialstring)
        )
        logger.info(
            "%s dials %s again through %s (dialstring %s)",
            caller.name,
            number,
            state.trunk.name,
            dialstring,
        )
        return state.call, events

    def end_waiting_caller(self, call: EmulatedCall, cause: int) -> list[Event]:
        """Hang up the caller whose Dial() for ``call`` failed, with no other Dial()."""
        failed = self.waiting_callers.pop(call.caller_id or "", None)
        if failed is None or failed.call != call:
            raise ValueError(
                f"call on {call.trunk_name} has no caller waiting to dial again. "
                "Pass a call that fail() ended with caller_continues=True"
            )
        caller = failed.caller
        assert caller is not None
        return [
            self._run_app(caller, "Hangup", "", caller.priority + 1),
            self.builder.hangup_request(caller, cause),
            self._destroy(caller, cause),
        ]

    def forward(
        self, call: EmulatedCall, new_number: str
    ) -> tuple[EmulatedCall, list[Event]]:
        """Replace the ringing trunk leg by a new one, as Dial() follows a 302."""
        state = self.state_for(call)
        if state.caller is None or state.answered:
            raise ValueError(
                f"call on {call.trunk_name} cannot be forwarded: only a dialled, "
                "unanswered call can"
            )
        if not new_number:
            raise ValueError("new_number must not be empty")

        old_leg = state.trunk
        if call.number in call.dialstring:
            dialstring = call.dialstring.replace(call.number, new_number)
        else:
            dialstring = default_dialstring(
                old_leg.tech, state.trunk_endpoint, new_number
            )

        new_state, events = self._dial_leg(
            state.caller,
            old_leg.tech,
            state.trunk_endpoint,
            new_number,
            dialstring,
            state.inherited,
            forwarded=True,
        )
        new_state.dialed_at = state.dialed_at
        caller = state.caller

        # app_dial.c do_forward(): the Dial to the new leg first, then the
        # CANCEL of the old leg that names the forward and the new channel.
        new_dial = self.builder.dial(
            caller=caller, peer=new_state.trunk, dialstring=dialstring
        )
        events.append(new_dial)
        events.append(
            self.builder.dial(
                caller=caller,
                peer=old_leg,
                forwarded=new_state.trunk,
                dialstatus=DIALSTATUS_CANCEL,
                forward=f"{old_leg.tech}/{dialstring}",
            )
        )

        # NOTE: no capture shows the cause of the forwarded leg, so 16 is assumed.
        events += self._end_trunk(state, CAUSE_NORMAL_CLEARING)
        events += self._device_not_in_use(state)
        self._forget(state)
        events += self._device_in_use(new_state)

        logger.info("%s forwarded to %s", old_leg.name, new_state.trunk.name)
        return new_state.call, events
