"""Live calls metered over ARI and hung up when a limit bites, on a manual clock."""

import asyncio
import base64
import logging
import math
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import websockets
from sqlalchemy.engine import make_url

from callguard.ari import events
from callguard.config import load_config
from callguard.daemon import status
from callguard.daemon.app import Application
from callguard.daemon.live import read_ari_settings
from callguard.policy.budget import LIMIT_LEAD_SECONDS
from callguard.metering import guard
from callguard.store import engine
from callguard.store import Store
from emulator.ari_rest import RestResources
from live_support import PASSWORD, Pbx, eventually, stored_calls, stored_hangups
from support import self_signed_certificate, sqlite_write_locked, write_config

LONDON = ZoneInfo("Europe/London")

TRUNK_10 = """\
[trunk gamma]
bar = premium, international
daily_limit = 10.00
channel_pattern = PJSIP/gamma-*
rates = rates.csv
"""
# The same trunk with room for long calls.
TRUNK_100 = TRUNK_10.replace("daily_limit = 10.00", "daily_limit = 100.00")

RATE_1 = "prefix,description,rate,connection_fee,increments\n44,United Kingdom,1.00,,60/60\n"
RATE_050 = (
    "prefix,description,rate,connection_fee,increments\n44,United Kingdom,0.50,,60/60\n"
)


def london(*args) -> datetime:
    return datetime(*args, tzinfo=LONDON).astimezone(timezone.utc)


@pytest.fixture
async def make_pbx(tmp_path):
    started = []

    async def make(start, *, trunks=TRUNK_10, rates=RATE_1, spent=None, general="",
                   ari_enabled=True):
        pbx = Pbx(tmp_path, start, trunks=trunks, rates=rates, general=general,
                  ari_enabled=ari_enabled)
        await pbx.ari.start()
        pbx.ari_started = True
        await pbx.ari.stop()
        await pbx.start()
        if spent:
            await pbx.restart_with_spend(spent, start)
        started.append(pbx)
        return pbx

    yield make
    for pbx in started:
        await pbx.stop()


async def test_thirty_calls_limit_then_hangup(make_pbx, caplog):
    start = london(2024, 6, 14, 10, 0)
    pbx = await make_pbx(start, spent=[("day", "2024-06-14", "7.00")])

    placed = await asyncio.gather(*(
        pbx.call(f"0163296{n:04d}", endpoint=f"{1000 + n}") for n in range(30)
    ))
    allowed = [call for call, result in placed if result["CALLGUARD_RESULT"] == "ALLOW"]
    assert len(allowed) <= 3
    assert len(allowed) == 3

    for call in allowed:
        await pbx.ari.answer(call)
    await eventually(lambda: all(leg.state == "up" for leg in pbx.legs().values())
                     and len(pbx.legs()) == 3, what="three answered legs")

    pbx.clock.advance(58)
    await pbx.settle()
    assert pbx.ari.deletes == []

    # The second block of each call, at 60 s, cannot be paid: the calls are
    # hung up a second before it, so that the carrier does not bill it.
    pbx.clock.advance(1)
    await eventually(lambda: len(pbx.ari.deletes) == 3, what="three hang-ups")
    await eventually(lambda: not pbx.legs(), what="legs ended")
    await pbx.app.guard.drain()

    assert sorted(channel for channel, _ in pbx.ari.deletes) == sorted(
        call.trunk_id for call in allowed)
    spent = pbx.spend("day", "2024-06-14")
    assert spent <= Decimal("10.00") + 3 * Decimal("1.00")
    assert spent == Decimal("10.00")
    with Store(pbx.config.general.database) as store:
        store.open()
        hangups = store.recent_hangups(10)
    assert {h.reason for h in hangups} == {"limit:daily"}
    assert {h.requested_at for h in hangups} == {start + timedelta(seconds=59)}
    # Amounts in log lines have the currency's two decimals, not the store's six.
    hangup_lines = [r.getMessage() for r in caplog.records if "hang-up of" in r.getMessage()]
    assert len(hangup_lines) == 3
    assert all("call cost 1.00, spend today 10.00" in line for line in hangup_lines)


async def test_call_across_midnight(make_pbx):
    trunks = TRUNK_10.replace("rates = rates.csv", "rates = rates.csv\ntimezone = Europe/London")
    start = london(2024, 6, 14, 23, 54, 30)
    pbx = await make_pbx(start, trunks=trunks, rates=RATE_050,
                         spent=[("day", "2024-06-14", "6.00")])

    call, result = await pbx.call("01632960123")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    pbx.clock.set(london(2024, 6, 14, 23, 55))
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs() and all(leg.state == "up"
                                                for leg in pbx.legs().values()))

    for _ in range(24):
        pbx.clock.advance(60)
        await asyncio.sleep(0)
    assert pbx.ari.deletes == []
    pbx.clock.set(london(2024, 6, 15, 0, 20))
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up at 00:20")
    await eventually(lambda: not pbx.legs(), what="the leg to end")
    await pbx.app.guard.drain()

    assert pbx.spend("day", "2024-06-14") == Decimal("8.50")
    assert pbx.spend("day", "2024-06-15") == Decimal("10.00")
    with Store(pbx.config.general.database) as store:
        store.open()
        hangup = store.recent_hangups(1)[0]
    assert hangup.requested_at == london(2024, 6, 15, 0, 20)


