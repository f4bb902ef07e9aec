"""The live calls of the ARI emulator and the steps that every call flow shares."""

import logging
from dataclasses import dataclass, field
from datetime import datetime

from .ari_causes import CAUSE_NORMAL_CLEARING
from .ari_events import (
    DEVICE_INUSE,
    DEVICE_NOT_INUSE,
    Event,
    EventBuilder,
)
from .ari_model import Bridge, Channel, ChannelFactory

logger = logging.getLogger(__name__)

# Dialplan application names that Asterisk shows on outgoing channels: AppDial
# for a channel that Dial() created, AppDial2 for one that an originate created.
APP_DIAL = "AppDial"
APP_DIAL2 = "AppDial2"
OUTGOING_LINE = "(Outgoing Line)"
_OUTGOING_APPS = (APP_DIAL, APP_DIAL2)

VAR_BRIDGEPEER = "BRIDGEPEER"
VAR_DIALSTATUS = "DIALSTATUS"
VAR_STASISSTATUS = "STASISSTATUS"
STASISSTATUS_SUCCESS = "SUCCESS"

DIALSTATUS_ANSWER = "ANSWER"
DIALSTATUS_BUSY = "BUSY"
DIALSTATUS_CANCEL = "CANCEL"
DIALSTATUS_CHANUNAVAIL = "CHANUNAVAIL"
DIALSTATUS_CONGESTION = "CONGESTION"
DIALSTATUS_NOANSWER = "NOANSWER"


@dataclass
class EmulatedCall:
    """The channels of one emulated call, as a test refers to them.

    ``caller_id`` and ``caller_name`` are None for a call without a calling
    channel: an inbound call or an originate.
    """

    caller_id: str | None
    caller_name: str | None
    trunk_id: str
    trunk_name: str
    number: str
    dialstring: str


@dataclass
class CallState:
    """State of one call. ``trunk_peer`` is the ;2 half of a Local trunk leg."""

    call: EmulatedCall
    trunk: Channel
    caller: Channel | None = None
    trunk_peer: Channel | None = None
    bridge: Bridge | None = None
    dialed_at: datetime | None = None
    answered_at: datetime | None = None
    originated: bool = False

    # The Local device of a Local trunk leg, such as Local/0044123456@sink.
    device: str | None = None

    # The trunk name or Local context that the leg was dialled through.
    trunk_endpoint: str = ""

    # Variables that the caller passes on to every leg it dials.
    inherited: list[tuple[str, str]] = field(default_factory=list)

    # For an originate: the Stasis application and its arguments, or else the
    # dialplan location (context, extension, priority) or the application
    # that the channel runs once answered.
    stasis_app: str | None = None
    stasis_args: list[str] = field(default_factory=list)
    dialplan_target: tuple[str, str, int] | None = None
    after_answer: tuple[str, str] = ("", "")

    # For a call placed through a Local leg: the call that its ;2 half dialled
    # onward (``onward``), and for that call, the Local call it came from
    # (``outer``). Answering or ending the onward call does the same to the
    # Local call.
    onward: "CallState | None" = None
    outer: "CallState | None" = None

    # The other legs that the same Dial() rings at once, as
    # Dial(PJSIP/a@gamma&PJSIP/b@gamma) does. The first to answer wins, and
    # the others are cancelled.
    siblings: list["CallState"] = field(default_factory=list)

    # After a transfer: the phone bridged to the trunk leg now, which is also
    # ``caller``, and whether the trunk leg itself runs the Dial() to it, as
    # after a blind transfer.
    transferred_to: Channel | None = None
    transferee_dials: bool = False

    @property
    def answered(self) -> bool:
        return self.answered_at is not None

    def channels(self) -> list[Channel]:
        found = [self.caller, self.trunk, self.trunk_peer]
        return [channel for channel in found if channel is not None]


class CallNotFound(LookupError):
    pass


