"""Builders for the ARI events of the emulator, with the captured key order.

Asterisk builds a channel event from its blob first and then adds ``type``,
``timestamp`` and the snapshot, so ChannelVarset starts with ``variable`` and
ChannelHangupRequest with ``cause``. The stasis layer appends ``asterisk_id``
and ``application``, except in DeviceStateChanged, whose order differs.
The captures are in tests/fixtures/asterisk/ari-events-*.jsonl.
"""

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

from .ari_causes import cause_text
from .ari_model import ASTERISK_ID, Bridge, Channel, format_timestamp

logger = logging.getLogger(__name__)

CHANNEL_CREATED = "ChannelCreated"
CHANNEL_DIALPLAN = "ChannelDialplan"
CHANNEL_VARSET = "ChannelVarset"
CHANNEL_STATE_CHANGE = "ChannelStateChange"
CHANNEL_CALLER_ID = "ChannelCallerId"
CHANNEL_CONNECTED_LINE = "ChannelConnectedLine"
CHANNEL_HANGUP_REQUEST = "ChannelHangupRequest"
CHANNEL_DESTROYED = "ChannelDestroyed"
CHANNEL_ENTERED_BRIDGE = "ChannelEnteredBridge"
CHANNEL_LEFT_BRIDGE = "ChannelLeftBridge"
BRIDGE_CREATED = "BridgeCreated"
BRIDGE_DESTROYED = "BridgeDestroyed"
DEVICE_STATE_CHANGED = "DeviceStateChanged"
DIAL = "Dial"
STASIS_START = "StasisStart"
STASIS_END = "StasisEnd"

DEVICE_INUSE = "INUSE"
DEVICE_NOT_INUSE = "NOT_INUSE"

# Caller ID presentation 0, as in the captured ChannelCallerId events.
PRESENTATION_ALLOWED = 0
PRESENTATION_ALLOWED_TEXT = "Presentation Allowed, Not Screened"

# Filled in per receiving application when the event is sent.
_APPLICATION_PLACEHOLDER = ""


@dataclass
class Event:
    """One ARI event and what decides which websockets receive it.

    ``apps`` are the applications that receive the event without subscribeAll
    because one of its channels is subscribed to them. ``only_app`` limits
    StasisStart and StasisEnd to the application that the channel is in.
    """

    payload: dict
    apps: set[str] = field(default_factory=set)
    only_app: str | None = None

    @property
    def type(self) -> str:
        return self.payload["type"]

    def for_application(self, application: str) -> dict:
        return dict(self.payload, application=application)