async def test_blind_period_loses_no_call(make_pbx):
    start = london(2024, 6, 14, 10, 0)
    pbx = await make_pbx(start, trunks=TRUNK_100)

    before, _ = await pbx.call("01632960001")
    await pbx.ari.answer(before)
    await eventually(lambda: len(pbx.legs()) == 1 and
                     next(iter(pbx.legs().values())).state == "up")

    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")
    pbx.clock.advance(30)
    await pbx.ari.hangup(before)                      # ends while blind
    during, _ = await pbx.call("01632960002")         # starts while blind
    await pbx.ari.answer(during)
    pbx.clock.advance(30)
    pbx.ari.allow_events()

    await eventually(lambda: pbx.app.ari.connected, timeout=10, what="the reconnect")
    await eventually(lambda: before.trunk_id not in pbx.legs(), what="reconciliation")
    legs = pbx.legs()
    assert list(legs) == [during.trunk_id]
    assert legs[during.trunk_id].state == "up"

    await pbx.ari.hangup(during)
    await eventually(lambda: not pbx.legs(), what="the second call to end")
    await pbx.app.guard.drain()
    with Store(pbx.config.general.database) as store:
        store.open()
        calls = {c.uniqueid: c for c in store.recent_calls(10)}
    assert set(calls) == {before.trunk_id, during.trunk_id}
    # The first call's end was not seen: it is charged up to the reconnect,
    # 60 s after answer, which is one block at 60/60.
    assert calls[before.trunk_id].cost == Decimal("1.00")
    # The second call is linked back to its check through BRIDGEPEER.
    assert calls[during.trunk_id].guarded
    assert calls[during.trunk_id].e164 == "+441632960002"
    assert pbx.spend("day", "2024-06-14") == calls[before.trunk_id].cost + calls[
        during.trunk_id].cost


async def answered_call(make_pbx, start):
    """Start a PBX on TRUNK_100 at ``start`` and answer one call on it."""
    pbx = await make_pbx(start, trunks=TRUNK_100)
    call, _ = await pbx.call("01632960123")
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs() and next(iter(pbx.legs().values())).state == "up")
    return pbx, call


async def test_restart_adopts_live_call(make_pbx):
    start = london(2024, 6, 14, 10, 0)
    pbx, call = await answered_call(make_pbx, start)
    await pbx.app.guard.drain()
    pbx.clock.advance(150)

    await pbx.crash()
    await pbx.start_callguard()
    legs = pbx.legs()
    assert list(legs) == [call.trunk_id]
    assert legs[call.trunk_id].answered.answered_at == start
    assert pbx.app.ledger.live("gamma", "day", "2024-06-14") == Decimal("3.00")

    pbx.clock.advance(60)
    await pbx.ari.hangup(call)
    await eventually(lambda: not pbx.legs(), what="the call to end")
    await pbx.app.guard.drain()
    assert pbx.spend("day", "2024-06-14") == Decimal("4.00")   # 210 s at 60/60


async def test_replaced_application_taken_back(make_pbx, caplog):
    pbx = await make_pbx(london(2024, 6, 14, 10, 0), trunks=TRUNK_100)
    opened = pbx.ari.connections
    token = base64.b64encode(f"callguard:{PASSWORD}".encode()).decode()
    url = pbx.ari.url.replace("http://", "ws://", 1) + "ari/events?app=callguard&subscribeAll=true"

    # Another client registers the application, as a second daemon on this
    # Asterisk with the same app would, and keeps its websocket open.
    async with websockets.connect(url, additional_headers={"Authorization": f"Basic {token}"}):
        await eventually(lambda: pbx.ari.connections > opened + 1 and pbx.app.ari.connected,
                         timeout=10, what="callguard to register its application again")
        call, _ = await pbx.call("01632960001")
        await pbx.ari.answer(call)
        await eventually(lambda: call.trunk_id in pbx.legs()
                         and pbx.legs()[call.trunk_id].state == "up",
                         what="the answer to reach callguard")

    assert "another ARI client registered application 'callguard'" in caplog.text


