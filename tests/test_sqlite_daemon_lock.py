"""A second daemon on the SQLite file of a running one fails to start before it
touches the store, so it cannot end or charge the first daemon's live calls."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from callguard.config import load_config
from callguard.daemon.app import Application
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


async def test_daemon_after_stopped_one_starts(tmp_path):
    database = f"sqlite:///{tmp_path / 'shared.db'}"
    first = daemon(tmp_path / "first", database)
    second = daemon(tmp_path / "second", database)
    await first.start()
    await first.stop()

    await second.start()
    await second.stop()
