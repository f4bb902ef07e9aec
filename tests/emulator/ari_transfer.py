"""Blind and attended transfers of an answered call to another phone.

The trunk leg keeps its uniqueid and name through both. In a blind transfer of
a two-party bridge, Asterisk takes the transferee out of the bridge and sends
it to the transfer target with ast_async_goto() (bridge_channel_blind_transfer()
in main/bridge_channel.c), where it dials the phone. In the attended transfer
played here, the phone that was called takes the transferer's place in the
trunk leg's bridge, and the event names that bridge as its destination.
BridgeBlindTransfer and BridgeAttendedTransfer have their fields in the order
that blind_transfer_to_json() and attended_transfer_to_json() in
main/stasis_bridges.c add them.

NOTE: Asterisk can also complete an attended transfer by moving the trunk leg
into the other bridge, or by linking the bridges with a Local channel pair.
Those ways are not played here.
"""

import logging

from .ari_causes import CAUSE_NORMAL_CLEARING
from .ari_dial import DIAL_VARIABLES
from .ari_events import Event
from .ari_model import ASTERISK_ID, STATE_DOWN, STATE_UP, TECH_PJSIP, Bridge, Channel, Party
from .ari_state import (
    APP_DIAL,
    DIALSTATUS_ANSWER,
    OUTGOING_LINE,
    VAR_BRIDGEPEER,
    VAR_DIALSTATUS,
    CallState,
    EmulatedCall,
    SwitchState,
)

logger = logging.getLogger(__name__)

BRIDGE_BLIND_TRANSFER = "BridgeBlindTransfer"
BRIDGE_ATTENDED_TRANSFER = "BridgeAttendedTransfer"
TRANSFER_SUCCESS = "Success"
# The attended transfer's destination when one bridge takes in the other's parties.
DESTINATION_BRIDGE = "bridge"
# The context of the phones in the emulated dialplan.
INTERNAL_CONTEXT = "internal"
# The variables that set_transfer_variables() in main/bridge.c sets on the transferee.
VAR_BLINDTRANSFER = "BLINDTRANSFER"
VAR_ATTENDEDTRANSFER = "ATTENDEDTRANSFER"