class EventBuilder:
    """Factory of events from the current state of channels and bridges."""

    def __init__(self, channelvars: tuple[str, ...], now: Callable[[], datetime]):
        self.channelvars = channelvars
        self._now = now

    def _timestamp(self) -> str:
        return format_timestamp(self._now())

    def _snapshot(self, channel: Channel) -> dict:
        return channel.snapshot(self.channelvars)

    def _channel_event(
        self, event_type: str, channel: Channel, blob: dict | None = None
    ) -> Event:
        payload = dict(blob or {})
        payload["type"] = event_type
        payload["timestamp"] = self._timestamp()
        payload["channel"] = self._snapshot(channel)
        payload["asterisk_id"] = ASTERISK_ID
        payload["application"] = _APPLICATION_PLACEHOLDER
        return Event(payload, apps=set(channel.subscribed_apps))

    def _typed_channel_event(
        self, event_type: str, channel: Channel, fields: dict
    ) -> Event:
        # Events whose own fields come after type and timestamp.
        payload = {"type": event_type, "timestamp": self._timestamp(), **fields}
        payload["channel"] = self._snapshot(channel)
        payload["asterisk_id"] = ASTERISK_ID
        payload["application"] = _APPLICATION_PLACEHOLDER
        return Event(payload, apps=set(channel.subscribed_apps))

    def channel_created(self, channel: Channel) -> Event:
        return self._channel_event(CHANNEL_CREATED, channel)

    def channel_dialplan(self, channel: Channel) -> Event:
        return self._typed_channel_event(
            CHANNEL_DIALPLAN,
            channel,
            {"dialplan_app": channel.app_name, "dialplan_app_data": channel.app_data},
        )

    def channel_varset(self, channel: Channel, variable: str, value: str) -> Event:
        return self._channel_event(
            CHANNEL_VARSET, channel, {"variable": variable, "value": value}
        )

    def channel_state_change(self, channel: Channel) -> Event:
        return self._channel_event(CHANNEL_STATE_CHANGE, channel)

    def channel_caller_id(self, channel: Channel) -> Event:
        return self._typed_channel_event(
            CHANNEL_CALLER_ID,
            channel,
            {
                "caller_presentation": PRESENTATION_ALLOWED,
                "caller_presentation_txt": PRESENTATION_ALLOWED_TEXT,
            },
        )

    def channel_connected_line(self, channel: Channel) -> Event:
        return self._channel_event(CHANNEL_CONNECTED_LINE, channel)

    def hangup_request(
        self, channel: Channel, cause: int, *, soft: bool = False
    ) -> Event:
        blob: dict = {"cause": cause}
        if soft:
            blob["soft"] = True
        return self._channel_event(CHANNEL_HANGUP_REQUEST, channel, blob)

    def channel_destroyed(self, channel: Channel, cause: int) -> Event:
        return self._typed_channel_event(
            CHANNEL_DESTROYED,
            channel,
            {"cause": cause, "cause_txt": cause_text(cause)},
        )

    def dial(
        self,
        *,
        peer: Channel,
        caller: Channel | None = None,
        forwarded: Channel | None = None,
        dialstatus: str = "",
        dialstring: str = "",
        forward: str = "",
    ) -> Event:
        """Build a Dial event as dial_to_json() in main/stasis_channels.c does."""
        payload: dict = {
            "type": DIAL,
            "timestamp": self._timestamp(),
            "dialstatus": dialstatus,
            "forward": forward,
            "dialstring": dialstring,
        }
        involved = [peer]
        if caller is not None:
            payload["caller"] = self._snapshot(caller)
            involved.append(caller)
        payload["peer"] = self._snapshot(peer)
        if forwarded is not None:
            payload["forwarded"] = self._snapshot(forwarded)
            involved.append(forwarded)
        payload["asterisk_id"] = ASTERISK_ID
        payload["application"] = _APPLICATION_PLACEHOLDER
        return Event(payload, apps=_subscribed_apps(involved))

    def bridge_created(self, bridge: Bridge) -> Event:
        return self._bridge_event(BRIDGE_CREATED, bridge)

    def bridge_destroyed(self, bridge: Bridge) -> Event:
        return self._bridge_event(BRIDGE_DESTROYED, bridge)

    def _bridge_event(self, event_type: str, bridge: Bridge) -> Event:
        payload = {
            "type": event_type,
            "timestamp": self._timestamp(),
            "bridge": bridge.to_json(),
            "asterisk_id": ASTERISK_ID,
            "application": _APPLICATION_PLACEHOLDER,
        }
        return Event(payload)

    def entered_bridge(self, bridge: Bridge, channel: Channel) -> Event:
        return self._typed_channel_event(
            CHANNEL_ENTERED_BRIDGE, channel, {"bridge": bridge.to_json()}
        )

    def left_bridge(self, bridge: Bridge, channel: Channel) -> Event:
        return self._typed_channel_event(
            CHANNEL_LEFT_BRIDGE, channel, {"bridge": bridge.to_json()}
        )

    def device_state_changed(self, device: str, state: str) -> Event:
        payload = {
            "type": DEVICE_STATE_CHANGED,
            "application": _APPLICATION_PLACEHOLDER,
            "timestamp": self._timestamp(),
            "device_state": {"name": device, "state": state},
            "asterisk_id": ASTERISK_ID,
        }
        return Event(payload)

    def stasis_start(self, channel: Channel) -> Event:
        event = self._typed_channel_event(
            STASIS_START, channel, {"args": list(channel.stasis_args)}
        )
        event.only_app = channel.stasis_app
        return event

    def stasis_end(self, channel: Channel) -> Event:
        event = self._channel_event(STASIS_END, channel)
        event.only_app = channel.stasis_app
        return event


def _subscribed_apps(channels: Iterable[Channel]) -> set[str]:
    apps: set[str] = set()
    for channel in channels:
        apps |= channel.subscribed_apps
    return apps
