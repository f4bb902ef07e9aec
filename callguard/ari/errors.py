"""Errors raised by the ARI client."""


class AriError(Exception):
    """A failed ARI request: the network, a timeout, an HTTP error or a bad reply."""


class AriHTTPError(AriError):
    """An HTTP error status from ARI, with the message from Asterisk's JSON body."""

    def __init__(self, status: int, message: str, *, method: str, path: str):
        self.status = status
        self.message = message
        self.method = method
        self.path = path
        super().__init__(f"ARI {method} {path} failed with HTTP {status}: {message}")
