"""The logger handed to websockets, with the Authorization header redacted.

At DEBUG level websockets logs every handshake header, including the
Authorization header that carries the ARI password.
"""

import logging

WEBSOCKET_LOGGER_NAME = "callguard.ari.websocket"
REDACTED = "[redacted]"
SECRET_HEADERS = {"authorization", "proxy-authorization"}


class RedactAuthorization(logging.Filter):
    """Replaces the value in websockets' "> %s: %s" header lines for secret headers."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            isinstance(args, tuple)
            and len(args) == 2
            and isinstance(args[0], str)
            and args[0].lower() in SECRET_HEADERS
        ):
            record.args = (args[0], REDACTED)
        return True


WEBSOCKET_LOGGER = logging.getLogger(WEBSOCKET_LOGGER_NAME)
WEBSOCKET_LOGGER.addFilter(RedactAuthorization())
