"""Warning and limit e-mails raised by live spend, delivered to a real SMTP server."""

import asyncio
import logging
from datetime import datetime, timedelta, timezone
from email import message_from_bytes

import pytest
from aiosmtpd.controller import Controller

from callguard.daemon.operator import operator_commands, store_identity
from callguard.windows import window_keys
from live_support import Pbx, eventually
from support import free_port

NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)

TRUNK = """\
[trunk gamma]
bar = premium, international
daily_limit = 100.00
warn_percent = 80
channel_pattern = PJSIP/gamma-*
rates = rates.csv
notify = gamma-noc@example.org
"""

RATES = """\
prefix,description,rate,connection_fee,increments
44,United Kingdom,4.49,4.49,60/60
"""


class Mailbox:
    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"

    def subjects(self) -> list[str]:
        return [message["Subject"] for _, message in self.messages]


@pytest.fixture
def mailbox():
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    box.port = controller.port
    yield box
    controller.stop()


async def test_warning_then_limit_mail(tmp_path, mailbox, caplog):
    smtp = (f"\n[smtp]\nhost = 127.0.0.1\nport = {mailbox.port}\nsecurity = none\n"
            "from = callguard@pbx.example.org\nto = noc@example.org\n")
    pbx = Pbx(tmp_path, NOW, trunks=TRUNK + smtp, rates=RATES)
    await pbx.start()
    try:
        call, result = await pbx.call("01632960123")
        assert result["CALLGUARD_RESULT"] == "ALLOW"
        await pbx.ari.answer(call)
        await eventually(lambda: call.trunk_id in pbx.legs()
                         and pbx.legs()[call.trunk_id].state == "up")

        # 4.49 fee + 4.49 a minute: 17 blocks cost 76.33, the 18th takes the
        # spend to 80.82 when it begins, 16 minutes after answer.
        pbx.clock.advance(16 * 60 - 1)
        await pbx.app.alerts_settle()
        assert mailbox.messages == []

        pbx.clock.advance(1)
        await eventually(lambda: len(mailbox.messages) == 1, what="the warning e-mail")
        for _ in range(4):
            pbx.clock.advance(60)
            await pbx.settle()
        await pbx.app.alerts_settle()
        warnings = [s for s in mailbox.subjects() if "80%" in s]

        # 22 blocks cost 98.78; the 23rd, at 21 minutes, cannot be paid.
        pbx.clock.advance(60)
        await eventually(lambda: pbx.ari.deletes, what="the hang-up")
        await eventually(lambda: any("limit reached" in s for s in mailbox.subjects()),
                         what="the limit e-mail")
    finally:
        await pbx.stop()

    assert warnings == ["[callguard] gamma: daily spend 80% (80.82 of 100.00 GBP)"]
    assert ("gamma: daily spend 80.82 of 100.00 GBP reached the warning level of 80%"
            in caplog.text)
    recipients = [sorted(rcpt) for rcpt, message in mailbox.messages
                  if "80%" in message["Subject"]]
    assert recipients == [["gamma-noc@example.org", "noc@example.org"]]
    limit_mail = next(message for _, message in mailbox.messages
                      if "limit reached" in message["Subject"])
    body = limit_mail.get_payload(decode=True).decode()
    assert "+441632960123" in body
    assert "hung up 1 live call (" in body
    assert "callguardctl" in body


def smtp_section(mailbox) -> str:
    return (f"\n[smtp]\nhost = 127.0.0.1\nport = {mailbox.port}\nsecurity = none\n"
            "from = callguard@pbx.example.org\nto = noc@example.org\n")


LEVELS_TRUNK = TRUNK.replace("warn_percent = 80", "warn_percent = 50, 80, 95")
BIG_FEE = "prefix,description,rate,connection_fee,increments\n44,UK,1.00,85.00,60/60\n"


