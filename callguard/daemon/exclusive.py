"""One daemon at a time on a SQLite database file.

A second daemon on the same file would take over the first one's live calls
at its start, and one without ARI would end and charge them while they still
run. PostgreSQL stores are shared by design and need no such lock.
"""

import fcntl
import logging
import os
from pathlib import Path

from callguard.store import StoreError
from callguard.store.engine import parse_url

log = logging.getLogger(__name__)

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
            # The lock is beside the file that the path resolves to, so that a
            # daemon that names the database through a symbolic link takes the
            # same lock. NOTE: a hard link to the database still gets a lock
            # of its own.
            resolved = self.database.resolve()
            self.path = resolved.with_name(resolved.name + LOCK_SUFFIX)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``StoreError`` naming the daemon that holds it."""
        if self.path is None or self._fd is not None:
            return
        writable = True
        try:
            # Readable by all, so that a file that another user created (a
            # run by hand as root) still opens read-only for the lock.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except PermissionError as exc:
            # flock needs no write access, so the lock still works, but the
            # pid is not written.
            writable = False
            fd = self._open_read_only(exc)
        except OSError as exc:
            raise self._open_error(exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            # NOTE: a holder that could open the file only read-only left the
            # pid of the file's last writer in it.
            holder = os.read(fd, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(f"another callguard daemon uses the SQLite database "
                             f"{self.database} (pid {holder}, holding {self.path}). "
                             "Stop it first, or give this one its own database") from None
        if writable:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        else:
            log.warning("cannot write the pid of this daemon to the lock file %s, which "
                        "another user owns; remove the file while callguard is stopped",
                        self.path)
        self._fd = fd

    def _open_read_only(self, denied: PermissionError) -> int:
        """Open the lock file read-only, or raise ``denied`` as a ``StoreError``."""
        try:
            return os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            raise self._open_error(denied) from None

    def _open_error(self, exc: OSError) -> StoreError:
        return StoreError(f"cannot open the lock file {self.path} of the SQLite database "
                          f"{self.database}: {exc.strerror}. Let the user callguard runs "
                          "as write the file and its directory, or remove the file while "
                          "callguard is stopped")

    def release(self) -> None:
        """Drop the lock, if held."""
        if self._fd is None:
            return
        os.close(self._fd)
        self._fd = None
