"""The TLS context of alert delivery, shared by the SMTP and webhook senders."""

import ssl
from pathlib import Path


def verified_context(ca_file: Path | None) -> ssl.SSLContext:
    """Return a context that verifies the server against the system's CAs and ``ca_file``.

    Raises ``OSError`` or ``ssl.SSLError`` when ``ca_file`` is not a readable
    PEM file of certificates.
    """
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context
