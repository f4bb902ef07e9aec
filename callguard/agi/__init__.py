"""Asterisk Gateway Interface: the protocol layer and the FastAGI server."""

from callguard.agi.protocol import (
    AGIChannel,
    AGICommandError,
    AGIError,
    AGIHangup,
    AGILimits,
    AGIProtocolError,
    AGIReply,
    AGITimeout,
    quote_argument,
    read_environment,
)
from callguard.agi.server import FastAGIServer, Handler

__all__ = [
    "AGIChannel",
    "AGICommandError",
    "AGIError",
    "AGIHangup",
    "AGILimits",
    "AGIProtocolError",
    "AGIReply",
    "AGITimeout",
    "FastAGIServer",
    "Handler",
    "quote_argument",
    "read_environment",
]
