"""The emulated Asterisk that owns every channel and runs every call flow."""

from .ari_answer import AnswerFlows
from .ari_dial import DialFlows
from .ari_originate import OriginateFlows
from .ari_teardown import CallTeardown
from .ari_transfer import TransferFlows


class Switch(DialFlows, AnswerFlows, OriginateFlows, TransferFlows, CallTeardown):
    """Every call flow over one set of channels; each returns its events in order."""
