"""The decision recorder's store thread lets the event loop take the GIL during a write."""

from datetime import datetime, timezone

from callguard.clock import ManualClock
from callguard.daemon import recorder as recorder_module
from callguard.daemon.recorder import ROWS_BETWEEN_PAUSES, DecisionRecorder, decision_row
from callguard.policy.decision import CallRequest, Decision
from callguard.store import Store
from callguard.store import calls as calls_module
from callguard.worker import StoreWorker

NOW = datetime(2024, 6, 14, 9, 0, tzinfo=timezone.utc)


def test_store_batch_pauses(tmp_path, monkeypatch):
    """A batch of 200 decisions pauses after every 16 converted and after each INSERT."""
    pauses = {"convert": 0, "insert": 0}

    def count(kind: str):
        def pause() -> None:
            pauses[kind] += 1
        return pause

    monkeypatch.setattr(recorder_module, "yield_gil", count("convert"))
    monkeypatch.setattr(calls_module, "yield_gil", count("insert"))
    store = Store(f"sqlite:///{tmp_path / 'callguard.db'}")
    store.open()
    worker = StoreWorker(store)
    try:
        clock = ManualClock(NOW)
        recorder = DecisionRecorder(worker, clock, "node-a")
        batch = []
        for number in range(200):
            request = CallRequest("gamma", "01632960123", uniqueid=f"1718355600.{number}")
            decision = Decision("ALLOW", "ok", request.trunk, request.dialled)
            batch.append(decision_row(request, decision, clock, "node-a"))

        assert recorder._store_batch(batch) == []
        stored = store.recent_decisions(limit=300)
    finally:
        worker.shutdown()
        store.close()

    assert len(stored) == 200
    assert pauses["convert"] == 200 // ROWS_BETWEEN_PAUSES
    assert pauses["insert"] == -(-200 // calls_module.SQLITE_ROWS_PER_STATEMENT)
