"""Alert delivery end to end: a real SMTP server (aiosmtpd) and a real webhook
receiver (aiohttp) on loopback, the outbox in SQLite, time from a manual clock."""

import asyncio
import dataclasses
import email
import hashlib
import hmac
import json
import logging
import socket
import ssl
import subprocess
import threading
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.policy import default as default_policy
from pathlib import Path

import pytest
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

from callguard.cli import ctl
from callguard.clock import ManualClock
from callguard.config import load_config
from callguard.metering.alerts import AlertRaiser
from callguard.notify import Alert, AlertDispatcher
from callguard.notify import smtp as smtp_client
from callguard.notify.alert import merge_recipients, outbox_rows
from callguard.notify.delivery import backoff
from callguard.notify.webhook import signature
from callguard.store import (
    ALERT_FAILED,
    ALERT_PENDING,
    ALERT_SENT,
    TRANSPORT_EMAIL,
    TRANSPORT_WEBHOOK,
    BlockChange,
    BlockRecord,
    Store,
)
from callguard.worker import StoreWorker
from support import free_port

T0 = datetime(2024, 6, 14, 12, 0, 0, tzinfo=timezone.utc)
SENDER = "callguard@pbx.example.com"
NOC = "noc@example.com"
OPS = "ops@example.com"
KEY = "warning:gamma:day:2024-06-14:80"
SUBJECT = "[callguard] gamma: daily spend 80% (40.00 of 50.00 GBP)"
QUEUED_REPLY = "250 2.0.0 Ok: queued as 4XyZ"
USER = "callguard"
PASSWORD = "s3cret-Pa55"
WEBHOOK_SECRET = "hook-k3y-0f-callguard"
HOOK_PATH = "/hooks/callguard"


def warning(key: str | None = KEY, recipients: tuple[str, ...] = ()) -> Alert:
    return Alert(
        kind="warning",
        trunk="gamma",
        subject=SUBJECT,
        body="Trunk gamma has spent 40.00 of its 50.00 GBP daily limit.\n",
        data={"spent": "40.00", "limit": "50.00", "percent": 80, "window": "day"},
        dedupe_key=key,
        recipients=recipients,
    )


# A real SMTP server in its own thread.


class Mailbox:
    """aiosmtpd handler that refuses or defers chosen recipients and keeps messages."""

    def __init__(self, refuse=(), defer_once=()):
        self.refuse = set(refuse)
        self.defer_once = set(defer_once)
        self.messages: list[dict] = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse:
            return f"550 5.1.1 <{address}>: Recipient address rejected"
        if address in self.defer_once:
            self.defer_once.discard(address)
            return f"450 4.2.1 <{address}>: Mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(
            {
                "from": envelope.mail_from,
                "to": list(envelope.rcpt_tos),
                "message": email.message_from_bytes(
                    envelope.original_content, policy=default_policy
                ),
                # session.ssl is set by STARTTLS; implicit TLS shows on the transport.
                "tls": session.ssl is not None
                or server.transport.get_extra_info("ssl_object") is not None,
                "authenticated": session.authenticated,
            }
        )
        return QUEUED_REPLY


