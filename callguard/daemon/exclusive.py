"""One daemon at a time on a SQLite database file.

A second daemon on the same file would take over the first one's live calls
at its start, and one without ARI would end and charge them while they still
run. PostgreSQL stores are shared by design and need no such lock.
"""

import fcntl
import os
from pathlib import Path

from callguard.store import StoreError
from callguard.store.engine import parse_url

# Appended to the database file's name for the lock file, which stays in place.
LOCK_SUFFIX = ".lock"


class DatabaseLock:
    """An exclusive ``flock`` on a file beside a SQLite database, held while the daemon runs.

    The lock is on its own file, not on the database, because SQLite takes
    POSIX locks on the database, which ``flock`` emulation on NFS would
    conflict with. The kernel drops the lock when the process ends, however
    it ends.
    """

    def __init__(self, url: str) -> None:
        parsed = parse_url(url)
        self.path: Path | None = None
        if parsed.get_backend_name() == "sqlite":
            self.database = Path(parsed.database or "")
            self.path = self.database.with_name(self.database.name + LOCK_SUFFIX)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``StoreError`` naming the daemon that holds it."""
        if self.path is None or self._fd is not None:
            return
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise StoreError(f"cannot open the lock file {self.path} of the SQLite "
                             f"database {self.database}: {exc.strerror}. Make its "
                             "directory writable by the user callguard runs as") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"another callguard daemon uses the SQLite database "
                             f"{self.database} (pid {holder}, holding {self.path}). "
                             "Stop it first, or give this one its own database") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        """Drop the lock, if held."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
