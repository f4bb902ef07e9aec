"""Delivery of alerts to sysadmins by e-mail and webhook, through the store's outbox."""

from callguard.notify.alert import Alert
from callguard.notify.dispatcher import AlertDispatcher

__all__ = ["Alert", "AlertDispatcher"]