class SwitchState:
    """The channels and calls of the emulated Asterisk, and shared flow steps."""

    def __init__(self, factory: ChannelFactory, builder: EventBuilder):
        self.factory = factory
        self.builder = builder
        self.channels: dict[str, Channel] = {}
        self._calls: dict[str, CallState] = {}
        # Callers whose Dial() failed and that stay in the dialplan, by channel
        # id, with the state of the call that failed.
        self.waiting_callers: dict[str, CallState] = {}

    def restart(self) -> None:
        """Forget every channel and call, which end with the Asterisk process."""
        self.channels.clear()
        self._calls.clear()
        self.waiting_callers.clear()

    def state_for(self, call: EmulatedCall) -> CallState:
        state = self._calls.get(call.trunk_id)
        if state is None or state.call != call:
            raise CallNotFound(
                f"no live call has trunk leg {call.trunk_id} ({call.trunk_name}). "
                "Pass an EmulatedCall that the emulator returned and that has not ended"
            )

        return state

    def state_for_channel(self, channel_id: str) -> CallState:
        # Calls are keyed by their trunk leg, the channel most often named.
        state = self._calls.get(channel_id)
        if state is not None:
            return state
        for state in self._calls.values():
            if any(channel.id == channel_id for channel in state.channels()):
                return state

        raise CallNotFound(f"channel {channel_id} is not part of a live call")

    def call_for(self, channel_id: str) -> EmulatedCall:
        return self.state_for_channel(channel_id).call

    def _register(self, state: CallState) -> None:
        self._calls[state.trunk.id] = state
        for channel in state.channels():
            self.channels[channel.id] = channel

    def _add_channel(self, channel: Channel) -> None:
        self.channels[channel.id] = channel

    def _forget(self, state: CallState) -> None:
        self._calls.pop(state.trunk.id, None)

    def _elapsed(self, since: datetime | None) -> tuple[str, str]:
        """Return whole seconds and milliseconds since ``since`` as Dial sets them."""
        if since is None:
            return "", ""

        milliseconds = int((self.factory.now() - since).total_seconds() * 1000)
        return str(milliseconds // 1000), str(milliseconds)

    def _run_app(self, channel: Channel, app: str, data: str, priority: int) -> Event:
        channel.set_location(app, data, priority)
        return self.builder.channel_dialplan(channel)

    def _varset(self, channel: Channel, name: str, value: str) -> Event:
        channel.set_variable(name, value)
        return self.builder.channel_varset(channel, name, value)

    def _set_state(self, channel: Channel, state: str) -> Event:
        channel.state = state
        return self.builder.channel_state_change(channel)

    def _destroy(self, channel: Channel, cause: int) -> Event:
        # A channel that ran dialplan applications shows none once destroyed,
        # while AppDial and AppDial2 stay, as captured.
        if channel.app_name not in _OUTGOING_APPS:
            channel.set_location("", "")
        self.channels.pop(channel.id, None)
        logger.debug(
            "channel %s (%s) destroyed, cause %d", channel.id, channel.name, cause
        )
        return self.builder.channel_destroyed(channel, cause)

    def _device_events(self, state: CallState, device_state: str) -> list[Event]:
        # Asterisk sent every Local device state change twice in the captures.
        if state.device is None:
            return []

        event = self.builder.device_state_changed
        return [event(state.device, device_state), event(state.device, device_state)]

    def _device_in_use(self, state: CallState) -> list[Event]:
        return self._device_events(state, DEVICE_INUSE)

    def _device_not_in_use(self, state: CallState) -> list[Event]:
        return self._device_events(state, DEVICE_NOT_INUSE)

    def _end_trunk(self, state: CallState, cause: int) -> list[Event]:
        """Destroy the trunk leg and, for a Local leg, its ;2 half."""
        events: list[Event] = []
        peer = state.trunk_peer
        if peer is not None:
            events.append(self.builder.hangup_request(peer, cause))

        events.append(self._destroy(state.trunk, cause))

        if peer is not None:
            soft = self.builder.hangup_request(peer, CAUSE_NORMAL_CLEARING, soft=True)
            events.append(soft)
            events.append(self._destroy(peer, cause))

        return events


@dataclass
class OriginateRequest:
    """The parameters of POST /ari/channels, already merged from query and body."""

    endpoint: str = ""
    extension: str = ""
    context: str = ""
    priority: int = 0
    app: str = ""
    app_args: str = ""
    caller_id: str = ""
    channel_id: str = ""
    other_channel_id: str = ""
    variables: dict[str, str] = field(default_factory=dict)


class OriginateError(ValueError):
    """A rejected originate, with the HTTP status and message Asterisk sends."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message
