"""A second daemon on the SQLite file of a running one fails to start before it
touches the store, so it cannot end or charge the first daemon's live calls."""

import os
import tempfile
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from callguard.config import load_config
from callguard.daemon.app import Application
from callguard.daemon.exclusive import DatabaseLock
from callguard.store import STATE_UP, CallRecord, Store, StoreError
from live_support import free_port
from support import write_config

ANSWERED = datetime.now(timezone.utc) - timedelta(minutes=2)


def up_call() -> CallRecord:
    return CallRecord(
        uniqueid="1718366400.20", decision_uniqueid="1718366400.19", trunk="gamma",
        channel="PJSIP/gamma-00000014", caller="1001", dialled="02079460000",
        e164="+442079460000", category="geographic", tariff_prefix="44",
        rate=Decimal("0.0100"), connection_fee=Decimal("0"), first_increment=60,
        later_increment=60, created_at=ANSWERED, answered_at=ANSWERED,
        state=STATE_UP, guarded=True,
    )


def daemon(directory, database: str) -> Application:
    directory.mkdir()
    config = write_config(directory, database=database, port=free_port())
    return Application(load_config(config))


async def test_second_daemon_on_sqlite_refused(tmp_path):
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    first = daemon(tmp_path / "first", database)
    second = daemon(tmp_path / "second", database)
    await first.start()
    try:
        # A call that the first daemon stored as answered.
        with Store(database) as store:
            store.save_call(up_call())

        with pytest.raises(StoreError, match="another callguard daemon uses the SQLite "
                                             f"database {tmp_path / 'shared.db'}"):
            await second.start()
        await second.stop()

        with Store(database) as store:
            live = [record.uniqueid for record in store.live_calls()]
        assert live == ["1718366400.20"]
    finally:
        await first.stop()


@pytest.mark.parametrize("link", ["file", "folder"])
async def test_second_daemon_through_symlink_refused(tmp_path, link):
    (tmp_path / "data").mkdir()
    database = f"sqlite:///{tmp_path / 'data' / 'shared.db'}"
    if link == "file":
        (tmp_path / "linked.db").symlink_to(tmp_path / "data" / "shared.db")
        linked = f"sqlite:///{tmp_path / 'linked.db'}"
    else:
        (tmp_path / "linked").symlink_to(tmp_path / "data")
        linked = f"sqlite:///{tmp_path / 'linked' / 'shared.db'}"
    first = daemon(tmp_path / "first", database)
    second = daemon(tmp_path / "second", linked)
    await first.start()
    try:
        with pytest.raises(StoreError, match="another callguard daemon uses the SQLite "
                                             "database"):
            await second.start()
        await second.stop()
    finally:
        await first.stop()


async def test_daemon_after_stopped_one_starts(tmp_path):
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    first = daemon(tmp_path / "first", database)
    second = daemon(tmp_path / "second", database)
    await first.start()
    await first.stop()

    await second.start()
    await second.stop()


NOBODY_ID = 65534


def acquire_as_nobody(url: str) -> str:
    """Take the lock of ``url`` in a forked child that runs as uid and gid 65534
    (nobody), as the service's own user, and return what the child reports."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY_ID)
            os.setuid(NOBODY_ID)
            DatabaseLock(url).acquire()
            report = "locked"
        except BaseException as exc:
            report = f"{type(exc).__name__}: {exc}"
        finally:
            os.write(write_end, report.encode())
            os._exit(0)
    os.close(write_end)
    with open(read_end, "rb") as output:
        report = output.read().decode()
    os.waitpid(pid, 0)
    return report


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to leave a lock file of root's")
def test_lock_file_left_by_root_run():
    # callguard run by hand as root, with the service stopped, leaves the lock
    # file owned by root. The service's user must still start.
    with tempfile.TemporaryDirectory(dir="/tmp") as name:
        folder = Path(name)
        folder.chmod(0o777)
        database = folder / "callguard.db"
        first = DatabaseLock(f"sqlite:///{database}")
        first.acquire()
        first.release()

        report = acquire_as_nobody(f"sqlite:///{database}")
        owner = (folder / "callguard.db.lock").stat().st_uid

    assert owner == 0
    assert report == "locked"
