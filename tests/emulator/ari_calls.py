"""The starts of emulated calls: outbound dials, answers, inbound calls, originates.

Each flow changes the emulated channels and returns the events in the order
that the captures in tests/fixtures/asterisk/ show. A dialled call follows
ari-events-subscribeall.jsonl; an originate follows ari-events-s3-ari-originate.jsonl.
"""

import logging

from tests.emulator.ari_events import Event
from tests.emulator.ari_model import (
    CAUSE_NORMAL_CLEARING,
    DEFAULT_CONTEXT,
    STATE_DOWN,
    STATE_RING,
    STATE_RINGING,
    STATE_UP,
    TECH_LOCAL,
    TECH_PJSIP,
    Channel,
    Party,
)
from tests.emulator.ari_state import (
    APP_DIAL,
    APP_DIAL2,
    DIALSTATUS_ANSWER,
    DIALSTATUS_CANCEL,
    OUTGOING_LINE,
    VAR_BRIDGEPEER,
    VAR_DIALSTATUS,
    CallState,
    EmulatedCall,
    OriginateError,
    OriginateRequest,
)
from tests.emulator.ari_teardown import VAR_STASISSTATUS, CallTeardown

logger = logging.getLogger(__name__)

OUTBOUND_CONTEXT = "outbound"
INBOUND_CONTEXT = "from-trunk"
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

# What the far end of a Local trunk leg runs in the captures: Answer, then Wait.
_FAR_END_WAIT = ("Wait", "3600")

# What `channel originate ... application Wait 20` runs once answered.
_CLI_ORIGINATE_APP = ("Wait", "20")

# AST_MAX_PUBLIC_UNIQUEID in Asterisk's include/asterisk/channel.h.
MAX_PUBLIC_UNIQUEID = 149

TECHS = (TECH_PJSIP, TECH_LOCAL)


def _inherited_name(name: str) -> str | None:
    """Return the name that a child channel gets for ``name``, or None.

    ``__X`` reaches every later channel under the same name; ``_X`` reaches
    only the next one, as ``X``.
    """
    if name.startswith("__"):
        return name
    if name.startswith("_"):
        return name[1:]
    return None


def _parse_caller_id(text: str) -> Party:
    """Split ``"Name" <number>`` or a bare number as ast_callerid_parse() does."""
    if "<" in text and text.rstrip().endswith(">"):
        name, _, rest = text.partition("<")
        return Party(name.strip().strip('"'), rest.rstrip()[:-1].strip())

    if any(character.isdigit() for character in text):
        return Party("", text.strip())

    return Party(text.strip().strip('"'), "")


class CallSwitch(CallTeardown):
    """Every call flow of the emulated Asterisk."""

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
            raise ValueError(f"invalid tech {tech!r}; use one of {', '.join(TECHS)}")
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
            dialstring = (
                f"{number}@{trunk}" if tech == TECH_LOCAL else f"{trunk}/{number}"
            )

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

    def _run_app(self, channel: Channel, app: str, data: str, priority: int) -> Event:
        channel.set_location(app, data, priority)
        return self.builder.channel_dialplan(channel)

    def _dial_leg(
        self,
        caller: Channel,
        tech: str,
        trunk: str,
        number: str,
        dialstring: str,
        inherited: list[tuple[str, str]],
    ) -> tuple[CallState, list[Event]]:
        """Create the dialled leg and the events before its Dial event."""
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
        # Dial() gives the new leg the caller's caller ID, or the dialled
        # extension when the caller has none, as captured.
        leg.caller = Party(caller.caller.name, caller.caller.number or number)
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
            events = self._answer_without_caller(state)
            state.answered_at = self.factory.now()
            return events

        caller, leg, peer = state.caller, state.trunk, state.trunk_peer
        events: list[Event] = []
        if peer is not None:
            events.append(self._run_app(peer, "Answer", "", 1))
            events.append(self._set_state(peer, STATE_UP))

        events.append(self._set_state(leg, STATE_UP))
        events.append(self._varset(caller, VAR_DIALSTATUS, DIALSTATUS_ANSWER))
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
        if peer is not None:
            events.append(self._run_app(peer, *_FAR_END_WAIT, 2))

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

        if call.number in call.dialstring:
            dialstring = call.dialstring.replace(call.number, new_number)
        else:
            dialstring = f"{call.dialstring}/{new_number}"

        old_leg = state.trunk
        new_state, events = self._dial_leg(
            state.caller,
            old_leg.tech,
            state.trunk_endpoint,
            new_number,
            dialstring,
            state.inherited,
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

        # NOTE: no capture shows the cause of the forwarded leg; 16 is assumed.
        events += self._end_trunk(state, CAUSE_NORMAL_CLEARING)
        events += self._device_not_in_use(state)
        self._forget(state)
        events += self._device_in_use(new_state)

        logger.info("%s forwarded to %s", old_leg.name, new_state.trunk.name)
        return new_state.call, events
