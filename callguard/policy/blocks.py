"""Callers blocked from all outbound calls, as kept in the store."""

from collections.abc import Iterable
from datetime import datetime

KEY_ENDPOINT = "endpoint"
KEY_CALLER = "caller"
KEY_ACCOUNTCODE = "accountcode"
KEY_SOURCE = "source"


# The channel technology whose names give a dialplan location, not a phone.
LOCAL_TECHNOLOGY = "local"


def endpoint_of(channel: str) -> str:
    """Return the endpoint of a channel name: ``1001`` in ``PJSIP/1001-00000012``.

    A Local channel, such as ``Local/09011234567@outbound-00000001;2``, names
    an extension and context that many phones may reach, so it has none: "".
    """
    technology, _, rest = channel.partition("/")
    if technology.lower() == LOCAL_TECHNOLOGY:
        return ""
    endpoint, dash, sequence = rest.rpartition("-")
    if not dash or not endpoint:
        return rest
    return endpoint


class BlockList:
    """Active blocks by (key type, key), each with its expiry (None: until lifted)."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, str], datetime | None] = {}
        # Reads of the store so far, and the keys added here (not by a read)
        # with the read count at their addition.
        self._reads = 0
        self._local: dict[tuple[str, str], int] = {}
        # Keys blocked here whose block could not be stored. No read of the
        # store contains them, so reads keep them until they expire or are removed.
        self._unstored: set[tuple[str, str]] = set()
        # The latest end of the blocks of each key type (None: until lifted),
        # built by has_type() and dropped whenever the blocks change.
        self._ends: dict[str, datetime | None] | None = None

    def replace(self, blocks: Iterable[tuple[str, str, datetime | None]]) -> None:
        """Hold exactly ``blocks``, given as (key type, key, expiry) rows.

        A key with several rows keeps the one that ends last.
        """
        self._blocks = {}
        self._ends = None
        for key_type, key, expires_at in blocks:
            self._put((key_type, key), expires_at)

    def add(self, key_type: str, key: str, expires_at: datetime | None,
            now: datetime | None = None) -> None:
        """Block a key until ``expires_at`` (None: until lifted); drops blocks expired by ``now``.

        A key blocked already stays blocked until the later of the two ends:
        an automatic ban must not cut short an operator's block.
        """
        self._ends = None
        if now is not None:
            for identity in [i for i, at in self._blocks.items() if at is not None and at <= now]:
                del self._blocks[identity]
                self._unstored.discard(identity)
        identity = (key_type, key)
        self._put(identity, expires_at)
        self._local[identity] = self._reads

    def keep_unstored(self, key_type: str, key: str) -> None:
        """Keep the block that add() set on a key across later reads of the store.

        It serves a block whose write to the store failed, which sync() would
        otherwise drop at the second read that lacks it.
        """
        if (key_type, key) in self._blocks:
            self._unstored.add((key_type, key))

    def _put(self, identity: tuple[str, str], expires_at: datetime | None) -> None:
        _keep_later(self._blocks, identity, expires_at)

    def sync(self, blocks: Iterable[tuple[str, str, datetime | None]]) -> None:
        """Follow the store's active blocks, as read again: (key type, key, expiry) rows.

        The store is the truth, as other nodes and callguardctl add and lift
        blocks there. A block that this daemon added since the previous read
        may be missing from it, because its write may still be in flight. Such
        a block stays for this read. If the next read still lacks it, it was
        lifted elsewhere in between, and it goes.
        """
        stored: dict[tuple[str, str], datetime | None] = {}
        for key_type, key, expires_at in blocks:
            _keep_later(stored, (key_type, key), expires_at)

        self._reads += 1
        self._ends = None
        recent = {identity for identity, read in self._local.items()
                  if read >= self._reads - 1}
        recent |= self._unstored
        for identity in [i for i in self._blocks if i not in stored and i not in recent]:
            del self._blocks[identity]
        for identity, expires_at in stored.items():
            if identity in recent:
                self._put(identity, expires_at)
            else:
                self._blocks[identity] = expires_at
        self._local = {identity: read for identity, read in self._local.items()
                       if identity in recent and identity not in stored}

    def remove(self, key_type: str, key: str) -> None:
        self._ends = None
        self._blocks.pop((key_type, key), None)
        self._unstored.discard((key_type, key))

    def blocked(self, identities: list[tuple[str, str]], now: datetime) -> tuple[str, str] | None:
        """Return the first of ``identities`` under an active block, or None."""
        for identity in identities:
            if not identity[1] or identity not in self._blocks:
                continue
            expires_at = self._blocks[identity]
            if expires_at is None or expires_at > now:
                return identity
        return None

    def has_type(self, key_type: str, now: datetime) -> bool:
        """Check whether any key of ``key_type`` is under an active block at ``now``.

        A check without a source address calls this before it decides, so the
        blocks are scanned once after each change, not on every check.
        """
        if self._ends is None:
            ends: dict[str, datetime | None] = {}
            for (kind, _), expires_at in self._blocks.items():
                _keep_later(ends, kind, expires_at)
            self._ends = ends
        if key_type not in self._ends:
            return False
        end = self._ends[key_type]
        return end is None or end > now

    def __len__(self) -> int:
        return len(self._blocks)


def _keep_later(blocks: dict, identity: object, expires_at: datetime | None) -> None:
    """Block ``identity`` in ``blocks`` until ``expires_at``, keeping a later end it has."""
    if identity in blocks:
        current = blocks[identity]
        if current is None or (expires_at is not None and current >= expires_at):
            return
    blocks[identity] = expires_at