async def test_event_filter_set_or_skipped(make_pbx, caplog):
    start = london(2024, 6, 14, 10, 0)
    pbx = await make_pbx(start, trunks=TRUNK_100)

    allowed_types = [{"type": kind} for kind in
              ("ApplicationReplaced", "ChannelCreated", "ChannelDestroyed",
               "ChannelStateChange", "Dial")]
    assert pbx.ari.event_filter("callguard") == {"events_allowed": allowed_types,
                                                 "events_disallowed": []}
    filtered, _ = await pbx.call("01632960001")
    await pbx.ari.answer(filtered)
    pbx.clock.advance(90)
    await pbx.ari.hangup(filtered)
    await eventually(lambda: not pbx.legs(), what="the filtered call to end")

    # Just after a handshake, Asterisk may not know the application yet.
    pbx.ari.filter_misses = 2
    await pbx.ari.drop_events()
    await eventually(lambda: pbx.app.ari.connected and pbx.ari.filter_misses == 0,
                     timeout=10, what="the reconnect with a late application")
    await eventually(lambda: pbx.ari.event_filter("callguard")["events_allowed"] == allowed_types,
                     what="the filter set again")
    assert "event filter not set" not in caplog.text

    # An Asterisk without event filters sends everything; callguard meters
    # the same way.
    pbx.ari.event_filters = False
    await pbx.ari.drop_events()
    await eventually(lambda: pbx.app.ari.connected and "event filter not set" in
                     caplog.text, timeout=10, what="the reconnect without a filter")
    assert pbx.ari.event_filter("callguard")["events_allowed"] == []
    unfiltered, _ = await pbx.call("01632960002")
    await pbx.ari.answer(unfiltered)
    pbx.clock.advance(90)
    await pbx.ari.hangup(unfiltered)
    await eventually(lambda: not pbx.legs(), what="the unfiltered call to end")
    await pbx.app.guard.drain()

    with Store(pbx.config.general.database) as store:
        store.open()
        costs = {c.uniqueid: c.cost for c in store.recent_calls(10)}
    # 90 s at 1.00 per minute in 60/60 blocks: two blocks each.
    assert costs == {filtered.trunk_id: Decimal("2.00"),
                     unfiltered.trunk_id: Decimal("2.00")}


async def test_filter_set_before_channel_list(make_pbx, monkeypatch, caplog):
    # A busy PBX sends device states, which callguard ignores, while it
    # serves GET /ari/channels. Unfiltered, they overflow the buffer that
    # keeps events until the channel list is read.
    monkeypatch.setattr(events, "RECONCILE_MAX_EVENTS", 50)
    list_channels = RestResources.list_channels
    answered_while_listing = []

    async def busy_list_channels(self, request):
        builder = self._switch.builder
        await self._hub.publish([builder.device_state_changed(f"PJSIP/{n}", "INUSE")
                                 for n in range(200)])
        while answered_while_listing:
            await pbx.ari.answer(answered_while_listing.pop())
        await asyncio.sleep(0.2)  # time for callguard to read the events first
        return await list_channels(self, request)

    monkeypatch.setattr(RestResources, "list_channels", busy_list_channels)
    start = london(2024, 6, 14, 10, 0)
    pbx = await make_pbx(start, trunks=TRUNK_100)

    assert "reconciliation buffer overflowed" not in caplog.text
    call, result = await pbx.call("01632960001")
    assert result["CALLGUARD_RESULT"] == "ALLOW"

    # The answer comes between the filter and the channel list, so both the
    # list and the buffered ChannelStateChange show the call up.
    pbx.clock.advance(5)
    answered_while_listing.append(call)
    await pbx.ari.drop_events()
    await eventually(lambda: pbx.app.ari.connected and not answered_while_listing,
                     timeout=10, what="the reconnect")
    await eventually(lambda: call.trunk_id in pbx.legs()
                     and pbx.legs()[call.trunk_id].state == "up",
                     what="the answered call to be metered")
    pbx.clock.advance(90)
    await pbx.ari.hangup(call)
    await eventually(lambda: not pbx.legs(), what="the call to end")
    await pbx.app.guard.drain()

    assert "reconciliation buffer overflowed" not in caplog.text
    # 90 s at 1.00 per minute in 60/60 blocks: two blocks.
    assert stored_calls(pbx)[call.trunk_id].cost == Decimal("2.00")


async def test_calls_cost_runs_without_events(make_pbx):
    pbx, _ = await answered_call(make_pbx, london(2024, 6, 14, 10, 0))

    pbx.clock.advance(150)  # no event arrives meanwhile
    [live] = status.calls(pbx.app.guard, live_only=True)["live"]

    assert live["cost"] == "3.00"  # three 60 s blocks have begun at 1.00 per minute


# The password that ari.conf and the password file change to in the reload tests.
ROTATED = "rotated-Xq7-pw"


def set_ari_key(pbx: Pbx, key: str, old: str, new: str) -> None:
    """Replace ``key = old`` with ``key = new`` in the PBX's callguard.conf."""
    text = pbx.path.read_text()
    assert f"\n{key} = {old}\n" in text
    pbx.path.write_text(text.replace(f"\n{key} = {old}\n", f"\n{key} = {new}\n"))


def assert_passwords_not_logged(caplog, *passwords: str) -> None:
    for password in passwords:
        token = base64.b64encode(f"callguard:{password}".encode()).decode()
        assert password not in caplog.text
        assert token not in caplog.text


