"""The alert outbox in the store, on SQLite and on the local PostgreSQL server."""

import dataclasses
import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, text

from callguard.store import (
    ALERT_FAILED,
    ALERT_PENDING,
    ALERT_SENT,
    TRANSPORT_EMAIL,
    TRANSPORT_WEBHOOK,
    OutboxRecord,
    Store,
    StoreError,
)
from callguard.store.models import Outbox

T0 = datetime(2024, 6, 14, 12, 0, 0, tzinfo=timezone.utc)
LEASE = timedelta(minutes=2)
KEY = "warning:gamma:day:2024-06-14:80"


def alert(n: int = 0, **changes) -> OutboxRecord:
    """Return a new e-mail row created ``n`` seconds after T0 and due then."""
    values = dict(
        created_at=T0 + timedelta(seconds=n),
        kind="warning",
        trunk="gamma",
        transport=TRANSPORT_EMAIL,
        dedupe_key=None,
        subject=f"[callguard] gamma: daily spend 80% ({n})",
        body="40.00 of 50.00 GBP spent today.",
        data='{"limit": "50.00", "spent": "40.00"}',
        recipients=("noc@example.com", "ops@example.com"),
        next_attempt_at=T0 + timedelta(seconds=n),
    )
    values.update(changes)
    return OutboxRecord(**values)


def test_record_mirrors_table():
    names = [field.name for field in dataclasses.fields(OutboxRecord)]

    assert names == [column.name for column in Outbox.__table__.columns]


def test_queue_and_read_back(store):
    email = alert(dedupe_key=KEY)
    hook = alert(dedupe_key=KEY, transport=TRANSPORT_WEBHOOK, recipients=())

    ids = store.queue_alert([email, hook])

    assert ids == [1, 2]
    assert store.recent_alerts() == [
        dataclasses.replace(hook, id=2),
        dataclasses.replace(email, id=1),
    ]


def test_dedupe_key_in_any_state(store):
    first = store.queue_alert([alert(dedupe_key=KEY)])
    store.claim_alert(TRANSPORT_EMAIL, T0, T0 + LEASE)
    store.mark_alert_failed(first[0], "gave up")

    again = store.queue_alert([alert(5, dedupe_key=KEY)])
    other_transport = store.queue_alert(
        [alert(5, dedupe_key=KEY, transport=TRANSPORT_WEBHOOK, recipients=())]
    )

    assert first == [1]
    assert again == []
    assert other_transport == []
    assert len(store.recent_alerts()) == 1


def test_rows_without_key_repeat(store):
    assert store.queue_alert([alert()]) == [1]
    assert store.queue_alert([alert()]) == [2]


