"""Delivery of one message to the ``[smtp]`` server with smtplib.

``send_mail`` blocks, so the dispatcher runs it in a thread. It goes through
the SMTP dialogue step by step, instead of ``smtplib.SMTP.sendmail``, to keep
each recipient's reply and the server's reply to the message itself.
"""

import logging
import smtplib
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from callguard.config import SmtpConfig
from callguard.config.addresses import host_port
from callguard.config.delivery import SECURITY_NONE, SECURITY_TLS
from callguard.notify.tls import verified_context

log = logging.getLogger(__name__)

REPLY_OK = 250
RECIPIENT_OK = (250, 251)  # 251: user not local, will forward
SERVICE_UNAVAILABLE = 421  # the server is closing the connection


@dataclass(frozen=True)
class SmtpReply:
    """A reply of the SMTP server: its code and its text."""

    code: int
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.text}".strip()

    @property
    def permanent(self) -> bool:
        """True for a 5xx reply, which no retry changes."""
        return 500 <= self.code < 600


@dataclass(frozen=True)
class SmtpResult:
    """The outcome of a dialogue in which the server took part to the end.

    ``reply`` is the server's reply to the message data, or None when every
    recipient was refused, so no data was sent.
    """

    reply: SmtpReply | None
    accepted: tuple[str, ...]
    refused: dict[str, SmtpReply] = field(default_factory=dict)


class SmtpError(Exception):
    """The message was not delivered, for the reason in the text (without passwords).

    ``permanent`` is True when a retry cannot help, e.g. a 5xx reply to the
    sender or the data. ``server_down`` is True when the failure concerns the
    server or the login rather than this message, so other messages fail too.
    """

    def __init__(self, message: str, *, permanent: bool, server_down: bool):
        super().__init__(message)
        self.permanent = permanent
        self.server_down = server_down


def send_mail(
    settings: SmtpConfig, message: EmailMessage, recipients: Sequence[str]
) -> SmtpResult:
    """Send ``message`` to ``recipients`` through the server of ``settings``.

    Returns which recipients the server accepted and refused and its reply to
    the data. Raises ``SmtpError`` when the connection, TLS, login, sender or
    data failed.
    """
    where = f"SMTP server {host_port(settings.host, settings.port)}"
    try:
        password = settings.password()
    except OSError as exc:
        raise SmtpError(
            f"cannot read [smtp] password_file {settings.password_file}: "
            f"{exc.strerror or exc}; let the callguard user read it",
            permanent=False,
            server_down=True,
        ) from None

    try:
        client = _connect(settings)
    except (smtplib.SMTPException, OSError) as exc:
        raise _translate(exc, where, settings, password, server_down=True) from None

    try:
        _secure_and_log_in(client, settings, password)
        return _transfer(client, settings.sender, message, recipients)
    except SmtpError:
        raise
    except (smtplib.SMTPException, OSError) as exc:
        raise _translate(exc, where, settings, password, server_down=False) from None
    except UnicodeEncodeError:
        # smtplib sends commands as ASCII, and callguard does not use SMTPUTF8.
        raise SmtpError(
            "the sender or a recipient address contains non-ASCII characters; "
            "use ASCII addresses",
            permanent=True,
            server_down=False,
        ) from None
    finally:
        _close(client)


