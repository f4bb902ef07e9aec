"""Originated channels: POST /ari/channels and `channel originate` on the CLI.

The checks and messages of POST /ari/channels follow
ari_channels_handle_originate_with_id() in Asterisk's res/ari/resource_channels.c.
The events follow ari-events-s3-ari-originate.jsonl and the reply follows
ari-post-channels-originate.json in tests/fixtures/asterisk/.
"""

import logging

from .ari_events import Event
from .ari_model import (
    DEFAULT_CONTEXT,
    STATE_DOWN,
    TECH_LOCAL,
    TECH_PJSIP,
    Channel,
    Party,
)
from .ari_state import (
    APP_DIAL2,
    OUTGOING_LINE,
    CallState,
    EmulatedCall,
    OriginateError,
    OriginateRequest,
    SwitchState,
)

logger = logging.getLogger(__name__)

# What `channel originate ... application Wait 20` runs once answered.
CLI_ORIGINATE_APP = ("Wait", "20")

# AST_MAX_PUBLIC_UNIQUEID in Asterisk's include/asterisk/channel.h.
MAX_PUBLIC_UNIQUEID = 149


def parse_caller_id(text: str) -> Party:
    """Split ``"Name" <number>`` or a bare number as ast_callerid_parse() does."""
    if "<" in text and text.rstrip().endswith(">"):
        name, _, rest = text.partition("<")
        return Party(name.strip().strip('"'), rest.rstrip()[:-1].strip())

    if any(character.isdigit() for character in text):
        return Party("", text.strip())

    return Party(text.strip().strip('"'), "")


class OriginateFlows(SwitchState):
    """Channels created by an originate, without a calling channel."""

    def originate_out(
        self, number: str, *, trunk: str
    ) -> tuple[EmulatedCall, list[Event]]:
        """Create a trunk channel as `channel originate` on the CLI does."""
        leg = self.factory.create(TECH_PJSIP, trunk, state=STATE_DOWN)
        dialstring = f"{trunk}/{number}"
        call = EmulatedCall(None, None, leg.id, leg.name, number, dialstring)
        state = CallState(
            call=call,
            trunk=leg,
            originated=True,
            trunk_endpoint=trunk,
            after_answer=CLI_ORIGINATE_APP,
        )
        self._register(state)

        leg.set_location(APP_DIAL2, OUTGOING_LINE)
        events = [self.builder.channel_created(leg), self.builder.channel_dialplan(leg)]
        events.append(self.builder.dial(peer=leg, dialstring=dialstring))
        logger.info("originated %s to %s", leg.name, number)
        return call, events

    def originate(self, request: OriginateRequest) -> tuple[dict, list[Event]]:
        """Create the channel of POST /ari/channels; return its snapshot and events.

        Raises OriginateError with the status and message that Asterisk sends.
        """
        self._check_originate(request)
        tech, _, resource = request.endpoint.partition("/")

        peer: Channel | None = None
        if tech.lower() == TECH_LOCAL.lower():
            exten, _, location = resource.partition("@")
            context = location.partition("/")[0] or DEFAULT_CONTEXT
            leg, peer = self.factory.create_local_pair(
                exten,
                context,
                channel_id=request.channel_id or None,
                other_channel_id=request.other_channel_id or None,
            )
            number, endpoint = exten, context
        else:
            if "@" in resource:
                number, _, endpoint = resource.partition("@")
            else:
                endpoint, _, number = resource.partition("/")
            leg = self.factory.create(
                tech,
                endpoint,
                state=STATE_DOWN,
                channel_id=request.channel_id or None,
            )

        leg.set_location(APP_DIAL2, OUTGOING_LINE)
        events = [self.builder.channel_created(leg)]
        if peer is not None:
            events.append(self.builder.channel_created(peer))
        events.append(self.builder.channel_dialplan(leg))

        if request.caller_id:
            party = parse_caller_id(request.caller_id)
            for channel in [leg] if peer is None else [leg, peer]:
                channel.caller = Party(party.name, party.number)
                channel.connected = Party(party.name, party.number)
                events.append(self.builder.channel_caller_id(channel))
                events.append(self.builder.channel_connected_line(channel))

        for name, value in request.variables.items():
            events.append(self._varset(leg, name, value))

        # Asterisk subscribes the application to the channel and its Local peer
        # only after creating them, so ChannelCreated reaches only subscribeAll.
        if request.app:
            for channel in [leg] if peer is None else [leg, peer]:
                channel.subscribed_apps.add(request.app)
        events.append(self.builder.dial(peer=leg, dialstring=resource))

        target = None
        if not request.app:
            target_context = request.context or DEFAULT_CONTEXT
            target = (target_context, request.extension, request.priority or 1)

        call = EmulatedCall(None, None, leg.id, leg.name, number, resource)
        state = CallState(
            call=call,
            trunk=leg,
            trunk_peer=peer,
            originated=True,
            trunk_endpoint=endpoint,
            stasis_app=request.app or None,
            stasis_args=request.app_args.split(",") if request.app_args else [],
            dialplan_target=target,
        )
        self._register(state)

        logger.info("POST /ari/channels originated %s", leg.name)
        return leg.snapshot(self.builder.channelvars), events

    def _check_originate(self, request: OriginateRequest) -> None:
        for assigned in (request.channel_id, request.other_channel_id):
            if len(assigned) > MAX_PUBLIC_UNIQUEID:
                raise OriginateError(
                    400, f"Uniqueid length exceeds maximum of {MAX_PUBLIC_UNIQUEID}"
                )

        if not request.endpoint:
            raise OriginateError(400, "Endpoint must be specified")

        tech, _, resource = request.endpoint.partition("/")
        if not tech or not resource:
            raise OriginateError(400, "Invalid endpoint specified")

        if not request.app and not request.extension:
            raise OriginateError(400, "Application or extension must be specified")

        for assigned in (request.channel_id, request.other_channel_id):
            if assigned and assigned in self.channels:
                raise OriginateError(409, "Channel with given unique ID already exists")