def test_dedupe_across_threads(store):
    results = []
    barrier = threading.Barrier(6)

    def queue():
        barrier.wait()
        results.append(store.queue_alert([alert(dedupe_key=KEY)]))

    threads = [threading.Thread(target=queue) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(len(ids) for ids in results) == [0, 0, 0, 0, 0, 1]
    assert len(store.recent_alerts()) == 1


def test_claim_oldest_due_first(store):
    store.queue_alert([alert(20)])
    store.queue_alert([alert(10)])
    store.queue_alert([alert(30, transport=TRANSPORT_WEBHOOK, recipients=())])
    now = T0 + timedelta(seconds=25)

    first = store.claim_alert(TRANSPORT_EMAIL, now, now + LEASE)
    second = store.claim_alert(TRANSPORT_EMAIL, now, now + LEASE)
    third = store.claim_alert(TRANSPORT_EMAIL, now, now + LEASE)
    webhook_early = store.claim_alert(TRANSPORT_WEBHOOK, now, now + LEASE)

    assert first.id == 2
    assert second.id == 1
    assert third is None
    assert webhook_early is None


def test_claim_counts_and_leases(store):
    store.queue_alert([alert()])

    claimed = store.claim_alert(TRANSPORT_EMAIL, T0, T0 + LEASE)
    during_lease = store.claim_alert(TRANSPORT_EMAIL, T0 + LEASE / 2, T0 + 2 * LEASE)
    after_lease = store.claim_alert(TRANSPORT_EMAIL, T0 + LEASE, T0 + 2 * LEASE)

    assert claimed.attempts == 1
    assert claimed.last_attempt_at == T0
    assert claimed.next_attempt_at == T0 + LEASE
    assert during_lease is None
    assert after_lease.id == claimed.id
    assert after_lease.attempts == 2


def test_claim_rejects_past_lease(store):
    with pytest.raises(ValueError, match="lease_until must be after now"):
        store.claim_alert(TRANSPORT_EMAIL, T0, T0)


def test_mark_sent(store):
    [outbox_id] = store.queue_alert([alert()])
    store.claim_alert(TRANSPORT_EMAIL, T0, T0 + LEASE)
    at = T0 + timedelta(seconds=3)

    marked = store.mark_alert_sent(outbox_id, at, "250 2.0.0 Ok: queued", "x@y: 550")
    again = store.mark_alert_sent(outbox_id, at, "250 again")

    [row] = store.recent_alerts()
    assert marked is True
    assert again is False
    assert row.state == ALERT_SENT
    assert row.sent_at == at
    assert row.next_attempt_at is None
    assert row.reply == "250 2.0.0 Ok: queued"
    assert row.refused == "x@y: 550"


def test_reschedule_narrows_recipients(store):
    [outbox_id] = store.queue_alert([alert()])
    store.claim_alert(TRANSPORT_EMAIL, T0, T0 + LEASE)
    later = T0 + timedelta(seconds=10)

    marked = store.reschedule_alert(
        outbox_id, "450 mailbox busy", later, ("ops@example.com",)
    )

    [row] = store.recent_alerts()
    assert marked is True
    assert row.state == ALERT_PENDING
    assert row.next_attempt_at == later
    assert row.last_error == "450 mailbox busy"
    assert row.pending_recipients == ("ops@example.com",)
    assert row.waiting_recipients == ("ops@example.com",)
    assert row.recipients == ("noc@example.com", "ops@example.com")


def test_mark_failed(store):
    [outbox_id] = store.queue_alert([alert()])

    marked = store.mark_alert_failed(outbox_id, "gave up after 4 attempts", "a@b: 550")
    rescheduled = store.reschedule_alert(outbox_id, "late", T0)

    [row] = store.recent_alerts()
    assert marked is True
    assert rescheduled is False
    assert row.state == ALERT_FAILED
    assert row.next_attempt_at is None
    assert row.last_error == "gave up after 4 attempts"
    assert row.refused == "a@b: 550"


def test_defer_moves_due_rows(store):
    store.queue_alert([alert(0)])
    store.queue_alert([alert(50)])
    store.queue_alert([alert(0, transport=TRANSPORT_WEBHOOK, recipients=())])
    [sent] = store.queue_alert([alert(1)])
    store.mark_alert_sent(sent, T0, "250")
    until = T0 + timedelta(seconds=30)

    moved = store.defer_alerts(TRANSPORT_EMAIL, until)

    due = {row.id: row.next_attempt_at for row in store.recent_alerts()}
    assert moved == 1
    assert due == {
        1: until,
        2: T0 + timedelta(seconds=50),
        3: T0,
        4: None,
    }


def test_next_due(store):
    assert store.next_alert_due() is None

    store.queue_alert([alert(40)])
    [early] = store.queue_alert([alert(20)])
    assert store.next_alert_due() == T0 + timedelta(seconds=20)

    store.mark_alert_failed(early, "refused")
    assert store.next_alert_due() == T0 + timedelta(seconds=40)


def test_recent_filters_and_counts(store):
    for n in range(4):
        store.queue_alert([alert(n)])
    store.mark_alert_sent(1, T0, "250")
    store.mark_alert_failed(2, "550")

    newest = store.recent_alerts(limit=2)
    pending = store.recent_alerts(state=ALERT_PENDING)
    counts = store.count_alerts()

    assert [row.id for row in newest] == [4, 3]
    assert [row.id for row in pending] == [4, 3]
    assert counts == {ALERT_PENDING: 2, ALERT_SENT: 1, ALERT_FAILED: 1}


def test_recent_rejects_bad_state(store):
    with pytest.raises(ValueError, match="state 'lost' is invalid"):
        store.recent_alerts(state="lost")


@pytest.mark.parametrize(
    "rows, error, message",
    [
        ([], ValueError, "at least one outbox row"),
        ([alert(id=7)], ValueError, "outbox row 7 is already stored"),
        ([alert(state=ALERT_SENT, sent_at=T0)], ValueError, "must be pending"),
        (
            [alert(dedupe_key="a"), alert(transport=TRANSPORT_WEBHOOK, recipients=())],
            ValueError,
            "different dedupe keys",
        ),
        ([alert(), alert()], ValueError, "repeat a transport"),
        (["row"], TypeError, "is not an OutboxRecord"),
    ],
)
def test_queue_rejects(store, rows, error, message):
    with pytest.raises(error, match=message):
        store.queue_alert(rows)
    assert store.recent_alerts() == []


@pytest.mark.parametrize(
    "changes, error, message",
    [
        ({"transport": "sms"}, ValueError, "transport 'sms' is invalid"),
        ({"state": "queued"}, ValueError, "state 'queued' is invalid"),
        ({"kind": ""}, ValueError, "kind is empty"),
        ({"subject": None}, TypeError, "subject None"),
        ({"created_at": datetime(2024, 6, 14)}, ValueError, "is naive"),
        ({"recipients": ()}, ValueError, "needs at least one recipient"),
        ({"recipients": ["a@b"]}, TypeError, "expected a tuple"),
        ({"recipients": ("a@b,c@d",)}, ValueError, "without commas"),
        ({"next_attempt_at": None}, ValueError, "needs next_attempt_at"),
        ({"state": ALERT_SENT}, ValueError, "needs sent_at"),
        ({"attempts": -1}, ValueError, "below the minimum 0"),
    ],
)
def test_record_rejects(changes, error, message):
    with pytest.raises(error, match=message):
        alert(**changes)


def test_unique_key_per_transport(db_url, store):
    store.queue_alert([alert(dedupe_key=KEY)])
    engine = create_engine(db_url)
    columns = (
        "id, created_at, kind, transport, dedupe_key, subject, body, data, "
        "recipients, state, attempts"
    )
    insert = text(
        f"INSERT INTO outbox ({columns}) VALUES (99, :at, 'warning', 'email', "
        f"'{KEY}', 's', '', '{{}}', 'a@b', 'pending', 0)"
    )

    with pytest.raises(Exception, match="(?i)unique"):
        with engine.begin() as conn:
            conn.execute(insert, {"at": T0.replace(tzinfo=None)})
    engine.dispose()


def test_closed_store_raises(db_url):
    closed = Store(db_url)

    with pytest.raises(StoreError, match="not open"):
        closed.recent_alerts()