class TransferFlows(SwitchState):
    """Transfers of an answered call, and the end of a transferred call."""

    def blind_transfer(
        self, call: EmulatedCall, extension: str, *, context: str = INTERNAL_CONTEXT
    ) -> list[Event]:
        """Transfer the trunk leg of ``call`` to the phone ``extension``, unattended.

        The phone that made the call hangs up once the transfer succeeds, and
        the trunk leg runs Dial(PJSIP/<extension>), which the phone answers.
        """
        state = self._transferable(call)
        assert state.caller is not None and state.bridge is not None
        transferer, leg, bridge = state.caller, state.trunk, state.bridge

        events = [self._varset(leg, VAR_BLINDTRANSFER, transferer.name)]
        events += self._clear_bridge_peers(leg, transferer)
        bridge.channel_ids.remove(leg.id)
        events.append(self.builder.left_bridge(bridge, leg))
        events.append(self._blind_transfer_event(transferer, leg, bridge, extension, context))
        events += self._hang_up_transferer(state, transferer, bridge)

        leg.context, leg.exten = context, extension
        phone, new_bridge, dial_events = self._dial_phone(leg, extension)
        events += dial_events

        state.caller, state.bridge = phone, new_bridge
        state.transferred_to = phone
        state.transferee_dials = True
        logger.info("%s blind transferred %s to %s", transferer.name, leg.name, phone.name)
        return events

    def attended_transfer(
        self, call: EmulatedCall, extension: str, *, context: str = INTERNAL_CONTEXT
    ) -> list[Event]:
        """Transfer the trunk leg of ``call`` to the phone ``extension`` after a
        consultation call to it.

        The phone that made the call dials ``extension`` on a second channel,
        which the other phone answers. Completing the transfer swaps that
        phone into the trunk leg's bridge, and both channels of the first
        phone hang up.
        """
        state = self._transferable(call)
        assert state.caller is not None and state.bridge is not None
        transferer, leg, bridge = state.caller, state.trunk, state.bridge

        consulting = self.factory.create(
            TECH_PJSIP, transferer.name.partition("/")[2].rpartition("-")[0],
            state=STATE_UP, context=context, exten=extension,
        )
        consulting.caller = Party(transferer.caller.name, transferer.caller.number)
        self._add_channel(consulting)
        events = [self.builder.channel_created(consulting)]
        phone, second_bridge, dial_events = self._dial_phone(consulting, extension)
        events += dial_events

        # The swap: the called phone leaves the consultation bridge and takes
        # the transferer's place next to the trunk leg.
        events.append(self._varset(leg, VAR_ATTENDEDTRANSFER, transferer.name))
        second_bridge.channel_ids.remove(phone.id)
        events.append(self.builder.left_bridge(second_bridge, phone))
        bridge.channel_ids.append(phone.id)
        events.append(self.builder.entered_bridge(bridge, phone))
        events.append(self._varset(transferer, VAR_BRIDGEPEER, ""))
        bridge.channel_ids.remove(transferer.id)
        events.append(self.builder.left_bridge(bridge, transferer))
        events.append(self._varset(phone, VAR_BRIDGEPEER, leg.name))
        events.append(self._varset(leg, VAR_BRIDGEPEER, phone.name))
        events.append(self._attended_transfer_event(
            transferer, consulting, leg, phone, bridge, second_bridge))

        events += self._end_dial_runner(state, transferer, CAUSE_NORMAL_CLEARING)
        events.append(self.builder.hangup_request(consulting, CAUSE_NORMAL_CLEARING))
        second_bridge.channel_ids.remove(consulting.id)
        events.append(self.builder.left_bridge(second_bridge, consulting))
        events += self._end_dial_runner(state, consulting, CAUSE_NORMAL_CLEARING)
        events.append(self.builder.bridge_destroyed(second_bridge))

        state.caller = phone
        state.transferred_to = phone
        state.transferee_dials = False
        logger.info("%s transferred %s to %s after consulting it", transferer.name,
                    leg.name, phone.name)
        return events

    def _end_transferred(
        self, state: CallState, channel: Channel, request: Event, cause: int
    ) -> list[Event]:
        """End a transferred call because ``channel``, the trunk leg or the phone,
        hung up: the bridge then hangs up the other one."""
        phone, leg, bridge = state.transferred_to, state.trunk, state.bridge
        assert phone is not None and bridge is not None
        other = phone if channel is leg else leg
        events = [request, *self._clear_bridge_peers(channel, other)]
        for gone, gone_cause in ((channel, cause), (other, CAUSE_NORMAL_CLEARING)):
            bridge.channel_ids.remove(gone.id)
            events.append(self.builder.left_bridge(bridge, gone))
            if gone is leg and state.transferee_dials:
                # The trunk leg ran Dial() to the phone, which returns now.
                events += self._dial_result_variables(state, leg)
            if gone is other:
                events.append(self.builder.hangup_request(gone, CAUSE_NORMAL_CLEARING,
                                                          soft=True))
            events.append(self._destroy(gone, gone_cause))
        events.append(self.builder.bridge_destroyed(bridge))
        self._forget(state)
        return events

    def _transferable(self, call: EmulatedCall) -> CallState:
        state = self.state_for(call)
        if (not state.answered or state.caller is None or state.bridge is None
                or state.outer is not None or state.transferred_to is not None):
            raise ValueError(
                f"call on {call.trunk_name} cannot be transferred: only an answered "
                "call that a phone dialled, and that was not transferred yet, can"
            )
        return state

    def _dial_phone(self, runner: Channel, extension: str) -> tuple[Channel, Bridge, list[Event]]:
        """Run Dial(PJSIP/<extension>) on ``runner`` and let the phone answer, as
        ari-events-subscribeall.jsonl shows a dialled call answered and bridged.

        Returns the phone's channel, the new bridge and the events.
        """
        events = [self._run_app(runner, "Dial", f"{TECH_PJSIP}/{extension},,", 1)]
        events += [self._varset(runner, name, "") for name in DIAL_VARIABLES]
        phone = self._create_phone(extension, runner)
        events += [self.builder.channel_created(phone),
                   self._run_app(phone, APP_DIAL, OUTGOING_LINE, 1),
                   self.builder.channel_caller_id(phone)]
        events.append(self.builder.dial(caller=runner, peer=phone, dialstring=extension))

        events.append(self._set_state(phone, STATE_UP))
        events.append(self._varset(runner, VAR_DIALSTATUS, DIALSTATUS_ANSWER))
        events.append(self.builder.dial(caller=runner, peer=phone, dialstatus=DIALSTATUS_ANSWER))
        bridge = self.factory.create_bridge()
        events.append(self.builder.bridge_created(bridge))
        for channel in (phone, runner):
            bridge.channel_ids.append(channel.id)
            events.append(self.builder.entered_bridge(bridge, channel))
        events.append(self._varset(phone, VAR_BRIDGEPEER, runner.name))
        events.append(self._varset(runner, VAR_BRIDGEPEER, phone.name))
        return phone, bridge, events

    def _create_phone(self, extension: str, dialled_by: Channel) -> Channel:
        """Create the phone's channel as Dial() does, with the caller's extension."""
        phone = self.factory.create(TECH_PJSIP, extension, state=STATE_DOWN,
                                    exten=dialled_by.exten)
        phone.caller = Party("", dialled_by.exten)
        phone.connected = Party(dialled_by.caller.name, dialled_by.caller.number)
        self._add_channel(phone)
        return phone

    def _clear_bridge_peers(self, *channels: Channel) -> list[Event]:
        return [self._varset(channel, VAR_BRIDGEPEER, "") for channel in channels]

    def _hang_up_transferer(
        self, state: CallState, transferer: Channel, bridge: Bridge
    ) -> list[Event]:
        """Hang up the phone that transferred, alone in its bridge once the
        transferee left, and the bridge with it."""
        events = [self.builder.hangup_request(transferer, CAUSE_NORMAL_CLEARING)]
        bridge.channel_ids.remove(transferer.id)
        events.append(self.builder.left_bridge(bridge, transferer))
        events += self._end_dial_runner(state, transferer, CAUSE_NORMAL_CLEARING)
        events.append(self.builder.bridge_destroyed(bridge))
        return events

    def _end_dial_runner(self, state: CallState, channel: Channel, cause: int) -> list[Event]:
        """End a channel whose Dial() returns, as app_dial.c ends the caller."""
        return [
            *self._dial_result_variables(state, channel),
            self.builder.hangup_request(channel, CAUSE_NORMAL_CLEARING, soft=True),
            self._destroy(channel, cause),
        ]

    def _dial_result_variables(self, state: CallState, channel: Channel) -> list[Event]:
        answered_seconds, answered_ms = self._elapsed(state.answered_at)
        dialed_seconds, dialed_ms = self._elapsed(state.dialed_at)
        return [
            self._varset(channel, "ANSWEREDTIME", answered_seconds),
            self._varset(channel, "ANSWEREDTIME_MS", answered_ms),
            self._varset(channel, "DIALEDTIME", dialed_seconds),
            self._varset(channel, "DIALEDTIME_MS", dialed_ms),
            self._varset(channel, VAR_DIALSTATUS, DIALSTATUS_ANSWER),
        ]

    def _blind_transfer_event(self, transferer: Channel, transferee: Channel,
                              bridge: Bridge, extension: str, context: str) -> Event:
        snapshot = self.builder._snapshot
        payload = {
            "type": BRIDGE_BLIND_TRANSFER,
            "timestamp": self.builder._timestamp(),
            "channel": snapshot(transferer),
            "exten": extension,
            "context": context,
            "result": TRANSFER_SUCCESS,
            "is_external": True,
            "transferee": snapshot(transferee),
            "bridge": bridge.to_json(),
            "asterisk_id": ASTERISK_ID,
            "application": "",
        }
        return Event(payload)

    def _attended_transfer_event(self, first_leg: Channel, second_leg: Channel,
                                 transferee: Channel, target: Channel, first_bridge: Bridge,
                                 second_bridge: Bridge) -> Event:
        snapshot = self.builder._snapshot
        payload = {
            "type": BRIDGE_ATTENDED_TRANSFER,
            "timestamp": self.builder._timestamp(),
            "transferer_first_leg": snapshot(first_leg),
            "transferer_second_leg": snapshot(second_leg),
            "result": TRANSFER_SUCCESS,
            "is_external": True,
            "transferee": snapshot(transferee),
            "transfer_target": snapshot(target),
            "transferer_first_leg_bridge": first_bridge.to_json(),
            "transferer_second_leg_bridge": second_bridge.to_json(),
            "destination_type": DESTINATION_BRIDGE,
            "destination_bridge": first_bridge.id,
            "asterisk_id": ASTERISK_ID,
            "application": "",
        }
        return Event(payload)