def tls_context(settings: SmtpConfig) -> ssl.SSLContext:
    """Return a context that verifies the server, trusting ``ca_file`` too.

    Raises ``SmtpError`` when ``ca_file`` is not a PEM file of certificates.
    """
    try:
        return verified_context(settings.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise SmtpError(
            f"cannot load [smtp] ca_file {settings.ca_file}: {exc}; give a readable "
            "PEM file of CA certificates",
            permanent=False,
            server_down=True,
        ) from None


def _connect(settings: SmtpConfig) -> smtplib.SMTP:
    # gethostname, unlike smtplib's default getfqdn, makes no DNS query.
    local_hostname = socket.gethostname()
    if settings.security == SECURITY_TLS:
        return smtplib.SMTP_SSL(
            settings.host,
            settings.port,
            local_hostname=local_hostname,
            timeout=settings.timeout,
            context=tls_context(settings),
        )
    return smtplib.SMTP(
        settings.host,
        settings.port,
        local_hostname=local_hostname,
        timeout=settings.timeout,
    )


def _secure_and_log_in(
    client: smtplib.SMTP, settings: SmtpConfig, password: str | None
) -> None:
    try:
        client.ehlo()
        if settings.security not in (SECURITY_NONE, SECURITY_TLS):
            if not client.has_extn("starttls"):
                raise SmtpError(
                    f"SMTP server {host_port(settings.host, settings.port)} does not offer "
                    "STARTTLS; set security = tls for a server that expects TLS "
                    "from the start, or none for a local relay",
                    permanent=False,
                    server_down=True,
                )
            client.starttls(context=tls_context(settings))
            client.ehlo()

        if settings.username is not None and password is not None:
            client.login(settings.username, password)
    except UnicodeEncodeError:
        # The error would quote the credentials, so it is replaced whole.
        raise SmtpError(
            "the [smtp] username or password contains non-ASCII characters, "
            "which SMTP AUTH through smtplib cannot send; use ASCII credentials",
            permanent=False,
            server_down=True,
        ) from None
    except SmtpError:
        raise
    except (smtplib.SMTPException, OSError) as exc:
        where = f"SMTP server {host_port(settings.host, settings.port)}"
        raise _translate(exc, where, settings, password, server_down=True) from None


def _transfer(
    client: smtplib.SMTP,
    sender: str,
    message: EmailMessage,
    recipients: Sequence[str],
) -> SmtpResult:
    reply = SmtpReply(*_decoded(client.mail(sender)))
    if reply.code != REPLY_OK:
        raise SmtpError(
            f"the server refused the sender {sender}: {reply}",
            permanent=reply.permanent,
            server_down=reply.code == SERVICE_UNAVAILABLE,
        )

    accepted = []
    refused = {}
    for address in recipients:
        reply = SmtpReply(*_decoded(client.rcpt(address)))
        if reply.code in RECIPIENT_OK:
            accepted.append(address)
        else:
            refused[address] = reply

    if not accepted:
        client.rset()
        return SmtpResult(None, (), refused)

    reply = SmtpReply(*_decoded(client.data(message.as_bytes())))
    if reply.code != REPLY_OK:
        raise SmtpError(
            f"the server did not take the message: {reply}",
            permanent=reply.permanent,
            server_down=reply.code == SERVICE_UNAVAILABLE,
        )
    return SmtpResult(reply, tuple(accepted), refused)


def _close(client: smtplib.SMTP) -> None:
    try:
        client.quit()
    except (smtplib.SMTPException, OSError) as exc:
        # The message, if sent, is delivered already; QUIT is a courtesy.
        log.debug("closing the SMTP connection failed: %s", exc)
    finally:
        client.close()


def _decoded(reply: tuple[int, bytes]) -> tuple[int, str]:
    code, text = reply
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    return code, " ".join(text.split())


def _translate(
    exc: BaseException,
    where: str,
    settings: SmtpConfig,
    password: str | None,
    *,
    server_down: bool,
) -> SmtpError:
    """Turn an smtplib or socket error into an ``SmtpError`` that names the server."""
    permanent = False
    if _timed_out(exc):
        text = f"{where} timed out after {settings.timeout:g} s"
        server_down = True
    elif isinstance(exc, smtplib.SMTPAuthenticationError):
        reply = SmtpReply(*_decoded((exc.smtp_code, exc.smtp_error)))
        text = f"{where} rejected the login as {settings.username}: {reply}"
        server_down = True
    elif isinstance(exc, smtplib.SMTPResponseException):
        reply = SmtpReply(*_decoded((exc.smtp_code, exc.smtp_error)))
        text = f"{where} replied {reply}"
        permanent = reply.permanent and not server_down
        server_down = server_down or reply.code == SERVICE_UNAVAILABLE
    elif isinstance(exc, smtplib.SMTPServerDisconnected):
        text = f"{where} closed the connection: {exc}"
        server_down = True
    elif isinstance(exc, smtplib.SMTPException):
        # E.g. SMTPNotSupportedError: no AUTH, or no method that smtplib has.
        text = f"{where}: {exc}"
        server_down = True
    elif isinstance(exc, ssl.SSLCertVerificationError):
        text = (
            f"{where} presented a certificate that failed verification "
            f"({exc.verify_message}); set ca_file to the CA that signed it"
        )
        server_down = True
    else:
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        text = f"cannot talk to {where}: {detail}"
        server_down = True

    if password:
        text = text.replace(password, "***")
    return SmtpError(text, permanent=permanent, server_down=server_down)


def _timed_out(exc: BaseException) -> bool:
    """Tell whether a timeout caused ``exc``.

    smtplib reports a read that timed out as SMTPServerDisconnected, with the
    TimeoutError as its context.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TimeoutError):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
