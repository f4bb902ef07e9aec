"""An Asterisk ARI server for tests: REST and the events websocket on loopback.

AriEmulator serves the parts of ARI that callguard uses, with the shapes of
traffic recorded from Asterisk 22.10.1 (tests/fixtures/asterisk/). Tests
drive calls through its async methods. Each method returns once the events
of its step are sent to every events websocket that should get them.

    async with AriEmulator(now=clock.now) as ari:
        call = await ari.dial_out("0044123456")
        await ari.answer(call)
        await ari.hangup(call)
"""

import ipaddress
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone

from aiohttp import web

from .ari_causes import CAUSE_CALL_REJECTED, CAUSE_NO_ANSWER, CAUSE_NORMAL_CLEARING
from .ari_events import EventBuilder
from .ari_http import AriHttp, Outage
from .ari_hub import EventHub
from .ari_model import ChannelFactory
from .ari_state import DIALSTATUS_NOANSWER, EmulatedCall
from .ari_switch import Switch

__all__ = ["AriEmulator", "EmulatedCall"]

logger = logging.getLogger(__name__)

DEFAULT_USERNAME = "callguard"
DEFAULT_PASSWORD = "callguard-test"
DEFAULT_APP = "callguard"
DEFAULT_CHANNELVARS = ("CALLGUARD_TRUNK", "CALLGUARD_ACCOUNT")
LOCALHOST = "localhost"


def _utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _check_loopback(host: str) -> None:
    if host == LOCALHOST:
        return

    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is None or not address.is_loopback:
        raise ValueError(
            f"invalid host {host!r}. The ARI emulator listens only on loopback, "
            "so use 127.0.0.1, ::1 or localhost"
        )


