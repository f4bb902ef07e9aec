"""The Asterisk REST Interface client: REST calls and the events websocket."""

from callguard.ari.client import AriClient
from callguard.ari.errors import AriError, AriHTTPError

__all__ = ["AriClient", "AriError", "AriHTTPError"]