def authenticator(server, session, envelope, mechanism, auth_data):
    valid = auth_data.login == USER.encode() and auth_data.password == PASSWORD.encode()
    return AuthResult(success=valid, handled=False)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """Return (certificate, key) of a self-signed certificate for 127.0.0.1."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(cert), "-days", "2",
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_context(certificate) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    return context


@pytest.fixture
def mail_server():
    """Start aiosmtpd servers on loopback: ``start(mailbox, port=None, **options)``."""
    running = []

    def start(mailbox: Mailbox, port: int | None = None, **options) -> int:
        port = port or free_port()
        controller = Controller(mailbox, hostname="127.0.0.1", port=port, **options)
        controller.start()
        running.append(controller)
        return port

    yield start
    for controller in running:
        controller.stop()


# A real webhook receiver that checks the signature.


class Receiver:
    """aiohttp handler: 401 for a bad signature, else the next queued status."""

    def __init__(self, statuses=()):
        self.statuses = list(statuses)
        self.requests: list[tuple[dict, bytes]] = []
        self.bad_signatures = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        if request.headers.get("X-Callguard-Signature") != f"sha256={digest}":
            self.bad_signatures += 1
            return web.Response(status=401, text="bad signature")

        self.requests.append((dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 204
        return web.Response(status=status)


@pytest.fixture
async def webhook_server():
    """Start aiohttp receivers on loopback: ``await start(receiver)`` gives the URL."""
    runners = []

    async def start(receiver: Receiver) -> str:
        app = web.Application()
        app.router.add_post(HOOK_PATH, receiver.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}{HOOK_PATH}?token=t0k3n"

    yield start
    for runner in runners:
        await runner.cleanup()


# The config file and the dispatcher.


def write_config(
    folder: Path, smtp: dict | None = None, webhook: dict | None = None
) -> Path:
    """Write a callguard.conf with the given [smtp] and [webhook] keys; return it."""
    lines = [
        "[general]",
        f"database = sqlite:///{folder / 'callguard.db'}",
        f"control_socket = {folder / 'callguard.sock'}",
        "[ari]",
        "enabled = no",
    ]
    for name, keys in (("smtp", smtp), ("webhook", webhook)):
        if keys is not None:
            lines.append(f"[{name}]")
            lines.extend(f"{key} = {value}" for key, value in keys.items())
    lines += ["[trunk gamma]", "default_rate = 0.10", f"notify = {OPS}"]

    path = folder / "callguard.conf"
    path.write_text("\n".join(lines) + "\n")
    return path


def smtp_keys(port: int, **changes) -> dict:
    keys = {
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "from": SENDER,
        "to": NOC,
        "timeout": "2s",
        "give_up_after": "1h",
    }
    keys.update(changes)
    return keys


def secret_file(folder: Path, name: str, secret: str) -> Path:
    path = folder / name
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return path


def hook_keys(folder: Path, url: str, secret: str = WEBHOOK_SECRET) -> dict:
    return {"url": url, "secret_file": secret_file(folder, "hook.secret", secret)}


class Rig:
    """A dispatcher on its own store worker, driven by a manual clock."""

    def __init__(self, config, clock: ManualClock):
        self.config = config
        self.clock = clock
        self.store = Store(config.general.database)
        self.worker = StoreWorker(self.store)
        self.dispatcher = AlertDispatcher(config, self.worker, clock)
        self.stopped = False

    async def start(self) -> "Rig":
        await self.worker.call(self.store.open)
        await self.dispatcher.start()
        return self

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        await self.dispatcher.stop()
        await self.worker.call(self.store.close)
        self.worker.shutdown()

    async def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.dispatcher.settle()

    async def rows(self):
        return await self.worker.call(self.store.recent_alerts)


@pytest.fixture
def clock():
    return ManualClock(T0)


@pytest.fixture
async def rig(clock):
    """Start rigs: ``await rig(config_path)``; all are stopped after the test."""
    started = []

    async def make(path: Path) -> Rig:
        started.append(await Rig(load_config(path), clock).start())
        return started[-1]

    yield make
    for started_rig in started:
        await started_rig.stop()


# E-mail.


async def test_plain_delivery(tmp_path, mail_server, rig, caplog):
    caplog.set_level(logging.INFO, logger="callguard.notify")
    mailbox = Mailbox()
    port = mail_server(mailbox)
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(port)))

    cg.dispatcher.submit(warning(recipients=(OPS, NOC.upper())))
    await cg.dispatcher.settle()

    [delivered] = mailbox.messages
    message = delivered["message"]
    [row] = await cg.rows()
    assert delivered["from"] == SENDER
    assert delivered["to"] == [NOC, OPS]
    assert message["Subject"] == SUBJECT
    assert message["To"] == f"{NOC}, {OPS}"
    assert message["Message-ID"] == "<callguard.1.1718366400@pbx.example.com>"
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["X-Callguard-Trunk"] == "gamma"
    assert message.get_content().startswith("Trunk gamma has spent 40.00")
    assert row.state == ALERT_SENT
    assert row.reply == QUEUED_REPLY
    assert row.attempts == 1
    assert row.sent_at == T0
    assert any(
        "sent alert 1 (warning, trunk gamma)" in record.getMessage()
        for record in caplog.records
    )


async def test_starttls_with_login(tmp_path, mail_server, rig, certificate):
    mailbox = Mailbox()
    port = mail_server(
        mailbox,
        tls_context=server_context(certificate),
        require_starttls=True,
        authenticator=authenticator,
        auth_require_tls=True,
    )
    password_file = secret_file(tmp_path, "smtp.secret", PASSWORD)
    keys = smtp_keys(
        port,
        security="starttls",
        ca_file=certificate[0],
        username=USER,
        password_file=password_file,
    )
    cg = await rig(write_config(tmp_path, smtp=keys))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [delivered] = mailbox.messages
    [row] = await cg.rows()
    assert delivered["tls"] is True
    assert delivered["authenticated"] is True
    assert row.state == ALERT_SENT


async def test_implicit_tls(tmp_path, mail_server, rig, certificate):
    mailbox = Mailbox()
    port = mail_server(mailbox, ssl_context=server_context(certificate))
    keys = smtp_keys(port, security="tls", ca_file=certificate[0])
    cg = await rig(write_config(tmp_path, smtp=keys))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [delivered] = mailbox.messages
    assert delivered["tls"] is True
    assert (await cg.rows())[0].state == ALERT_SENT


async def test_login_rejected(tmp_path, mail_server, rig, certificate, caplog):
    caplog.set_level(logging.DEBUG)
    mailbox = Mailbox()
    port = mail_server(
        mailbox,
        tls_context=server_context(certificate),
        require_starttls=True,
        authenticator=authenticator,
    )
    wrong = "wr0ng-Pa55"
    keys = smtp_keys(
        port,
        security="starttls",
        ca_file=certificate[0],
        username=USER,
        password_file=secret_file(tmp_path, "smtp.secret", wrong),
    )
    cg = await rig(write_config(tmp_path, smtp=keys))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [row] = await cg.rows()
    assert mailbox.messages == []
    assert row.state == ALERT_PENDING
    assert row.next_attempt_at == T0 + backoff(1)
    assert f"rejected the login as {USER}: 535" in row.last_error
    assert all(wrong not in record.getMessage() for record in caplog.records)


async def test_non_ascii_password(tmp_path, mail_server, rig, certificate):
    port = mail_server(
        Mailbox(),
        tls_context=server_context(certificate),
        authenticator=authenticator,
    )
    keys = smtp_keys(
        port,
        security="starttls",
        ca_file=certificate[0],
        username=USER,
        password_file=secret_file(tmp_path, "smtp.secret", "pässwörd"),
    )
    cg = await rig(write_config(tmp_path, smtp=keys))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [row] = await cg.rows()
    assert row.state == ALERT_PENDING
    assert "contains non-ASCII characters" in row.last_error
    assert "pässwörd" not in row.last_error


async def test_untrusted_certificate(tmp_path, mail_server, rig, certificate):
    port = mail_server(Mailbox(), tls_context=server_context(certificate))
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(port, security="starttls")))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [row] = await cg.rows()
    assert row.state == ALERT_PENDING
    assert "failed verification" in row.last_error
    assert "set ca_file" in row.last_error


async def test_server_down_then_up(tmp_path, mail_server, rig):
    port = free_port()
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(port)))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()
    [down] = await cg.rows()
    mailbox = Mailbox()
    mail_server(mailbox, port=port)
    await cg.advance(backoff(1).total_seconds())
    await cg.advance(3600)

    [row] = await cg.rows()
    assert down.state == ALERT_PENDING
    assert "Connection refused" in down.last_error
    assert len(mailbox.messages) == 1
    assert row.state == ALERT_SENT
    assert row.attempts == 2
    assert row.sent_at == T0 + backoff(1)


async def test_down_server_defers_others(tmp_path, rig):
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(free_port())))

    for n in range(3):
        cg.dispatcher.submit(warning(key=f"warning:{n}"))
    await cg.dispatcher.settle()
    cg.clock.advance(5)
    cg.dispatcher.submit(warning(key="warning:later"))
    await cg.dispatcher.settle()

    rows = await cg.rows()
    assert [row.attempts for row in rows] == [0, 0, 0, 1]
    assert {row.next_attempt_at for row in rows} == {T0 + backoff(1)}


async def test_refused_recipient(tmp_path, mail_server, rig):
    bad = "gone@example.com"
    mailbox = Mailbox(refuse={bad})
    port = mail_server(mailbox)
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(port, to=f"{NOC}, {bad}")))

    cg.dispatcher.submit(warning(recipients=(OPS,)))
    await cg.dispatcher.settle()

    [delivered] = mailbox.messages
    [row] = await cg.rows()
    assert delivered["to"] == [NOC, OPS]
    assert row.state == ALERT_SENT
    assert row.refused == f"{bad}: 550 5.1.1 <{bad}>: Recipient address rejected"


async def test_every_recipient_refused(tmp_path, mail_server, rig):
    mailbox = Mailbox(refuse={NOC})
    port = mail_server(mailbox)
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(port)))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [row] = await cg.rows()
    assert mailbox.messages == []
    assert row.state == ALERT_FAILED
    assert row.attempts == 1
    assert row.last_error.startswith("the server refused every recipient")


async def test_deferred_recipient(tmp_path, mail_server, rig):
    mailbox = Mailbox(defer_once={OPS})
    port = mail_server(mailbox)
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(port)))

    cg.dispatcher.submit(warning(recipients=(OPS,)))
    await cg.dispatcher.settle()
    [partial] = await cg.rows()
    await cg.advance(backoff(1).total_seconds())

    first, second = mailbox.messages
    [row] = await cg.rows()
    assert first["to"] == [NOC]
    assert second["to"] == [OPS]
    assert first["message"]["Message-ID"] == second["message"]["Message-ID"]
    assert partial.state == ALERT_PENDING
    assert partial.pending_recipients == (OPS,)
    assert "450 4.2.1" in partial.last_error
    assert row.state == ALERT_SENT
    assert row.pending_recipients is None


async def test_give_up(tmp_path, rig, capsys):
    path = write_config(tmp_path, smtp=smtp_keys(free_port(), give_up_after="1m"))
    cg = await rig(path)

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()
    for _ in range(8):
        await cg.advance(10)

    [row] = await cg.rows()
    assert row.state == ALERT_FAILED
    assert row.attempts == 4  # at 0 s, 10 s, 30 s, and 60 s when time was up
    assert row.last_attempt_at == T0 + timedelta(minutes=1)
    assert row.last_error.startswith("gave up after 4 attempts: cannot talk to")

    assert ctl.main(["--config", str(path), "alerts"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "alerts: 0 pending, 0 sent, 1 failed"
    assert shown[2].split()[:8] == [
        "1", "2024-06-14", "13:00:00", "warning", "gamma", "email", "failed", "4",
    ]  # fmt: skip
    assert shown[3].strip().startswith("last error: gave up after 4 attempts")


async def test_dedupe_across_restart(tmp_path, mail_server, rig, clock):
    mailbox = Mailbox()
    path = write_config(tmp_path, smtp=smtp_keys(mail_server(mailbox)))
    first = await rig(path)

    first.dispatcher.submit(warning())
    first.dispatcher.submit(warning())
    await first.dispatcher.settle()
    await first.stop()
    clock.advance(600)
    second = await rig(path)
    second.dispatcher.submit(warning())
    second.dispatcher.submit(warning(key="warning:gamma:day:2024-06-14:95"))
    await second.dispatcher.settle()

    rows = await second.rows()
    assert [row.dedupe_key for row in rows] == [
        "warning:gamma:day:2024-06-14:95",
        KEY,
    ]
    assert len(mailbox.messages) == 2


async def test_queued_before_restart(tmp_path, mail_server, rig, clock):
    port = free_port()
    path = write_config(tmp_path, smtp=smtp_keys(port))
    first = await rig(path)
    first.dispatcher.submit(warning())
    await first.dispatcher.settle()
    await first.stop()

    mailbox = Mailbox()
    mail_server(mailbox, port=port)
    clock.advance(backoff(1).total_seconds())
    second = await rig(path)
    await second.dispatcher.settle()

    [row] = await second.rows()
    assert len(mailbox.messages) == 1
    assert row.state == ALERT_SENT


async def test_reconfigure_moves_server(tmp_path, mail_server, rig):
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(free_port())))
    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    mailbox = Mailbox()
    fixed = tmp_path / "fixed"
    fixed.mkdir()
    config = load_config(write_config(fixed, smtp=smtp_keys(mail_server(mailbox))))
    cg.dispatcher.reconfigure(config)
    await cg.advance(backoff(1).total_seconds())

    [row] = await cg.rows()
    assert len(mailbox.messages) == 1
    assert row.state == ALERT_SENT


async def test_send_keeps_loop_free(tmp_path, rig, monkeypatch):
    stalled = socket.socket()
    stalled.bind(("127.0.0.1", 0))
    stalled.listen()  # accepts connections but never greets
    port = stalled.getsockname()[1]
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(port, timeout="300ms")))
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    go_on = threading.Event()
    sends = []
    real_send_mail = smtp_client.send_mail

    def held_send_mail(*args):
        # Waits for the test's coroutine, which can run only while the loop is
        # free. A send on the loop would wait here in vain until the timeout.
        sends.append("started")
        loop.call_soon_threadsafe(started.set)
        sends.append("released" if go_on.wait(10) else "not released")
        return real_send_mail(*args)

    monkeypatch.setattr(smtp_client, "send_mail", held_send_mail)

    cg.dispatcher.submit(warning())
    sent_by_submit = list(sends)
    await asyncio.wait_for(started.wait(), 10)
    go_on.set()
    await cg.dispatcher.settle()
    stalled.close()

    [row] = await cg.rows()
    assert sent_by_submit == []
    assert sends == ["started", "released"]
    assert row.last_error.endswith("timed out after 0.3 s")


async def test_no_transport_configured(tmp_path, rig, caplog):
    cg = await rig(write_config(tmp_path))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    assert await cg.rows() == []
    assert any("neither [smtp] nor [webhook]" in r.getMessage() for r in caplog.records)


async def test_unsent_alert_without_trunk_logged(tmp_path, rig, caplog):
    cg = await rig(write_config(tmp_path))
    down = Alert(kind="ari-down", trunk=None, subject="[callguard] ARI unreachable",
                 body="ARI has been unreachable for 5 minutes.\n", data={})

    cg.dispatcher.submit(down)
    await cg.dispatcher.settle()

    messages = [r.getMessage() for r in caplog.records if "not sending" in r.getMessage()]
    assert messages == [
        "not sending the ari-down alert because neither [smtp] nor [webhook] is "
        "configured: [callguard] ARI unreachable"]


async def test_invalid_alert_dropped(tmp_path, mail_server, rig, caplog):
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(mail_server(Mailbox()))))
    bad_subject = Alert(kind="warning", trunk="gamma", subject=None, body="", data={})
    bad_data = Alert(
        kind="limit", trunk="gamma", subject="s", body="", data={"at": object()}
    )

    cg.dispatcher.submit(bad_subject)
    cg.dispatcher.submit(bad_data)
    cg.dispatcher.submit("not an alert")
    await cg.dispatcher.settle()

    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert await cg.rows() == []
    assert len(errors) == 3
    assert "dropping an invalid warning alert for trunk gamma" in errors[0]


async def test_subject_line_breaks(tmp_path, mail_server, rig):
    mailbox = Mailbox()
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(mail_server(mailbox))))
    alert = Alert(
        kind="test", trunk=None, subject="hi\r\nBcc: x@evil.example", body="", data={}
    )

    cg.dispatcher.submit(alert)
    await cg.dispatcher.settle()

    [delivered] = mailbox.messages
    assert delivered["message"]["Subject"] == "hi Bcc: x@evil.example"
    assert delivered["message"]["Bcc"] is None


async def test_no_starttls_offered(tmp_path, mail_server, rig):
    port = mail_server(Mailbox())
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(port, security="starttls")))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [row] = await cg.rows()
    assert row.state == ALERT_PENDING
    assert f"127.0.0.1:{port} does not offer STARTTLS" in row.last_error


async def test_stop_stores_inbox(tmp_path, rig):
    path = write_config(tmp_path, smtp=smtp_keys(free_port()))
    cg = await rig(path)

    cg.dispatcher.submit(warning())
    await cg.stop()

    with Store(load_config(path).general.database) as store:
        [row] = store.recent_alerts()
    assert row.dedupe_key == KEY


async def test_smtp_removed_on_reload(tmp_path, rig):
    cg = await rig(write_config(tmp_path, smtp=smtp_keys(free_port())))
    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    plain = tmp_path / "plain"
    plain.mkdir()
    cg.dispatcher.reconfigure(load_config(write_config(plain)))
    await cg.advance(backoff(1).total_seconds())

    [row] = await cg.rows()
    assert row.state == ALERT_PENDING
    assert row.attempts == 2
    assert row.last_error.startswith("e-mail is not configured")


def test_outbox_rows_json_data(tmp_path):
    config = load_config(write_config(tmp_path, smtp=smtp_keys(25)))
    alert = Alert(
        kind="limit",
        trunk="gamma",
        subject="s",
        body="",
        data={"spent": Decimal("50.0036"), "at": T0, "calls": 3},
    )

    [row] = outbox_rows(alert, config, T0)

    assert json.loads(row.data) == {
        "at": "2024-06-14T12:00:00+00:00",
        "calls": 3,
        "spent": "50.0036",
    }
    assert row.recipients == (NOC,)
    assert row.next_attempt_at == T0


def test_outbox_rows_escape_caller_text(tmp_path):
    config = load_config(write_config(tmp_path, smtp=smtp_keys(25)))
    alert = Alert(
        kind="block",
        trunk="gamma",
        subject="[callguard] blocked endpoint 80\x1b[31m01",
        body="Why: 3 attempts, the last to 0163\x1b]0;TITLE\x07\r\nUntil: later",
        data={"key": "80\x1b[31m01"},
    )

    [row] = outbox_rows(alert, config, T0)

    assert row.subject == "[callguard] blocked endpoint 80\\x1b[31m01"
    assert row.body == ("Why: 3 attempts, the last to 0163\\x1b]0;TITLE\\x07\\x0d\n"
                        "Until: later")
    assert json.loads(row.data) == {"key": "80\x1b[31m01"}  # JSON escapes it itself


@pytest.mark.parametrize(
    "extra, expected",
    [
        ((), (NOC,)),
        ((OPS, NOC.upper(), OPS), (NOC, OPS)),
        (("not-an-address", OPS), (NOC, OPS)),
        ((None,), (NOC,)),
    ],
)
def test_merge_recipients(extra, expected):
    assert merge_recipients((NOC,), extra, "warning") == expected


@pytest.mark.parametrize(
    "attempts, seconds",
    [(1, 10), (2, 20), (3, 40), (5, 160), (6, 300), (40, 300)],
)
def test_backoff_doubles_to_cap(attempts, seconds):
    assert backoff(attempts) == timedelta(seconds=seconds)


def test_signature_rfc4231():
    # RFC 4231, test case 2: HMAC-SHA-256 of "what do ya want for nothing?".
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"

    assert signature("Jefe", b"what do ya want for nothing?") == f"sha256={expected}"


# Webhook.


async def test_webhook_down(tmp_path, rig):
    url = f"http://127.0.0.1:{free_port()}{HOOK_PATH}"
    cg = await rig(write_config(tmp_path, webhook=hook_keys(tmp_path, url)))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [row] = await cg.rows()
    assert row.state == ALERT_PENDING
    assert row.last_error.startswith("cannot reach webhook http://127.0.0.1:")
    assert HOOK_PATH not in row.last_error


async def test_webhook_signed(tmp_path, webhook_server, rig):
    receiver = Receiver()
    url = await webhook_server(receiver)
    keys = hook_keys(tmp_path, url)
    cg = await rig(write_config(tmp_path, webhook=keys))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [(headers, body)] = receiver.requests
    document = json.loads(body)
    [row] = await cg.rows()
    assert receiver.bad_signatures == 0
    assert headers["Content-Type"] == "application/json"
    assert headers["X-Callguard-Delivery"] == "1"
    assert headers["X-Callguard-Event"] == "warning"
    assert document == {
        "id": 1,
        "kind": "warning",
        "trunk": "gamma",
        "subject": SUBJECT,
        "body": "Trunk gamma has spent 40.00 of its 50.00 GBP daily limit.\n",
        "data": {"limit": "50.00", "percent": 80, "spent": "40.00", "window": "day"},
        "created_at": "2024-06-14T12:00:00+00:00",
        "dedupe_key": KEY,
    }
    assert row.transport == TRANSPORT_WEBHOOK
    assert row.state == ALERT_SENT
    assert row.reply == "HTTP 204"


async def test_webhook_wrong_secret(tmp_path, webhook_server, rig, caplog):
    caplog.set_level(logging.DEBUG)
    receiver = Receiver()
    url = await webhook_server(receiver)
    keys = hook_keys(tmp_path, url, secret="other")
    cg = await rig(write_config(tmp_path, webhook=keys))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    [row] = await cg.rows()
    assert receiver.bad_signatures == 1
    assert row.state == ALERT_FAILED
    assert row.last_error.endswith("responded with HTTP 401 Unauthorized")
    ours = [r for r in caplog.records if not r.name.startswith("aiohttp")]
    assert any(r.name == "httpx" for r in ours)
    assert all("t0k3n" not in r.getMessage() for r in ours)
    assert "t0k3n" not in row.last_error


async def test_webhook_retries_503(tmp_path, webhook_server, rig):
    receiver = Receiver(statuses=[503, 200])
    url = await webhook_server(receiver)
    keys = hook_keys(tmp_path, url)
    cg = await rig(write_config(tmp_path, webhook=keys))

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()
    [failed] = await cg.rows()
    await cg.advance(backoff(1).total_seconds())

    [row] = await cg.rows()
    first, second = receiver.requests
    assert failed.state == ALERT_PENDING
    assert failed.last_error.endswith("responded with HTTP 503 Service Unavailable")
    assert first[1] == second[1]
    assert row.state == ALERT_SENT
    assert row.attempts == 2


async def test_both_transports(tmp_path, mail_server, webhook_server, rig):
    mailbox = Mailbox()
    receiver = Receiver()
    url = await webhook_server(receiver)
    hook = hook_keys(tmp_path, url)
    cg = await rig(
        write_config(tmp_path, smtp=smtp_keys(mail_server(mailbox)), webhook=hook)
    )

    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    rows = await cg.rows()
    assert {(row.transport, row.state) for row in rows} == {
        (TRANSPORT_EMAIL, ALERT_SENT),
        (TRANSPORT_WEBHOOK, ALERT_SENT),
    }
    assert len(mailbox.messages) == 1
    assert len(receiver.requests) == 1


# The command line.


def test_test_mail_prints_reply(tmp_path, mail_server, capsys):
    mailbox = Mailbox()
    port = mail_server(mailbox)
    path = write_config(tmp_path, smtp=smtp_keys(port))

    code = ctl.main(["--config", str(path), "test-mail", OPS])

    out = capsys.readouterr().out
    [delivered] = mailbox.messages
    assert code == 0
    assert out == f"127.0.0.1:{port} accepted the message for {OPS}: {QUEUED_REPLY}\n"
    assert delivered["to"] == [OPS]
    assert delivered["message"]["X-Callguard-Kind"] == "test"


@pytest.mark.parametrize(
    "server, address, code, expected",
    [
        ("refusing", None, 1, "refused noc@example.com: 550 5.1.1"),
        ("down", None, 1, "test message failed: cannot talk to SMTP server"),
        ("up", "not-an-address", 2, "'not-an-address' is not an e-mail address"),
        ("none", None, 2, "e-mail is not configured"),
    ],
)
def test_test_mail_fails(
    tmp_path, mail_server, capsys, server, address, code, expected
):
    smtp = None
    if server == "refusing":
        smtp = smtp_keys(mail_server(Mailbox(refuse={NOC})))
    elif server == "down":
        smtp = smtp_keys(free_port())
    elif server == "up":
        smtp = smtp_keys(mail_server(Mailbox()))
    path = write_config(tmp_path, smtp=smtp)
    argv = ["--config", str(path), "test-mail"] + ([address] if address else [])

    assert ctl.main(argv) == code
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("host, shown", [("::1", "[::1]"), ("[::1]", "[::1]"),
                                         ("127.0.0.1", "127.0.0.1")])
def test_test_mail_names_server(tmp_path, capsys, host, shown):
    port = free_port()
    path = write_config(tmp_path, smtp=smtp_keys(port, host=host))

    assert ctl.main(["--config", str(path), "test-mail"]) == 1
    assert f"cannot talk to SMTP server {shown}:{port}" in capsys.readouterr().err


async def test_alerts_json(tmp_path, mail_server, rig, capsys):
    path = write_config(tmp_path, smtp=smtp_keys(mail_server(Mailbox())))
    cg = await rig(path)
    cg.dispatcher.submit(warning())
    await cg.dispatcher.settle()

    assert ctl.main(["--config", str(path), "alerts", "--json", "--limit", "5"]) == 0
    report = json.loads(capsys.readouterr().out)

    assert report["counts"] == {"pending": 0, "sent": 1, "failed": 0}
    [shown] = report["alerts"]
    assert shown["id"] == 1
    assert shown["state"] == "sent"
    assert shown["recipients"] == [NOC]
    assert shown["reply"] == QUEUED_REPLY
    assert shown["created_at"] == "2024-06-14T12:00:00+00:00"


def test_alerts_rejects_limit(tmp_path, capsys):
    path = write_config(tmp_path)

    with pytest.raises(SystemExit):
        ctl.main(["--config", str(path), "alerts", "--limit", "0"])
    assert "'0' is not a whole number of 1 or more" in capsys.readouterr().err


def test_block_alert_times_whole_seconds(tmp_path):
    alerts = []
    raiser = AlertRaiser(alerts.append, load_config(write_config(tmp_path)), ledger=None)
    at = datetime(2026, 12, 5, 9, 12, 15, 950936, tzinfo=timezone.utc)

    raiser.block_imposed(7, "endpoint", "5005", "gamma", "3 barred attempts", at,
                         at + timedelta(hours=1), 0)

    [alert] = alerts
    assert alert.subject == "[callguard] blocked endpoint 5005 until 2026-12-05T10:12:15+00:00"
    assert "From:    2026-12-05T09:12:15+00:00" in alert.body.splitlines()
    assert "Until:   2026-12-05T10:12:15+00:00" in alert.body.splitlines()
    assert alert.data["expires_at"] == "2026-12-05T10:12:15.950936+00:00"


RENEWAL_FIRST = datetime(2026, 12, 5, 9, 0, tzinfo=timezone.utc)
RENEWAL_AT = RENEWAL_FIRST + timedelta(minutes=10)


def renewal_of(expires_at: datetime | None) -> BlockChange:
    """Return callguard's renewal at RENEWAL_AT of alice's block 7 that ends at
    ``expires_at``, which stays the renewed block's end."""
    previous = BlockRecord(id=7, key_type="endpoint", key="5005", reason="suspected fraud",
                           created_at=RENEWAL_FIRST, expires_at=expires_at,
                           created_by="alice")
    renewed = dataclasses.replace(previous, reason="3 barred attempts",
                                  renewed_at=RENEWAL_AT, renewed_by="callguard",
                                  first_reason="suspected fraud")
    return BlockChange(block=renewed, previous=previous)