async def test_reload_rotated_password(make_pbx, caplog):
    caplog.set_level(logging.DEBUG)
    start = london(2024, 6, 14, 10, 0)
    pbx = await make_pbx(start, spent=[("day", "2024-06-14", "7.00")])
    call, _ = await pbx.call("01632960123")
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs() and next(iter(pbx.legs().values())).state == "up",
                     what="the answered leg")
    pbx.clock.advance(100)

    # ari.conf gets a new password and the events connection drops, so each
    # reconnect with the old password gets HTTP 401.
    pbx.ari.password = ROTATED
    await pbx.ari.drop_events()
    await eventually(lambda: "HTTP 401" in caplog.text, what="the rejected reconnect")
    (pbx.directory / "ari.secret").write_text(ROTATED + "\n")
    assert await pbx.app.reload()
    await eventually(lambda: pbx.app.ari.connected,
                     what="the reconnect with the new password")

    assert ("ARI connection restarted with the new [ari] settings (changed: password): "
            f"{pbx.ari.url} as user callguard, application callguard") in caplog.text
    legs = pbx.legs()
    assert list(legs) == [call.trunk_id]
    assert legs[call.trunk_id].answered.answered_at == start

    # 7.00 spent and three 60 s blocks at 1.00 reach the 10.00 limit, so the
    # call is hung up a second before its fourth block, 180 s after answer.
    pbx.clock.advance(78)
    await pbx.settle()
    assert pbx.ari.deletes == []
    pbx.clock.advance(1)
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up")
    assert pbx.ari.deletes[0][0] == call.trunk_id
    await eventually(lambda: not pbx.legs(), what="the call to end")
    await pbx.app.guard.drain()
    assert pbx.spend("day", "2024-06-14") == Decimal("10.00")
    assert_passwords_not_logged(caplog, PASSWORD, ROTATED)


def test_ca_file_replaced_is_a_change(tmp_path):
    ca_file, _ = self_signed_certificate(tmp_path, "ca")
    (tmp_path / "ari.secret").write_text(PASSWORD + "\n")
    path = write_config(tmp_path, ari="enabled = yes\nurl = https://127.0.0.1:8089/\n"
                                      "username = callguard\npassword_file = ari.secret\n"
                                      "ca_file = ca.pem\n")
    first = read_ari_settings(load_config(path))
    same = read_ari_settings(load_config(path))
    # A new CA certificate under the same name, as when a certificate is renewed.
    self_signed_certificate(tmp_path, "ca")
    renewed = read_ari_settings(load_config(path))

    assert same == first
    assert renewed != first
    assert renewed.changed_keys(first) == ["ca_file"]
    assert renewed.ari == first.ari


async def test_reload_enables_ari(make_pbx, caplog):
    caplog.set_level(logging.DEBUG)
    start = london(2024, 6, 14, 10, 0)
    pbx = await make_pbx(start, trunks=TRUNK_100, ari_enabled=False)
    assert pbx.app.ari is None
    assert pbx.ari.connections == 0

    set_ari_key(pbx, "enabled", "no", "yes")
    assert await pbx.app.reload()
    await eventually(lambda: pbx.app.ari is not None and pbx.app.ari.connected,
                     what="the ARI connection")
    assert ("ARI connection started with the new [ari] settings (changed: enabled): "
            f"{pbx.ari.url} as user callguard, application callguard") in caplog.text

    call, result = await pbx.call("01632960001")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs() and next(iter(pbx.legs().values())).state == "up",
                     what="the answered leg")
    pbx.clock.advance(90)
    await pbx.ari.hangup(call)
    await eventually(lambda: not pbx.legs(), what="the call to end")
    await pbx.app.guard.drain()
    # 90 s at 1.00 per minute in 60/60 blocks: two blocks.
    assert pbx.spend("day", "2024-06-14") == Decimal("2.00")
    assert_passwords_not_logged(caplog, PASSWORD)


async def test_reload_disables_ari(make_pbx, caplog):
    caplog.set_level(logging.DEBUG)
    start = london(2024, 6, 14, 10, 0)
    pbx, call = await answered_call(make_pbx, start)
    pbx.clock.advance(30)

    set_ari_key(pbx, "enabled", "yes", "no")
    assert await pbx.app.reload()

    assert pbx.app.ari is None
    assert pbx.app.ari_connected is None
    assert pbx.app.guard.hangup is None
    await eventually(lambda: pbx.ari.subscribers() == 0, what="the websocket to close")
    assert ("ARI connection stopped with the new [ari] settings (changed: enabled)"
            in caplog.text)
    assert "ARI is disabled: live calls are not metered or hung up" in caplog.text
    assert "ARI events lost" not in caplog.text
    # No event can end the leg now: it is charged up to the reload and stored as ended.
    assert pbx.legs() == {}
    await pbx.app.guard.drain()
    assert pbx.spend("day", "2024-06-14") == Decimal("1.00")