async def start_answered(pbx) -> object:
    call, result = await pbx.call("01632960123")
    assert result["CALLGUARD_RESULT"] == "ALLOW"
    await pbx.ari.answer(call)
    await eventually(lambda: call.trunk_id in pbx.legs()
                     and pbx.legs()[call.trunk_id].state == "up")
    return call


async def test_jump_past_two_levels_sends_higher(tmp_path, mailbox):
    pbx = Pbx(tmp_path, NOW, trunks=LEVELS_TRUNK + smtp_section(mailbox), rates=BIG_FEE)
    await pbx.start()
    try:
        await start_answered(pbx)           # 85.00 fee + 1.00: from 0 to 86.00
        await eventually(lambda: len(mailbox.messages) == 1, what="the first warning")
        pbx.clock.advance(8 * 60)           # 94.00
        await pbx.app.alerts_settle()
        after_eight = mailbox.subjects()
        pbx.clock.advance(60)               # the block at 9 minutes: 95.00
        await eventually(lambda: len(mailbox.messages) == 2, what="the 95% warning")
    finally:
        await pbx.stop()

    assert after_eight == ["[callguard] gamma: daily spend 80% (86.00 of 100.00 GBP)"]
    assert mailbox.subjects()[1] == "[callguard] gamma: daily spend 95% (95.00 of 100.00 GBP)"


async def test_warning_once_across_restart(tmp_path, mailbox):
    pbx = Pbx(tmp_path, NOW, trunks=LEVELS_TRUNK + smtp_section(mailbox), rates=BIG_FEE)
    await pbx.start()
    try:
        await start_answered(pbx)
        await eventually(lambda: len(mailbox.messages) == 1, what="the warning")
        await pbx.app.guard.drain()
        await pbx.crash()
        await pbx.start_callguard()
        pbx.clock.advance(30)
        await pbx.app.alerts_settle()
        await asyncio.sleep(0.2)
        await pbx.app.alerts_settle()
    finally:
        await pbx.stop()

    assert mailbox.subjects() == ["[callguard] gamma: daily spend 80% (86.00 of 100.00 GBP)"]


async def test_refused_call_raises_limit_mail(tmp_path, mailbox):
    pbx = Pbx(tmp_path, NOW, trunks=TRUNK + smtp_section(mailbox), rates=RATES)
    await pbx.start()
    try:
        await pbx.app.stop()
        pbx.add_spend("day", "2024-06-14", "99.00", NOW)
        await pbx.start_callguard()
        _, first = await pbx.call("01632960123")
        _, second = await pbx.call("01632960124")
        await eventually(lambda: mailbox.messages, what="the limit e-mail")
        await pbx.app.alerts_settle()
    finally:
        await pbx.stop()

    assert first["CALLGUARD_REASON"] == "limit:daily"
    assert second["CALLGUARD_REASON"] == "limit:daily"
    assert mailbox.subjects() == [
        "[callguard] gamma: daily limit reached (99.00 of 100.00 GBP)"]
    body = mailbox.messages[0][1].get_payload(decode=True).decode()
    assert "refused a call to +441632960123" in body


async def test_ari_unreachable_mail(tmp_path, mailbox, caplog):
    pbx = Pbx(tmp_path, NOW, trunks=TRUNK + smtp_section(mailbox), rates=RATES)
    pbx.app_settings = {"ari_alert_after": timedelta(minutes=5), "ari_watch_interval": 0.02}
    await pbx.start()
    try:
        await pbx.ari.drop_events(refuse_for=float("inf"))
        await eventually(lambda: not pbx.app.ari.connected, what="the drop")
        pbx.clock.advance(4 * 60)
        await asyncio.sleep(0.1)
        await pbx.app.alerts_settle()
        early = list(mailbox.messages)
        pbx.clock.advance(61)
        await eventually(lambda: mailbox.messages, what="the ARI e-mail")
    finally:
        await pbx.stop()

    assert early == []
    assert mailbox.subjects() == ["[callguard] ARI unreachable for 5 minutes"]
    (error,) = [r.getMessage() for r in caplog.records
                if r.levelno == logging.ERROR and "ARI unreachable since" in r.getMessage()]
    assert f"its http.conf serves {pbx.app.config.ari.url}, and that its ari.conf has " \
           f"the user {pbx.app.config.ari.username} with the password in " \
           f"{pbx.app.config.ari.password_file}" in error