def test_block_alert_names_renewed_block(tmp_path):
    alerts = []
    raiser = AlertRaiser(alerts.append, load_config(write_config(tmp_path)), ledger=None)
    at = RENEWAL_AT

    raiser.block_imposed(7, "endpoint", "5005", "gamma", "3 barred attempts", at,
                         at + timedelta(hours=1), 0, renewal=renewal_of(None))
    raiser.block_imposed(7, "endpoint", "5005", "gamma", "3 barred attempts", at,
                         at + timedelta(hours=1), 0)

    renewal, new = alerts
    lines = renewal.body.splitlines()
    assert ("Renews:  block 7, set by alice at 2026-12-05T09:00:00+00:00: suspected fraud"
            in lines)
    assert "Holds:   until unblocked, the later of the two ends" in lines
    assert renewal.dedupe_key == "block:7:renewed:2026-12-05T09:10:00+00:00"
    assert new.dedupe_key == "block:7"


@pytest.mark.parametrize("previous_end, subject_end, until_line, data_end", [
    # The later of the two ends holds: here the block that was renewed.
    (None, "until unblocked", "Until:   unblocked", None),
    (timedelta(hours=3), "until 2026-12-05T12:00:00+00:00",
     "Until:   2026-12-05T12:00:00+00:00", "2026-12-05T12:00:00+00:00"),
])
def test_block_alert_renewal_end(tmp_path, previous_end, subject_end, until_line,
                                 data_end):
    alerts = []
    raiser = AlertRaiser(alerts.append, load_config(write_config(tmp_path)), ledger=None)
    expires_at = None if previous_end is None else RENEWAL_FIRST + previous_end

    raiser.block_imposed(7, "endpoint", "5005", "gamma", "3 barred attempts", RENEWAL_AT,
                         RENEWAL_AT + timedelta(hours=1), 0,
                         renewal=renewal_of(expires_at))

    (alert,) = alerts
    assert alert.subject == f"[callguard] blocked endpoint 5005 {subject_end}"
    assert until_line in alert.body.splitlines()
    assert alert.data["expires_at"] == data_end