async def test_ari_off_spend_stays_after_restart(make_pbx):
    # A call up when the daemon stops, which then ends unseen, must not be
    # charged for ever by a daemon that starts with ARI disabled.
    start = london(2024, 6, 14, 10, 0)
    pbx, call = await answered_call(make_pbx, start)
    await pbx.app.guard.drain()
    pbx.clock.advance(60)
    await pbx.crash()
    set_ari_key(pbx, "enabled", "yes", "no")
    await pbx.start_callguard()
    await pbx.app.guard.drain()

    assert pbx.legs() == {}
    assert pbx.spend("day", "2024-06-14") == Decimal("1.00")
    pbx.clock.set(london(2024, 6, 14, 12, 0))
    _, result = await pbx.call("01632960124")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await pbx.app.stop()
    await pbx.start_callguard()
    assert pbx.legs() == {}
    assert pbx.spend("day", "2024-06-14") == Decimal("1.00")


async def test_reload_same_ari_keeps_connection(make_pbx, caplog):
    caplog.set_level(logging.DEBUG)
    start = london(2024, 6, 14, 10, 0)
    pbx, call = await answered_call(make_pbx, start)
    listener = pbx.app.ari
    assert pbx.ari.connections == 1

    # The same password written again, and a change outside [ari].
    (pbx.directory / "ari.secret").write_text(PASSWORD + "\n")
    pbx.path.write_text(pbx.path.read_text().replace("daily_limit = 100.00",
                                                     "daily_limit = 50.00"))
    assert await pbx.app.reload()
    await asyncio.sleep(0.1)

    assert pbx.app.ari is listener
    assert pbx.app.ari.connected
    assert pbx.ari.connections == 1
    assert "ARI connection" not in caplog.text
    assert pbx.app.config.trunks["gamma"].daily_limit == Decimal("50.00")

    # Any other [ari] key that changes does reconnect.
    set_ari_key(pbx, "ping_timeout", "2s", "3s")
    assert await pbx.app.reload()
    await eventually(lambda: pbx.app.ari is not listener and pbx.app.ari.connected,
                     what="the reconnect")
    assert pbx.ari.connections == 2
    assert "(changed: ping_timeout)" in caplog.text
    assert list(pbx.legs()) == [call.trunk_id]
    assert_passwords_not_logged(caplog, PASSWORD)


async def test_start_empty_password_file_logged(make_pbx, caplog):
    pbx = await make_pbx(london(2024, 6, 14, 10, 0))
    await pbx.app.stop()
    secret = pbx.directory / "ari.secret"
    secret.write_text("\n")
    caplog.clear()
    caplog.set_level(logging.INFO)

    pbx.app = Application(load_config(pbx.path), clock=pbx.clock)
    await pbx.app.start()

    assert pbx.app.ari is None
    assert f"[ari] password_file: {secret} is empty" in caplog.text
    assert "password_file is not set" not in caplog.text
    assert ("ARI is enabled but no password was read from [ari] password_file, so live "
            "calls are not metered or hung up") in caplog.text


async def test_reload_bad_password_file_kept(make_pbx, caplog):
    caplog.set_level(logging.DEBUG)
    start = london(2024, 6, 14, 10, 0)
    pbx, call = await answered_call(make_pbx, start)
    listener = pbx.app.ari
    running = pbx.app.config
    secret = pbx.directory / "ari.secret"

    secret.unlink()
    assert not await pbx.app.reload()
    assert "[ari] password_file: 'ari.secret' is not a file" in caplog.text

    secret.write_bytes(b"\xffrotated\n")
    assert not await pbx.app.reload()
    assert (f"[ari] password_file: {secret} is not UTF-8 text (invalid start byte at "
            "byte 0); write the password as UTF-8") in caplog.text

    # Read and loaded, but refused by the ARI client: a control character.
    secret.write_text("new\tpassword\n")
    assert not await pbx.app.reload()
    assert ("[ari] password_file: the ARI password contains a control character; "
            "remove it") in caplog.text

    # Emptied, as by a shell redirect before the new password is written.
    secret.write_text("\n")
    assert not await pbx.app.reload()
    assert f"[ari] password_file: {secret} is empty" in caplog.text

    assert pbx.app.config is running
    assert pbx.app.ari is listener
    assert pbx.app.ari.connected
    assert pbx.ari.connections == 1
    assert "ARI connection" not in caplog.text
    assert list(pbx.legs()) == [call.trunk_id]
    assert_passwords_not_logged(caplog, PASSWORD, "rotated", "new\tpassword")