class AriEmulator:
    """An emulated Asterisk with ARI, driven by the test that owns it."""

    def __init__(
        self,
        *,
        username: str = DEFAULT_USERNAME,
        password: str = DEFAULT_PASSWORD,
        app: str = DEFAULT_APP,
        channelvars: tuple[str, ...] = DEFAULT_CHANNELVARS,
        now: Callable[[], datetime] | None = None,
    ):
        self.app = app
        factory = ChannelFactory(now or _utc_now)
        self._factory = factory
        builder = EventBuilder(tuple(channelvars), factory.now)
        self._switch = Switch(factory, builder)
        self._hub = EventHub()
        self._outage = Outage()
        self._http = AriHttp(
            username=username,
            password=password,
            app=app,
            switch=self._switch,
            hub=self._hub,
            outage=self._outage,
            now=factory.now,
        )
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> "AriEmulator":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host``:``port``. Port 0 picks a free port, named in ``url``."""
        _check_loopback(host)
        if self._runner is not None:
            raise RuntimeError(f"the ARI emulator is already running at {self.url}")

        self._hub.start()
        runner = web.AppRunner(self._http.build(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner

        bound_port = runner.addresses[0][1]
        url_host = f"[{host}]" if ":" in host else host
        self.url = f"http://{url_host}:{bound_port}/"
        logger.info("ARI emulator listening at %s", self.url)

    async def stop(self) -> None:
        """Close every websocket and stop listening."""
        if self._runner is None:
            return

        await self._hub.stop()
        await self._runner.cleanup()
        self._runner = None
        logger.info("ARI emulator at %s stopped", self.url)

    async def dial_out(
        self,
        number: str,
        *,
        trunk: str = "gamma",
        caller_endpoint: str = "1001",
        callerid: str = "01632960001",
        tech: str = "PJSIP",
        dialstring: str | None = None,
        variables: dict[str, str] | None = None,
        check: Callable[[str], Awaitable[bool]] | None = None,
    ) -> EmulatedCall:
        """Dial ``number`` from a phone: the caller runs the check, then Dial().

        ``check``, when given, is awaited with the caller channel's id after the
        caller's events are sent and before the Dial's, as the AGI runs in the
        dialplan before Dial() on real Asterisk. When it returns False the caller
        ends with ``Hangup(21)`` as the dialplan snippet does on DENY, and no
        trunk leg is dialled. While ``check`` runs, GET /ari/channels shows the
        caller in AGI() and does not list the dialled leg, which Asterisk
        creates at Dial().

        The dialled leg is ``PJSIP/<trunk>-<seq>`` with the dialstring
        ``<trunk>/<number>``, or for ``tech="Local"`` the Local pair
        ``Local/<number>@<trunk>-<seq>;1`` and ``;2`` with ``<number>@<trunk>``.
        NOTE: Dial(PJSIP/${CALLGUARD_DIAL}@gamma) in etc/asterisk-snippets/extensions.conf
        gives the dialstring ``<number>@gamma``, so pass that to emulate it.
        """
        call, events = self._switch.dial_out(
            number,
            trunk=trunk,
            caller_endpoint=caller_endpoint,
            callerid=callerid,
            tech=tech,
            dialstring=dialstring,
            variables=dict(variables or {}),
        )
        if check is not None:
            dial_at = next(
                index for index, event in enumerate(events)
                if event.payload.get("dialplan_app") == "Dial"
            )
            await self._hub.publish(events[:dial_at])
            withheld = self._switch.withhold_leg(call)
            allowed = await check(call.caller_id)
            self._switch.release_leg(withheld)
            if not allowed:
                await self._hub.publish(
                    self._switch.reject_before_dial(call, CAUSE_CALL_REJECTED)
                )
                return call
            events = events[dial_at:]
        await self._hub.publish(events)
        return call

    async def ring(self, call: EmulatedCall) -> None:
        await self._hub.publish(self._switch.ring(call))

    async def answer(self, call: EmulatedCall) -> None:
        await self._hub.publish(self._switch.answer(call))

    async def fail(
        self,
        call: EmulatedCall,
        dialstatus: str = DIALSTATUS_NOANSWER,
        cause: int = CAUSE_NO_ANSWER,
        *,
        caller_continues: bool = False,
    ) -> None:
        """End an unanswered call with ``dialstatus`` and the Q.850 ``cause``.

        With ``caller_continues`` the caller stays in the dialplan after its
        Dial(), for ``dial_again`` or ``end_waiting_caller``.
        """
        await self._hub.publish(
            self._switch.fail(call, dialstatus, cause, caller_continues=caller_continues)
        )

    async def dial_parallel(
        self,
        call: EmulatedCall,
        number: str,
        *,
        trunk: str = "gamma",
        dialstring: str | None = None,
    ) -> EmulatedCall:
        """Ring ``number`` on ``trunk`` from the same Dial() as ``call``, as
        Dial(PJSIP/a@gamma&PJSIP/b@delta) does. The first leg answered wins."""
        leg, events = self._switch.dial_parallel(
            call, number, trunk=trunk, dialstring=dialstring
        )
        await self._hub.publish(events)
        return leg

    async def dial_again(
        self,
        call: EmulatedCall,
        number: str,
        *,
        trunk: str = "gamma",
        dialstring: str | None = None,
    ) -> EmulatedCall:
        """Dial ``number`` on ``trunk`` from the caller of the failed ``call``, as a
        dialplan that fails over to a second trunk does."""
        again, events = self._switch.dial_again(
            call, number, trunk=trunk, dialstring=dialstring
        )
        await self._hub.publish(events)
        return again

    async def end_waiting_caller(
        self, call: EmulatedCall, cause: int = CAUSE_NORMAL_CLEARING
    ) -> None:
        """Hang up the caller of the failed ``call`` instead of dialling again."""
        await self._hub.publish(self._switch.end_waiting_caller(call, cause))

    async def hangup(
        self,
        call: EmulatedCall,
        side: str = "caller",
        cause: int = CAUSE_NORMAL_CLEARING,
    ) -> None:
        """End ``call`` because the ``caller`` or the ``trunk`` side hung up."""
        await self._hub.publish(self._switch.hangup(call, side, cause))

    def hangup_unseen(self, call: EmulatedCall, cause: int = CAUSE_NORMAL_CLEARING) -> None:
        """End ``call`` but drop its events, as when they are lost on the way."""
        self._switch.hangup(call, "trunk", cause)

    def hangup_late(
        self,
        call: EmulatedCall,
        side: str = "trunk",
        cause: int = CAUSE_NORMAL_CLEARING,
    ) -> Callable[[], Awaitable[None]]:
        """End ``call`` now, but send its events only when the returned function is
        awaited, as when they reach the websocket after a REST request finds the
        channel gone. The events keep the timestamps of the moment the call ended."""
        events = self._switch.hangup(call, side, cause)

        async def deliver() -> None:
            await self._hub.publish(events)

        return deliver

    async def inbound(
        self,
        *,
        trunk: str = "gamma",
        callerid: str = "02079460000",
        exten: str = "01632960001",
    ) -> EmulatedCall:
        call, events = self._switch.inbound(trunk=trunk, callerid=callerid, exten=exten)
        await self._hub.publish(events)
        return call

    async def originate_out(self, number: str, *, trunk: str = "gamma") -> EmulatedCall:
        call, events = self._switch.originate_out(number, trunk=trunk)
        await self._hub.publish(events)
        return call

    async def dial_onward(
        self,
        call: EmulatedCall,
        number: str,
        *,
        trunk: str = "gamma",
        dialstring: str | None = None,
    ) -> EmulatedCall:
        """Dial ``number`` on ``trunk`` from the ;2 half of the Local leg of ``call``.

        ``call`` is one that ``dial_out`` placed with ``tech="Local"``, so that
        a Local channel pair is between the phone and the trunk leg, or a Local
        channel originated through POST /ari/channels.
        Answer and end the returned call, and the Local call follows it.
        """
        onward, events = self._switch.dial_onward(
            call, number, trunk=trunk, dialstring=dialstring
        )
        await self._hub.publish(events)
        return onward

    async def forward(self, call: EmulatedCall, new_number: str) -> EmulatedCall:
        """Forward the ringing trunk leg of ``call`` to ``new_number``."""
        new_call, events = self._switch.forward(call, new_number)
        await self._hub.publish(events)
        return new_call

    async def blind_transfer(self, call: EmulatedCall, extension: str) -> None:
        """Transfer the answered ``call`` from its phone to the phone ``extension``,
        which answers: the trunk leg stays up in a new bridge."""
        await self._hub.publish(self._switch.blind_transfer(call, extension))

    async def attended_transfer(self, call: EmulatedCall, extension: str) -> None:
        """Transfer the answered ``call`` to the phone ``extension`` after its phone
        consulted that phone: the phone takes its place in the trunk leg's bridge."""
        await self._hub.publish(self._switch.attended_transfer(call, extension))

    def call_for(self, channel_id: str) -> EmulatedCall:
        """Return the live call that ``channel_id`` belongs to, such as an originate."""
        return self._switch.call_for(channel_id)

    async def drop_events(
        self, *, refuse_for: float = 0.0, rest_down: bool = False
    ) -> None:
        """Drop every events websocket like a network failure.

        New websocket upgrades get 503 for ``refuse_for`` seconds of real time
        (``math.inf`` for until allow_events()), and REST too with ``rest_down``.
        """
        self._outage.start(refuse_for, rest_down)
        await self._hub.drop_all()

    async def restart(self) -> None:
        """Restart Asterisk at the clock's time, as after a crash and a fresh start.

        Every websocket drops without a close frame and every channel is gone
        without a ChannelDestroyed. The new process numbers uniqueids and
        channel names from zero again, clears event filters, and shows its
        start in GET /ari/asterisk/info as ``status.startup_time``.
        """
        await self._hub.drop_all()
        self._hub.filters.clear()
        self._switch.restart()
        self._factory.restart()
        self._http.rest.started_at = self._factory.now()

    def allow_events(self) -> None:
        self._outage.end()

    async def silence(self) -> None:
        """Keep the open websockets but send them nothing, pongs included."""
        self._hub.silence_all()

    @property
    def deletes(self) -> list[tuple[str, dict]]:
        """Every DELETE /ari/channels/{id} received: the id and the query."""
        return self._http.rest.deletes

    @property
    def fail_deletes(self) -> int:
        """How many of the next DELETE requests get 500 and change nothing."""
        return self._http.rest.fail_deletes

    @fail_deletes.setter
    def fail_deletes(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"invalid fail_deletes {count}. Give 0 or more")
        self._http.rest.fail_deletes = count

    @property
    def ignore_deletes(self) -> int:
        """How many of the next DELETE requests get 204 but leave the channel up.

        Asterisk only requests the hang-up from the channel before it replies
        204, so a channel whose driver is stuck stays up.
        """
        return self._http.rest.ignore_deletes

    @ignore_deletes.setter
    def ignore_deletes(self, count: int) -> None:
        if count < 0:
            raise ValueError(f"invalid ignore_deletes {count}. Give 0 or more")
        self._http.rest.ignore_deletes = count

    @property
    def event_filters(self) -> bool:
        """False plays an Asterisk without PUT /ari/applications/{app}/eventFilter."""
        return self._http.rest.event_filters

    @event_filters.setter
    def event_filters(self, supported: bool) -> None:
        self._http.rest.event_filters = supported
        if not supported:
            self._hub.filters.clear()  # such an Asterisk sends every event

    @property
    def filter_misses(self) -> int:
        """How many of the next event filter requests get 404 Application not found."""
        return self._http.rest.filter_misses

    @filter_misses.setter
    def filter_misses(self, count: int) -> None:
        self._http.rest.filter_misses = count

    @property
    def system_name(self) -> str:
        """Asterisk's systemname, as GET /ari/asterisk/info shows it in config.name."""
        return self._http.rest.system_name

    @system_name.setter
    def system_name(self, name: str) -> None:
        self._http.rest.system_name = name
        self._factory.system_name = name

    @property
    def global_variables(self) -> dict[str, str]:
        """The dialplan's global variables that GET /ari/asterisk/variable reads."""
        return self._http.rest.global_variables

    def event_filter(self, app: str) -> dict:
        """The filter lists of an application, as GET /ari/applications shows them."""
        allowed, disallowed = self._hub.filters.get(app, ([], []))
        return {"events_allowed": list(allowed), "events_disallowed": list(disallowed)}

    @property
    def channels(self) -> dict[str, dict]:
        """Snapshots of the live channels by id, as GET /ari/channels has them."""
        channelvars = self._switch.builder.channelvars
        return {
            channel_id: channel.snapshot(channelvars)
            for channel_id, channel in self._switch.channels.items()
        }

    @property
    def events_sent(self) -> int:
        """Event messages sent so far, counted once per websocket and application."""
        return self._hub.events_sent

    def subscribers(self) -> int:
        return len(self._hub.sockets)

    @property
    def connections(self) -> int:
        """Events websockets opened so far, closed ones included."""
        return self._hub.opened

    @property
    def password(self) -> str:
        """The password that requests need, as ari.conf sets it."""
        return self._http.password

    @password.setter
    def password(self, password: str) -> None:
        # Open websockets stay open: only new requests and upgrades need it.
        self._http.password = password

    async def wait_for_subscribers(self, count: int = 1, timeout: float = 5.0) -> None:
        """Wait until at least ``count`` events websockets are open."""
        await self._hub.wait_for_count(count, timeout)
