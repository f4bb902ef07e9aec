"""Callers blocked from all outbound calls, as kept in the store."""

from collections.abc import Iterable
from datetime import datetime

KEY_ENDPOINT = "endpoint"
KEY_CALLER = "caller"
KEY_ACCOUNTCODE = "accountcode"
KEY_SOURCE = "source"


def endpoint_of(channel: str) -> str:
    """Return the endpoint of a channel name: ``1001`` in ``PJSIP/1001-00000012``."""
    _, _, rest = channel.partition("/")
    endpoint, dash, sequence = rest.rpartition("-")
    if not dash or not endpoint:
        return rest
    return endpoint


class BlockList:
    """Active blocks by (key type, key), each with its expiry (None: until lifted)."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, str], datetime | None] = {}

    def replace(self, blocks: Iterable[tuple[str, str, datetime | None]]) -> None:
        """Hold exactly ``blocks``, given as (key type, key, expiry) rows.

        A key with several rows keeps the one that ends last.
        """
        self._blocks = {}
        for key_type, key, expires_at in blocks:
            self.add(key_type, key, expires_at)

    def add(self, key_type: str, key: str, expires_at: datetime | None,
            now: datetime | None = None) -> None:
        """Block a key until ``expires_at`` (None: until lifted); drops blocks expired by ``now``.

        A key blocked already stays blocked until the later of the two ends:
        an automatic ban must not cut short an operator's block.
        """
        if now is not None:
            for identity in [i for i, at in self._blocks.items() if at is not None and at <= now]:
                del self._blocks[identity]
        identity = (key_type, key)
        if identity in self._blocks:
            current = self._blocks[identity]
            if current is None or (expires_at is not None and current >= expires_at):
                return
        self._blocks[identity] = expires_at

    def sync(self, stored: dict[tuple[str, str], datetime | None],
             stored_before: set[tuple[str, str]]) -> None:
        """Follow the store's active blocks, as read again: (key type, key) -> expiry.

        ``stored_before`` is the set of keys at the previous read. A key held here
        that the store had then and has no more was lifted elsewhere, such as
        on another node, and goes. A key held here that the store never had is
        a block of this daemon whose write may still be in flight, so it stays
        until the next read. The store's expiry replaces the one held here.
        """
        for identity in [i for i in self._blocks if i not in stored and i in stored_before]:
            del self._blocks[identity]
        for (key_type, key), expires_at in stored.items():
            identity = (key_type, key)
            if identity in stored_before:
                self._blocks[identity] = expires_at
            else:
                self.add(key_type, key, expires_at)

    def remove(self, key_type: str, key: str) -> None:
        self._blocks.pop((key_type, key), None)

    def blocked(self, identities: list[tuple[str, str]], now: datetime) -> tuple[str, str] | None:
        """Return the first of ``identities`` under an active block, or None."""
        for identity in identities:
            if not identity[1] or identity not in self._blocks:
                continue
            expires_at = self._blocks[identity]
            if expires_at is None or expires_at > now:
                return identity
        return None

    def __len__(self) -> int:
        return len(self._blocks)