async def test_reload_timezone_moves_live_blocks(make_pbx):
    # The trunk moves from London to UTC during a call from 23:30 to 00:30
    # London time, which is 22:30 to 23:30 UTC: one UTC day, so every block
    # counts on the 14th, as it would after a restart.
    trunks = TRUNK_100.replace("rates = rates.csv",
                               "rates = rates.csv\ntimezone = Europe/London")
    start = london(2024, 6, 14, 23, 30)
    pbx = await make_pbx(start, trunks=trunks)
    call, _ = await pbx.call("01632960123")
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs() and pbx.legs()[call.trunk_id].state == "up",
                     what="the answered leg")
    pbx.clock.advance(60)
    pbx.path.write_text(pbx.path.read_text().replace("timezone = Europe/London",
                                                     "timezone = UTC"))
    assert await pbx.app.reload()

    pbx.clock.set(london(2024, 6, 15, 0, 15))
    pbx.app.guard.catch_up("gamma")
    assert pbx.app.ledger.live("gamma", "day", "2024-06-14") == Decimal("46.00")
    assert pbx.app.ledger.live("gamma", "day", "2024-06-15") == Decimal(0)
    pbx.clock.set(london(2024, 6, 15, 0, 29, 30))
    await pbx.ari.hangup(call)
    await eventually(lambda: not pbx.legs(), what="the call to end")
    await pbx.app.guard.drain()

    assert pbx.spend("day", "2024-06-14") == Decimal("60.00")
    assert pbx.spend("day", "2024-06-15") == Decimal(0)
    assert pbx.app.ledger.live("gamma", "day", "2024-06-14") == Decimal(0)


def store_locked(pbx: Pbx):
    """Hold the write lock of the PBX's SQLite store, as another process would."""
    return sqlite_write_locked(make_url(pbx.config.general.database).database)


async def call_ended_under_lock(make_pbx, monkeypatch) -> Pbx:
    """Answer a call at 1.00/min and end it after 90 s while the store is locked."""
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 50)
    start = london(2024, 6, 14, 10, 0)
    pbx, call = await answered_call(make_pbx, start)
    await pbx.app.guard.drain()
    with store_locked(pbx):
        pbx.clock.advance(90)
        await pbx.ari.hangup(call)
        await eventually(lambda: not pbx.legs(), what="the call to end")
        await pbx.app.guard.drain()
    return pbx


async def test_call_end_stored_after_store_lock(make_pbx, monkeypatch):
    # Another process holds the SQLite write lock as the call ends. If the end
    # were not written again, the next start would find the call up and charge
    # it up to that moment: 360.00 for six hours instead of 2.00.
    pbx = await call_ended_under_lock(make_pbx, monkeypatch)
    assert pbx.app.guard._writes, "the end of the call should wait in the queue"

    pbx.clock.advance(guard.WRITE_RETRY_FIRST_SECONDS)
    await eventually(lambda: not pbx.app.guard._writes, what="the write again")
    await pbx.app.guard.drain()
    assert pbx.spend("day", "2024-06-14") == Decimal("2.00")

    pbx.clock.set(london(2024, 6, 14, 16, 0))
    await pbx.app.stop()
    await pbx.start_callguard()
    assert pbx.legs() == {}
    assert pbx.spend("day", "2024-06-14") == Decimal("2.00")


async def answered_then_ari_off(make_pbx):
    """Answer a call at 10:00 and turn ARI off by a reload at 10:04:59; return
    the PBX and the call at 10:09:59."""
    pbx, call = await answered_call(make_pbx, london(2024, 6, 14, 10, 0))
    pbx.clock.advance(5 * 60 - 1)
    set_ari_key(pbx, "enabled", "yes", "no")
    assert await pbx.app.reload()
    await pbx.app.guard.drain()
    pbx.clock.advance(5 * 60)
    return pbx, call


async def test_ari_off_and_on_counts_call_once(make_pbx):
    # The call is charged and stored as ended when ARI goes off; back on, the
    # reconnect must not follow it again as a new call answered at its creation.
    pbx, call = await answered_then_ari_off(make_pbx)
    set_ari_key(pbx, "enabled", "no", "yes")
    assert await pbx.app.reload()
    await eventually(lambda: pbx.app.ari.connected, what="ARI back")
    await asyncio.sleep(0.1)

    assert pbx.legs() == {}
    pbx.clock.advance(5 * 60)
    await pbx.ari.hangup(call)
    await asyncio.sleep(0.1)
    await pbx.app.guard.drain()
    assert pbx.spend("day", "2024-06-14") == Decimal("5.00")
    assert pbx.app.ledger.spent("gamma", "day", "2024-06-14") == Decimal("5.00")


async def test_ari_off_then_restart_counts_once(make_pbx):
    # As above, but ARI comes back with a restart, whose channel list shows
    # the call still up: it was charged and stored as ended when ARI went off.
    pbx, call = await answered_then_ari_off(make_pbx)
    set_ari_key(pbx, "enabled", "no", "yes")
    await pbx.app.stop()
    await pbx.start_callguard()
    await asyncio.sleep(0.1)
    legs = dict(pbx.legs())
    status = (await pbx.app.status())["trunks"]["gamma"]

    pbx.clock.advance(5 * 60)
    await pbx.ari.hangup(call)
    await asyncio.sleep(0.1)
    await pbx.app.guard.drain()

    assert legs == {}
    # Answered at 10:00 and charged up to 10:04:59, when ARI went off: the
    # blocks at 10:00, 10:01, 10:02, 10:03 and 10:04, 5 * 1.00. Metered again
    # from its creation, it would show 15.00 at 10:09:59 and 20.00 at its end.
    assert status["daily_spend"] == "5.00"
    assert pbx.spend("day", "2024-06-14") == Decimal("5.00")
    assert pbx.app.ledger.spent("gamma", "day", "2024-06-14") == Decimal("5.00")