async def test_alerts_again_after_spend_reset(tmp_path, mailbox):
    # A "false alarm" reset starts the day's budget again, so its warnings and
    # limit alert must come again as the spend climbs anew.
    pbx = Pbx(tmp_path, NOW, trunks=LEVELS_TRUNK + smtp_section(mailbox), rates=BIG_FEE)
    await pbx.start()
    try:
        call = await start_answered(pbx)           # 85.00 fee + 1.00: 86.00
        await eventually(lambda: len(mailbox.messages) == 1, what="the first warning")
        await pbx.ari.hangup(call)
        await eventually(lambda: not pbx.legs(), what="the end of the call")
        await pbx.app.guard.drain()

        key = window_keys(pbx.clock.now(), pbx.config.trunks["gamma"].timezone)["day"]
        await pbx.app.worker.call(pbx.app.store.reset_spend, "gamma", "day", key,
                                  "false alarm", pbx.clock.now(), "root")
        reset = operator_commands(pbx.app)["reset"]
        reset({"trunk": "gamma", "window": "day", "key": key,
               "store": store_identity(pbx.config.general.database)})
        pbx.clock.advance(60)

        await start_answered(pbx)
        await eventually(lambda: len(mailbox.messages) == 2, what="the warning after the reset")
    finally:
        await pbx.stop()

    assert mailbox.subjects() == ["[callguard] gamma: daily spend 80% (86.00 of 100.00 GBP)"] * 2


async def test_zero_limit_no_warning(tmp_path, mailbox):
    # A daily limit of 0 refuses every call. The limit mail reports it, and no
    # warning claims that 95 % of nothing was spent.
    trunk = TRUNK.replace("daily_limit = 100.00", "daily_limit = 0").replace(
        "warn_percent = 80", "warn_percent = 50, 80, 95")
    pbx = Pbx(tmp_path, NOW, trunks=trunk + smtp_section(mailbox), rates=RATES)
    await pbx.start()
    try:
        _, result = await pbx.call("01632960123")
        await eventually(lambda: any("limit reached" in s for s in mailbox.subjects()),
                         what="the limit e-mail")
        # As after a reload or a read of the totals that other nodes changed.
        pbx.app.guard.reschedule("gamma")
        await pbx.app.alerts_settle()
    finally:
        await pbx.stop()

    assert result["CALLGUARD_REASON"] == "limit:daily"
    assert [s for s in mailbox.subjects() if "%" in s] == []


async def test_lower_limit_warning_says_over(tmp_path, mailbox):
    # A reload that lowers the limit below the day's spend brings the warning
    # level and the limit at once: the mail says so instead of "80%".
    pbx = Pbx(tmp_path, NOW, trunks=TRUNK + smtp_section(mailbox), rates=RATES)
    await pbx.start()
    try:
        await pbx.restart_with_spend([("day", "2024-06-14", "9.00")], NOW)
        call, _ = await pbx.call("01632960123")
        await pbx.ari.answer(call)
        await eventually(lambda: call.trunk_id in pbx.legs()
                         and pbx.legs()[call.trunk_id].state == "up", what="the answer")
        pbx.path.write_text(pbx.path.read_text().replace("daily_limit = 100.00",
                                                         "daily_limit = 5.00"))
        assert await pbx.app.reload()
        await eventually(lambda: any("spend over" in s for s in mailbox.subjects()),
                         what="the warning e-mail")
    finally:
        await pbx.stop()

    # 9.00 before the call, and its connection fee and first block of 4.49 each.
    assert "[callguard] gamma: daily spend over the limit (17.98 of 5.00 GBP)" in (
        mailbox.subjects())
    assert [s for s in mailbox.subjects() if "%" in s] == []