async def test_closed_guard_cancels_write_retry(make_pbx, monkeypatch):
    # A retry timer that fired after stop would write through a closed store.
    pbx = await call_ended_under_lock(make_pbx, monkeypatch)
    queued = len(pbx.app.guard._writes)

    pbx.app.guard.close()
    pbx.clock.advance(guard.WRITE_RETRY_MAX_SECONDS)
    await asyncio.sleep(0.05)
    await pbx.app.guard.drain()

    assert queued == 1
    assert len(pbx.app.guard._writes) == 1
    assert pbx.app.guard._retry_timers == set()


async def test_full_write_queue_drops_oldest_loudly(make_pbx, monkeypatch, caplog):
    monkeypatch.setattr(guard, "MAX_QUEUED_WRITES", 1)
    monkeypatch.setattr(engine, "SQLITE_BUSY_TIMEOUT_MS", 50)
    start = london(2024, 6, 14, 10, 0)
    pbx, call = await answered_call(make_pbx, start)
    await pbx.app.guard.drain()
    with store_locked(pbx):
        other, _ = await pbx.call("01632960124")
        await pbx.ari.answer(other)
        pbx.clock.advance(30)
        await pbx.ari.hangup(call)
        await eventually(lambda: pbx.app.guard.dropped_writes >= 1, what="a dropped update")

    assert "call updates are waiting for the store, so the oldest" in caplog.text


async def limit_hangup_while_blind(make_pbx, start: datetime):
    """Answer a call at ``start`` with 3.00 of the budget left, and let the limit
    hang it up while the events websocket is down; return the PBX and the call."""
    pbx = await make_pbx(start, spent=[("day", "2024-06-14", "7.00")])
    call, _ = await pbx.call("01632960123")
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs() and pbx.legs()[call.trunk_id].state == "up",
                     what="the answered leg")
    await pbx.ari.drop_events(refuse_for=math.inf)
    await eventually(lambda: not pbx.app.ari.connected, what="the drop")

    pbx.clock.advance(179)
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up at 179 s")
    await pbx.app.guard.drain()
    return pbx, call


async def test_blind_limit_hangup_charged_to_request(make_pbx):
    # The limit hangs the call up while the events websocket is down but REST
    # works, so its ChannelDestroyed is lost. The reconnect 30 minutes later
    # finds it gone: it ended when Asterisk accepted the DELETE, not then.
    start = london(2024, 6, 14, 10, 0)
    pbx, call = await limit_hangup_while_blind(make_pbx, start)
    assert call.trunk_id not in pbx.ari.channels
    assert call.trunk_id in pbx.legs()

    pbx.clock.advance(30 * 60)
    pbx.ari.allow_events()
    await eventually(lambda: pbx.app.ari.connected, timeout=10, what="the reconnect")
    await eventually(lambda: not pbx.legs(), what="the reconciliation")
    await pbx.app.guard.drain()

    # 7.00 before, and three 60 s blocks at 1.00 up to the hang-up.
    assert pbx.spend("day", "2024-06-14") == Decimal("10.00")
    assert pbx.app.ledger.spent("gamma", "day", "2024-06-14") == Decimal("10.00")
    stored = stored_calls(pbx)[call.trunk_id]
    assert stored.cost == Decimal("3.00")
    assert stored.ended_at == start + timedelta(seconds=179)


async def test_blind_limit_hangup_charged_after_restart(make_pbx):
    # As above, but callguard restarts 30 minutes after the hang-up, before
    # ARI shows the call gone. The call is still charged up to the hang-up,
    # not up to the restart, which would be 33.00 instead of 3.00.
    start = london(2024, 6, 14, 10, 0)
    pbx, call = await limit_hangup_while_blind(make_pbx, start)

    await pbx.crash()
    pbx.clock.advance(30 * 60)
    pbx.ari.allow_events()
    await pbx.start_callguard()
    await eventually(lambda: not pbx.legs(), what="the reconciliation")
    await pbx.app.guard.drain()

    assert pbx.spend("day", "2024-06-14") == Decimal("10.00")
    stored = stored_calls(pbx)[call.trunk_id]
    assert stored.cost == Decimal("3.00")
    assert stored.ended_at == start + timedelta(seconds=179)


# The phone dials 141 (caller ID withheld) or 18001 (Relay UK) before the
# number, and the dialplan passes the string to the check and to Dial() as
# dialled, so that the carrier gets the prefix.
@pytest.mark.parametrize("dialled", ["14101632960123", "1800101632960123"])
async def test_call_prefix_leg_linked(make_pbx, dialled):
    pbx = await make_pbx(london(2024, 6, 14, 10, 0))
    call, result = await pbx.call(dialled)
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    assert result["CALLGUARD_CATEGORY"] == "geographic"

    await eventually(lambda: call.trunk_id in pbx.legs(), what="the trunk leg")
    leg = pbx.legs()[call.trunk_id]
    assert leg.guarded
    assert leg.e164 == "+441632960123"
    assert not leg.hangup_requested


async def single_hangup(pbx: Pbx):
    """Wait for the one hang-up callguard requests and the leg's end; return its record."""
    await eventually(lambda: len(pbx.ari.deletes) == 1, what="the hang-up")
    await eventually(lambda: not pbx.legs(), what="the leg to end")
    await pbx.app.guard.drain()
    return stored_hangups(pbx)[0]


async def test_weekly_limit_days_ahead_hangs_up(make_pbx):
    # A call that skipped the check gets no S() limit from the dialplan. At
    # 0.01 a minute the weekly 72.00 pays 7200 minutes, which is five days and
    # further ahead than the limit timer searches. The 50% warning comes 60
    # hours before the limit.
    trunks = TRUNK_10.replace("daily_limit = 10.00",
                              "weekly_limit = 72.00\nwarn_percent = 50")
    rates = RATE_1.replace("1.00", "0.01")
    start = london(2024, 6, 10, 0, 0, 30)  # a Monday
    pbx = await make_pbx(start, trunks=trunks, rates=rates)
    call = await pbx.ari.dial_out("01632960123", dialstring="01632960123@gamma")
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs() and pbx.legs()[call.trunk_id].state == "up",
                     what="the answered leg")

    hangup_at = start + timedelta(minutes=7200) - timedelta(seconds=LIMIT_LEAD_SECONDS)
    while pbx.clock.now() + timedelta(hours=1) < hangup_at:
        pbx.clock.advance(3600)
        await pbx.settle()
    pbx.clock.set(hangup_at - timedelta(seconds=1))
    await pbx.settle()
    assert pbx.ari.deletes == []

    pbx.clock.advance(1)
    hangup = await single_hangup(pbx)
    assert hangup.reason == "limit:weekly"
    assert hangup.requested_at == hangup_at
    assert pbx.spend("week", "2024-W24") == Decimal("72.00")


async def test_expired_hold_frees_live_budget(make_pbx):
    # The first call's trunk is busy and its caller stays in the dialplan, so
    # its 1.00 stays held until 120 s later, at 10:02. No check runs after
    # that, so the second call, answered at 10:00:30, has the whole 10.00 for
    # ten minutes, and its block at 10:10:30 is the first not paid.
    start = london(2024, 6, 14, 10, 0)
    pbx = await make_pbx(start)
    busy, _ = await pbx.call("01632960001")
    await eventually(lambda: busy.trunk_id in pbx.legs(), what="the first Dial")
    await pbx.ari.fail(busy, "BUSY", 17, caller_continues=True)
    await eventually(lambda: not pbx.legs(), what="the busy leg's end")
    assert pbx.app.reservations.held("gamma", "day", "2024-06-14") == Decimal("1.00")

    pbx.clock.set(london(2024, 6, 14, 10, 0, 30))
    call, _ = await pbx.call("01632960002", endpoint="1002")
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs() and pbx.legs()[call.trunk_id].state == "up",
                     what="the answered leg")
    for minute in range(1, 10):
        pbx.clock.set(london(2024, 6, 14, 10, minute, 30))
        await pbx.settle()
    pbx.clock.set(london(2024, 6, 14, 10, 10, 28))
    await pbx.settle()
    assert pbx.ari.deletes == []

    pbx.clock.advance(1)
    hangup = await single_hangup(pbx)
    assert hangup.requested_at == london(2024, 6, 14, 10, 10, 29)
    assert pbx.spend("day", "2024-06-14") == Decimal("10.00")


async def test_new_hold_brings_limit_forward(make_pbx):
    # A check at 10:08:30 finds 1.00 left and reserves it, but its channel has
    # not dialled yet, as while the dialplan plays a prompt. The call up since
    # 10:00 may then pay nine minutes, so its block at 10:09 is not paid.
    pbx = await make_pbx(london(2024, 6, 14, 10, 0))
    call, _ = await pbx.call("01632960001")
    await pbx.ari.answer(call)
    await eventually(lambda: pbx.legs() and pbx.legs()[call.trunk_id].state == "up",
                     what="the answered leg")
    for minute in range(1, 9):
        pbx.clock.set(london(2024, 6, 14, 10, minute))
        await pbx.settle()
    pbx.clock.set(london(2024, 6, 14, 10, 8, 30))
    check = pbx.checker("01632960002", endpoint="1002")
    assert await check("1718356110.90")
    await pbx.settle()
    assert pbx.app.reservations.held("gamma", "day", "2024-06-14") == Decimal("1.00")
    assert pbx.ari.deletes == []

    pbx.clock.set(london(2024, 6, 14, 10, 8, 59))
    hangup = await single_hangup(pbx)
    assert hangup.requested_at == london(2024, 6, 14, 10, 8, 59)
    assert pbx.spend("day", "2024-06-14") == Decimal("9.00")
